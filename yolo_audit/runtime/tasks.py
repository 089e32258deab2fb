"""Plain job functions become remote Ray tasks here, and nowhere else: bounded in-flight tasks (`ray.wait`), retries,
a progress line per finished task, and exact tree merges of partial results.

An embedded local Ray starts when no address is given (and is shut down afterwards); an already initialised Ray
(a notebook, a test) is reused as is.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, TypeVar

from yolo_audit.env import prepare
from yolo_audit.runtime.devices import set_threads


@dataclass(frozen=True)
class Task:
    """One unit of work: `fn(*args, **kwargs)` run remotely with `num_cpus` CPUs (and `num_gpus` GPUs)."""

    label: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    num_cpus: float = 1
    num_gpus: float = 0


def _run_in_worker(fn: Callable[..., Any], threads: int, *args: Any, **kwargs: Any) -> Any:
    """What a Ray worker executes: the offline environment, torch threads = the task's CPUs, then the plain function."""
    prepare()
    set_threads(threads)
    return fn(*args, **kwargs)


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to `address` (a cluster, e.g. ray://head:10001 or auto) or start an embedded local Ray."""
    prepare()
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=True,
            runtime_env={"env_vars": forwarded_env()},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        from yolo_audit.errors import AuditError

        raise AuditError(
            f"cannot start or reach Ray ({str(exc).splitlines()[0]}); check --address", path=address
        ) from exc
    try:
        yield
    finally:
        ray.shutdown()


FORWARDED_PREFIXES = ("YOLO_", "AWS_", "GOOGLE_", "GCS_", "AZURE_", "AZURE_STORAGE_", "HF_", "RAY_USAGE_STATS")
FORWARDED = ("MPLCONFIGDIR", "MPLBACKEND")


def forwarded_env() -> dict[str, str]:
    """The driver's storage and Ultralytics settings every task needs: object-store credentials and endpoints
    (AWS_*, GOOGLE_*, AZURE_*), Ultralytics' (YOLO_*) and ours (YOLO_AUDIT_*), so workers on other nodes read and
    write what the driver does."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED}


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> float:
    """GPUs the cluster has right now (0 on a CPU-only machine)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def short_name(path: str, parts: int = 3) -> str:
    """A path's tail for progress lines (`ft_free/weights/last.pt`): unique where a bare file name is not."""
    return "/".join(str(path).rstrip("/").split("/")[-parts:])


@dataclass
class Progress:
    """One bar per stage, as Ultralytics users know it: done/total, failures, rate, ETA. On a terminal it redraws in
    place; piped to a log it writes a line at every tenth of the work (never one per task)."""

    stage: str
    total: int
    stream: TextIO
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    _printed: int = -1

    def update(self, label: str, failed: bool) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.done += 1
        self.failed += failed
        if failed:
            self._write(f"[{self.stage}] FAILED {label}", newline=True, redraw=tty)
        tenth = 10 * self.done // max(self.total, 1)
        if tty or tenth > self._printed or self.done == self.total:
            self._printed = tenth
            self._write(self.line(), newline=not tty or self.done == self.total, redraw=tty)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(20 * self.done / max(self.total, 1))
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"[{self.stage}] [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}{failed} "
                f"{rate:.2f} it/s, {elapsed:.1f}s elapsed, ETA {eta:.1f}s")  # fmt: skip

    def _write(self, text: str, *, newline: bool, redraw: bool) -> None:
        print(("\r\033[K" if redraw else "") + text, end="\n" if newline else "", file=self.stream, flush=True)


def run_tasks(
    tasks: Sequence[Task],
    *,
    stage: str,
    max_in_flight: int | None = None,
    retries: int = 2,
    stream: TextIO | None = None,
) -> list[Any]:
    """Run tasks on Ray, at most `max_in_flight` at once (default: twice the cluster's CPUs); results in task order.

    Tasks are retried `retries` times if their worker dies. Progress: one bar for the stage (see `Progress`) and a
    line naming each task that failed.
    """
    import ray

    remote = ray.remote(_run_in_worker)
    limit = max_in_flight or 2 * cluster_cpus()
    pending: dict[Any, int] = {}
    results: list[Any] = [None] * len(tasks)
    queue = list(enumerate(tasks))
    progress = Progress(stage, len(tasks), stream or sys.stderr)
    while queue or pending:
        while queue and len(pending) < limit:
            index, task = queue.pop(0)
            ref = remote.options(
                num_cpus=task.num_cpus, num_gpus=task.num_gpus, max_retries=retries, name=f"{stage}:{task.label}"
            ).remote(task.fn, max(1, int(task.num_cpus)), *task.args, **(task.kwargs or {}))
            pending[ref] = index
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            index = pending.pop(ref)
            results[index] = ray.get(ref)
            progress.update(tasks[index].label, bool(getattr(results[index], "errors", None)))
    return results


T = TypeVar("T", bound="Merges")


class Merges(Protocol):
    """A task's partial result that merges exactly with another (shards of one checkpoint, of one dataset)."""

    def merge(self: T, other: T) -> T: ...


def _merge(a: T, b: T) -> T:
    return a.merge(b)


def tree_merge(groups: list[list[T]]) -> list[T]:
    """Merge each group's partial results pairwise in Ray tasks (log2 rounds, all groups at once); one per group."""
    if all(len(g) == 1 for g in groups):
        return [g[0] for g in groups]
    import ray

    remote = ray.remote(_merge)
    refs = [[ray.put(r) for r in g] for g in groups]
    while any(len(g) > 1 for g in refs):
        refs = [[remote.remote(*g[i : i + 2]) if i + 1 < len(g) else g[i] for i in range(0, len(g), 2)] for g in refs]
    return ray.get([g[0] for g in refs])
