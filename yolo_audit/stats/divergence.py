"""How far tensors moved from a reference, and what a layer's tensors say about whether it was frozen.

Pure torch. Relative measures are None (never NaN or inf) where the reference is all zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from yolo_audit.stats import exact
from yolo_audit.stats.packed import pack
from yolo_audit.stats.weights import SMALL, Columns, filter_width

DIVERGENCE_STATS = ("l2_diff", "rel_diff", "rms_diff", "cosine", "max_abs_diff", "max_abs_steps", "identical", "reason")
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23, torch.float64: 52}
NEAR_ZERO_REASON = "reference near zero (RMS below near_zero): a relative change is not meaningful"


def step_size(magnitude: float, dtype: torch.dtype) -> float | None:
    """The spacing of `dtype` numbers at `magnitude` (one unit in the last place); None for 0."""
    if not magnitude > 0 or not math.isfinite(magnitude):
        return None
    return 2.0 ** (math.floor(math.log2(magnitude)) - MANTISSA_BITS[dtype])


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Identical bits (unlike ==, tells -0.0 from 0.0 and treats equal NaN payloads as equal)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


def divergence(
    current: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    *,
    compare_dtype: torch.dtype | None = None,
    identical: Sequence[bool] | None = None,
    norms: tuple[Sequence[float], Sequence[float]] | None = None,
    near_zero: float = 1e-3,
    storage: torch.dtype = torch.float32,
    row_diff: dict[int, torch.Tensor] | None = None,
) -> Columns:
    """Per pair (a, reference b) of equal shape: l2_diff = ||a-b||, rel_diff = ||a-b||/||b||, rms_diff, cosine(a, b),
    max_abs_diff = max |a-b|, max_abs_steps (max_abs_diff in steps of the `storage` precision at max |b|),
    identical (bitwise; after rounding both to `compare_dtype` when given, so an fp32 snapshot of untouched fp16
    weights counts as identical). Identical pairs report zero differences. rel_diff is null, with a `reason`, where
    the reference's RMS is below `near_zero` (a near-zero bias: its ratio measures noise). `norms`: the L2 norms of
    every a and b when already known (weight_stats' `l2`). `row_diff`, when given, receives for each large moved
    pair i of 2+ dimensions the float64 sum (a-b)^2 of each slice along dim 0 (see `channel_divergence`), from the
    same pass."""
    k = len(current)
    sums = torch.zeros(k, 6, dtype=torch.float64)  # ||a-b||^2, ||a||^2, ||b||^2, a.b, max|a-b|, max|b|
    if identical is None:  # callers that already compared bits pass the flags
        identical = [
            bitwise_equal(a, b) if compare_dtype is None else bitwise_equal(a.to(compare_dtype), b.to(compare_dtype))
            for a, b in zip(current, reference, strict=True)
        ]
    moved = [i for i in range(k) if not identical[i]]
    small = [i for i in moved if current[i].numel() <= SMALL]
    big = [i for i in moved if current[i].numel() > SMALL]
    if small:
        pa, pb = pack([current[i] for i in small]), pack([reference[i] for i in small])
        diff = pa.flat - pb.flat
        sums[small] = torch.stack([
            pa.sum(diff * diff), pa.sum(pa.flat * pa.flat), pa.sum(pb.flat * pb.flat), pa.sum(pa.flat * pb.flat),
            pa.reduce(diff.abs(), "amax"), pa.reduce(pb.flat.abs(), "amax"),
        ], dim=1)  # fmt: skip
    if big:
        scratch = torch.empty(max(current[i].numel() for i in big), dtype=torch.float64)
        for i in big:
            known = (norms[0][i] ** 2, norms[1][i] ** 2) if norms is not None else None
            sums[i], rows = _big_sums(current[i], reference[i], scratch, known)
            if row_diff is not None and rows is not None:
                row_diff[i] = rows
    for i in (i for i in range(k) if identical[i]):
        b_sq = norms[1][i] ** 2 if norms is not None else _sum_sq(reference[i])
        sums[i] = torch.tensor([0.0, b_sq, b_sq, b_sq, 0.0, 0.0], dtype=torch.float64)
    cols: Columns = {name: [] for name in DIVERGENCE_STATS}
    for i, (d2, a2, b2, dot, max_abs, max_b) in enumerate(sums.tolist()):
        l2, a_norm, b_norm = math.sqrt(d2), math.sqrt(a2), math.sqrt(b2)
        n = current[i].numel()
        near = n > 0 and b_norm / math.sqrt(n) < near_zero
        step = step_size(max_b, storage)
        cols["l2_diff"].append(l2)
        cols["rel_diff"].append(l2 / b_norm if b_norm > 0 and not near else None)
        cols["reason"].append(NEAR_ZERO_REASON if near else None)
        cols["rms_diff"].append(l2 / math.sqrt(n) if n else None)
        cosine = None
        if a_norm > 0 and b_norm > 0:  # identical tensors: exactly 1 (the ratio of rounded norms may say 1 - 2e-16)
            cosine = 1.0 if identical[i] else max(-1.0, min(1.0, dot / (a_norm * b_norm)))
        cols["cosine"].append(cosine)
        cols["max_abs_diff"].append(max_abs)
        cols["max_abs_steps"].append(0.0 if identical[i] else max_abs / step if step else None)
        cols["identical"].append(identical[i])
    return cols


def _sum_sq(t: torch.Tensor) -> float:
    """sum t^2 in float64, the same for any number of threads (fixed-row numba when available)."""
    flat = t.reshape(-1)
    if exact.available() and flat.dtype == torch.float32 and flat.numel():
        return exact.pair_sums(flat.contiguous().numpy(), flat.contiguous().numpy())[2]
    return float(flat.double().square().sum())


def _big_sums(
    a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor, known: tuple[float, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """||a-b||^2, ||a||^2, ||b||^2, a.b, max |a-b| and max |b| of one large pair, accumulated in float64 (`scratch` is
    float64), so the result does not depend on the number of threads beyond ~1e-15 relative; with numba and 2+
    dimensions also each slice's sum (a-b)^2 along dim 0. With `known` squared norms, a.b comes from them by
    polarisation (one product less per value; in float64 its error is ~1e-16 of ||a||^2 + ||b||^2)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    if exact.available() and fa.dtype == fb.dtype == torch.float32:
        width = filter_width(a)
        rows = exact.pair_rows(fa.contiguous().numpy(), fb.contiguous().numpy(), width, full=known is None)
        d2, a2, b2, ab = rows[:, [0, 3, 4, 5]].sum(axis=0).tolist()  # row after row, whatever the threads
        if known is not None:
            a2, b2 = known
            ab = (a2 + b2 - d2) / 2
        sums = torch.tensor([d2, a2, b2, ab, float(rows[:, 1].max()), float(rows[:, 2].max())], dtype=torch.float64)
        return sums, torch.from_numpy(rows[:, 0].copy()) if width else None
    buf = scratch[: fa.numel()]
    buf.copy_(fa).sub_(fb)
    d2 = torch.dot(buf, buf)
    lo, hi = torch.aminmax(buf)
    if known is None:
        a2 = torch.dot(buf.copy_(fa), buf)
        b2 = torch.dot(buf.copy_(fb), buf)
    else:
        a2, b2 = (torch.tensor(v, dtype=torch.float64) for v in known)
    ab = (a2 + b2 - d2) / 2  # polarisation: saves a pass
    return torch.stack([d2, a2, b2, ab, torch.maximum(-lo, hi), fb.abs().amax().double()]), None


def _row_sums(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per row (dim 0) of a and b: sum (a-b)^2 and sum b^2 (b=None: sum a^2 and 0), float64, thread-independent."""
    a2 = a.reshape(a.shape[0], -1)
    b2 = None if b is None else b.reshape(b.shape[0], -1)
    if exact.available() and a2.dtype == torch.float32 and (b2 is None or b2.dtype == torch.float32):
        return torch.from_numpy(
            exact.row_sums(a2.contiguous().numpy(), None if b2 is None else b2.contiguous().numpy())
        )
    d = a2.double() - (0 if b2 is None else b2.double())
    return torch.stack([d.square().sum(1), (torch.zeros(len(d)) if b2 is None else b2.double().square().sum(1))], 1)


def filter_norms(w: torch.Tensor) -> torch.Tensor:
    """||w_c|| of each output channel (dim 0), float64, independent of the number of threads."""
    return _row_sums(w, None)[:, 0].sqrt()


def channel_divergence(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    near_zero: float = 1e-3,
    identical: bool = False,
    ref_norms: torch.Tensor | None = None,
    diff_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (dim 0): ||a_c - b_c|| and ||a_c - b_c|| / ||b_c|| (NaN, stored as null, where the
    reference filter's RMS is below `near_zero`), accumulated in float64, independent of the number of threads.
    `identical`: a and b are known to be bit-identical (only the reference's norms are needed: `ref_norms` when
    known, see `filter_norms`); `diff_sq`: each channel's sum (a_c - b_c)^2 when known (from `divergence`)."""
    if identical:
        ref = filter_norms(b) if ref_norms is None else ref_norms
        diff = torch.zeros_like(ref)
    elif diff_sq is not None and ref_norms is not None:
        diff, ref = diff_sq.sqrt(), ref_norms
    else:
        sums = _row_sums(a, b)
        diff, ref = sums[:, 0].sqrt(), sums[:, 1].sqrt()
    floor = near_zero * math.sqrt(b[0].numel())  # an RMS below near_zero
    meaningful = (ref > 0) & (ref >= floor)
    rel = torch.where(meaningful, diff / ref.clamp_min(torch.finfo(ref.dtype).tiny), torch.full_like(ref, math.nan))
    return diff, rel
