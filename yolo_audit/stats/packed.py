"""Many small tensors as one flat vector with segment ids, so per-tensor reductions cost a handful of kernel calls.

A YOLOv8 checkpoint holds ~300 tensors of under a few thousand elements (BatchNorm vectors, biases); reducing them
one by one spends its time in per-call overhead. Packing them first makes their statistics ~20 calls in total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packed:
    flat: torch.Tensor  # float64, every tensor's elements one after another
    seg: torch.Tensor  # int64 segment id of each element
    counts: torch.Tensor  # float64 number of elements per segment

    @property
    def n(self) -> int:
        return int(self.counts.numel())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.seg, values.to(torch.float64))

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.sum(values) / self.counts

    def reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        start = torch.inf if op == "amin" else -torch.inf
        out = torch.full((self.n,), start, dtype=values.dtype)
        return out.scatter_reduce_(0, self.seg, values, reduce=op, include_self=True)

    def expand(self, per_segment: torch.Tensor) -> torch.Tensor:
        return per_segment[self.seg]


def pack(tensors: Sequence[torch.Tensor]) -> Packed:
    """Pack non-empty tensors (any shapes) into one float64 vector."""
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]) if tensors else torch.zeros(0)
    seg = torch.repeat_interleave(torch.arange(len(tensors)), lengths)
    return Packed(flat=flat, seg=seg, counts=lengths.to(torch.float64))
