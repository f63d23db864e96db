"""Three specialists -> 18 classes: ``label = mask * 6 + gender * 3 + age`` per image.

Inputs are the probability tables ``maskcls predict`` writes. Before the argmax, each task's log
probabilities may get a per-class bias: macro F1 weighs every class alike, so a rare class (the old age
band above all) is worth predicting more often than the plain argmax does. ``tune_bias`` fits those
biases on validation predictions by coordinate ascent on the 18-class macro F1.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from .data import NUM_CLASSES, DataError, encode
from .io import atomic_write_csv, atomic_write_text, is_main_process
from .tasks import SPECIALISTS, get_task

# log-probability offsets tried per class; e^2 ~ 7x, enough to promote a class the model ranks second
BIAS_GRID = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.25), 2)
SUM_TOLERANCE = 1e-3  # rows of probabilities must sum to 1 within this (CSV rounding)


@dataclass
class Predictions:
    """One task's probability table, keyed by ``ImageID`` (eval) or image ``path`` (val)."""

    path: Path  # where it came from, for messages
    task: str
    key_column: str  # ImageID | path
    keys: np.ndarray
    probs: np.ndarray  # (images, classes)
    label: np.ndarray | None = None  # val only: the 18-class truth
    note: dict = field(default_factory=dict)

    @property
    def split(self) -> str:
        return "eval" if self.key_column == "ImageID" else "val"

    def reindexed(self, keys: Sequence[str]) -> "Predictions":
        order = pd.Index(self.keys).get_indexer(keys)
        return Predictions(self.path, self.task, self.key_column, self.keys[order], self.probs[order],
                           None if self.label is None else self.label[order], self.note)


def predictions_from_table(table: pd.DataFrame, task: str, path: str | Path, note: dict | None = None) -> Predictions:
    """Check a table (key column, p0..pK-1, for val ``label``) against its task; refusals name ``path``."""
    path, note = Path(path), note or {}
    if note.get("task") not in (None, task):
        raise DataError(f"{path}: holds {note['task']} predictions (see {path.with_suffix('.json').name}), not {task}")
    keys = [c for c in ("ImageID", "path") if c in table.columns]
    if len(keys) != 1:
        raise DataError(f"{path}: needs exactly one key column, ImageID (eval) or path (val); found {keys or 'none'}")
    key = keys[0]
    prob_columns = sorted((c for c in table.columns if re.fullmatch(r"p\d+", c)), key=lambda c: int(c[1:]))
    expected = get_task(task).num_classes
    if prob_columns != [f"p{k}" for k in range(len(prob_columns))] or len(prob_columns) != expected:
        raise DataError(f"{path}: class columns {','.join(prob_columns) or 'none'}; a {task} prediction has "
                        f"{expected} (p0..p{expected - 1}) - is this the right task's file?")
    if table.empty:
        raise DataError(f"{path}: no rows")
    duplicated = table[key][table[key].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: line {duplicated.index[0] + 2}: duplicated {key} {duplicated.iloc[0]}")
    probs = table[prob_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (np.abs(probs.sum(axis=1) - 1) > SUM_TOLERANCE)
    if bad.any():
        line = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {line + 2}: {','.join(map(str, table[prob_columns].iloc[line]))} are not "
                        f"probabilities (non-negative, summing to 1)")
    label = None
    if key == "path" and "label" in table.columns:
        label = pd.to_numeric(table["label"], errors="coerce").to_numpy()
        if not (np.isfinite(label) & (label >= 0) & (label < NUM_CLASSES) & (label % 1 == 0)).all():
            raise DataError(f"{path}: column label must hold classes 0..{NUM_CLASSES - 1}")
        label = label.astype(np.int64)
    return Predictions(path, task, key, table[key].astype(str).to_numpy(), probs, label, note)


def read_predictions(path: str | Path, task: str) -> Predictions:
    """A prediction CSV and the JSON note beside it (when there is one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prediction file does not exist")
    try:
        table = pd.read_csv(path, dtype={"ImageID": str, "path": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    note_file = path.with_suffix(".json")
    try:
        note = json.loads(note_file.read_text()) if note_file.is_file() else {}
    except json.JSONDecodeError as err:
        raise DataError(f"{note_file}: not valid JSON ({err})") from None
    return predictions_from_table(table, task, path, note)


def align(predictions: dict[str, Predictions]) -> dict[str, Predictions]:
    """The three tables in the mask table's image order; refuses tables that do not cover the same images."""
    missing = [task for task in SPECIALISTS if task not in predictions]
    if missing:
        raise DataError(f"missing predictions for {', '.join(missing)}")
    first = predictions["mask"]
    aligned = {}
    for task in SPECIALISTS:
        other = predictions[task]
        if other.split != first.split:
            raise DataError(f"{other.path}: holds {other.split} predictions, {first.path} {first.split} ones")
        extra = sorted(set(other.keys) - set(first.keys))
        absent = sorted(set(first.keys) - set(other.keys))
        if extra or absent:
            raise DataError(f"{other.path}: does not cover the images of {first.path}: {len(absent)} missing"
                            f"{_examples(absent)}, {len(extra)} extra{_examples(extra)}")
        aligned[task] = other.reindexed(first.keys)
        if first.split == "val" and first.label is not None and aligned[task].label is not None \
                and (aligned[task].label != first.label).any():
            where = int(np.flatnonzero(aligned[task].label != first.label)[0])
            raise DataError(f"{other.path}: label of {first.keys[where]} disagrees with {first.path} "
                            f"(runs with different label_fixes?)")
    return aligned


def _examples(keys: Sequence[str], count: int = 3) -> str:
    return f" (e.g. {', '.join(keys[:count])})" if len(keys) else ""


# --- the merge ----------------------------------------------------------------------------------

def task_predictions(probs: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Per-image class of one task: argmax of log probability plus bias."""
    scores = np.log(np.clip(probs, 1e-12, None))
    return (scores + (0 if bias is None else np.asarray(bias))).argmax(axis=1)


def combine(predictions: dict[str, Predictions], bias: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """18-class answer per image, ``mask * 6 + gender * 3 + age``, for tables already aligned."""
    parts = {task: task_predictions(predictions[task].probs, (bias or {}).get(task)) for task in SPECIALISTS}
    return encode(parts["mask"], parts["gender"], parts["age"])


def submission(predictions: dict[str, Predictions], image_ids: Sequence[str], info_csv: str | Path,
               bias: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """``ImageID,ans`` in exactly the order of ``info.csv`` (``image_ids``), every ImageID once."""
    first = predictions["mask"]
    if first.split != "eval":
        raise DataError(f"{first.path}: holds validation predictions; a submission needs eval ones "
                        f"(maskcls predict ... --split eval)")
    known = set(first.keys)
    absent = [i for i in image_ids if i not in known]
    extra = sorted(set(first.keys) - set(image_ids))
    if absent or extra:
        raise DataError(f"{first.path}: does not cover {info_csv}: {len(absent)} ImageID(s) without a prediction"
                        f"{_examples(absent)}, {len(extra)} not in it{_examples(extra)}")
    aligned = {task: p.reindexed(list(image_ids)) for task, p in predictions.items()}
    return pd.DataFrame({"ImageID": list(image_ids), "ans": combine(aligned, bias)})


def write_submission(frame: pd.DataFrame, path: str | Path) -> Path:
    if is_main_process():  # under torchrun every rank holds the same answers; one writes them
        atomic_write_csv(path, frame[["ImageID", "ans"]])
    return Path(path)


# --- bias tuning ----------------------------------------------------------------------------------

def fast_macro_f1(targets: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Macro F1 from one bincount (the tuning loop calls this thousands of times); a class absent from
    both targets and predictions scores 0, as in ``maskcls.metrics.macro_f1``."""
    matrix = np.bincount(targets * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # 2 tp + fp + fn
    return float(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean())


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


def tune_bias(predictions: dict[str, Predictions], labels: np.ndarray, grid: Sequence[float] = BIAS_GRID,
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
    scores = {task: np.log(np.clip(predictions[task].probs, 1e-12, None)) for task in SPECIALISTS}
    bias = {task: np.zeros(scores[task].shape[1]) for task in SPECIALISTS}
    parts = {task: scores[task].argmax(axis=1) for task in SPECIALISTS}
    halves = _halves(groups) if groups is not None else []

    def f1_of(parts, rows=slice(None)):
        return fast_macro_f1(labels[rows], encode(parts["mask"][rows], parts["gender"][rows], parts["age"][rows]))

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


def runs_of(predictions: dict[str, Predictions]) -> dict[str, list[str]] | None:
    """task -> the runs behind each table, from the JSON notes; None when any table has no note."""
    runs = {task: p.note.get("runs") for task, p in predictions.items()}
    return runs if all(runs.values()) else None


# --- the command --------------------------------------------------------------------------------

def combine_files(mask: Path, age: Path, gender: Path, out: Path | None = None, data_dir: Path | None = None,
                  tune: bool = False, bias_option: str | None = None, bias_out: Path | None = None) -> list[str]:
    """``maskcls combine``: eval tables -> submission; val tables -> scores (and with ``tune`` a bias file).
    Returns the lines to print."""
    from .evaluate import format_scores, score

    predictions = align({"mask": read_predictions(mask, "mask"), "age": read_predictions(age, "age"),
                         "gender": read_predictions(gender, "gender")})
    first, runs = predictions["mask"], runs_of(predictions)
    if first.split == "eval":
        if tune:
            raise DataError(f"{first.path}: --tune needs validation predictions (maskcls predict ... --split val)")
        data_dir = data_dir or first.note.get("data_dir")
        if not data_dir:
            raise DataError(f"{first.path}: no note records the data folder; pass --data-dir")
        from .data import read_eval_images

        info_csv = Path(data_dir) / "eval" / "info.csv"
        bias, which = resolve_bias(bias_option, runs)
        frame = submission(predictions, read_eval_images(Path(data_dir))["ImageID"].tolist(), info_csv,
                           None if bias is None else bias.values)
        out = write_submission(frame, out or Path("submission.csv"))
        return [which, f"wrote {out}: {len(frame)} images in the order of {info_csv}", answer_counts(frame["ans"])]

    labels = first.label
    if labels is None:
        raise DataError(f"{first.path}: validation predictions need a label column to be scored or tuned")
    lines = []
    if tune:
        bias, before, after = tune_bias(predictions, labels, groups=[person_of(k) for k in first.keys])
        bias.note = {"val_macro_f1": {"before": round(before, 4), "after": round(after, 4)},
                     "val_images": int(len(labels)), "runs": runs or {},
                     "tta": {task: p.note.get("views") for task, p in predictions.items() if p.note},
                     "tuned_on": {task: str(Path(p.path).resolve()) for task, p in predictions.items()}}
        target = bias_out or (default_bias_path(runs["mask"]) if runs else Path(mask).resolve().parent / "bias.yaml")
        bias.path = save_bias(bias, target)
        lines += [f"tuned bias on {len(labels)} validation images: 18-class macro F1 {before:.4f} -> {after:.4f} "
                  f"(tuned and scored on the same images: optimistic)", bias.describe(), f"wrote {bias.path}"]
    else:
        bias, which = resolve_bias(bias_option, runs)
        lines.append(which)
    answers = combine(predictions, None if bias is None else bias.values)
    lines.append(format_scores(score(labels, answers), title="validation"))
    if out:
        atomic_write_csv(out, pd.DataFrame({"path": first.keys, "ans": answers, "label": labels}))
        lines.append(f"wrote {out}")
    return lines


def answer_counts(answers) -> str:
    counts = np.bincount(np.asarray(answers, dtype=np.int64), minlength=NUM_CLASSES)
    return "answers per class: " + " ".join(f"{k}:{n}" for k, n in enumerate(counts))
