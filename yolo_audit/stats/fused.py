"""One pass over a CPU activation tensor for every per-channel statistic (numba), instead of eight torch passes.

Activations of the early YOLO layers are hundreds of MB per batch at imgsz 640; eight memory passes over them cost
about half the forward pass on two cores. This kernel reads each value once, accumulating in float64 around a
per-channel shift (the channel's first value) so near-constant channels keep their tiny variance. CUDA tensors use
the torch path in `channels.py`.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import get_num_threads, get_thread_id, njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; the torch path still works without it
    njit = None

HIST_BINS = 512


if njit is not None:

    @njit(parallel=True, cache=True, nogil=True)
    def _channel_pass(x, bits, threads):  # noqa: ANN001, ANN202 - numba signature
        n_img, channels, size = x.shape
        shift = np.empty(channels)
        s1 = np.zeros(channels)
        s2 = np.zeros(channels)
        s_abs = np.zeros(channels)
        pos = np.zeros(channels)
        low = np.full(channels, np.inf)
        high = np.full(channels, -np.inf)
        hist = np.zeros((threads, HIST_BINS), dtype=np.int64)  # one per thread, not per channel
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
                    hist[t, (bits[i, c, k] >> 23) & 0x1FF] += 1
            shift[c] = ref
            s1[c] = a1
            s2[c] = a2
            s_abs[c] = aa
            pos[c] = ap
            low[c] = lo
            high[c] = hi
        return shift, s1, s2, s_abs, pos, low, high, hist.sum(axis=0)


def available() -> bool:
    return njit is not None


def channel_pass(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """x: float32 (N, C, S) C-contiguous. Returns count, total, m2, abs_total, positive, low, high, hist (float64)."""
    shift, s1, s2, s_abs, pos, low, high, hist = _channel_pass(x, x.view(np.int32), get_num_threads())
    n = x.shape[0] * x.shape[2]
    total = shift * n + s1
    m2 = np.maximum(s2 - s1 * s1 / n, 0.0)
    return float(n), total, m2, s_abs, pos, low, high, hist.astype(np.float64)


def set_threads(n: int) -> None:
    if njit is not None:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
