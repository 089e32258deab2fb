"""Scheduling on a two-node Ray cluster (Ray's own test helper), one node advertising a fake GPU.

Runs in a subprocess: the rest of the suite shares one embedded Ray, and a process holds one Ray connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, os, time
import ray
from ray.cluster_utils import Cluster
from yolo_audit.runtime.tasks import Task, run_tasks
from yolo_audit.study.driver import train_tasks
from yolo_audit.study.training import TrainSpec
from yolo_audit.study.spec import Resources

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
gpu_node = cluster.add_node(num_cpus=2, num_gpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")

def where(spec=None, pause=0.3):
    start = time.time()
    time.sleep(pause)
    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id(), "gpus": ray.get_gpu_ids(), "device": getattr(spec, "device", None),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}

def trains(spec):  # long enough that two variants overlap on a node with two GPUs
    return where(spec, pause=3.0)

specs = [TrainSpec(run=f"r{i}", variant="v", model="m", data="d", project="/tmp") for i in range(3)]
gpu = run_tasks(train_tasks(specs, Resources(cpus_per_task=1, gpus_per_task=1), gpus=1, fn=where), stage="gpu")
pair = run_tasks(train_tasks(specs[:2], Resources(cpus_per_task=1, gpus_per_task=1), gpus=1, fn=trains), stage="two")
cpu = run_tasks([Task(f"c{i}", where, num_cpus=1) for i in range(8)], stage="cpu")
plain = train_tasks(specs, Resources(), gpus=0, fn=where)
print(json.dumps({
    "gpu_node": gpu_node.node_id, "gpu": gpu, "cpu": cpu, "pair": pair,
    "cpu_only_plan": [[t.num_gpus, t.args[0].device] for t in plain],
}))
ray.shutdown()
cluster.shutdown()
"""


def _run(script: str, *, timeout: int) -> dict:
    """Run a cluster script in a fresh interpreter (its own Ray); its last line of output is JSON."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_tasks_go_to_the_gpu_node_and_cpu_tasks_run_anywhere():
    result = _run(SCRIPT, timeout=300)
    assert {r["node"] for r in result["gpu"]} == {result["gpu_node"]}
    assert all(r["gpus"] and r["device"] == "0" for r in result["gpu"])
    assert len({r["node"] for r in result["cpu"]}) == 2  # CPU tasks use both nodes
    assert all(not r["gpus"] for r in result["cpu"])
    assert result["cpu_only_plan"] == [[0, "cpu"]] * 3
    # a node with two GPUs runs two variants at once, each seeing only its own GPU (device 0 inside the task)
    a, b = result["pair"]
    assert a["start"] < b["end"] and b["start"] < a["end"]  # concurrent
    assert {a["visible"], b["visible"]} == {"0", "1"} and a["gpus"] != b["gpus"] and a["device"] == b["device"] == "0"


def test_training_on_a_gpu_keeps_ultralytics_amp_and_the_cpu_trains_in_float32(tmp_path):
    from dataclasses import replace

    from yolo_audit.study.synth import make_dataset
    from yolo_audit.study.training import TrainSpec, train_arguments

    data = str(make_dataset(tmp_path / "d", images=4, imgsz=32))
    spec = TrainSpec(run="r", variant="v", model="yolov8n.yaml", data=data, project=str(tmp_path), nbs=4)
    on_gpu, on_cpu = train_arguments(replace(spec, device="0")), train_arguments(replace(spec, device="cpu"))
    assert on_gpu["amp"] is True and on_gpu["device"] == "0" and on_cpu["amp"] is False and on_cpu["nbs"] == 4


GPU_SCRIPT_HELPERS = r"""
import json, os, subprocess, sys, time
from pathlib import Path
import ray
from yolo_audit.errors import AuditError
from yolo_audit.runtime.resources import require_resources
from yolo_audit.runtime.tasks import run_tasks
from yolo_audit.study.driver import gpus_to_ask, train_tasks
from yolo_audit.study.spec import Resources
from yolo_audit.study.training import TrainSpec

def error(fn):  # the one line a user would see, or None
    try:
        fn()
    except AuditError as exc:
        return str(exc)
    return None

def where(spec=None):  # where a task ran, and with which GPUs and device
    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id(), "gpus": ray.get_gpu_ids(), "device": getattr(spec, "device", None)}
"""

PROBE = (
    GPU_SCRIPT_HELPERS
    + r"""
from ray.cluster_utils import Cluster

out = {}
# a CPU-only cluster: an explicit GPU request waits, then fails in one line; unset asks for none
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
ray.init(address=cluster.address, logging_level="ERROR")
out["explicit"] = gpus_to_ask(Resources(gpus_per_task=1))
out["unset"] = gpus_to_ask(Resources())
out["cpu_only"] = gpus_to_ask(Resources(gpus_per_task=1), cpu_only=True)
start = time.monotonic()
out["timeout"] = error(lambda: require_resources(1, 1, timeout=3, embedded=False))
out["waited"] = time.monotonic() - start
out["embedded"] = error(lambda: require_resources(1, 1, timeout=600, embedded=True))
ray.shutdown()
cluster.shutdown()
# a GPU node joins while the request waits (what an autoscaler does for it): the probe lands there and, fake GPUs
# having no CUDA, fails in one line; training tasks then land on that node with device 0
import threading
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
ray.init(address=cluster.address, logging_level="ERROR")
out["gpus_before"] = ray.cluster_resources().get("GPU", 0)
probe = threading.Thread(target=lambda: out.update(no_cuda=error(
    lambda: require_resources(1, 1, timeout=60, embedded=False))))
probe.start()
time.sleep(2)
gpu = cluster.add_node(num_cpus=2, num_gpus=1)
out["gpu_node"] = gpu.node_id
probe.join(70)
specs = [TrainSpec(run=f"r{i}", variant="v", model="m", data="d", project="/tmp") for i in range(2)]
out["train"] = run_tasks(train_tasks(specs, Resources(gpus_per_task=1), gpus=1, fn=where), stage="train")
# the only GPU node dies while GPU tasks run: the retried tasks can run nowhere, and the stage says so in bounded time
def slow(spec=None):
    time.sleep(6)
    return where(spec)
threading.Timer(1.5, lambda: cluster.remove_node(gpu, allow_graceful=False)).start()
start = time.monotonic()
out["lost"] = error(lambda: run_tasks(train_tasks(specs, Resources(gpus_per_task=1), gpus=1, fn=slow), stage="train",
                                      retries=2, schedule_timeout=3))
out["lost_after"] = time.monotonic() - start
ray.shutdown()
cluster.shutdown()
print(json.dumps(out))
"""
)


def test_gpu_requests_wait_for_a_gpu_node_or_fail_in_one_line():
    r = _run(PROBE, timeout=120)
    assert (r["explicit"], r["unset"], r["cpu_only"]) == (1, 0, 0)
    assert "no node took a task asking for 1 CPU and 1 GPU within 3 s" in r["timeout"] and "--cpu-only" in r["timeout"]
    assert 3 <= r["waited"] < 60
    assert "set resources.gpus_per_task: 0" in r["embedded"]
    assert r["gpus_before"] == 0  # the GPU node joined while the request waited
    assert "advertises a GPU but torch" in r["no_cuda"] and "--cpu-only" in r["no_cuda"]
    assert all(t["gpus"] and t["device"] == "0" and t["node"] == r["gpu_node"] for t in r["train"])
    assert "[train] 2 task(s) asking for 1 CPU and 1 GPU waited 3 s and no live node" in r["lost"]
    assert r["lost_after"] < 60  # not forever


AUTOSCALED = (
    GPU_SCRIPT_HELPERS
    + r"""
import socket, tempfile

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
tmp = Path(tempfile.mkdtemp(prefix="ya-", dir="/tmp"))  # short: Ray's unix socket paths live below it
# Ray's fake multi-node provider: the monitor launches "nodes" as local processes; a CPU head, a GPU type from zero
config = {
    "cluster_name": "fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
        "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
    },
    "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "initialization_commands": [],
    "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
}
(tmp / "cluster.json").write_text(json.dumps(config))
env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
subprocess.check_call([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                       f"--temp-dir={tmp}", f"--autoscaling-config={tmp / 'cluster.json'}",
                       "--include-dashboard=false"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
out = {}
try:
    ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR")
    out["head"] = ray.get_runtime_context().get_node_id()
    out["gpus_before"] = ray.cluster_resources().get("GPU", 0)
    out["probe"] = error(lambda: require_resources(1, 1, timeout=120, embedded=False))
    out["gpus_after"] = ray.cluster_resources().get("GPU", 0)
    specs = [TrainSpec(run=f"r{i}", variant="v", model="m", data="d", project="/tmp") for i in range(2)]
    out["train"] = run_tasks(train_tasks(specs, Resources(gpus_per_task=1), gpus=1, fn=where), stage="train")
    ray.shutdown()
finally:  # only this cluster's processes (`ray stop` would stop every Ray on the machine)
    subprocess.run(["pkill", "-9", "-f", str(tmp)])
    subprocess.run(["rm", "-rf", str(tmp)])
print(json.dumps(out))
"""
)


def test_autoscaler_launches_the_gpu_node_training_asks_for():
    r = _run(AUTOSCALED, timeout=200)
    assert r["gpus_before"] == 0 and r["gpus_after"] == 1  # min_workers 0: launched for the request
    assert "advertises a GPU but torch" in r["probe"]  # the probe ran there (fake GPUs have no CUDA)
    assert all(t["node"] != r["head"] and t["gpus"] and t["device"] == "0" for t in r["train"])
