"""Plain job functions become tasks here, and nowhere else: remote Ray tasks with bounded in-flight work
(`ray.wait`) and retries, or in this process (one after another, or one per CPU in threads for tasks that allow it);
a progress line per finished task, and exact tree merges of partial results.

An embedded local Ray starts when the Ray engine is chosen without an address (and is shut down afterwards); an already
initialised Ray (a notebook, a test) is reused as is.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

from yolo_audit.env import prepare, settled
from yolo_audit.runtime import forked
from yolo_audit.runtime.devices import one_cpu, set_threads
from yolo_audit.runtime.resources import check_schedulable

if TYPE_CHECKING:
    from yolo_audit.results.ledger import Ledger


@dataclass(frozen=True)
class Task:
    """One unit of work: `fn(*args, **kwargs)` run remotely with `num_cpus` CPUs (and `num_gpus` GPUs)."""

    label: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    done_key: str | None = None  # with `revive`: skipped when a ledger records this key (see results.ledger)
    revive: Callable[[dict[str, Any]], Any] | None = None  # the recorded JSON back into the task's result


def _run_in_worker(
    fn: Callable[..., Any], threads: int, *args: Any, **kwargs: Any
) -> tuple[Any, list[str], str | None]:
    """What a Ray worker executes: the offline environment, torch threads = the task's CPUs, then the plain function;
    returns its result, the result files it wrote and the Ray node it ran on."""
    import ray

    prepare()
    set_threads(threads)
    return (*_recorded(fn, *args, **kwargs), ray.get_runtime_context().get_node_id())


def _one_cpu(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """What a thread of the in-process engine executes (see `run_tasks(threads=True)`)."""
    with one_cpu():
        return _recorded(fn, *args, **kwargs)


def _recorded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    from yolo_audit.results.ledger import recording

    with recording() as written:
        result = fn(*args, **kwargs)
    return result, list(written)


ENGINES = ("auto", "local", "ray")


# Where the current command's tasks run: `local` (in this process: one after another with every CPU's threads, or
# tasks that allow it one per CPU in threads; no start-up, so a small local job costs what a hand-written script
# does) or `ray` (remote Ray tasks, on an embedded local Ray or the cluster at `--address`); None outside a session.
_engine: str | None = None
_local_cpus = 1  # in process: the CPUs this command may use


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def choose_engine(address: str | None, engine: str = "auto") -> str:
    """`auto`: Ray when an address is given or a Ray is already running here (a study, a notebook, a test); in process
    otherwise. `YOLO_AUDIT_ENGINE` overrides `auto` (e.g. `ray` to use an embedded Ray for every command)."""
    from yolo_audit.errors import AuditError

    if engine == "auto":
        engine = os.environ.get("YOLO_AUDIT_ENGINE", "auto") or "auto"
    if engine not in ENGINES:
        raise AuditError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "local" and address is not None:
        raise AuditError("--engine local runs in this process; drop --address or use --engine ray")
    if engine == "auto":
        return "ray" if address is not None or _ray_running() else "local"
    return engine


@contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None, engine: str = "auto", stream: TextIO | None = None
) -> Iterator[None]:
    """Run this block's tasks in process (`local`) or on Ray: connect to `address` (a cluster, e.g. ray://head:10001
    or auto) or start an embedded local Ray; an already initialised Ray is reused as is."""
    global _engine, _local_cpus
    prepare()
    settled()  # a command's start-up ends here (see env.quiet_start)
    kind = choose_engine(address, engine)
    if _engine is not None:  # nested (an analysis inside a study): the outer engine stays
        yield
        return
    if kind == "local":
        before = torch_threads()
        _local_cpus = max(1, num_cpus or os.cpu_count() or 1)
        set_threads(_local_cpus, load_numba=False)
        _engine = "local"
        try:
            yield
        finally:
            _engine = None
            set_threads(before, load_numba=False)
        return
    import ray

    if ray.is_initialized():
        _engine = "ray"
        try:
            yield
        finally:
            _engine = None
        return
    os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")  # no autoscaler chatter in our output: require_resources says it
    try:
        ray.init(
            address=address or "local",  # embedded: a new local Ray, never one that happens to run on this machine
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            runtime_env={"env_vars": forwarded_env()},
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        from yolo_audit.errors import AuditError

        raise AuditError(
            f"cannot start or reach Ray ({str(exc).splitlines()[0]}); check --address", path=address
        ) from exc
    _engine = "ray"
    print(f"[ray] {ray_logs()}", file=stream or sys.stderr)
    try:
        yield
    finally:
        _engine = None
        ray.shutdown()


def ray_logs() -> str:
    """Where Ray keeps its own logs (they stay out of this command's output: workers' output is not forwarded)."""
    try:
        from ray._private import worker

        return f"Ray's own logs: {worker._global_node.get_session_dir_path()}/logs"  # no public accessor
    except Exception:  # noqa: BLE001 - only a hint
        return "Ray's own logs: /tmp/ray/session_latest/logs"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def in_process() -> bool:
    return _engine == "local"


def put(obj: Any) -> Any:
    """Share a large input among tasks: Ray's object store, or the object itself in process."""
    if in_process():
        return obj
    import ray

    return ray.put(obj)


FORWARDED_PREFIXES = ("YOLO_", "AWS_", "GOOGLE_", "GCS_", "AZURE_", "AZURE_STORAGE_", "HF_", "RAY_USAGE_STATS")
FORWARDED = ("MPLCONFIGDIR", "MPLBACKEND")


def forwarded_env() -> dict[str, str]:
    """The driver's storage and Ultralytics settings every task needs: object-store credentials and endpoints
    (AWS_*, GOOGLE_*, AZURE_*), Ultralytics' (YOLO_*) and ours (YOLO_AUDIT_*), so workers on other nodes read and
    write what the driver does."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED}


def cluster_cpus() -> int:
    """Tasks that can run at once: the cluster's CPUs; in process 1 (that task has every CPU's threads)."""
    if in_process():
        return 1
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> float:
    """GPUs the cluster has right now (0 on a CPU-only machine); in process, the GPUs torch sees."""
    if in_process():
        import torch

        return float(torch.cuda.device_count())
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
    nodes: set[str] = field(default_factory=set)  # Ray nodes the finished tasks ran on (none in process)
    _printed: int = -1

    def update(self, label: str, failed: bool, node: str | None = None) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.done += 1
        self.failed += failed
        if node is not None:
            self.nodes.add(node)
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
        nodes = f", on {len(self.nodes)} node{'s' * (len(self.nodes) > 1)}" if self.nodes else ""
        return (f"[{self.stage}] [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}{failed} "
                f"{rate:.2f} it/s, {elapsed:.1f}s elapsed, ETA {eta:.1f}s{nodes}")  # fmt: skip

    def _write(self, text: str, *, newline: bool, redraw: bool) -> None:
        print(("\r\033[K" if redraw else "") + text, end="\n" if newline else "", file=self.stream, flush=True)


def run_tasks(
    tasks: Sequence[Task],
    *,
    stage: str,
    max_in_flight: int | None = None,
    retries: int = 2,
    stream: TextIO | None = None,
    ledger: Ledger | None = None,
    schedule_timeout: float | None = None,
    threads: bool = False,
) -> list[Any]:
    """Run tasks (on Ray, or in process; see `ray_session`), at most `max_in_flight` at once (default: twice the
    cluster's CPUs); results in task order.

    With a `ledger`, tasks it records as done are not run (their recorded result is returned) and finished ones are
    added to it. Ray tasks are retried `retries` times if their worker dies. With `schedule_timeout`, pending tasks
    that no live node can run (the only GPU node died) fail the stage in one line after that many seconds instead of
    waiting forever. Progress: one bar for the stage (see `Progress`) and a line naming each task that failed.
    `threads`: the tasks may run side by side (they share no mutable state); in process they then run one per CPU,
    each with one thread, in worker processes forked from this one (see `forked`; threads of this process where fork
    is unavailable), instead of one after another with every CPU's threads.
    """
    out = stream or sys.stderr
    results: list[Any] = [None] * len(tasks)
    queue: list[tuple[int, Task]] = []
    for index, task in enumerate(tasks):
        found = ledger.lookup(task.done_key) if ledger is not None and task.revive is not None else None
        if found is not None and task.revive is not None:
            results[index] = task.revive(found)
        else:
            queue.append((index, task))
    if len(queue) < len(tasks):
        from yolo_audit.results.ledger import skipped_line

        print(skipped_line(stage, "files and options", len(tasks) - len(queue), len(tasks)), file=out)
    if not queue:
        return results
    progress = Progress(stage, len(queue), out)

    def finished(index: int, value: tuple[Any, ...]) -> None:
        results[index], written, *node = value  # Ray tasks also say which node they ran on
        if ledger is not None:
            ledger.add(tasks[index].done_key, stage, written, results[index])
        progress.update(tasks[index].label, bool(getattr(results[index], "errors", None)), *node)

    if in_process():
        workers = min(_local_cpus, len(queue)) if threads else 1
        if workers == 1:
            for index, task in queue:
                finished(index, _recorded(task.fn, *task.args, **(task.kwargs or {})))
            return results
        if forked.available():
            calls = [(task.fn, task.args, task.kwargs or {}) for _, task in queue]
            for at, value in forked.run_forked(calls, workers):
                finished(queue[at][0], value)
            return results
        with ThreadPoolExecutor(workers, thread_name_prefix=stage) as pool:
            futures = {pool.submit(_one_cpu, task.fn, *task.args, **(task.kwargs or {})): i for i, task in queue}
            for future in as_completed(futures):
                finished(futures[future], future.result())
        return results
    import ray

    remote = ray.remote(_run_in_worker)
    limit = max_in_flight or 2 * cluster_cpus()
    pending: dict[Any, int] = {}
    stuck: float | None = None
    while queue or pending:
        while queue and len(pending) < limit:
            index, task = queue.pop(0)
            ref = remote.options(
                num_cpus=task.num_cpus, num_gpus=task.num_gpus, max_retries=retries, name=f"{stage}:{task.label}"
            ).remote(task.fn, max(1, int(task.num_cpus)), *task.args, **(task.kwargs or {}))
            pending[ref] = index
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if schedule_timeout is None else 2.0)
        if not ready and schedule_timeout is not None:
            stuck = check_schedulable([tasks[i] for i in pending.values()], stuck, schedule_timeout, stage)
        for ref in ready:
            stuck = None
            index = pending.pop(ref)
            finished(index, ray.get(ref))
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
    if in_process():  # the same pairs in the same order as on Ray: results are equal bit for bit
        while any(len(g) > 1 for g in groups):
            groups = [[_merge(*g[i : i + 2]) if i + 1 < len(g) else g[i] for i in range(0, len(g), 2)] for g in groups]
        return [g[0] for g in groups]
    import ray

    remote = ray.remote(_merge)
    refs = [[ray.put(r) for r in g] for g in groups]
    while any(len(g) > 1 for g in refs):
        refs = [[remote.remote(*g[i : i + 2]) if i + 1 < len(g) else g[i] for i in range(0, len(g), 2)] for g in refs]
    return ray.get([g[0] for g in refs])
