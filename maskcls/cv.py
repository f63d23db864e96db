"""Cross-validation in one command: every fold of a task trained into ``<project>/<task>/<name>/fold<k>/``
(each a normal run of :func:`maskcls.engine.fit`), then the out-of-fold probabilities of every training image
(``oof.csv``, the val table format of ``maskcls predict --split val`` plus the ``fold`` that predicted it) and
the per-fold and overall val macro F1 (``cv.json``).

Re-running the same command finishes what is unfinished: a fold whose ``last.pt`` has every epoch is skipped,
one with fewer is resumed from it, one without it starts afresh. Under torchrun every rank trains every fold
together and rank 0 writes the files.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import run_status
from .config import Config, ConfigError
from .data import fold_of_people, load_train
from .io import atomic_write_text, is_main_process
from .metrics import macro_f1
from .predictions import predict_runs, write_predictions
from .runs import OOF_FILE, SUMMARY_FILE, fold_dir
from .tasks import get_task

DEFAULT_NAME = "cv"  # fixed, not exp/exp2/...: running the command again finds the folds to finish


@dataclass
class CVResult:
    cv_dir: Path
    task: str
    folds: list[dict] = field(default_factory=list)  # fold, run, status, images, val_f1
    oof_f1: float = 0.0  # over every training image, each predicted by the fold that held it out

    def summary(self) -> dict:
        scores = [f["val_f1"] for f in self.folds]
        return {"task": self.task, "folds": self.folds, "oof_f1": round(self.oof_f1, 4),
                "mean_fold_f1": round(float(np.mean(scores)), 4), "std_fold_f1": round(float(np.std(scores)), 4),
                "oof": OOF_FILE}

    def format(self) -> list[str]:
        summary = self.summary()
        lines = [f"{self.task} fold {f['fold']}: val macro F1 {f['val_f1']:.4f} on {f['images']} images "
                 f"({f['status']}) {f['run']}" for f in self.folds]
        return lines + [f"{self.task} {len(self.folds)}-fold CV: out-of-fold macro F1 {self.oof_f1:.4f} "
                        f"(folds {summary['mean_fold_f1']:.4f} +- {summary['std_fold_f1']:.4f})",
                        f"wrote {self.cv_dir / OOF_FILE} and {self.cv_dir / SUMMARY_FILE}"]


def cv_dir_of(config: Config) -> Path:
    """``<project>/<task>/<name>``; ``name`` defaults to ``cv``."""
    return Path(config.project) / config.task / (config.name or DEFAULT_NAME)


def fold_config(config: Config, fold: int) -> Config:
    """The config of one fold's run: ``fold=k``, and a name that puts it inside the CV folder."""
    # one run per fold, whatever the config's ensemble: the folds are the ensemble
    return dataclasses.replace(config, fold=fold, name=f"{config.name or DEFAULT_NAME}/fold{fold}", ensemble=1)


def run_cv(config: Config, tta: bool = False) -> CVResult:
    """Train (or finish) every fold, then write ``oof.csv`` and ``cv.json`` into the CV folder."""
    from .engine import Engine, fit

    if config.val != "fold":
        raise ConfigError(f"val={config.val}: cross-validation holds out each fold in turn; it needs val=fold")
    cv_dir = cv_dir_of(config)
    engine = Engine.from_config(config)  # joins torchrun's process group once; each fold's fit shares it
    try:
        statuses = []
        for fold in range(config.folds):
            run_config, run_dir = fold_config(config, fold), fold_dir(cv_dir, fold)
            status = engine.broadcast(run_status(run_dir, run_config) if engine.is_main else None)
            if engine.is_main:
                print(f"{config.task} fold {fold}/{config.folds}: {status}{' (skipped)' if status == 'finished' else ''}",
                      flush=True)
            if status != "finished":
                fit(run_config, resume=run_dir if status == "unfinished" else None)
            engine.all_sum(0.0)  # a collective: no rank reads the fold's best.pt before rank 0 has written it
            statuses.append(status)
        result = write_oof(cv_dir, config, statuses, tta)
    finally:
        engine.close()
    return result


def write_oof(cv_dir: Path, config: Config, statuses: list[str], tta: bool = False) -> CVResult:
    """Predict each fold's held-out people with its best.pt; write ``oof.csv`` (+ note) and ``cv.json``."""
    runs = [fold_dir(cv_dir, k) for k in range(config.folds)]
    table, note = predict_runs(runs, "val", config.data_dir, tta, device=config.device, task=config.task)
    table["fold"] = fold_of_images(table["path"], config)
    path = write_predictions(table, cv_dir / OOF_FILE, {**note, "cv": str(cv_dir.resolve())})
    task = get_task(config.task)
    probs = table[[f"p{k}" for k in range(task.num_classes)]].to_numpy()
    preds, targets = probs.argmax(1), table["target"].to_numpy()
    result = CVResult(cv_dir, config.task, oof_f1=macro_f1(targets, preds, task.num_classes))
    for fold, status in enumerate(statuses):
        rows = (table["fold"] == fold).to_numpy()
        result.folds.append({"fold": fold, "run": str(runs[fold]), "status": status, "images": int(rows.sum()),
                             "val_f1": round(macro_f1(targets[rows], preds[rows], task.num_classes), 4)})
    if is_main_process():
        atomic_write_text(path.parent / SUMMARY_FILE, json.dumps(result.summary(), indent=1) + "\n")
    return result


def fold_of_images(paths: pd.Series, config: Config) -> np.ndarray:
    """The fold that holds out each image (``train/images/<person>/...``, relative to the data folder)."""
    images = load_train(config.data_dir, fixes=config.label_fixes)
    fold = images["person"].map(fold_of_people(images, config.folds, config.seed))
    relative = [Path(p).relative_to(config.data_dir).as_posix() for p in images["path"]]
    return paths.map(dict(zip(relative, fold))).to_numpy()
