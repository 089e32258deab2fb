"""Fault injection: a killed driver, a killed Ray worker, two writers, a full disk. Nothing lost, duplicated or torn."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import result_tables, save, weight_values, write_study

from yolo_audit.analyses.weights.job import analyze_checkpoint
from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.errors import AuditError
from yolo_audit.results import files, location
from yolo_audit.results.location import locate
from yolo_audit.runtime.tasks import Task, run_tasks
from yolo_audit.study.driver import run_study
from yolo_audit.study.spec import load_study

ROOT = Path(__file__).resolve().parent
CRASH_VARIANTS = [{"name": "none", "freeze": 0}, {"name": "cb", "freeze": "backbone", "strategy": "callback"}]
DRIVER = """
import sys
from yolo_audit.study.driver import run_study
from yolo_audit.study.spec import load_study
run_study(load_study(sys.argv[1], out=sys.argv[2]))
"""


def _orphans() -> list[int]:
    """Ray helper processes a SIGKILLed driver leaves behind (re-parented to init)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    return [
        int(p)
        for p, pp, *cmd in (line.split(None, 2) for line in out.splitlines())
        if pp == "1" and cmd and cmd[0].startswith("ray::")
    ]


def _kill_driver_after(study_file: Path, out: Path, seconds: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(study_file), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-flight
        proc.wait()
    time.sleep(0.5)
    for pid in _orphans():
        os.kill(pid, signal.SIGKILL)


def test_driver_killed_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path, ray_local):
    study_file = write_study(tmp_path, name="crash", variants=CRASH_VARIANTS)
    clean = tmp_path / "clean"
    assert run_study(load_study(study_file, out=str(clean)), stream=io.StringIO()).ok
    crashed = tmp_path / "crashed"
    rng = random.Random(7)
    for seconds in sorted(rng.uniform(2.0, 14.0) for _ in range(3)):
        _kill_driver_after(study_file, crashed, seconds)
        for f in crashed.rglob("*.parquet"):  # whatever a killed run left must be whole files
            pl.read_parquet(f)
    assert run_study(load_study(study_file, out=str(crashed)), stream=io.StringIO()).ok
    a, b = result_tables(clean), result_tables(crashed)
    assert {k: v.height for k, v in a.items()} == {k: v.height for k, v in b.items()}
    assert weight_values(a).equals(weight_values(b))
    assert b["checkpoints"]["checkpoint_id"].is_unique().all() and "errors" not in b
    verdicts = [t["layer_freeze"].group_by("verdict").len().sort("verdict") for t in (a, b)]
    assert verdicts[0].equals(verdicts[1])


def test_killed_worker_is_retried_and_rows_are_written_once(tmp_path, base_model, ray_local):
    ckpt = save(base_model, tmp_path / "a.pt", name="a")
    marker, out = tmp_path / "killed-once", tmp_path / "out"

    def dies_first_time(path: str, out: str, marker: str) -> object:
        if not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
        return analyze_checkpoint(path, locate(out))

    [result] = run_tasks(
        [Task("a", dies_first_time, (str(ckpt), str(out), str(marker)))], stage="t", stream=io.StringIO()
    )
    assert marker.exists() and not result.errors and result.rows["weight_stats"] > 0
    for table in ("weight_stats", "channel_weights"):
        assert [p.name for p in (out / table).iterdir()] == [f"{result.checkpoint_id}.parquet"]
    files.write_checkpoints(locate(out), [result.checkpoint_row])  # what the driver does with the task's row
    files.write_checkpoints(locate(out), [result.checkpoint_row])  # twice: still one row
    assert pl.read_parquet(out / "checkpoints" / "*.parquet").height == 1


def test_a_second_command_on_the_same_out_is_refused_clearly(tmp_path, base_model):
    ckpt = save(base_model, tmp_path / "a.pt")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
from yolo_audit.results.location import exclusive, locate
import time
with exclusive(locate({str(out)!r})):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})  # fmt: skip
    stale = out / "errors" / f".k.parquet.{'0' * 32}.tmp"  # as if the holder were killed in the middle of a write
    kept = out / "errors" / "k.parquet"
    try:
        assert holder.stdout.readline().strip() == "locked"
        stale.parent.mkdir()
        stale.write_bytes(b"half")
        kept.write_bytes(b"whole")
        with pytest.raises(AuditError, match=rf"another yolo-audit command \(pid {holder.pid}\) is writing here"):
            analyze_weights([ckpt], out)
        assert stale.exists()  # not the refused command's to clean
    finally:
        holder.kill()
        holder.wait()
    with location.exclusive(locate(out)):  # released when its holder died; the next holder sweeps its leftovers
        assert not stale.exists() and kept.read_bytes() == b"whole"


def test_numpy_and_repeated_columns_write_what_lists_write(tmp_path):
    """files.write takes lists, numpy arrays (NaN in a float array is null) and `repeat` string columns alike."""
    import numpy as np
    import pyarrow.parquet as pq

    out = locate(tmp_path)
    names, sizes = ["m.0.conv.weight", "", "m.22.cv3.été"], [2, 0, 3]
    as_lists = {
        "checkpoint_id": ["c"] * 5, "reference_id": ["r"] * 5,
        "param": [n for n, k in zip(names, sizes, strict=True) for _ in range(k)], "layer": [0, 0, 22, 22, 22],
        "module": ["a"] * 5, "channel": [0, 1, 0, 1, 2], "l2_diff": [0.5, 1.0, 2.0, 0.0, 3.0],
        "rel_diff": [0.1, None, 0.2, None, 0.3],
    }  # fmt: skip
    as_arrays = {
        "checkpoint_id": files.repeat(["c"], 5), "reference_id": files.repeat(["r"], 5),
        "param": files.repeat(names, sizes), "layer": np.repeat([0, 22], [2, 3]), "module": files.repeat(["a"], 5),
        "channel": np.array([0, 1, 0, 1, 2]), "l2_diff": np.array([0.5, 1.0, 2.0, 0.0, 3.0]),
        "rel_diff": np.array([0.1, np.nan, 0.2, np.nan, 0.3]),
    }  # fmt: skip
    files.write(out, "channel_divergence", "lists", as_lists)
    files.write(out, "channel_divergence", "arrays", as_arrays)
    read = [pq.read_table(tmp_path / "channel_divergence" / f"{k}.parquet") for k in ("lists", "arrays")]
    assert read[0].equals(read[1]) and read[1].column("rel_diff").null_count == 2


def test_concurrent_writes_of_one_file_never_tear(tmp_path):
    def write(i: int) -> None:
        files.write(locate(tmp_path), "errors", "same", {"path": [f"p{i}"] * 500, "stage": ["s"] * 500,
                                                   "error_type": ["E"] * 500, "message": [str(i)] * 500})  # fmt: skip

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frame = pl.read_parquet(tmp_path / "errors" / "same.parquet")
    assert frame.height == 500 and frame["path"].n_unique() == 1  # one writer's rows, whole
    assert [p.name for p in (tmp_path / "errors").iterdir()] == ["same.parquet"]


def test_full_disk_is_one_clear_error_and_earlier_results_stay(tmp_path, base_model, monkeypatch):
    ckpt = save(base_model, tmp_path / "a.pt")
    out = tmp_path / "out"
    first = analyze_checkpoint(str(ckpt), locate(out))
    assert not first.errors
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}

    def full(self, data):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(location.Location, "write_bytes", full)
    again = analyze_checkpoint(str(ckpt), locate(out))
    assert again.errors[0].stage == "weights" and "No space left on device" in again.errors[0].message
    assert "choose a writable --out with free space" in again.errors[0].message
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    with pytest.raises(AuditError, match="not writable"):
        files.check_writable(locate(out))
