"""Memory layout of activations: forward passes on the CPU run channels-last (see `model.build.for_passes`)."""

from __future__ import annotations

import torch


def by_position(x: torch.Tensor) -> torch.Tensor | None:
    """The (N, H*W, C) view of a 4-D (N, C, H, W) tensor laid out channels-last (each position's channels side by
    side), to read it in place; None for any other layout (including tensors that are contiguous either way)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
    return None
