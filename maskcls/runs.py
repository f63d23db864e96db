"""Run folders as the commands name them: a run (``runs/<task>/<name>/`` with ``best.pt``) or a
cross-validation folder (``runs/<task>/<name>/fold0..foldK-1/``, written by ``maskcls cv``) that stands for
its fold runs. Every command that loads runs calls :func:`expand_runs` at its entry.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .data import DataError

FOLD_NAME = re.compile(r"fold(\d+)")


def fold_dir(cv_dir: str | Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold{fold}"


def fold_dirs(cv_dir: str | Path) -> list[Path]:
    """The ``fold<k>`` subfolders of ``cv_dir`` in fold order (empty when it is not a CV folder)."""
    found = [(int(m[1]), d) for d in Path(cv_dir).iterdir() if d.is_dir() and (m := FOLD_NAME.fullmatch(d.name))] \
        if Path(cv_dir).is_dir() else []
    return [d for _, d in sorted(found)]


def is_cv_dir(path: str | Path) -> bool:
    """A folder with ``fold<k>`` run folders and no checkpoint of its own."""
    path = Path(path)
    return path.is_dir() and not any(path.glob("*.pt")) and bool(fold_dirs(path))


def expand_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as given, except a CV folder, which becomes its fold runs (all ``folds`` of them, or an error
    naming the missing one: an ensemble of the folds that happen to be done is not the CV's ensemble)."""
    out = []
    for path in map(Path, paths):
        if not is_cv_dir(path):
            out.append(path)
            continue
        folds = fold_dirs(path)
        expected = _fold_count(folds[0])
        missing = [k for k in range(expected) if fold_dir(path, k) not in folds]
        if missing:
            raise DataError(f"{path}: fold {missing[0]} of {expected} is missing; finish it with maskcls cv "
                            f"(same settings)")
        out += folds
    return out


def run_home(run_dir: str | Path) -> Path:
    """The folder that stands for ``run_dir`` under ``<project>/<task>/``: its CV folder for a fold run,
    else the run itself (so ``run_home(r).parent.parent`` is the project)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent if FOLD_NAME.fullmatch(run_dir.name) and is_cv_dir(run_dir.parent) else run_dir


def checkpoint_time(path: str | Path, which: str = "best") -> float | None:
    """When the newest ``<which>.pt`` of a run (or of any fold of a CV folder) was written; None without one."""
    times = [(d / f"{which}.pt").stat().st_mtime for d in (fold_dirs(path) if is_cv_dir(path) else [Path(path)])
             if (d / f"{which}.pt").is_file()]
    return max(times) if times else None


def _fold_count(run_dir: Path) -> int:
    import yaml

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{config_file}: fold run has no config.yaml")
    return int((yaml.safe_load(config_file.read_text()) or {}).get("folds", 0))
