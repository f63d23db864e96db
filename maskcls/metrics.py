"""Scores on whole prediction sets (never averaged per batch): macro F1, accuracy, confusion matrix."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def macro_f1(targets, preds, num_classes: int) -> float:
    """Macro F1 over ``num_classes`` classes; a class absent from both targets and preds scores 0."""
    return float(f1_score(targets, preds, labels=list(range(num_classes)), average="macro", zero_division=0))


def accuracy(targets, preds) -> float:
    targets, preds = np.asarray(targets), np.asarray(preds)
    return float((targets == preds).mean()) if len(targets) else 0.0


def confusion(targets, preds, num_classes: int) -> np.ndarray:
    return confusion_matrix(targets, preds, labels=list(range(num_classes)))


def bootstrap_macro_f1(targets, preds: dict, groups, num_classes: int, draws: int = 1000,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Macro F1 of each named prediction set on ``draws`` resamples of whole groups with replacement.

    Resample people, not images: a person's seven images share one photo, so their errors go together. Every
    set is scored on the same resamples, so the difference of two sets' draws is a paired bootstrap."""
    targets, groups = np.asarray(targets), np.asarray(groups)
    names, group_of = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_of == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    out = {name: np.empty(draws) for name in preds}
    for d in range(draws):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
        for name, pred in preds.items():
            out[name][d] = fast_macro_f1(targets[rows], np.asarray(pred)[rows], num_classes)
    return out


def bootstrap_mean(values: dict, groups, draws: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """The mean of each named per-image array (an error, say) on ``draws`` resamples of whole groups: the resamples
    of :func:`bootstrap_macro_f1` with the same ``seed``, so the two kinds of draws pair."""
    names, group_of = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.integers(0, len(names), len(names)) for _ in range(draws)])
    counts = np.bincount(group_of, minlength=len(names))[picks].sum(1)
    return {name: np.bincount(group_of, weights=np.asarray(v, float), minlength=len(names))[picks].sum(1) / counts
            for name, v in values.items()}


def fast_macro_f1(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """:func:`macro_f1` from bincounts (sklearn's is ~50x slower, which a bootstrap and bias tuning feel)."""
    tp = np.bincount(targets[targets == preds], minlength=num_classes)
    true, predicted = np.bincount(targets, minlength=num_classes), np.bincount(preds, minlength=num_classes)
    denominator = true + predicted
    return float(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean())
