"""Run folders as the commands name them: a run (``runs/<task>/<name>/`` with ``best.pt``), a cross-validation
folder (``runs/<task>/<name>/fold0..foldK-1/``, written by ``maskcls cv``) or an ensemble folder
(``runs/<task>/<name>/member0..memberN-1/``, written by ``maskcls train`` with ``ensemble: N``); a folder of
folds or members stands for its runs. Every command that loads runs calls :func:`expand_runs` at its entry.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .data import DataError

FOLD_NAME = re.compile(r"fold(\d+)")
MEMBER_NAME = re.compile(r"member(\d+)")


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
    path = Path(path)
    return path.is_dir() and not any(path.glob("*.pt")) and bool(fold_dirs(path))


def is_ensemble_dir(path: str | Path) -> bool:
    """A folder with ``member<k>`` run folders and no checkpoint of its own."""
    path = Path(path)
    return path.is_dir() and not any(path.glob("*.pt")) and bool(member_dirs(path))


def expand_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as given, except a CV or ensemble folder, which becomes its runs (all of them, or an error
    naming the missing one: an ensemble of the folds or members that happen to be done is not the whole)."""
    out = []
    for path in map(Path, paths):
        if is_cv_dir(path):
            out += _complete(path, fold_dirs(path), fold_dir, "fold", "folds", "finish it with maskcls cv (same settings)")
        elif is_ensemble_dir(path):
            out += _complete(path, member_dirs(path), member_dir, "member", "ensemble",
                             f"finish it with maskcls train --resume {path}")
        else:
            out.append(path)
    return out


def run_home(run_dir: str | Path) -> Path:
    """The folder that stands for ``run_dir`` under ``<project>/<task>/``: its CV or ensemble folder for a fold
    or member run, else the run itself (so ``run_home(r).parent.parent`` is the project)."""
    run_dir = Path(run_dir).resolve()
    if FOLD_NAME.fullmatch(run_dir.name) and is_cv_dir(run_dir.parent):
        return run_dir.parent
    if MEMBER_NAME.fullmatch(run_dir.name) and is_ensemble_dir(run_dir.parent):
        return run_dir.parent
    return run_dir


def checkpoint_time(path: str | Path, which: str = "best") -> float | None:
    """When the newest ``<which>.pt`` of a run (or of any fold or member of a CV or ensemble folder) was
    written; None without one."""
    runs = fold_dirs(path) if is_cv_dir(path) else member_dirs(path) if is_ensemble_dir(path) else [Path(path)]
    times = [(d / f"{which}.pt").stat().st_mtime for d in runs if (d / f"{which}.pt").is_file()]
    return max(times) if times else None


def _numbered_dirs(folder: str | Path, pattern: re.Pattern) -> list[Path]:
    found = [(int(m[1]), d) for d in Path(folder).iterdir() if d.is_dir() and (m := pattern.fullmatch(d.name))] \
        if Path(folder).is_dir() else []
    return [d for _, d in sorted(found)]


def _complete(path: Path, found: list[Path], numbered, word: str, count_key: str, fix: str) -> list[Path]:
    """``found`` when it holds every run the first one's config.yaml counts (``folds`` or ``ensemble``)."""
    expected = _count(found[0], count_key)
    missing = [k for k in range(expected) if numbered(path, k) not in found]
    if missing:
        raise DataError(f"{path}: {word} {missing[0]} of {expected} is missing; {fix}")
    return [numbered(path, k) for k in range(expected)]


def _count(run_dir: Path, key: str) -> int:
    import yaml

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{config_file}: {run_dir.name} has no config.yaml")
    return int((yaml.safe_load(config_file.read_text()) or {}).get(key, 0))
