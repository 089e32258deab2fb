"""How far tensors moved from a reference, and what a layer's tensors say about whether it was frozen.

Pure torch. Relative measures are None (never NaN or inf) where the reference is all zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from yolo_audit.stats.packed import pack
from yolo_audit.stats.weights import SMALL, Columns

DIVERGENCE_STATS = ("l2_diff", "rel_diff", "rms_diff", "cosine", "max_abs_diff", "identical")


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
) -> Columns:
    """Per pair (a, reference b) of equal shape: l2_diff = ||a-b||, rel_diff = ||a-b||/||b||, rms_diff, cosine(a, b),
    max_abs_diff = max |a-b|, identical (bitwise; after rounding both to `compare_dtype` when given, so an fp32
    snapshot of untouched fp16 weights counts as identical). Identical pairs report zero differences. `norms`: the
    L2 norms of every a and b when already known (weight_stats' `l2`), which saves two passes per tensor."""
    k = len(current)
    sums = torch.zeros(k, 5, dtype=torch.float64)  # ||a-b||^2, ||a||^2, ||b||^2, a.b, max|a-b|
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
            pa.reduce(diff.abs(), "amax"),
        ], dim=1)  # fmt: skip
    if big:
        scratch = torch.empty(max(current[i].numel() for i in big))
        for i in big:
            known = (norms[0][i] ** 2, norms[1][i] ** 2) if norms is not None else None
            sums[i] = _big_sums(current[i], reference[i], scratch, known)
    for i in (i for i in range(k) if identical[i]):
        b_sq = (
            norms[1][i] ** 2
            if norms is not None
            else float(torch.dot(reference[i].reshape(-1), reference[i].reshape(-1)))
        )
        sums[i] = torch.tensor([0.0, b_sq, b_sq, b_sq, 0.0], dtype=torch.float64)
    cols: Columns = {name: [] for name in DIVERGENCE_STATS}
    for i, (d2, a2, b2, dot, max_abs) in enumerate(sums.tolist()):
        l2, a_norm, b_norm = math.sqrt(d2), math.sqrt(a2), math.sqrt(b2)
        cols["l2_diff"].append(l2)
        cols["rel_diff"].append(l2 / b_norm if b_norm > 0 else None)
        cols["rms_diff"].append(l2 / math.sqrt(current[i].numel()) if current[i].numel() else None)
        cols["cosine"].append(max(-1.0, min(1.0, dot / (a_norm * b_norm))) if a_norm > 0 and b_norm > 0 else None)
        cols["max_abs_diff"].append(max_abs)
        cols["identical"].append(identical[i])
    return cols


def _big_sums(
    a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor, known: tuple[float, float] | None = None
) -> torch.Tensor:
    fa, fb = a.reshape(-1).float(), b.reshape(-1).float()
    buf = scratch[: fa.numel()]
    torch.sub(fa, fb, out=buf)
    d2 = torch.dot(buf, buf)
    lo, hi = torch.aminmax(buf)
    if known is None:
        a2, b2 = torch.dot(fa, fa), torch.dot(fb, fb)
    else:
        a2, b2 = (torch.tensor(v, dtype=d2.dtype) for v in known)
    ab = (a2 + b2 - d2) / 2  # polarisation: saves a pass; error ~1e-7 relative, as for a direct dot in float32
    return torch.stack([d2, a2, b2, ab, torch.maximum(-lo, hi)]).to(torch.float64)


def channel_divergence(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (dim 0): ||a_c - b_c|| and ||a_c - b_c|| / ||b_c|| (NaN where ||b_c|| = 0: stored as null)."""
    diff = torch.linalg.vector_norm((a - b).reshape(a.shape[0], -1).float(), dim=1)
    ref = torch.linalg.vector_norm(b.reshape(b.shape[0], -1).float(), dim=1)
    rel = torch.where(ref > 0, diff / ref.clamp_min(torch.finfo(ref.dtype).tiny), torch.full_like(ref, math.nan))
    return diff, rel
