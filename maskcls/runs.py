"""Run folders as the commands name them: a run (``runs/<task>/<name>/`` with ``best.pt``), a cross-validation
folder (``runs/<task>/<name>/fold0..foldK-1/``, written by ``maskcls cv``) or an ensemble folder
(``runs/<task>/<name>/member0..memberN-1/``, written by ``maskcls train`` with ``ensemble: N``); a folder of
folds or members stands for its runs. Every command that loads runs calls :func:`expand_runs` at its entry;
``newest_run`` finds a task's default run; ``run_status`` says whether a fold or member is still to train.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .data import DataError
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

FOLD_NAME = re.compile(r"fold(\d+)")
MEMBER_NAME = re.compile(r"member(\d+)")
OOF_FILE = "oof.csv"  # a CV folder's out-of-fold predictions (maskcls cv), read by maskcls audit
# may differ when a fold or member is resumed: how it runs, and where its folder lies (a folder may be moved)
RUNTIME_KEYS = ("device", "workers", "preload", "amp", "channels_last", "project", "name")


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


def newest_run(project: str | Path, task: str, which: str = "best") -> Path:
    """The run (or CV folder) under ``<project>/<task>/`` whose ``best.pt`` (or ``which``) was written last."""
    folder = Path(project) / task
    times = {d: checkpoint_time(d, which) for d in folder.iterdir()} if folder.is_dir() else {}
    runs = [d for d, time in times.items() if time is not None]
    if not runs:
        raise DataError(f"{folder}: no run with a {which}.pt; train one (maskcls train {task}) or pass --{task} RUN")
    return max(runs, key=times.get)


def run_status(run_dir: Path, config: Config) -> str:
    """A fold's or an ensemble member's ``new`` (no last.pt), ``unfinished`` (fewer epochs than ``config.epochs``)
    or ``finished``, the test ``train --resume`` applies; one trained with other settings is an error naming them."""
    from .checkpoint import epochs_done, load_checkpoint
    from .config import config_from_dict

    last = run_dir / "last.pt"
    if not last.is_file():
        return "new"
    state = load_checkpoint(last)
    before, now = config_from_dict(state["config"]).to_dict(), config.to_dict()  # keys added since: defaults
    differ = [k for k in now if k not in RUNTIME_KEYS and _plain(before.get(k)) != _plain(now[k])]
    if differ:
        shown = ", ".join(f"{k}={before.get(k)!r} (now {now[k]!r})" for k in differ[:3])
        raise ConfigError(f"{run_dir}: was trained with {shown}; resume with the same settings, or pass name= "
                          f"for a new folder")
    return "finished" if epochs_done(state) >= config.epochs else "unfinished"


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


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
