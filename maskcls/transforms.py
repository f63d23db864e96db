"""build_transforms(config, mean, std, train): albumentations pipelines, named augmentations from the YAML."""
from __future__ import annotations

from typing import Callable, Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

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


def build_transforms(augment: Sequence[str], img_size: int, mean, std, train: bool) -> A.Compose:
    """Resize, (train only) the named augmentations, Normalize with the backbone's mean/std, to tensor."""
    unknown = [name for name in augment if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    steps = [A.Resize(img_size, img_size)]
    if train:
        steps += [AUGMENTATIONS[name]() for name in augment]
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)

