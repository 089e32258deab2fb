"""The cluster path a user takes: a Ray head started with `ray start --head` (its dashboard serves the job API; Ray's
`[default]` extra, a dev dependency), then `ray job submit -- yolo-audit weights ... --address auto` writing to an S3
bucket (moto's server on localhost). The job attaches to that head, reads checkpoints from s3:// and writes its
tables there. The head runs with its own temp dir and ports, and is stopped by signalling `ray start --block` (never
`ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import moved, save
from s3server import start, upload

from yolo_audit.results.store import open_results

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_and_bucket():
    server, s3_env, fs = start("audit")
    env = {**os.environ, **s3_env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    dashboard = _port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--port", str(_port()), "--dashboard-port", str(dashboard),
         "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2", "--temp-dir", temp,
         "--ray-client-server-port", str(_port()), "--dashboard-agent-listen-port", str(_port()), "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                time.sleep(1)
        else:
            pytest.fail("the Ray dashboard did not come up within 120 s")
        yield url, env, fs, temp
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its own processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        server.terminate()
        server.wait(timeout=10)


def test_ray_job_submit_runs_weights_on_the_head_and_writes_to_s3(head_and_bucket, tmp_path, base_model, monkeypatch):
    url, env, fs, temp = head_and_bucket
    local = tmp_path / "ckpts"
    save(base_model, local / "base.pt", name="base")
    save(moved(base_model, 1, first=15), local / "ft" / "weights" / "last.pt", name="ft")
    upload(fs, local, "audit/ckpts")
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--", str(BIN / "yolo-audit"), "weights",
         "s3://audit/ckpts/ft", "--reference", "s3://audit/ckpts/base.pt", "--out", "s3://audit/job",
         "--address", "auto"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
    assert "Freeze verification" in job.stdout  # the command's own summary, streamed back by the job API
    assert "succeeded" in job.stdout + job.stderr
    assert f"[ray] Ray's own logs: {temp}/session_" in job.stdout + job.stderr  # its tasks ran on this head's Ray
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    tables = {t: f.collect() for t, f in open_results("s3://audit/job").items()}
    assert sorted(tables["checkpoints"]["path"]) == ["s3://audit/ckpts/base.pt", "s3://audit/ckpts/ft/weights/last.pt"]
    verdicts = tables["layer_freeze"].group_by("verdict").len()
    assert set(verdicts["verdict"]) == {"frozen_exact", "trained"}  # layers 0-14 untouched, 15-22 moved
