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
