"""What a task computes on: the torch device it was given, and as many threads as its CPUs (torch, numba, BLAS)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA when the task sees a GPU, else the CPU; otherwise the device as named (cpu, cuda:N)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(n: int) -> None:
    """Ultralytics sets OMP_NUM_THREADS=1 on import and Ray tasks get one thread: use the CPUs we were given.
    numba's set_num_threads resets torch's thread count, so torch's is set last."""
    from yolo_audit.stats.jit import set_threads as set_numba_threads

    n = max(1, int(n))
    os.environ["OMP_NUM_THREADS"] = str(n)
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
