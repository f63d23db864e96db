"""Three specialists -> 18 classes: ``label = mask * 6 + gender * 3 + age`` per image.

Inputs are the prediction tables ``maskcls predict`` writes (``predictions.py`` reads and checks them). Before
the argmax, each task's log probabilities may get a per-class bias (``bias.py``: tuned on validation
predictions, stored, applied).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .bias import default_bias_path, person_of, resolve_bias, save_bias, task_predictions, tune_bias
from .data import NUM_CLASSES, DataError, encode
from .io import atomic_write_csv, is_main_process
from .predictions import PredictionTable, read_predictions
from .tasks import SPECIALISTS


def align(predictions: dict[str, PredictionTable]) -> dict[str, PredictionTable]:
    """The three tables in the mask table's image order; refuses tables that do not cover the same images."""
    missing = [task for task in SPECIALISTS if task not in predictions]
    if missing:
        raise DataError(f"missing predictions for {', '.join(missing)}")
    first = predictions["mask"]
    for other in predictions.values():
        if other.split != first.split:
            raise DataError(f"{other.path}: holds {other.split} predictions, {first.path} {first.split} ones")
    _refuse_odd_table([predictions[task] for task in SPECIALISTS])
    aligned = {}
    for task in SPECIALISTS:
        other = predictions[task]
        aligned[task] = other.reindexed(first.keys)
        if first.split == "val" and first.label is not None and aligned[task].label is not None \
                and (aligned[task].label != first.label).any():
            where = int(np.flatnonzero(aligned[task].label != first.label)[0])
            raise DataError(f"{other.path}: label of {first.keys[where]} disagrees with {first.path} "
                            f"(runs with different label_fixes?)")
    return aligned


def _refuse_odd_table(tables: Sequence[PredictionTable]) -> None:
    """The tables must hold the same images. When they do not, the majority decides which is at fault: a table
    lacking an image the others hold, or holding one they lack, is the one the message names."""
    keysets = [set(p.keys) for p in tables]
    counts = Counter(key for keys in keysets for key in keys)
    for table, keys in zip(tables, keysets):
        lacks = sorted(key for key, n in counts.items() if key not in keys and n > len(tables) / 2)
        extra = sorted(key for key in keys if counts[key] < len(tables) / 2)
        if lacks:
            raise DataError(f"{table.path}: lacks {len(lacks)} image(s) the other tables hold{_examples(lacks)}")
        if extra:
            raise DataError(f"{table.path}: holds {len(extra)} image(s) the other tables lack{_examples(extra)}")


def _examples(keys: Sequence[str], count: int = 3) -> str:
    return f" (e.g. {', '.join(keys[:count])})" if len(keys) else ""


# --- the merge ----------------------------------------------------------------------------------

def combine(predictions: dict[str, PredictionTable], bias: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """18-class answer per image, ``mask * 6 + gender * 3 + age``, for tables already aligned."""
    parts = {task: task_predictions(predictions[task].probs, (bias or {}).get(task)) for task in SPECIALISTS}
    return encode(parts["mask"], parts["gender"], parts["age"])


def submission(predictions: dict[str, PredictionTable], image_ids: Sequence[str], info_csv: str | Path,
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


def runs_of(predictions: dict[str, PredictionTable]) -> dict[str, list[str]] | None:
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
        bias, before, after = tune_bias({task: p.probs for task, p in predictions.items()}, labels,
                                        groups=[person_of(k) for k in first.keys])
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
