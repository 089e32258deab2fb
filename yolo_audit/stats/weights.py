"""Statistics of weight tensors: moments, spectrum, shared-bin histograms, per-channel Conv+BN summaries.

Pure torch: no IO, no Ray, no pyarrow. Functions take sequences of tensors and return columns (name -> list), the
shape Parquet wants. Large tensors are reduced one by one through a reused scratch buffer (no per-tensor
allocations); small ones are packed and reduced together (see `packed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from yolo_audit.stats import exact
from yolo_audit.stats.packed import pack
from yolo_audit.stats.spectral import alphas, spectral_norms

TENSOR_STATS = (
    "numel", "mean", "std", "min", "max", "abs_mean", "l2", "frac_near_zero", "kurtosis",
    "spectral_norm", "stable_rank", "alpha", "alpha_weighted",
)  # fmt: skip
SMALL = 16384  # tensors up to this many elements are packed together

Columns = dict[str, list]


def tensor_stats(
    tensors: Sequence[torch.Tensor],
    *,
    near_zero: float = 1e-3,
    matrix: Sequence[bool] | None = None,
    alpha: bool = False,
    row_sq: dict[int, torch.Tensor] | None = None,
) -> Columns:
    """Per tensor: numel, mean, std, min, max, abs_mean, l2, frac_near_zero (|w| < near_zero), kurtosis, and where
    `matrix[i]` is set the spectral norm (largest singular value of the (out, in*k*k) matrix) and stable rank
    ||W||_F^2 / s_max^2; with `alpha`, WeightWatcher's power-law exponent of the ESD and alpha * log10(lambda_max)
    there too (see `spectral.alphas`).

    std and kurtosis are population moments (ddof=0); kurtosis is the excess (Fisher) kurtosis m4/m2^2 - 3, None for
    a constant tensor. Columns not defined for a tensor hold None. `row_sq`, when given, receives for each large
    tensor i of 2+ dimensions the float64 sum of squares of each slice along dim 0 (its filters' squared norms; see
    `channel_weights`), from the same pass.
    """
    k = len(tensors)
    cols: Columns = {name: [None] * k for name in TENSOR_STATS}
    small = [i for i, t in enumerate(tensors) if 0 < t.numel() <= SMALL]
    big = [i for i, t in enumerate(tensors) if t.numel() > SMALL]
    for i, t in enumerate(tensors):
        cols["numel"][i] = t.numel()
    if small:
        _fill(cols, small, _small_moments([tensors[i] for i in small], near_zero))
    if big:
        scratch = torch.empty(max(tensors[i].numel() for i in big), dtype=torch.float64)
        found = [_big_moments(tensors[i], scratch, near_zero) for i in big]
        _fill(cols, big, list(zip(*(values for values, _ in found), strict=True)))
        if row_sq is not None:
            row_sq.update({i: rows for i, (_, rows) in zip(big, found, strict=True) if rows is not None})
    wanted = [i for i in range(k) if matrix is not None and matrix[i] and tensors[i].dim() >= 2]
    for i, s_max in zip(
        wanted, spectral_norms([tensors[i].reshape(tensors[i].shape[0], -1) for i in wanted]), strict=True
    ):
        l2 = cols["l2"][i]
        cols["spectral_norm"][i] = s_max
        cols["stable_rank"][i] = (l2 * l2) / (s_max * s_max) if s_max > 0 else None
    if alpha:
        for i, (a, weighted) in zip(wanted, alphas([tensors[i] for i in wanted]), strict=True):
            cols["alpha"][i], cols["alpha_weighted"][i] = a, weighted
    return cols


_MOMENTS = ("mean", "m2", "m4", "abs_mean", "l2", "frac_near_zero", "min", "max")


def _fill(cols: Columns, index: list[int], moments: Sequence[Sequence[float]]) -> None:
    by_name = dict(zip(_MOMENTS, moments, strict=True))
    for j, i in enumerate(index):
        m2, m4 = by_name["m2"][j], by_name["m4"][j]
        cols["mean"][i] = by_name["mean"][j]
        cols["std"][i] = math.sqrt(max(m2, 0.0))
        cols["kurtosis"][i] = m4 / (m2 * m2) - 3.0 if m2 > 0 else None
        for name in ("abs_mean", "l2", "frac_near_zero", "min", "max"):
            cols[name][i] = by_name[name][j]


def _small_moments(tensors: Sequence[torch.Tensor], near_zero: float) -> list[list[float]]:
    p = pack(tensors)
    x = p.flat
    mean = p.mean(x)
    centred = x - p.expand(mean)
    sq = centred * centred
    absolute = x.abs()
    rows = [
        mean, p.mean(sq), p.mean(sq * sq), p.mean(absolute), p.sum(x * x).sqrt(),
        p.mean((absolute < near_zero).to(torch.float64)), p.reduce(x, "amin"), p.reduce(x, "amax"),
    ]  # fmt: skip
    return torch.stack(rows).tolist()


def _big_moments(t: torch.Tensor, scratch: torch.Tensor, near_zero: float) -> tuple[list[float], torch.Tensor | None]:
    """Moments of one large tensor, accumulated in float64: the same bits whatever the number of threads (numba,
    fixed rows; without numba, torch in float64 through `scratch`, to ~1e-15 relative); with numba and 2+ dimensions
    also each slice's sum of squares along dim 0."""
    flat = t.detach().reshape(-1)
    if exact.available() and flat.dtype == torch.float32:
        width = filter_width(t)
        values, rows = exact.moment_rows(flat.contiguous().numpy(), near_zero, width)
        return values, torch.from_numpy(rows) if width else None
    n = flat.numel()
    buf = scratch[:n]
    buf.copy_(flat).abs_()
    l1 = buf.sum()
    near = buf.lt(near_zero).sum()
    buf.copy_(flat)
    mean = buf.sum() / n
    buf.sub_(mean)
    m2 = torch.dot(buf, buf) / n
    buf.square_()
    m4 = torch.dot(buf, buf) / n
    lo, hi = torch.aminmax(flat)
    l2 = torch.sqrt((m2 + mean * mean) * n)  # sum of squares = n (variance + mean^2): no extra pass
    return [float(mean), float(m2), float(m4), float(l1 / n), float(l2), float(near) / n, float(lo), float(hi)], None


def filter_width(t: torch.Tensor) -> int | None:
    """Values per slice along dim 0 (a conv weight's filter) for the numba passes' rows, so the moments' and the
    divergence's per-filter sums line up; None for a vector (the passes then use fixed chunks)."""
    return t.numel() // t.shape[0] if t.dim() >= 2 and t.shape[0] else None


def bin_range(lo: float, hi: float) -> tuple[float, float]:
    """Histogram range for values in [lo, hi]: bins are half-open [a, b), so the top is nudged up to keep the maximum
    inside, and a degenerate range (constant tensors such as zero biases) is widened."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"non-finite histogram range [{lo}, {hi}]")
    span = hi - lo
    pad = max(span, abs(lo), abs(hi)) * 1e-6 or 1e-6
    if span <= 0:
        pad = max(abs(lo) * 1e-3, 1e-6)
        return lo - pad, hi + pad
    return lo, hi + pad


def histograms(tensors: Sequence[torch.Tensor], ranges: Sequence[tuple[float, float]], bins: int) -> torch.Tensor:
    """Counts on `bins` equal half-open bins over each tensor's [lo, hi), plus an underflow (first column) and an
    overflow (last column): an int64 matrix (len(tensors), bins + 2)."""
    out = torch.zeros(len(tensors), bins + 2, dtype=torch.int64)
    if not tensors:
        return out
    if exact.available() and all(t.dtype == torch.float32 for t in tensors):  # one pass each, positions in float64
        flat = [t.detach().reshape(-1).contiguous().numpy() for t in tensors]
        small = [i for i, x in enumerate(flat) if x.size <= SMALL]  # all in one call: per-call costs dominate them
        if small:
            out[small] = torch.from_numpy(exact.histograms([flat[i] for i in small], [ranges[i] for i in small], bins))
        for i in (i for i, x in enumerate(flat) if x.size > SMALL):
            out[i] = torch.from_numpy(exact.histogram(flat[i], *ranges[i], bins))
        return out
    scratch = torch.empty(max(t.numel() for t in tensors))
    index = torch.empty(scratch.numel(), dtype=torch.int64)
    for i, (t, (lo, hi)) in enumerate(zip(tensors, ranges, strict=True)):
        flat = t.detach().reshape(-1).float()
        n = flat.numel()
        buf, idx = scratch[:n], index[:n]
        scale = bins / (hi - lo)
        # position + 1, clamped to [0, bins + 1]: non-negative, so the integer cast truncates like floor
        torch.add(torch.tensor(1.0 - lo * scale), flat, alpha=scale, out=buf).clamp_(0, bins + 1)
        idx.copy_(buf)
        out[i] = torch.bincount(idx, minlength=bins + 2)
    return out


def channel_weights(
    conv_w: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    eps: float,
    gamma_eps: float = 1e-3,
    neg_margin: float = -4.0,
    row_sq: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per output channel of a Conv+BN block: filter norm, BN parameters, fused norm, and weight-based death flags.

    fused_l2 is the L2 norm of the BN-folded filter W_c * gamma_c / sqrt(var_c + eps). A channel is dead by weights
    when |gamma| < gamma_eps (its output is the constant SiLU(beta)) or when beta + 3|gamma| < neg_margin (the
    pre-activation stays below `neg_margin` for inputs within 3 standard deviations, so SiLU outputs ~0).
    `row_sq`: each filter's float64 sum of squares when already known (from `tensor_stats`).
    """
    rows = conv_w.reshape(conv_w.shape[0], -1)
    if row_sq is not None:
        filter_l2 = row_sq.sqrt().float()
    elif exact.available() and rows.dtype == torch.float32:  # float64 sums, the same bits for any number of threads
        filter_l2 = torch.from_numpy(exact.row_sums(rows.contiguous().numpy())[:, 0]).sqrt().float()
    else:
        filter_l2 = torch.linalg.vector_norm(rows.double(), dim=1).float()
    fused = filter_l2 * gamma.abs() / torch.sqrt(running_var + eps)
    constant = gamma.abs() < gamma_eps
    negative = (beta + 3.0 * gamma.abs()) < neg_margin
    return {
        "filter_l2": filter_l2,
        "bn_gamma": gamma,
        "bn_beta": beta,
        "bn_mean": running_mean,
        "bn_var": running_var,
        "fused_l2": fused,
        "dead_constant": constant,
        "dead_negative": negative,
        "dead_by_weights": constant | negative,
    }
