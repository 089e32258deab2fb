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


if njit is not None:

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
                for k in range(size):
                    v = np.float64(x[i, c, k])
                    d = v - ref
                    a1 += d
                    a2 += d * d
                    aa += abs(v)
                    if v > 0.0:
                        ap += 1.0
                    lo = min(lo, v)
                    hi = max(hi, v)
                    part[t, (bits[i, c, k] >> 23) & 0x1FF] += 1
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
        for t in range(threads):
            for b in range(HIST_BINS):
                hist[b] += part[t, b]
        count[0] = n


def fold(x: np.ndarray, state: object) -> None:
    """Fold x (float32 (N, C, S), C-contiguous) into a CPU ChannelState in place: one read of every value, the
    per-channel moments accumulated in float64 around the channel's first value, Chan-merged into the state."""
    arrays = [getattr(state, name).numpy() for name in ("total", "m2", "abs_total", "positive", "low", "high", "hist")]
    _fold(x, x.view(np.int32), get_num_threads(), state.count.view(1).numpy(), *arrays)
