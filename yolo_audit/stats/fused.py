"""One pass over a CPU activation tensor for every per-channel statistic (numba), instead of eight torch passes.

Activations of the early YOLO layers are hundreds of MB per batch at imgsz 640; eight memory passes over them cost
about half the forward pass on two cores. This kernel reads each value once, accumulating in float64 around a
per-channel shift (the channel's first value) so near-constant channels keep their tiny variance. CUDA tensors use
the torch path in `channels.py`.
"""

from __future__ import annotations

import numpy as np

from yolo_audit.stats.jit import available as available  # re-exported: callers ask fused whether it can run
from yolo_audit.stats.jit import get_num_threads, get_thread_id, njit, prange

HIST_BINS = 512
_BLOCK = 16  # channels per block of `_fold_last`: 64 bytes of float32
_SPAN = 256  # positions per span of `_fold_last`


if njit is not None:

    @njit(cache=True, nogil=True, inline="always")
    def _run(values, bits, ref, a1, a2, aa, ap, lo, hi, part):  # noqa: ANN001, ANN202, PLR0913
        """One channel's run of values (in order) into its sums around `ref` and the thread's histogram `part`."""
        for k in range(values.shape[0]):
            v = np.float64(values[k])
            d = v - ref
            a1 += d
            a2 += d * d
            aa += abs(v)
            if v > 0.0:
                ap += 1.0
            lo = min(lo, v)
            hi = max(hi, v)
            part[(bits[k] >> 23) & 0x1FF] += 1
        return a1, a2, aa, ap, lo, hi

    @njit(cache=True, nogil=True, inline="always")
    def _merge(c, ref, a1, a2, aa, ap, lo, hi, na, nb, total, m2, s_abs, pos, low, high):  # noqa: ANN001, ANN202, PLR0913
        """Channel c's sums over a batch (nb values, moments around `ref`) into the state's (na values so far)."""
        n = na + nb
        mean_b = ref + a1 / nb
        m2_b = max(a2 - a1 * a1 / nb, 0.0)
        mean_a = total[c] / na if na > 0 else 0.0
        delta = mean_b - mean_a
        m2[c] += m2_b + delta * delta * na * nb / n  # Chan et al.
        total[c] += ref * nb + a1
        s_abs[c] += aa
        pos[c] += ap
        low[c] = min(low[c], lo)
        high[c] = max(high[c], hi)

    @njit(cache=True, nogil=True, inline="always")
    def _add_parts(part, hist):  # noqa: ANN001, ANN202
        """The threads' histograms into the state's."""
        for t in range(part.shape[0]):
            for b in range(HIST_BINS):
                hist[b] += part[t, b]

    @njit(parallel=True, cache=True, nogil=True)
    def _fold(x, bits, threads, count, total, m2, s_abs, pos, low, high, hist):  # noqa: ANN001, ANN202, PLR0913
        n_img, channels, size = x.shape
        nb = n_img * size
        na = count[0]
        n = na + nb
        part = np.zeros((threads, HIST_BINS), dtype=np.int64)  # one histogram per thread, not per channel
        for c in prange(channels):
            t = get_thread_id()
            ref = np.float64(x[0, c, 0])
            a1 = 0.0
            a2 = 0.0
            aa = 0.0
            ap = 0.0
            lo = np.inf
            hi = -np.inf
            for i in range(n_img):
                a1, a2, aa, ap, lo, hi = _run(x[i, c], bits[i, c], ref, a1, a2, aa, ap, lo, hi, part[t])
            _merge(c, ref, a1, a2, aa, ap, lo, hi, na, nb, total, m2, s_abs, pos, low, high)
        _add_parts(part, hist)
        count[0] = n

    @njit(parallel=True, cache=True, nogil=True)
    def _fold_last(x, bits, threads, count, total, m2, s_abs, pos, low, high, hist):  # noqa: ANN001, ANN202, PLR0913
        """`_fold` for x laid out (N, S, C) (channels-last): each thread takes blocks of 16 channels (a cache line
        of float32) and walks every position, so it reads memory in order; each channel's values are visited in the
        same order as `_fold` visits them, so the sums are the same bits."""
        n_img, size, channels = x.shape
        nb = n_img * size
        na = count[0]
        n = na + nb
        part = np.zeros((threads, HIST_BINS), dtype=np.int64)
        for block in prange((channels + _BLOCK - 1) // _BLOCK):
            t = get_thread_id()
            c0 = block * _BLOCK
            w = min(channels, c0 + _BLOCK) - c0
            ref = np.empty(w)
            a1 = np.zeros(w)
            a2 = np.zeros(w)
            aa = np.zeros(w)
            ap = np.zeros(w)
            lo = np.full(w, np.inf)
            hi = np.full(w, -np.inf)
            for j in range(w):
                ref[j] = np.float64(x[0, 0, c0 + j])
            for i in range(n_img):
                for k0 in range(0, size, _SPAN):  # a span of positions (16 KB) stays in the L1 cache while each
                    k1 = min(size, k0 + _SPAN)  # channel's sums are kept in registers for it
                    for j in range(w):
                        c = c0 + j
                        a1[j], a2[j], aa[j], ap[j], lo[j], hi[j] = _run(
                            x[i, k0:k1, c], bits[i, k0:k1, c], ref[j], a1[j], a2[j], aa[j], ap[j], lo[j], hi[j], part[t]
                        )
            for j in range(w):
                _merge(
                    c0 + j, ref[j], a1[j], a2[j], aa[j], ap[j], lo[j], hi[j], na, nb, total, m2, s_abs, pos, low, high
                )
        _add_parts(part, hist)
        count[0] = n


def fold(x: np.ndarray, state: object, *, channels_last: bool = False) -> None:
    """Fold x (float32, C-contiguous: (N, C, S), or (N, S, C) with `channels_last`) into a CPU ChannelState in place:
    one read of every value, the per-channel moments accumulated in float64 around the channel's first value,
    Chan-merged into the state. Both layouts give the same bits for the same values."""
    arrays = [getattr(state, name).numpy() for name in ("total", "m2", "abs_total", "positive", "low", "high", "hist")]
    kernel = _fold_last if channels_last else _fold
    kernel(x, x.view(np.int32), get_num_threads(), state.count.view(1).numpy(), *arrays)
