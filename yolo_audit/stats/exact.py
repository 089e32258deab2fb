"""Reductions of large float32 tensors whose results do not depend on the number of threads (numba).

Each tensor is cut into fixed rows whatever the thread count (a conv weight's filters; CHUNKS rows of a vector); each
row is summed in float64 by one thread, and the row sums are added in row order. So the weights analysis gives the
same bits alone or inside a study, with one thread or many. One pass computes every moment of a tensor (powers summed
around a shift, so no second pass for the central ones) and its filters' sums of squares; one pass compares it with
the reference (and gives each filter's difference). Many accumulators in one loop also keep the CPU busy: the fused
moments pass costs 0.7 of the two passes it replaced (measured on YOLOv8s' large tensors, one thread).
Every kernel exists twice, parallel and serial (see `serial`): a task running in a thread beside others uses the
serial one, with the same chunks in the same order. Histograms count integers, so any order gives the same counts.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from yolo_audit.stats.jit import available as available  # re-exported: callers ask exact whether it can run
from yolo_audit.stats.jit import njit, prange

CHUNKS = 64
_here = threading.local()


@contextmanager
def serial() -> Iterator[None]:
    """In this block, on this thread, the kernels run on this thread alone: for a task that shares the CPUs with other
    tasks (threads of one process: numba's default threading layer cannot run two parallel kernels at once; or forked
    workers with one CPU each). The rows and chunks and their order are the same, so are the results, bit for bit."""
    before = getattr(_here, "serial", False)
    _here.serial = True
    try:
        yield
    finally:
        _here.serial = before


def _both(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile `fn` twice: parallel (numba's threads over the rows or chunks) and serial (see `serial`); the
    caller's thread picks. The serial copy gets its own name so numba caches the two apart."""
    parallel = njit(parallel=True, cache=True, nogil=True)(fn)
    copy = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_serial", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_serial"
    alone = njit(cache=True, nogil=True)(copy)

    def run(*args: Any) -> Any:
        return alone(*args) if getattr(_here, "serial", False) else parallel(*args)

    return run


if njit is not None:

    @_both
    def _moment_rows(x, width, near, shift):  # noqa: ANN001, ANN202 - per row of `width` values, see moment_rows
        n = x.size
        rows = (n + width - 1) // width
        out = np.zeros((rows, 9))
        for r in prange(rows):  # one thread per row: the order within a row is fixed
            s1, s2, s3, s4, sa, k, sq, lo, hi = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, np.inf, -np.inf
            for i in range(r * width, min(n, (r + 1) * width)):
                v = np.float64(x[i])
                d = v - shift
                d2 = d * d
                s1 += d
                s2 += d2
                s3 += d2 * d
                s4 += d2 * d2
                av = abs(v)
                sa += av
                k += 1.0 if av < near else 0.0
                sq += v * v
                lo = min(lo, v)
                hi = max(hi, v)
            out[r, 0], out[r, 1], out[r, 2], out[r, 3], out[r, 4] = s1, s2, s3, s4, sa
            out[r, 5], out[r, 6], out[r, 7], out[r, 8] = k, sq, lo, hi
        return out

    @_both
    def _pair_rows(a, b, width, full):  # noqa: ANN001, ANN202 - per row of `width` values, see pair_rows
        n = a.size
        rows = (n + width - 1) // width
        out = np.zeros((rows, 6))
        for r in prange(rows):
            dd, mx, mb, aa, bb, ab = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            if full:
                for i in range(r * width, min(n, (r + 1) * width)):
                    u = np.float64(a[i])
                    v = np.float64(b[i])
                    d = u - v
                    dd += d * d
                    mx = max(mx, abs(d))
                    mb = max(mb, abs(v))
                    aa += u * u
                    bb += v * v
                    ab += u * v
            else:  # the norms are known: the difference alone
                for i in range(r * width, min(n, (r + 1) * width)):
                    v = np.float64(b[i])
                    d = np.float64(a[i]) - v
                    dd += d * d
                    mx = max(mx, abs(d))
                    mb = max(mb, abs(v))
            out[r, 0], out[r, 1], out[r, 2], out[r, 3], out[r, 4], out[r, 5] = dd, mx, mb, aa, bb, ab
        return out

    @_both
    def _hist(x, start, end, lo, scale, bins):  # noqa: ANN001, ANN202, PLR0913 - counts of x[start[j]:end[j]] per j
        part = np.zeros((start.size, bins + 2), dtype=np.int64)  # underflow, `bins` bins from lo (1/scale), overflow
        for j in prange(start.size):
            low, step = lo[j], scale[j]
            for i in range(start[j], end[j]):
                pos = (np.float64(x[i]) - low) * step
                if pos < 0.0:
                    k = 0
                elif pos < bins:
                    k = int(pos) + 1
                else:  # at or above the top, and NaN
                    k = bins + 1
                part[j, k] += 1
        return part


def _width(x: np.ndarray, width: int | None) -> int:
    """Values per row: the given width, or a fixed number of rows (CHUNKS) for a vector, so the work splits."""
    n = max(x.size, 1)
    return max(1, min(n, width if width else (n + CHUNKS - 1) // CHUNKS))


def moment_rows(x: np.ndarray, near_zero: float, width: int | None = None) -> tuple[list[float], np.ndarray]:
    """One pass over a float32 array (read flat, rows of `width` values: a conv weight's filters; default CHUNKS rows):
    mean, m2, m4 (central moments), mean |x|, L2, fraction |x| < near_zero, min and max of all values, and each row's
    sum of squares (float64). Powers are summed around a shift (the mean of a fixed sample of the values), so no
    second pass for the central moments; row sums are added in row order whatever the number of threads."""
    flat = x.reshape(-1)
    n = flat.size
    shift = float(flat[:: max(1, n // 4096)].mean(dtype=np.float64))
    rows = _moment_rows(flat, _width(flat, width), near_zero, shift)
    s1, s2, s3, s4, sa, k, sq = rows[:, :7].sum(axis=0).tolist()  # row after row: the same order for any threads
    d = s1 / n  # mean - shift
    m2 = max(s2 / n - d * d, 0.0)
    m4 = max(s4 / n - 4.0 * d * s3 / n + 6.0 * d * d * s2 / n - 3.0 * d**4, 0.0)
    values = [shift + d, m2, m4, sa / n, float(np.sqrt(sq)), k / n, float(rows[:, 7].min()), float(rows[:, 8].max())]
    return values, rows[:, 6].copy()


def moments(x: np.ndarray, near_zero: float) -> list[float]:
    """mean, m2, m4 (central moments), mean |x|, L2, fraction |x| < near_zero, min, max of a float32 array."""
    return moment_rows(x, near_zero)[0]


def pair_rows(a: np.ndarray, b: np.ndarray, width: int | None = None, *, full: bool = True) -> np.ndarray:
    """Per row of `width` values of two float32 arrays of one size (read flat; default CHUNKS rows): sum (a-b)^2,
    max |a-b|, max |b|, and with `full` sum a^2, sum b^2 and sum a*b (else zeros there), float64 (rows, 6)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    return _pair_rows(fa, fb, _width(fa, width), full)


def pair_sums(a: np.ndarray, b: np.ndarray) -> list[float]:
    """||a-b||^2, ||a||^2, ||b||^2, a.b, max |a-b| and max |b| of two float32 arrays of one size."""
    rows = pair_rows(a, b)
    dd, aa, bb, ab = rows[:, [0, 3, 4, 5]].sum(axis=0).tolist()
    return [dd, aa, bb, ab, float(rows[:, 1].max()), float(rows[:, 2].max())]


def histogram(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts of a float32 array on `bins` equal half-open bins over [lo, hi), with an underflow (first) and an
    overflow (last; NaN counts there too): positions computed in float64, one pass, int64 (bins + 2,)."""
    flat = x.reshape(-1)
    edges = np.linspace(0, flat.size, CHUNKS + 1).astype(np.int64)  # chunks for the threads; counts add in any order
    scale = float(bins) / (float(hi) - float(lo))
    part = _hist(flat, edges[:-1], edges[1:], np.full(CHUNKS, float(lo)), np.full(CHUNKS, scale), int(bins))
    return part.sum(axis=0)


def histograms(arrays: Sequence[np.ndarray], ranges: Sequence[tuple[float, float]], bins: int) -> np.ndarray:
    """`histogram` of each of many (small) float32 arrays on its own range, one call: int64 (len(arrays), bins + 2)."""
    if not arrays:
        return np.zeros((0, bins + 2), dtype=np.int64)
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    end = np.cumsum(sizes)
    lo = np.array([float(r[0]) for r in ranges])
    scale = float(bins) / (np.array([float(r[1]) for r in ranges]) - lo)
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    return _hist(flat, end - sizes, end, lo, scale, int(bins))


def row_sums(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Per row of 2-D float32 arrays: sum (a-b)^2 and sum b^2 (with b=None: sum a^2 and 0), float64 (rows, 2)."""
    rows = pair_rows(a, a if b is None else b, a.shape[1], full=True)
    if b is None:  # sum a^2, and zeros (not the a.b column times 0: NaN where a holds an inf)
        return np.column_stack([rows[:, 3], np.zeros(len(rows))])
    return np.ascontiguousarray(rows[:, [0, 4]])


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
