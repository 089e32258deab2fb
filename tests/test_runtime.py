"""What a task runs with: exactly its CPUs' threads (torch, numba, OpenMP), the driver's storage and Ultralytics
settings, and a bounded cache of fetched files."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import time

from typer.testing import CliRunner

from yolo_audit.cli import app
from yolo_audit.results import location
from yolo_audit.runtime.tasks import Task, forwarded_env, run_tasks


def test_a_task_runs_exactly_the_threads_of_its_cpus(ray_local):
    def _threads() -> tuple[int, int, str]:  # defined here: Ray ships it by value, not by module name
        import numba
        import torch

        return torch.get_num_threads(), numba.get_num_threads(), os.environ["OMP_NUM_THREADS"]

    one, two = run_tasks([Task("one", _threads, num_cpus=1), Task("two", _threads, num_cpus=2)], stage="threads",
                         stream=io.StringIO())  # fmt: skip
    assert one == (1, 1, "1") and two == (2, 2, "2")  # numba's setter resets torch's: torch is set last


def _side_by_side() -> tuple[int, bool, int]:
    import torch

    from yolo_audit.stats import exact

    time.sleep(0.2)  # long enough for the tasks to overlap
    return torch.get_num_threads(), getattr(exact._here, "serial", False), os.getpid()


def _dies() -> None:
    os._exit(3)  # a worker killed mid-task (out of memory, a signal)


def test_in_process_tasks_side_by_side_each_run_one_thread_and_serial_kernels(monkeypatch):
    """In process with `threads=True`: one task per CPU at once in forked worker processes (threads of this process
    with YOLO_AUDIT_FORK=0), each with one torch thread and numba's serial kernels; without it, one after another in
    this process with every CPU's threads and the parallel kernels. A worker that dies fails the stage in one line."""
    import pytest
    import torch

    from yolo_audit.errors import AuditError
    from yolo_audit.runtime.tasks import ray_session

    with ray_session(None, num_cpus=2, engine="local"):
        side = run_tasks([Task(str(i), _side_by_side) for i in range(4)], stage="t", stream=io.StringIO(), threads=True)
        alone = run_tasks([Task("a", _side_by_side)], stage="t", stream=io.StringIO())
        main_threads = torch.get_num_threads()
        with pytest.raises(AuditError, match="worker process of this command died"):
            run_tasks([Task("x", _dies), Task("y", _side_by_side)], stage="t", stream=io.StringIO(), threads=True)
        monkeypatch.setenv("YOLO_AUDIT_FORK", "0")
        threads = run_tasks([Task(str(i), _side_by_side) for i in range(4)], stage="t", stream=io.StringIO(),
                            threads=True)  # fmt: skip
        after = torch.get_num_threads()  # threads of this process leave its own count as it was
    assert all(r[:2] == (1, True) for r in side + threads)
    assert len({r[2] for r in side}) == 2 and os.getpid() not in {r[2] for r in side}  # two workers, four tasks
    assert {r[2] for r in threads} == {os.getpid()} and after == main_threads
    assert alone[0] == (2, False, os.getpid()) and main_threads == 2
    assert gc.get_freeze_count() == 0  # forking froze this process's objects only until the workers were forked


def test_ultralytics_runs_with_the_task_s_threads_and_leaves_the_caller_s_count():
    """Ultralytics' select_device (each train and validation) sets torch's threads to min(8, the machine's CPUs - 1);
    inside `task_threads_in_ultralytics` it keeps the task's count, and the count is restored after the block."""
    import torch
    from ultralytics.utils import torch_utils

    from yolo_audit.runtime.devices import task_threads_in_ultralytics

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # a task's CPUs, not the machine's
        torch_utils.select_device("cpu", verbose=False)
        outside = torch.get_num_threads()
        torch.set_num_threads(3)
        with task_threads_in_ultralytics() as n:
            torch_utils.select_device("cpu", verbose=False)
            inside = torch.get_num_threads()
            torch.set_num_threads(1)  # whatever happens in the block
        assert (n, inside, torch.get_num_threads()) == (3, 3, 3)
        assert outside == torch_utils.NUM_THREADS == min(8, max(1, (os.cpu_count() or 1) - 1))  # what it does alone
    finally:
        torch.set_num_threads(before)


def test_a_command_start_up_collects_rarely_then_freezes_what_it_built():
    """`quiet_start` (the CLI's first step) makes the collector rare during the imports; `settled` (when the work
    begins) freezes what exists and restores the thresholds; without quiet_start, settled changes nothing."""
    code = (
        "import gc\n"
        "from yolo_audit.env import quiet_start, settled\n"
        "default = gc.get_threshold()\n"
        "settled()\n"
        "assert gc.get_freeze_count() == 0 and gc.get_threshold() == default\n"
        "quiet_start()\n"
        "assert gc.get_threshold()[0] == 1_000_000 and gc.isenabled()\n"
        "import torch, polars\n"
        "settled()\n"
        "assert gc.get_threshold() == default and gc.get_freeze_count() > 50_000, gc.get_freeze_count()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_forward_pass_tasks_keep_freed_memory_instead_of_faulting_it_in_again():
    """keep_freed_memory (tasks that run forward passes call it): a pass's activations (here four tensors of 4-64 MB
    alive at once, then freed) are reused from the heap by the next pass, not handed back to the kernel and faulted in
    (zeroed) again, as glibc does by default with blocks over 32 MB (measured here: 149k faults vs 26k)."""
    code = (
        "import resource, sys, torch\n"
        "from yolo_audit.runtime.devices import keep_freed_memory\n"
        "if sys.argv[1] == 'keep':\n"
        "    assert keep_freed_memory()\n"
        "def one_pass():\n"
        "    activations = [torch.ones(n) for n in (16_000_000, 4_000_000, 12_000_000, 1_000_000)]\n"
        "    del activations\n"
        "one_pass()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    one_pass()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {m: int(subprocess.run([sys.executable, "-c", code, m], check=True, capture_output=True,
                                    text=True).stdout.split()[-1]) for m in ("keep", "plain")}  # fmt: skip
    assert faults["plain"] > 5 * 27_000  # the 64 and 48 MB blocks (27,343 pages of 4 KiB) again in each pass
    assert faults["keep"] < faults["plain"] / 3, faults


def test_storage_and_ultralytics_settings_reach_the_tasks(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/k.json")
    monkeypatch.setenv("YOLO_AUDIT_CACHE_MAX", "1G")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = forwarded_env()
    assert {"AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "YOLO_OFFLINE",
            "YOLO_AUDIT_CACHE_MAX"} <= set(env) and "UNRELATED_SECRET" not in env  # fmt: skip


def test_the_fetch_cache_is_bounded_least_recently_used_first_and_clears(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_AUDIT_CACHE", str(tmp_path / "cache"))
    root = location.cache_root()
    now = time.time()
    for i in range(4):  # 1 MiB each, used one after another
        path = root / f"k{i}" / "w.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * (1 << 20))
        os.utime(path, (now - 100 + i, now - 100 + i))
    assert location.trim_cache(int(2.5 * (1 << 20))) == 2 << 20
    assert sorted(p.parent.name for p in root.rglob("*.pt")) == ["k2", "k3"]  # the two used last stay
    monkeypatch.setenv("YOLO_AUDIT_CACHE_MAX", "1.5M")
    assert location.cache_limit() == int(1.5 * (1 << 20))
    out = CliRunner().invoke(app, ["cache", "clear"])
    assert out.exit_code == 0 and "removed 2.0 MiB" in out.stdout and not list(root.rglob("*.pt"))
    monkeypatch.setenv("YOLO_AUDIT_CACHE_MAX", "lots")
    assert CliRunner().invoke(app, ["cache", "clear"]).exit_code == 0  # clearing ignores the bound
