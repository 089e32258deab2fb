"""What a task computes on: the torch device it was given, and as many threads as its CPUs (torch, numba, BLAS)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA when the task sees a GPU, else the CPU; otherwise the device as named (cpu, cuda:N)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(n: int, *, load_numba: bool = True) -> None:
    """Ultralytics sets OMP_NUM_THREADS=1 on import and Ray tasks get one thread: use the CPUs we were given.
    numba's set_num_threads resets torch's thread count, so torch's is set last. Without `load_numba` numba is not
    imported for this (~0.2 s a command that never uses it, e.g. `similarity`): when `stats.jit` imports it later,
    numba takes torch's count then."""
    n = max(1, int(n))
    os.environ["OMP_NUM_THREADS"] = str(n)
    if load_numba or "yolo_audit.stats.jit" in sys.modules:
        from yolo_audit.stats.jit import set_threads as set_numba_threads

        set_numba_threads(n)
    torch.set_num_threads(n)


@contextmanager
def one_cpu() -> Iterator[None]:
    """This thread computes on one CPU: one torch thread, numba's kernels serial. For a task that runs in a thread
    beside others (in process, one per CPU); results are the same bits as with every CPU's threads."""
    from yolo_audit.stats.exact import serial

    torch.set_num_threads(1)
    with serial():
        yield


@contextmanager
def task_threads_in_ultralytics() -> Iterator[int]:
    """Ultralytics' `select_device` (every `train()` and validator) sets torch's threads to min(8, the machine's
    CPUs - 1), not the task's: a 1-CPU Ray task on a 16-core node ran 8 threads, the 2-CPU local engine here 1. In this
    block it sets the task's count (torch's now), and torch's count is restored afterwards (a validation no longer
    leaves the caller's process with another count). Yields that count."""
    from ultralytics.utils import torch_utils

    n, saved = torch.get_num_threads(), torch_utils.NUM_THREADS
    torch_utils.NUM_THREADS = n
    try:
        yield n
    finally:
        torch_utils.NUM_THREADS = saved
        torch.set_num_threads(n)


def _precision_knobs() -> list[tuple[object, str, object]]:
    """The switches that let float32 run as TF32 (cuDNN's convolutions by default on Ampere and newer GPUs, and
    matmuls where allowed), and those that let cuDNN pick nondeterministic algorithms: (object, attribute, the value
    for exact and repeatable float32). torch 2.9 and newer name the precision (`fp32_precision`: ieee or tf32)."""
    backends = torch.backends
    matmul, cudnn = backends.cuda.matmul, backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        knobs: list[tuple[object, str, object]] = [(matmul, "fp32_precision", "ieee"),
                                                   (cudnn.conv, "fp32_precision", "ieee")]  # fmt: skip
    else:  # pragma: no cover - torch before 2.9
        knobs = [(matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]
    return [*knobs, (cudnn, "deterministic", True), (cudnn, "benchmark", False)]


@contextmanager
def exact_float32() -> Iterator[str]:
    """Analysis forward passes in true float32: TF32 off for cuDNN's convolutions and for matmuls, cuDNN's algorithms
    deterministic, for this block only; the settings before it are restored afterwards (training keeps Ultralytics'
    AMP). cuDNN's default TF32 moved CKA between a GPU and a CPU by up to 0.225 on an H200 (0.001 with TF32 off).
    Yields the precision the passes ran in, as recorded in the tables (`fp32`)."""
    knobs = _precision_knobs()
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in knobs]
    try:
        for owner, name, value in knobs:
            setattr(owner, name, value)
        yield "fp32"
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


_KEEP = 1 << 30  # bytes


def keep_freed_memory() -> bool:
    """glibc returns large freed blocks to the kernel at once (each forward pass's activations are blocks of MBs
    to hundreds of MBs), so the next pass faults and zeroes the same pages again: 13-16% of a yolov8s forward
    pass's CPU time was the kernel's (measured 2026-12-02). With blocks up to 1 GiB served from the heap and up to
    1 GiB kept free at its top, the process reuses them: passes ~15% faster, peak memory ~0.1-0.3 GB higher, kept
    until the process ends (a Ray worker keeps it for its next tasks). For tasks that run forward passes; a no-op
    (False) where the C library is not glibc. The allocator's choice never changes a value."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (macOS, musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, _KEEP)) and bool(mallopt(m_trim_threshold, _KEEP))
