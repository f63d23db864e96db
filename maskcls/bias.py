"""Per-class biases for the 18-class merge: log-probability offsets added to each task's scores before its
argmax. Macro F1 weighs every class alike, so a rare class (the old age band above all) is worth predicting more
often than the plain argmax does. ``tune_bias`` fits the offsets on validation predictions by coordinate ascent
on the 18-class macro F1; ``save_bias`` / ``load_bias`` keep them in ``<project>/bias.yaml``; ``resolve_bias``
picks the one a submission applies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from .data import NUM_CLASSES, encode
from .errors import DataError
from .io import atomic_write_text
from .metrics import fast_macro_f1
from .tasks import SPECIALISTS, get_task

# log-probability offsets tried per class; e^2 ~ 7x, enough to promote a class the model ranks second
BIAS_GRID = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.25), 2)


def log_scores(probs: np.ndarray) -> np.ndarray:
    """The scores a bias is added to: log probabilities (clipped, so a 0 stays finite)."""
    return np.log(np.clip(probs, 1e-12, None))


def task_predictions(probs: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Per-image class of one task: argmax of log probability plus bias."""
    return (log_scores(probs) + (0 if bias is None else np.asarray(bias))).argmax(axis=1)


@dataclass
class Bias:
    """Per-class log-probability offsets per task, and where they came from."""

    values: dict[str, np.ndarray]
    note: dict = field(default_factory=dict)
    path: Path | None = None

    def describe(self) -> str:
        return "; ".join(f"{task} " + ", ".join(f"{name} {value:+.2f}" for name, value in
                                                 zip(get_task(task).class_names, self.values[task]))
                         for task in SPECIALISTS)


def tune_bias(probs: dict[str, np.ndarray], labels: np.ndarray, grid: Sequence[float] = BIAS_GRID,
              rounds: int = 10, groups: Sequence[str] | None = None) -> tuple[Bias, float, float]:
    """(bias, macro F1 before, after) by coordinate ascent over ``grid`` for each class of each task.

    A coordinate moves only when the 18-class macro F1 strictly rises, so ties keep the smaller change and
    an already optimal argmax keeps a zero bias. With ``groups`` (the person of each image), the people
    are dealt into two halves and a move must also not lower the F1 of either half: a gain that only
    one half's images carry is a fit to those few people, not to the task (on ../shared/data/faces a
    gender offset tuned without it lowered the eval F1, see docs/benchmarks.md). Tuned and scored on
    the same images: the gain is optimistic.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = {task: log_scores(probs[task]) for task in SPECIALISTS}
    bias = {task: np.zeros(scores[task].shape[1]) for task in SPECIALISTS}
    parts = {task: scores[task].argmax(axis=1) for task in SPECIALISTS}
    halves = _halves(groups) if groups is not None else []

    def f1_of(parts, rows=slice(None)):
        return fast_macro_f1(labels[rows], encode(parts["mask"][rows], parts["gender"][rows], parts["age"][rows]),
                             NUM_CLASSES)

    before = best = f1_of(parts)
    best_halves = [f1_of(parts, half) for half in halves]
    for _ in range(rounds):
        improved = False
        for task in SPECIALISTS:
            for k in range(len(bias[task])):
                for value in sorted(grid, key=abs):  # on a tie the smaller offset wins
                    trial = bias[task].copy()
                    trial[k] = value
                    trial_parts = {**parts, task: (scores[task] + trial).argmax(axis=1)}
                    f1 = f1_of(trial_parts)
                    if f1 <= best + 1e-12:  # higher is better
                        continue
                    f1_halves = [f1_of(trial_parts, half) for half in halves]
                    if any(new < old - 1e-12 for new, old in zip(f1_halves, best_halves)):
                        continue
                    best, best_halves, bias[task], parts, improved = f1, f1_halves, trial, trial_parts, True
        if not improved:
            break
    return Bias(bias), before, best


def _halves(groups: Sequence[str]) -> list[np.ndarray]:
    """Row indices of two halves of the groups, dealt in turn in sorted order (deterministic)."""
    groups = np.asarray([str(g) for g in groups])
    in_first = np.isin(groups, np.unique(groups)[::2])  # np.unique sorts
    return [np.flatnonzero(in_first), np.flatnonzero(~in_first)]


def person_of(key: str) -> str:
    """The person folder of a validation image path (``train/images/<person>/mask1.jpg``)."""
    return Path(key).parent.name


def default_bias_path(mask_runs: Sequence[str | Path]) -> Path:
    """``<project>/bias.yaml`` beside the task folders of ``<project>/<task>/<run>`` (or ``<run>/fold<k>``)."""
    from .runs import run_home

    return run_home(mask_runs[0]).parent.parent / "bias.yaml"


def save_bias(bias: Bias, path: str | Path) -> Path:
    values = {task: [round(float(v), 4) for v in bias.values[task]] for task in SPECIALISTS}
    header = ("# per-class log-probability offsets added before each task's argmax; written by "
              "`maskcls combine --tune`, applied by `maskcls submit`\n")
    body = {"bias": values, "classes": {task: list(get_task(task).class_names) for task in SPECIALISTS},
            **bias.note}
    atomic_write_text(path, header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None))
    return Path(path)


def load_bias(path: str | Path) -> Bias:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: bias file does not exist")
    try:
        body = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    values = body.get("bias") if isinstance(body, dict) else None
    if not isinstance(values, dict):
        raise DataError(f"{path}: expected a mapping `bias: {{mask: [...], gender: [...], age: [...]}}`")
    out = {}
    for task in SPECIALISTS:
        expected = get_task(task).num_classes
        vector = values.get(task)
        try:
            vector = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError):
            vector = np.asarray([])
        if vector.shape != (expected,) or not np.isfinite(vector).all():
            raise DataError(f"{path}: bias.{task} must be {expected} numbers, got {values.get(task)!r}")
        out[task] = vector
    return Bias(out, {k: v for k, v in body.items() if k not in ("bias", "classes")}, path)


def _same_runs(a: dict, b: dict) -> bool:
    return all(sorted(map(str, a.get(task) or [])) == sorted(map(str, b.get(task) or [])) for task in SPECIALISTS)


def resolve_bias(option: str | None, runs: dict[str, list[str]] | None) -> tuple[Bias | None, str]:
    """(bias or None, one line saying which). ``option``: a file, ``none``, or None for the stored one when it
    was tuned on these ``runs`` (a bias fitted to other models would shift the wrong classes)."""
    if option == "none":
        return None, "bias: none"
    if option:
        bias = load_bias(option)
        other = runs is not None and bias.note.get("runs") and not _same_runs(bias.note["runs"], runs)
        return bias, f"bias: {option}{_gain(bias)}" + (" (note: tuned on other runs)" if other else "")
    if not runs or not runs.get("mask"):
        return None, "bias: none (no runs recorded to find a tuned one; pass --bias FILE)"
    path = default_bias_path(runs["mask"])
    if not path.is_file():
        return None, f"bias: none ({path} not found; `maskcls combine --tune` writes it)"
    bias = load_bias(path)
    if not _same_runs(bias.note.get("runs") or {}, runs):
        return None, f"bias: none ({path} was tuned on other runs; pass --bias {path} to apply it anyway)"
    return bias, f"bias: {path}{_gain(bias)}"


def _gain(bias: Bias) -> str:
    f1 = bias.note.get("val_macro_f1") or {}
    return f" (val macro F1 {f1['before']:.4f} -> {f1['after']:.4f})" if {"before", "after"} <= set(f1) else ""
