"""The ``years`` age target: learn the age in years, answer in bands.

With ``age_target: years`` an age-carrying task (age, joint) trains a head with one output per year
``0..age_max`` for each of its non-age parts (age: one group; joint: six mask x gender groups) against a
label distribution: a Gaussian of ``age_sigma`` years centred on the true age, normalised to sum 1 (DLDL,
Gao et al. 2017, "Deep Label Distribution Learning with Label Ambiguity"); ``age_sigma: 0`` puts all the
mass on the true year. The losses take such probability targets as they are (soft cross-entropy; KL
differs from it by the targets' entropy, a constant).

:class:`YearsModel` wraps the backbone: while training it returns the year logits, in eval mode the
year distribution summed inside each band of the run's ``age_bounds`` (as log-probabilities, so the
usual softmax returns the band probabilities). Validation, predict, combine, submit, detect and the ONNX
export therefore see 3 age classes (joint: 18), as for a band run. ``bands_and_age`` adds the expected
age in years, which predict and detect report as ``age_years``. torchvision's detection models switch
their output with the mode the same way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from .data.labels import age_band

if TYPE_CHECKING:
    from .config import Config

AGE_BANDS = 3
AGE_COLUMN = "age_years"  # predict's and detect's column for the expected age


def year_distribution(ages, age_max: int, sigma: float) -> np.ndarray:
    """``(n, age_max + 1)`` DLDL targets: a Gaussian of ``sigma`` years over the whole years ``0..age_max``
    centred on each age (older ages count as ``age_max``), normalised to sum 1; ``sigma`` 0 is one-hot."""
    ages = np.clip(np.asarray(ages, dtype=np.float64).reshape(-1), 0, age_max)
    years = np.arange(age_max + 1, dtype=np.float64)
    if sigma <= 0:
        return (years[None, :] == np.round(ages)[:, None]).astype(np.float32)
    density = np.exp(-0.5 * ((years[None, :] - ages[:, None]) / sigma) ** 2)
    return (density / density.sum(1, keepdims=True)).astype(np.float32)


def year_band_matrix(bounds: Sequence[int], age_max: int) -> np.ndarray:
    """``(age_max + 1, 3)`` 0/1 matrix: row ``y`` marks the band of age ``y`` under ``bounds``."""
    bands = age_band(np.arange(age_max + 1), bounds)
    return np.eye(AGE_BANDS, dtype=np.float32)[bands]


def year_targets(ages, offsets, groups: int, age_max: int, sigma: float) -> np.ndarray:
    """``(n, groups * (age_max + 1))`` targets: the image's group (``offset // 3``, its exact non-age part)
    holds the year distribution of its age, every other group 0."""
    years = age_max + 1
    group = np.asarray(offsets, dtype=np.int64) // AGE_BANDS
    targets = np.zeros((len(group), groups * years), dtype=np.float32)
    rows = np.arange(len(group))[:, None]
    targets[rows, group[:, None] * years + np.arange(years)] = year_distribution(ages, age_max, sigma)
    return targets


class YearsToBands(nn.Module):
    """Year logits ``(n, groups * years)`` -> band log-probabilities ``(n, groups * 3)`` and expected age:
    one softmax over every output, then each group's year probabilities summed inside each band."""

    def __init__(self, groups: int, bounds: Sequence[int], age_max: int):
        super().__init__()
        self.groups, self.years = groups, age_max + 1
        self.register_buffer("bands", torch.from_numpy(year_band_matrix(bounds, age_max)), persistent=False)
        self.register_buffer("ages", torch.arange(self.years, dtype=torch.float32), persistent=False)

    def year_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``(n, groups, years)``: the joint distribution over the non-age part and the year."""
        return logits.float().softmax(1).unflatten(1, (self.groups, self.years))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        band_probs = self.year_probs(logits) @ self.bands  # (n, groups, 3)
        return band_probs.flatten(1).clamp_min(1e-12).log()  # flatten: keeps the batch axis dynamic in ONNX

    def expected_age(self, logits: torch.Tensor) -> torch.Tensor:
        """``(n,)`` mean age in years of each image's year distribution (over every group)."""
        return self.year_probs(logits).sum(1) @ self.ages


class YearsModel(nn.Module):
    """A backbone with a years head: year logits while training, band log-probabilities in eval mode."""

    reports_age = True  # predict and detect add the expected age (``bands_and_age``)

    def __init__(self, net: nn.Module, groups: int, bounds: Sequence[int], age_max: int):
        super().__init__()
        self.net = net
        self.to_bands = YearsToBands(groups, bounds, age_max)
        # timm's resolve_data_config reads the backbone's normalisation from these
        self.pretrained_cfg = getattr(net, "pretrained_cfg", {})
        self.default_cfg = getattr(net, "default_cfg", self.pretrained_cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images)
        return logits if self.training else self.to_bands(logits)

    def bands_and_age(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(band log-probabilities, expected age in years) from one pass of the backbone."""
        logits = self.net(images)
        return self.to_bands(logits), self.to_bands.expected_age(logits)


def head_outputs(config: Config, num_classes: int) -> int:
    """Outputs of the backbone's classifier: the task's classes, or one per year for each group."""
    if config.age_target == "band":
        return num_classes
    return num_classes // AGE_BANDS * (config.age_max + 1)


def wrap_age_target(model: nn.Module, config: Config, num_classes: int) -> nn.Module:
    """The model as built for ``config.age_target``: as it is for bands, inside a :class:`YearsModel` for years."""
    if config.age_target == "band":
        return model
    return YearsModel(model, num_classes // AGE_BANDS, config.age_bounds, config.age_max)


def reports_age(model: nn.Module) -> bool:
    """Whether ``model`` (PyTorch or an ONNX runner) gives the expected age beside its class scores."""
    return bool(getattr(model, "reports_age", False))
