"""build_transforms(augment, img_size, mean, std, train): albumentations pipelines; build_mixup(config): timm's
Mixup / CutMix on batches. Every ``augment`` entry is parsed and checked here, and the names of the test-time views (``tta``), so a
config is refused before any image is read.

An ``augment`` entry is a name from AUGMENTATIONS (``hflip``) or one albumentations transform with its
arguments (``{Rotate: {limit: 15, p: 0.5}}``), built by albumentations itself. The frozen config holds a
mapping entry as its one-line YAML (``augment_entry``), so the config stays hashable and round-trips through
config.yaml and checkpoints; ``augment_value`` turns it back into the mapping.
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Callable, Sequence

import albumentations as A
import cv2
import torch
import yaml
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
    # robustness to faces from other photos, in the three specialists' recipes (benchmarks: "Generalisation").
    # A detector's box sits differently on each face: zoom 0.85-1.15 and shift up to 8 % of the side,
    # the border mirrored rather than black
    "shift_scale": lambda: A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08),
                                    border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    # small faces in a wide frame: down to 1/4 of the side (24 px at 96) and back up
    "downscale": lambda: A.Downscale(scale_range=(0.25, 0.5), p=0.3,
                                     interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}),
    "blur": lambda: A.GaussianBlur(blur_limit=(3, 5), p=0.3),  # out-of-focus or motion-soft faces
    "jpeg": lambda: A.ImageCompression(quality_range=(30, 90), p=0.3),  # re-saved web photos
    "grayscale": lambda: A.ToGray(p=0.1),  # black-and-white photos; mask colour must not be the only cue
}


def augment_entry(entry) -> str:
    """One ``augment`` entry as the config holds it: a name as it is, ``{Transform: {arg: value}}`` as its
    one-line YAML with sorted keys (equal mappings give equal strings)."""
    if isinstance(entry, str) and entry.strip().startswith("{"):
        entry = _parse(entry)
    if isinstance(entry, str):
        return entry.strip()
    if isinstance(entry, dict) and len(entry) == 1:
        return yaml.safe_dump(entry, default_flow_style=True, sort_keys=True, width=1 << 20).strip()
    raise ConfigError(f"augment entry {entry!r}: expected a name such as hflip, or one albumentations "
                      f"transform with its arguments such as {{Rotate: {{limit: 15, p: 0.5}}}}")


def augment_value(entry: str) -> str | dict:
    """The entry as written in YAML: a name, or the ``{Transform: {arg: value}}`` mapping."""
    return _parse(entry) if entry.startswith("{") else entry


def _parse(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"augment entry {text!r}: not valid YAML ({str(err).splitlines()[0]})") from None


def build_augmentation(entry: str) -> A.BasicTransform:
    """The transform one entry names; a ConfigError naming the entry when the name or an argument is wrong."""
    value = augment_value(entry)
    if isinstance(value, str):
        if value not in AUGMENTATIONS:
            raise ConfigError(f"augment entry {value!r}: unknown augmentation{_suggest(value, AUGMENTATIONS)}; "
                              f"or write an albumentations transform as {{Name: {{arg: value}}}}")
        return AUGMENTATIONS[value]()
    (name, args), = value.items()
    transform = getattr(A, str(name), None)
    if not (isinstance(transform, type) and issubclass(transform, A.BasicTransform)):
        names = [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)]
        raise ConfigError(f"augment entry {entry}: {name!r} is not an albumentations transform{_suggest(str(name), names)}")
    if not isinstance(args or {}, dict):
        raise ConfigError(f"augment entry {entry}: the arguments of {name} must be a mapping such as {{p: 0.5}}")
    known = inspect.signature(transform).parameters
    for arg in args or {}:
        if arg not in known:
            raise ConfigError(f"augment entry {entry}: {name} has no argument {arg!r}{_suggest(str(arg), known)}")
    try:
        return transform(**(args or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"augment entry {entry}: {_first_problem(err)}") from None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _first_problem(err: Exception) -> str:
    """One line from albumentations' pydantic validation error (or any other)."""
    cause = err.__cause__
    if hasattr(cause, "errors"):
        problem = cause.errors()[0]
        return f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
    return str(err).splitlines()[0]


def check_augment(entries: Sequence[str]) -> None:
    """Build every entry once, so a bad one fails at config load, before any image is read."""
    for entry in entries:
        build_augmentation(entry)


def build_transforms(augment: Sequence[str], img_size: int, mean, std, train: bool) -> A.Compose:
    """Resize, (train only) the augment entries, Normalize with the backbone's mean/std, to tensor."""
    steps = [A.Resize(img_size, img_size)]
    if train:
        steps += [build_augmentation(entry) for entry in augment]
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
# --- batch augmentations ------------------------------------------------------------------------------

class BatchMix:
    """timm's Mixup / CutMix on a training batch: images mixed in place, targets returned as class
    probabilities mixed alike (class indices become one-hot; soft age-band targets mix as they are)."""

    def __init__(self, mixup, num_classes: int):
        self.mixup, self.num_classes = mixup, num_classes

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # class indices one-hot, probability rows as they are (as losses.as_probabilities: this layer sits below it)
        probs = targets.float() if targets.is_floating_point() else torch.nn.functional.one_hot(
            targets, self.num_classes).float()
        even = len(images) - len(images) % 2  # timm pairs image i with image n-1-i; an odd last one stays as it is
        if even:
            mixed_images, mixed = self.mixup(images[:even], probs[:even])
            images, probs = torch.cat([mixed_images, images[even:]]), torch.cat([mixed, probs[even:]])
        return images, probs


def build_mixup(config, num_classes: int) -> BatchMix | None:
    """``BatchMix`` when ``mixup`` or ``cutmix`` (the Beta distributions' alphas) is above 0, else None."""
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    from timm.data import Mixup

    if "multi_label" not in inspect.signature(Mixup).parameters:  # dense (probability) targets
        raise ConfigError("mixup / cutmix need a newer timm (Mixup with multi_label): pip install -U timm")
    # label_smoothing 0: the loss smooths (loss: label_smoothing); multi_label with no smoothing mixes the
    # probability rows as they are
    mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                  label_smoothing=0.0, num_classes=num_classes, multi_label=True)
    return BatchMix(mixup, num_classes)
