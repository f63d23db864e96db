"""A seed ensemble in one command: ``maskcls train TASK`` with ``ensemble: N`` (N > 1) trains N members into
``<project>/<task>/<name>/member<k>/``. Member k is a normal run of :func:`maskcls.engine.fit` with ``seed + k``:
its own initial head, data order, augmentations and validation people. The folder stands for its members
wherever runs are loaded (:func:`maskcls.runs.expand_runs`), so submit, predict, detect and export vote them.

Why: retrains of one recipe that differ only in the seed moved the ood_ffhq F1 by up to 0.09 per task, and their
soft vote scored above the members' mean on every task (docs/benchmarks.md, "Generalisation").

Running the same command again (same ``name``), or ``train --resume <folder>``, finishes what is unfinished: a
member whose ``last.pt`` has every epoch is skipped, one with fewer is resumed from it, one without starts afresh.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import Config, ConfigError, save_config
from .runs import member_dir


def member_config(config: Config, member: int, ensemble_dir: Path) -> Config:
    """The config of member ``member``: its seed, and a project and name that put it inside ``ensemble_dir``."""
    return dataclasses.replace(config, seed=config.seed + member, project=str(ensemble_dir.parent.parent),
                               name=f"{ensemble_dir.name}/member{member}")


def train_ensemble(config: Config, resume: Path | None = None) -> Path:
    """Train (or finish) every member of ``config.ensemble``; returns the ensemble folder."""
    from .checkpoint import claim_run_dir
    from .engine import Engine, fit

    engine = Engine.from_config(config)  # joins torchrun's process group once; each member's fit shares it
    base = Path(config.project) / config.task
    made = [folder for folder in (base, base.parent) if not folder.exists()]  # what a failed start removes again
    try:
        if resume is not None:
            ensemble_dir = Path(resume)
        else:  # rank 0 claims the folder (exp, exp2, ... without a name), the others take its word
            claimed = claim_run_dir(Path(config.project), config.task, config.name) if engine.is_main else None
            ensemble_dir = engine.broadcast(claimed)
        members = [(member_config(config, k, ensemble_dir), member_dir(ensemble_dir, k)) for k in range(config.ensemble)]
        statuses = engine.broadcast(member_statuses(ensemble_dir, members) if engine.is_main else None)
        if engine.is_main:  # after the checks: a refused command leaves the folder as it was
            save_config(config, ensemble_dir / "config.yaml")  # what `train --resume <folder>` continues
        try:
            for member, ((run_config, run_dir), status) in enumerate(zip(members, statuses)):
                if engine.is_main:
                    print(f"{config.task} member {member}/{config.ensemble} (seed {run_config.seed}): {status}"
                          f"{' (skipped)' if status == 'finished' else ''}", flush=True)
                if status != "finished":
                    fit(run_config, resume=run_dir if status == "unfinished" else None)
                engine.all_sum(0.0)  # a collective: every rank is done with this member before the next starts
        except BaseException:
            if engine.is_main and resume is None:
                _remove_if_bare(ensemble_dir, made)
            raise
    finally:
        engine.close()
    return ensemble_dir


def _remove_if_bare(ensemble_dir: Path, made: list[Path]) -> None:
    """Undo a start that failed before its first member wrote anything (bad data, say): the folder holding only
    its config.yaml, and the empty parents this command made, go again."""
    if [p.name for p in ensemble_dir.iterdir()] != ["config.yaml"]:
        return
    (ensemble_dir / "config.yaml").unlink()
    for folder in (ensemble_dir, *made):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def member_statuses(ensemble_dir: Path, members: list[tuple[Config, Path]]) -> list[str]:
    """Each member's ``new`` / ``unfinished`` / ``finished`` (:func:`maskcls.cv.run_status`); a member trained
    with other settings, or a single run already in the folder, is an error."""
    from .cv import run_status

    if (ensemble_dir / "last.pt").is_file():
        raise ConfigError(f"{ensemble_dir}: holds a single run (last.pt), not an ensemble; pass another name=")
    return [run_status(run_dir, run_config) for run_config, run_dir in members]
