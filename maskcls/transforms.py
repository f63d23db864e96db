"""build_transforms(config, mean, std, train): albumentations pipelines, named augmentations from the YAML; and
the names of the test-time views (``tta``), checked here so a config is refused before any image is read."""
from __future__ import annotations

import difflib
import re
from typing import Callable, Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

from .errors import ConfigError

# name -> factory; task YAMLs list names (augment: [hflip, rotate, ...]) so configs stay plain data
AUGMENTATIONS: dict[str, Callable[[], A.BasicTransform]] = {
    "hflip": lambda: A.HorizontalFlip(p=0.5),
    "rotate": lambda: A.Rotate(limit=20, p=0.5),
    "perspective": lambda: A.Perspective(scale=(0.05, 0.1), p=0.5),
    "perspective_or_rotate": lambda: A.OneOf([A.Perspective(scale=(0.05, 0.1)), A.Rotate(limit=20)], p=0.5),
    "color": lambda: A.OneOf([A.RandomBrightnessContrast(0.2, 0.2), A.HueSaturationValue(20, 30, 20)], p=0.5),
    "grid_shuffle_or_perspective": lambda: A.OneOf([A.RandomGridShuffle(grid=(2, 2)),
                                                    A.Perspective(scale=(0.05, 0.1))], p=0.5),
    "gauss_noise": lambda: A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
}


def check_augment(entry) -> None:
    """A ConfigError unless ``entry`` (one item of ``augment``) names an augmentation of AUGMENTATIONS."""
    if entry not in AUGMENTATIONS:
        close = difflib.get_close_matches(str(entry), AUGMENTATIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"augment: unknown augmentation {entry!r}{hint} (choose from {', '.join(AUGMENTATIONS)})")


def build_transforms(augment: Sequence[str], img_size: int, mean, std, train: bool) -> A.Compose:
    """Resize, (train only) the named augmentations, Normalize with the backbone's mean/std, to tensor."""
    for entry in augment:
        check_augment(entry)
    steps = [A.Resize(img_size, img_size)]
    if train:
        steps += [AUGMENTATIONS[name]() for name in augment]
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)


def tta_view_zoom(name: str) -> float | None:
    """The centre-crop fraction of test-time view ``name`` (``scale90``: 0.9), None for ``orig`` and ``flip``;
    a ConfigError for any other name. ``infer.build_views`` builds the views from it."""
    match = re.fullmatch(r"scale(\d+)", str(name))
    if match and 1 <= int(match[1]) < 100:
        return int(match[1]) / 100
    if name in ("orig", "flip"):
        return None
    raise ConfigError(f"tta view {name!r}: expected flip or scale<percent> with percent in 1..99 (e.g. scale90)")
