"""Samplers that split a dataset across the ranks of a distributed run (torchrun), one share per process.

Training uses torch's DistributedSampler (padded, so every rank takes the same number of steps and DDP's
gradient all-reduce never waits on a rank that ran out) or ``DistributedWeightedSampler`` below, which torch
lacks. Evaluation uses ``ShardedSampler``: no padding, so gathering the shares gives every image exactly once.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class DistributedWeightedSampler(Sampler[int]):
    """WeightedRandomSampler (with replacement) split across ranks: every rank draws the same
    ``ceil(n / world_size) * world_size`` indices from the same seed, then keeps every ``world_size``-th one
    from its rank on. Together the ranks see one weighted draw of (about) ``len(weights)`` images."""

    def __init__(self, weights: Sequence[float], rank: int, world_size: int, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        if self.weights.ndim != 1 or not (self.weights >= 0).all() or self.weights.sum() <= 0:
            raise ValueError("weights must be a 1-D sequence of non-negative numbers, not all zero")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_samples = math.ceil(len(self.weights) / world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)  # the same draw on every rank
        drawn = torch.multinomial(self.weights, self.num_samples * self.world_size, replacement=True,
                                  generator=generator)
        return iter(drawn[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardedSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order, without DistributedSampler's padding: shares differ
    by at most one image, so use it only where no collective runs per batch (evaluation, prediction)."""

    def __init__(self, size: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
