"""The torch Dataset: image path -> (loaded, cropped, transformed) tensor and integer target; build_dataset makes
one from a config, the one way training, validation and every inference command get their images."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from ..progress import progress
from ..transforms import build_transforms
from .images import open_rgb


class ImageDataset(Dataset):
    """With ``preload_size``, every image is decoded, cropped and resized once, up front, into memory
    (uint8, about 50 KB an image at 128 px): the training loop then never waits on JPEG decoding."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int] | np.ndarray | None, transform,
                 image_loader: Callable = open_rgb, preload_size: int | None = None):
        """``targets``: a class index per image, or an ``(n, classes)`` array of class probabilities."""
        self.paths = list(paths)
        self.targets = None if targets is None else _as_targets(targets)
        self.transform = transform
        self.image_loader = image_loader
        self.images = preload_images(self.paths, image_loader, preload_size) if preload_size else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = self.images[index] if self.images is not None else np.asarray(self.image_loader(self.paths[index]))
        tensor = self.transform(image=image)["image"]
        target = -1 if self.targets is None else self.targets[index]
        return tensor, torch.as_tensor(target)


def build_dataset(config, paths: Sequence, mean, std, train: bool = False, targets=None,
                  image_loader: Callable | None = None, preload: bool = False) -> ImageDataset:
    """``paths`` as the model sees them: read by ``image_loader`` (default: the config's face crops), resized,
    augmented (``train`` only), normalised with the backbone's ``mean``/``std``; decoded into memory up front
    with ``preload``."""
    from .crop import build_image_loader

    transform = build_transforms(config.augment, config.img_size, mean, std, train=train)
    return ImageDataset(list(paths), targets, transform, image_loader or build_image_loader(config),
                        preload_size=config.img_size if preload else None)


def _as_targets(targets) -> np.ndarray:
    targets = np.asarray(targets)
    return targets.astype(np.float32) if targets.ndim == 2 else targets.astype(np.int64)


def preload_images(paths: Sequence[str], image_loader: Callable, size: int, workers: int = 4) -> np.ndarray:
    """All images loaded and resized to ``size`` x ``size`` (the same resize as the transforms)."""
    resize = A.Resize(size, size)

    def load(path):
        return resize(image=np.asarray(image_loader(path)))["image"]

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(progress(pool.map(load, paths), total=len(paths), desc="load images")))


def seed_worker(worker_id: int) -> None:
    """Reseed each loader worker's augmentations from torch's per-worker seed (deterministic per epoch)."""
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    if hasattr(info.dataset.transform, "set_random_seed"):
        info.dataset.transform.set_random_seed(seed)
