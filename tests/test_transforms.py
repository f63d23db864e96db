"""Augmentations: named ones, albumentations transforms from the YAML, and timm's Mixup / CutMix on batches."""
from __future__ import annotations

import dataclasses

import albumentations as A
import numpy as np
import pytest
import torch

from maskcls.config import Config, load_config
from maskcls.transforms import AUGMENTATIONS, BatchMix, build_augmentation, build_mixup, build_transforms

ROBUSTNESS = ("shift_scale", "downscale", "blur", "jpeg", "grayscale")


def face_like(size: int = 64) -> np.ndarray:
    """A colourful image with edges and texture, so every augmentation has something to change."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    image = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    image[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = (200, 30, 60)  # a block with sharp edges
    return np.clip(image + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ROBUSTNESS)
def test_robustness_augmentations_build_and_change_an_image(name):
    transform = build_augmentation(name)
    transform.p = 1.0  # always applied, for the test
    image = face_like()
    out = A.Compose([transform], seed=0)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image.astype(int)).mean() > 1.0, f"{name} left the image as it was"


def test_grayscale_leaves_no_colour_and_only_measured_robustness_augmentations_are_in_the_recipes():
    transform = build_augmentation("grayscale")
    transform.p = 1.0
    out = transform(image=face_like())["image"]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # the robustness augmentations benchmarked (docs/benchmarks.md, "Generalisation") and none other
    for task in ("mask", "gender", "age"):
        assert set(ROBUSTNESS) & set(load_config(task).augment) == set(ROBUSTNESS)
    assert not set(ROBUSTNESS) & set(load_config("joint").augment)


def test_an_albumentations_entry_is_built_by_albumentations_with_its_arguments():
    transform = build_augmentation("{Rotate: {limit: 15, p: 0.25}}")
    assert isinstance(transform, A.Rotate) and transform.limit == (-15, 15) and transform.p == 0.25
    pipeline = build_transforms(["hflip", "{ToGray: {p: 1.0}}"], 32, (0.5,) * 3, (0.5,) * 3, train=True)
    tensor = pipeline(image=face_like())["image"]
    assert tensor.shape == (3, 32, 32) and torch.equal(tensor[0], tensor[2])  # grey: every channel alike
    eval_pipeline = build_transforms(["{ToGray: {p: 1.0}}"], 32, (0.5,) * 3, (0.5,) * 3, train=False)
    assert not torch.equal(eval_pipeline(image=face_like())["image"][0], eval_pipeline(image=face_like())["image"][2])


def test_every_named_augmentation_builds():
    for name in AUGMENTATIONS:
        assert isinstance(build_augmentation(name), A.BasicTransform | A.BaseCompose)


def test_mixup_is_off_by_default_and_mixes_targets_into_probabilities():
    assert build_mixup(Config(), 3) is None
    mix = build_mixup(dataclasses.replace(Config(), mixup=0.4), 3)
    assert isinstance(mix, BatchMix)
    torch.manual_seed(0)
    np.random.seed(0)  # timm draws lambda from numpy
    images, targets = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])  # an odd batch: the last stays
    mixed_images, probs = mix(images.clone(), targets)
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(1), torch.ones(5))
    assert torch.equal(probs[4], torch.tensor([0.0, 1.0, 0.0])) and torch.equal(mixed_images[4], images[4])
    lam = probs[1, 1].item()  # timm pairs image i with image n-1-i: image 1 (class 1) with image 2 (class 2)
    assert 0 < lam < 1 and torch.allclose(probs[1], torch.tensor([0.0, lam, 1 - lam]))
    assert torch.allclose(mixed_images[1], lam * images[1] + (1 - lam) * images[2], atol=1e-6)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # soft age bands mix as they are
    _, soft_mixed = mix(torch.rand(2, 3, 8, 8), soft)
    assert torch.allclose(soft_mixed.sum(1), torch.ones(2)) and soft_mixed[0, 2] > 0


def test_cutmix_pastes_a_box():
    mix = build_mixup(dataclasses.replace(Config(), cutmix=1.0), 2)
    np.random.seed(1)
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    shares = []
    for _ in range(5):
        mixed, probs = mix(images.clone(), torch.tensor([0, 1]))
        shares.append(mixed[0].mean().item())  # the share of image 1 pasted into image 0
        assert probs[0, 1].item() == pytest.approx(shares[-1], abs=1e-6)  # the label follows the pasted area
    assert any(0 < share < 1 for share in shares)
