"""Compact weights for the bundled models: every float tensor of two or more dimensions (convolutions, the head)
stored as int8 with one scale per output channel (symmetric, weight-only), the scales and the rest (norms, biases,
running statistics) as float16, whose rounding is a tenth of int8's. The network still computes in float32 after
:func:`expand_state`; its file is about a quarter of float32's (benchmarks: "Bundled models").
"""
from __future__ import annotations

import torch

STORAGES = ("int8", "float16", "float32")


def pack_state(state: dict[str, torch.Tensor], storage: str = "int8") -> dict:
    """``state`` (a model's state dict) for a file: ``int8`` as above, or every float tensor in ``float16`` or
    ``float32``. Integer tensors (BatchNorm's step counters) are kept as they are. Files packed when int8's
    companions were float32 expand the same way."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    return {name: _pack(tensor, storage) if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def expand_state(packed: dict) -> dict[str, torch.Tensor]:
    """A packed state dict back to float32 tensors (an ordinary state dict passes through unchanged)."""
    return {name: _expand(value) for name, value in packed.items()}


def _pack(tensor: torch.Tensor, storage: str):
    if storage == "int8" and tensor.dim() >= 2:
        rows = tensor.detach().float().reshape(tensor.shape[0], -1)
        # the scale as stored (float16, never 0) is the one rounded to: each weight within half a step of it
        scale = (rows.abs().amax(dim=1) / 127).half().clamp_min(2.0 ** -24)  # float16's smallest step
        q = torch.round(rows / scale.float()[:, None]).clamp(-127, 127).to(torch.int8).reshape(tensor.shape)
        return {"int8": q.contiguous(), "scale": scale}
    return tensor.detach().to(torch.float32 if storage == "float32" else torch.float16).clone()


def _expand(value) -> torch.Tensor:
    if isinstance(value, dict):
        q = value["int8"]
        return q.float() * value["scale"].float().reshape(-1, *([1] * (q.dim() - 1)))
    return value.float() if value.is_floating_point() else value
