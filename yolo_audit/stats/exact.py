"""Reductions of large float32 tensors whose results do not depend on the number of threads (numba).

Each tensor is cut into a fixed number of chunks whatever the thread count; each chunk is summed in float64 by one
thread, and the partial sums are added in chunk order. So the weights analysis gives the same bits alone or inside a
study, with one thread or many, and each value is read once per pass (faster than torch's several float32 passes).
Every kernel exists twice, parallel and serial (see `serial`): a task running in a thread beside others uses the
serial one, with the same chunks in the same order. Histograms count integers, so any order gives the same counts.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from yolo_audit.stats.jit import available as available  # re-exported: callers ask exact whether it can run
from yolo_audit.stats.jit import njit, prange

CHUNKS = 64
_here = threading.local()


@contextmanager
def serial() -> Iterator[None]:
    """In this block, on this thread, the kernels run on this thread alone: for tasks that share the CPUs with other
    tasks running in threads (numba's default threading layer cannot run two parallel kernels at once). The chunks and
    their order are the same, so are the results, bit for bit."""
    before = getattr(_here, "serial", False)
    _here.serial = True
    try:
        yield
    finally:
        _here.serial = before


def _both(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile `fn` twice: parallel (numba's threads over the chunks) and serial (see `serial`); the caller's thread
    picks. The serial copy gets its own name so numba caches the two apart."""
    parallel = njit(parallel=True, cache=True, nogil=True)(fn)
    copy = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_serial", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_serial"
    alone = njit(cache=True, nogil=True)(copy)

    def run(*args: Any) -> Any:
        return alone(*args) if getattr(_here, "serial", False) else parallel(*args)

    return run


if njit is not None:

    @_both
    def _first_pass(x, near):  # noqa: ANN001, ANN202 - sum, sum |x|, count |x| < near, min, max
        n = x.size
        size = (n + CHUNKS - 1) // CHUNKS
        part = np.zeros((CHUNKS, 5))
        for c in prange(CHUNKS):
            s, a, k, lo, hi = 0.0, 0.0, 0.0, np.inf, -np.inf
            for i in range(c * size, min(n, (c + 1) * size)):
                v = np.float64(x[i])
                s += v
                av = abs(v)
                a += av
                if av < near:
                    k += 1.0
                lo = min(lo, v)
                hi = max(hi, v)
            part[c, 0], part[c, 1], part[c, 2], part[c, 3], part[c, 4] = s, a, k, lo, hi
        out = np.zeros(5)
        out[3], out[4] = np.inf, -np.inf
        for c in range(CHUNKS):
            out[0] += part[c, 0]
            out[1] += part[c, 1]
            out[2] += part[c, 2]
            out[3] = min(out[3], part[c, 3])
            out[4] = max(out[4], part[c, 4])
        return out

    @_both
    def _central(x, mean):  # noqa: ANN001, ANN202 - sum (x - mean)^2, sum (x - mean)^4
        n = x.size
        size = (n + CHUNKS - 1) // CHUNKS
        part = np.zeros((CHUNKS, 2))
        for c in prange(CHUNKS):
            s2, s4 = 0.0, 0.0
            for i in range(c * size, min(n, (c + 1) * size)):
                d = np.float64(x[i]) - mean
                d2 = d * d
                s2 += d2
                s4 += d2 * d2
            part[c, 0], part[c, 1] = s2, s4
        out = np.zeros(2)
        for c in range(CHUNKS):
            out[0] += part[c, 0]
            out[1] += part[c, 1]
        return out

    @_both
    def _pair(a, b):  # noqa: ANN001, ANN202 - ||a-b||^2, ||a||^2, ||b||^2, a.b, max |a-b|, max |b|
        n = a.size
        size = (n + CHUNKS - 1) // CHUNKS
        part = np.zeros((CHUNKS, 6))
        for c in prange(CHUNKS):
            dd, aa, bb, ab, mx, mb = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            for i in range(c * size, min(n, (c + 1) * size)):
                u = np.float64(a[i])
                v = np.float64(b[i])
                d = u - v
                dd += d * d
                aa += u * u
                bb += v * v
                ab += u * v
                mx = max(mx, abs(d))
                mb = max(mb, abs(v))
            part[c, 0], part[c, 1], part[c, 2], part[c, 3], part[c, 4], part[c, 5] = dd, aa, bb, ab, mx, mb
        out = np.zeros(6)
        for c in range(CHUNKS):
            for j in range(4):
                out[j] += part[c, j]
            out[4] = max(out[4], part[c, 4])
            out[5] = max(out[5], part[c, 5])
        return out

    @_both
    def _rows(a, b, with_b):  # noqa: ANN001, ANN202 - per row: sum (a-b)^2 and sum b^2 (or sum a^2)
        rows, width = a.shape
        out = np.zeros((rows, 2))
        for r in prange(rows):  # one thread per row: the order within a row is fixed
            dd, bb = 0.0, 0.0
            for i in range(width):
                u = np.float64(a[r, i])
                v = np.float64(b[r, i]) if with_b else 0.0
                d = u - v
                dd += d * d
                bb += v * v
            out[r, 0], out[r, 1] = dd, bb
        return out

    @_both
    def _hist(x, lo, scale, bins):  # noqa: ANN001, ANN202 - underflow, `bins` bins from lo (1/scale wide), overflow
        n = x.size
        size = (n + CHUNKS - 1) // CHUNKS
        part = np.zeros((CHUNKS, bins + 2), dtype=np.int64)
        for c in prange(CHUNKS):
            for i in range(c * size, min(n, (c + 1) * size)):
                pos = (np.float64(x[i]) - lo) * scale
                if pos < 0.0:
                    k = 0
                elif pos < bins:
                    k = int(pos) + 1
                else:  # at or above the top, and NaN
                    k = bins + 1
                part[c, k] += 1
        return part.sum(axis=0)


def moments(x: np.ndarray, near_zero: float) -> list[float]:
    """mean, m2, m4 (central moments), mean |x|, L2, fraction |x| < near_zero, min, max of a float32 vector."""
    n = x.size
    s, a, k, lo, hi = _first_pass(x, near_zero)
    mean = s / n
    c2, c4 = _central(x, mean)
    m2 = c2 / n
    return [mean, m2, c4 / n, a / n, float(np.sqrt((m2 + mean * mean) * n)), k / n, lo, hi]


def pair_sums(a: np.ndarray, b: np.ndarray) -> list[float]:
    """||a-b||^2, ||a||^2, ||b||^2, a.b, max |a-b| and max |b| of two float32 vectors of one length."""
    return [float(v) for v in _pair(a, b)]


def histogram(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts of a float32 vector on `bins` equal half-open bins over [lo, hi), with an underflow (first) and an
    overflow (last; NaN counts there too): positions computed in float64, one pass, int64 (bins + 2,)."""
    return _hist(x, float(lo), float(bins) / (float(hi) - float(lo)), int(bins))


def row_sums(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Per row of 2-D float32 arrays: sum (a-b)^2 and sum b^2 (with b=None: sum a^2 and 0), float64 (rows, 2)."""
    return _rows(a, a if b is None else b, b is not None)


if njit is not None:

    @njit(cache=True, nogil=True)
    def _powerlaw(x):  # noqa: ANN001, ANN202 - x sorted ascending, > 0
        n = x.size
        logs = np.log(x)
        suffix = np.zeros(n + 1)
        for i in range(n - 1, -1, -1):
            suffix[i] = suffix[i + 1] + logs[i]
        best = (np.inf, np.nan, np.nan)  # D, alpha, xmin
        for k in range(n - 1):
            if k > 0 and x[k] == x[k - 1]:
                continue  # each distinct value once as a candidate xmin
            m = n - k
            total = suffix[k] - m * logs[k]
            if total <= 0.0:
                continue
            alpha = 1.0 + m / total
            d = 0.0
            for j in range(k, n):
                theory = 1.0 - (x[j] / x[k]) ** (1.0 - alpha)
                d = max(d, abs(theory - (j - k) / m))
            if d < best[0]:
                best = (d, alpha, x[k])
        return best


def powerlaw_fit(evals: np.ndarray) -> tuple[float, float, float]:
    """(alpha, xmin, D): the continuous power-law fit of Clauset, Shalizi & Newman (2009) as the `powerlaw` package
    (and so WeightWatcher) does it: for each distinct value as xmin (the largest excluded), alpha by maximum
    likelihood, 1 + n / sum ln(x / xmin) over the tail; the xmin whose fit has the smallest Kolmogorov-Smirnov distance
    between the tail's empirical CDF (i / n at the i-th smallest) and 1 - (x / xmin)^(1 - alpha) wins."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > 0]
    d, alpha, xmin = _powerlaw(x)
    return float(alpha), float(xmin), float(d)
