"""Run folders as the commands name them: a run (``runs/<task>/<name>/`` with ``best.pt``), a cross-validation
folder (``runs/<task>/<name>/fold0..foldK-1/``, written by ``maskcls cv``) or an ensemble folder
(``runs/<task>/<name>/member0..memberN-1/``, written by ``maskcls train`` with ``ensemble: N``); a folder of
folds or members stands for its runs. Every command that loads runs calls :func:`expand_runs` at its entry
(through ``bundle.resolve_runs``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .data import DataError

FOLD_NAME = re.compile(r"fold(\d+)")
MEMBER_NAME = re.compile(r"member(\d+)")
OOF_FILE = "oof.csv"  # a CV folder's out-of-fold predictions (maskcls cv), read by maskcls audit
SUMMARY_FILE = "cv.json"  # a CV folder's task and scores (maskcls cv), read by maskcls audit


def fold_dir(cv_dir: str | Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold{fold}"


def member_dir(ensemble_dir: str | Path, member: int) -> Path:
    return Path(ensemble_dir) / f"member{member}"


def fold_dirs(cv_dir: str | Path) -> list[Path]:
    """The ``fold<k>`` subfolders of ``cv_dir`` in fold order (empty when it is not a CV folder)."""
    return _numbered_dirs(cv_dir, FOLD_NAME)


def member_dirs(ensemble_dir: str | Path) -> list[Path]:
    """The ``member<k>`` subfolders of ``ensemble_dir`` in order (empty when it is not an ensemble folder)."""
    return _numbered_dirs(ensemble_dir, MEMBER_NAME)


def is_cv_dir(path: str | Path) -> bool:
    """A folder with ``fold<k>`` run folders and no checkpoint of its own."""
    return _group_kind(path) == "fold"


def is_ensemble_dir(path: str | Path) -> bool:
    """A folder with ``member<k>`` run folders and no checkpoint of its own."""
    return _group_kind(path) == "member"


# a folder that stands for its numbered runs: its subfolder pattern, the config key that counts them, the fix
GROUPS = {
    "fold": (FOLD_NAME, fold_dir, "folds", "finish it with maskcls cv (same settings)"),
    "member": (MEMBER_NAME, member_dir, "ensemble", "finish it with maskcls train --resume {path}"),
}


def expand_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as given, except a CV or ensemble folder, which becomes its runs (all of them, or an error
    naming the missing one: an ensemble of the folds or members that happen to be done is not the whole)."""
    out = []
    for path in map(Path, paths):
        kind = _group_kind(path)
        out += _complete(path, kind) if kind else [path]
    return out


def run_home(run_dir: str | Path) -> Path:
    """The folder that stands for ``run_dir`` under ``<project>/<task>/``: its CV or ensemble folder for a fold
    or member run, else the run itself (so ``run_home(r).parent.parent`` is the project)."""
    run_dir = Path(run_dir).resolve()
    kind = _group_kind(run_dir.parent)
    return run_dir.parent if kind and GROUPS[kind][0].fullmatch(run_dir.name) else run_dir


def checkpoint_time(path: str | Path, which: str = "best") -> float | None:
    """When the newest ``<which>.pt`` of a run (or of any fold or member of a CV or ensemble folder) was
    written; None without one."""
    kind = _group_kind(path)
    runs = _numbered_dirs(path, GROUPS[kind][0]) if kind else [Path(path)]
    times = [(d / f"{which}.pt").stat().st_mtime for d in runs if (d / f"{which}.pt").is_file()]
    return max(times) if times else None


def _group_kind(path: str | Path) -> str | None:
    """``fold`` or ``member`` for a folder of such runs without a checkpoint of its own, else None."""
    path = Path(path)
    if not path.is_dir() or any(path.glob("*.pt")):
        return None
    return next((kind for kind, (pattern, *_) in GROUPS.items() if _numbered_dirs(path, pattern)), None)


def _numbered_dirs(folder: str | Path, pattern: re.Pattern) -> list[Path]:
    found = [(int(m[1]), d) for d in Path(folder).iterdir() if d.is_dir() and (m := pattern.fullmatch(d.name))] \
        if Path(folder).is_dir() else []
    return [d for _, d in sorted(found)]


def _complete(path: Path, kind: str) -> list[Path]:
    """The runs of a ``kind`` folder when it holds every one its first run's config.yaml counts (``folds`` or
    ``ensemble``), else an error naming the first missing one."""
    pattern, numbered, count_key, fix = GROUPS[kind]
    found = _numbered_dirs(path, pattern)
    expected = _count(found[0], count_key)
    missing = [k for k in range(expected) if numbered(path, k) not in found]
    if missing:
        raise DataError(f"{path}: {kind} {missing[0]} of {expected} is missing; {fix.format(path=path)}")
    return [numbered(path, k) for k in range(expected)]


def _count(run_dir: Path, key: str) -> int:
    import yaml

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{config_file}: {run_dir.name} has no config.yaml")
    return int((yaml.safe_load(config_file.read_text()) or {}).get(key, 0))
