"""Small loss modules, the LOSSES registry (the config's ``loss`` choices) and build_loss(config, class_counts)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

if TYPE_CHECKING:  # config.py reads LOSSES for its choices, so no import at run time
    from .config import Config


def as_probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(n, classes)`` float targets: class indices one-hot, probability rows as they are."""
    return target.float() if target.is_floating_point() else F.one_hot(target, num_classes).float()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): mean of ``-w_y (1 - p_y)^gamma log p_y``; gamma 0 is cross-entropy.
    With probability targets ``q``: ``-sum_k q_k w_k (1 - p_k)^gamma log p_k``, weighted by ``sum_k q_k w_k``."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = as_probabilities(target, logits.shape[1])
        log_p = F.log_softmax(logits.float(), dim=1)
        per_class = -q * (1 - log_p.exp()) ** self.gamma * log_p
        if self.weight is not None:
            return (per_class * self.weight).sum() / (q * self.weight).sum()
        return per_class.sum(1).mean()


class SoftF1Loss(nn.Module):
    """1 - mean per-class F1 over the batch, with probabilities in place of hard counts."""

    def __init__(self, num_classes: int, eps: float = 1e-7):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.eps = num_classes, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=1)
        onehot = as_probabilities(target, self.num_classes)
        tp = (probs * onehot).sum(0)
        fp = (probs * (1 - onehot)).sum(0)
        fn = ((1 - probs) * onehot).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


class SumLoss(nn.Module):
    """Sum of several losses (``ce_f1``: cross-entropy keeps gradients well scaled, F1 targets the metric)."""

    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def balanced_weights(class_counts) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets 1 everywhere (absent classes get 0)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# name -> builder(config, num_classes, class weights or None); `loss: <name>` in a config picks one
LOSSES: dict[str, Callable[[Config, int, torch.Tensor | None], nn.Module]] = {
    "ce": lambda config, num_classes, weight: nn.CrossEntropyLoss(weight=weight),
    "label_smoothing": lambda config, num_classes, weight: nn.CrossEntropyLoss(
        weight=weight, label_smoothing=config.label_smoothing),
    "focal": lambda config, num_classes, weight: FocalLoss(config.focal_gamma, weight),
    "f1": lambda config, num_classes, weight: SoftF1Loss(num_classes),  # per-class F1 weighs classes alike
    "ce_f1": lambda config, num_classes, weight: SumLoss(nn.CrossEntropyLoss(weight=weight), SoftF1Loss(num_classes)),
}


def build_loss(config: Config, num_classes: int, class_counts=None) -> nn.Module:
    if config.loss not in LOSSES:
        raise ConfigError(f"loss={config.loss!r}: expected one of {', '.join(LOSSES)}")
    weight = balanced_weights(class_counts) if config.class_weights == "balanced" else None
    return LOSSES[config.loss](config, num_classes, weight)
