"""Per-channel activation statistics as a mergeable streaming state, and dead-unit criteria.

Protocol as in torchmetrics: `update` with a batch, `merge` two states, `compute` the results. States hold sums (count,
sum, M2 = sum of squared deviations, sum |a|, positives, min, max, histogram counts), never means, so shards of the
data merge exactly; variances merge with Chan et al.'s formula. Everything stays on the activations' device in
float64 until `compute`: no host synchronisation per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from yolo_audit.stats import fused
from yolo_audit.stats.layout import by_position

HIST_BINS = 512  # one bin per (sign, float32 exponent): octave-wide bins on both sides of zero


def octave_bin_edges(index: int) -> tuple[float, float]:
    """[lo, hi) of histogram bin `index` = (sign bit << 8) | biased exponent of the float32 value. Bin 0 holds zeros
    and subnormals, bins 255/511 infinities and NaN; the negative side's edges are mirrored (lo < hi always)."""
    sign, exponent = divmod(index, 256)
    if exponent == 255:
        lo, hi = math.inf, math.inf
    elif exponent == 0:
        lo, hi = 0.0, 2.0**-126
    else:
        lo, hi = 2.0 ** (exponent - 127), 2.0 ** (exponent - 126)
    return (-hi, -lo) if sign else (lo, hi)


@dataclass
class ChannelState:
    """Streaming per-channel moments of activations shaped (N, C, ...), plus a layer histogram on symlog edges."""

    count: torch.Tensor  # scalar: values per channel seen so far
    total: torch.Tensor  # (C,) sum
    m2: torch.Tensor  # (C,) sum of squared deviations from the channel mean
    abs_total: torch.Tensor  # (C,) sum of |a|
    positive: torch.Tensor  # (C,) how many a > 0
    low: torch.Tensor  # (C,) min
    high: torch.Tensor  # (C,) max
    hist: torch.Tensor  # (512,) counts per octave bin (see octave_bin_edges): exact, fixed, shared by all layers

    @classmethod
    def empty(cls, channels: int, device: torch.device | str = "cpu") -> ChannelState:
        z = torch.zeros(channels, dtype=torch.float64, device=device)
        return cls(
            count=torch.zeros((), dtype=torch.float64, device=device), total=z.clone(), m2=z.clone(),
            abs_total=z.clone(), positive=z.clone(), low=torch.full_like(z, math.inf),
            high=torch.full_like(z, -math.inf), hist=torch.zeros(HIST_BINS, dtype=torch.float64, device=device),
        )  # fmt: skip

    def update(self, x: torch.Tensor) -> None:
        """Fold in a batch (N, C, *spatial): one fused pass on the CPU (numba), a few torch passes on a GPU; no
        host synchronisation either way."""
        x = x.detach().float()
        n_img, channels = x.shape[0], x.shape[1]
        x3 = x.reshape(n_img, channels, -1)  # a view for the usual contiguous NCHW
        if x3.device.type == "cpu" and self.total.device.type == "cpu" and fused.available() and x3.shape[2] > 0:
            laid_out = by_position(x)
            if laid_out is not None:  # channels-last (how passes run on the CPU): read in place, the same bits
                fused.fold(laid_out.numpy(), self, channels_last=True)
            else:
                fused.fold(np.ascontiguousarray(x3.numpy()), self)  # in place, no intermediate state
            return
        n = x3.shape[0] * x3.shape[2]
        var, mean = torch.var_mean(x3, dim=(0, 2), correction=0)
        batch = ChannelState(
            count=torch.full((), float(n), dtype=torch.float64, device=x.device),
            total=mean.double() * n,
            m2=var.double() * n,
            abs_total=torch.linalg.vector_norm(x3, 1, dim=(0, 2)).double(),
            positive=(x3 > 0).sum(-1, dtype=torch.int32).sum(0).double(),
            low=x3.amin((0, 2)).double(),
            high=x3.amax((0, 2)).double(),
            hist=octave_histogram(x),
        )
        self.merge_(batch)

    def merge_(self, other: ChannelState) -> ChannelState:
        """Chan et al.: M2 = M2_a + M2_b + (mean_b - mean_a)^2 n_a n_b / n. In place; returns self."""
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        # no host sync: empty sides have zero sums, so clamping the divisors keeps every term exact
        delta = other.total / n_b.clamp_min(1) - self.total / n_a.clamp_min(1)
        self.m2 = self.m2 + other.m2 + delta * delta * (n_a * n_b / n.clamp_min(1))
        self.count, self.total = n, self.total + other.total
        self.abs_total, self.positive = self.abs_total + other.abs_total, self.positive + other.positive
        self.low, self.high = torch.minimum(self.low, other.low), torch.maximum(self.high, other.high)
        self.hist = self.hist + other.hist
        return self

    def merge(self, other: ChannelState) -> ChannelState:
        """A new state equal to one pass over both states' data (inputs untouched)."""
        return ChannelState(**{f.name: getattr(self, f.name).clone() for f in fields(self)}).merge_(other)

    def to(self, device: torch.device | str) -> ChannelState:
        return ChannelState(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def compute(self) -> dict[str, torch.Tensor]:
        """count, mean, std (population), min, max, mean_abs, frac_positive per channel (CPU float64)."""
        s = self.to("cpu")
        n = s.count.clamp_min(1)
        return {
            "count": s.count.expand_as(s.total).clone(),
            "mean": s.total / n,
            "std": (s.m2 / n).clamp_min(0).sqrt(),
            "min": s.low,
            "max": s.high,
            "mean_abs": s.abs_total / n,
            "frac_positive": s.positive / n,
        }


def octave_histogram(x: torch.Tensor, *, sync_free: bool | None = None) -> torch.Tensor:
    """Counts per (sign, exponent) of float32 values: the top 9 bits of each value, one shift and one count. On a
    GPU (or with `sync_free`) the count is an index_add into the fixed bins: CUDA's bincount reads the input's maximum
    back to the host to size its output, a synchronisation per batch and layer."""
    index = ((x.contiguous().view(torch.int32).reshape(-1) >> 23) & 0x1FF).long()
    if sync_free is None:
        sync_free = x.device.type != "cpu"
    if not sync_free:
        return torch.bincount(index, minlength=HIST_BINS).double()
    ones = torch.ones((), dtype=torch.int64, device=x.device).expand(index.numel())
    return torch.zeros(HIST_BINS, dtype=torch.int64, device=x.device).index_add_(0, index, ones).double()


def dead_units(stats: dict[str, torch.Tensor], *, tau: float = 0.025) -> dict[str, torch.Tensor]:
    """Dead-unit criteria for one layer's channels, the one definition every table, ranking and report uses.

    dormant: s_c = mean|a_c| / mean_k mean|a_k| <= tau (Sokar et al. 2023); constant: std_c / mean_k std_k <= tau (a
    channel whose BN gamma ~ 0 outputs the constant SiLU(beta)); dead = dormant or constant. never_positive (max_c <=
    0) is descriptive only: a SiLU unit whose pre-activation stays in [-3, 0] outputs values in about [-0.28, 0] that
    vary with the input and passes gradients of 0.1-0.5, so it is alive (unlike a ReLU unit).
    """
    mean_abs, std = stats["mean_abs"], stats["std"]
    score = mean_abs / mean_abs.mean() if float(mean_abs.mean()) > 0 else torch.zeros_like(mean_abs)
    spread = std / std.mean() if float(std.mean()) > 0 else torch.zeros_like(std)
    dormant, constant = score <= tau, spread <= tau
    return {
        "dormant_score": score,
        "dormant": dormant,
        "constant": constant,
        "never_positive": stats["max"] <= 0,
        "dead": dormant | constant,
    }
