"""Tasks of the in-process engine side by side in forked worker processes: one per CPU, one thread each.

Threads of one process share the GIL: on 2 cores, two threads analysing YOLOv8s checkpoints ran only 1.1-1.4x as
fast as one, two forked workers ~1.6x (measured 2026-12-02): the restricted unpickler holds the GIL ~17 ms per file,
table building and thousands of small torch calls hold it ~30% of the time, and a thread that released it for a
kernel then waits to get it back. Worker processes forked once the command is set up (imports done, the reference
loaded and its statistics cached) inherit all of that at no cost (copy-on-write) and run truly side by side. A task
travels to its worker as its index in a list the workers inherit (the reference's tensors are never pickled); only
its result comes back, pickled. Linux only (where fork is the default start method and forking a threaded process
is well understood); elsewhere, or with YOLO_AUDIT_FORK=0, the engine keeps threads.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from yolo_audit.errors import AuditError

Call = tuple[Callable[..., Any], tuple, dict]
_CALLS: Sequence[Call] = ()  # what the workers inherit: set just before they are forked


def available() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("YOLO_AUDIT_FORK", "1") != "0"


def _run(index: int) -> Any:
    from yolo_audit.runtime.tasks import _one_cpu

    fn, args, kwargs = _CALLS[index]
    return _one_cpu(fn, *args, **kwargs)


def run_forked(calls: Sequence[Call], workers: int) -> Iterator[tuple[int, Any]]:
    """(index, result) of each call as it finishes, computed in `workers` forked processes with one CPU each; a
    worker that dies (killed, out of memory) fails the stage in one line."""
    global _CALLS
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # what is buffered now would be written again by every worker
    _CALLS = calls
    frozen = gc.get_freeze_count() > 0
    gc.freeze()  # the workers never scan what they inherit (a collection scanned ~250k objects: ~20 ms a task)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_run, i): i for i in range(len(calls))}  # forks every worker (fork context)
            if not frozen:
                gc.unfreeze()  # this process's objects are collected as before (a notebook's)
            for future in as_completed(futures):
                yield futures[future], future.result()
    except BrokenProcessPool as exc:
        raise AuditError(
            "a worker process of this command died (killed, or out of memory); rerun it: finished checkpoints are "
            "skipped (or set YOLO_AUDIT_FORK=0 to run tasks in threads)"
        ) from exc
    finally:
        _CALLS = ()
