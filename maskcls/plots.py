"""Every PNG the tool writes: class distribution, training curves, confusion matrices."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def plot_class_counts(counts: Sequence[int], names: Sequence[str], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(max(6, len(counts) * 0.55), 4))
    bars = ax.bar(range(len(counts)), counts, color="tab:blue")
    ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(counts)), [f"{i}\n{n}" for i, n in enumerate(names)], fontsize=6, rotation=90)
    ax.set_ylabel("images")
    ax.set_title(title)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path, title: str = "") -> Path:
    matrix = np.asarray(matrix)
    size = max(4, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            colour = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(results, path: Path) -> Path:
    """Loss and macro-F1 per epoch from a results table (columns epoch, train_loss, val_loss, val_f1)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for column in ("train_loss", "val_loss"):
        if column in results and results[column].notna().any():
            left.plot(results["epoch"], results[column], marker="o", label=column)
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    if "val_f1" in results and results["val_f1"].notna().any():
        right.plot(results["epoch"], results["val_f1"], marker="o", color="tab:green")
    right.set_xlabel("epoch")
    right.set_title("val macro F1")
    return _save(fig, path)
