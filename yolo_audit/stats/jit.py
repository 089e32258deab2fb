"""numba, imported in this one place: the compiled kernels of `exact.py` and `fused.py` come from here.

Every kernel is compiled with `cache=True`, so a process normally loads machine code from numba's cache. numba's
`Cache.load_overload` first refreshes the CPU target, importing and installing every typing and lowering registry it
has (random, linalg, typed containers, polynomials, ...): ~0.16 s of a small command's ~2.5 s (measured, 2-core VM),
although loading cached machine code needs none of it: only the runtime (NRT) that kernels allocating arrays call.
`_load_cached_first` loads a cache hit with just the runtime initialised; a miss, or a load that fails, goes through
numba's own method (the full refresh, then compiling as numba always does). It relies on numba's private cache API,
checked for here (numba is pinned in pyproject.toml): when the names are missing, numba's own method stays.
"""

from __future__ import annotations

from typing import Any

try:
    from numba import get_num_threads, get_thread_id, njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; callers fall back to torch
    njit = prange = get_num_threads = get_thread_id = None  # type: ignore[assignment]

__all__ = ["available", "get_num_threads", "get_thread_id", "njit", "prange", "set_threads"]


def available() -> bool:
    return njit is not None


def set_threads(n: int) -> None:
    if njit is not None:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _load_cached_first() -> bool:
    """Patch numba's cache loading as the module docstring says; False where this numba lacks what it relies on."""
    try:
        from numba.core.caching import Cache
        from numba.core.runtime import rtsys
    except ImportError:  # pragma: no cover - numba missing or reorganised
        return False
    numbas_own = Cache.load_overload
    if getattr(numbas_own, "cached_first", False):
        return True
    if not all(hasattr(Cache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")):
        return False  # pragma: no cover - another numba: keep its own method

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        found = None
        try:
            rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                found = self._load_overload(sig, target_context)
        except Exception:  # noqa: BLE001, S110 - numba's own method below decides (and explains)
            found = None
        return found if found is not None else numbas_own(self, sig, target_context)

    load_overload.cached_first = True  # type: ignore[attr-defined]
    Cache.load_overload = load_overload
    return True


def _take_torchs_threads() -> None:
    """numba starts with every CPU's threads; a process that set torch's count before numba was imported (see
    `runtime.devices.set_threads`) gets the same count for numba, and torch's is set again after it (numba's setter
    resets torch's)."""
    import torch

    n = torch.get_num_threads()
    set_threads(n)
    torch.set_num_threads(n)


if njit is not None:
    _load_cached_first()
    _take_torchs_threads()
