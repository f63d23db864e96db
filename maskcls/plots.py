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


def save_contact_sheet(images, captions: Sequence[str], path: Path, flagged: Sequence[bool] = (), title: str = "",
                       tile: int = 128, columns: int = 10) -> Path:
    """A grid of thumbnails with a caption under each, for a person to check crops at a glance.

    ``flagged`` tiles get a red frame (crop fallbacks). Drawn with PIL: a few hundred tiles stay fast.
    """
    from PIL import Image, ImageDraw

    caption_px, title_px = 14, 22 if title else 0
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * tile, title_px + rows * (tile + caption_px)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill=(255, 255, 255))
    flagged = list(flagged) + [False] * (len(images) - len(flagged))
    for i, (image, caption, flag) in enumerate(zip(images, captions, flagged)):
        x, y = (i % columns) * tile, title_px + (i // columns) * (tile + caption_px)
        thumb = image.copy()
        thumb.thumbnail((tile - 4, tile - 4))
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        if flag:
            draw.rectangle([x + 1, y + 1, x + tile - 2, y + tile - 2], outline=(230, 40, 40), width=3)
        draw.text((x + 3, y + tile), caption[:22], fill=(230, 230, 230))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
