"""A study on a real multi-node Ray (a head and a worker node started on this machine by Ray's cluster test utilities)
writing to a real S3 API (moto's server on localhost), the worker node removed mid-study and a new one joining (as an
autoscaler replaces it): the study finishes (Ray retries what was lost), its analysis tasks ran on both nodes, and its
tables equal the same study run locally. Runs in a subprocess: the rest of the suite shares one embedded Ray, and a
process holds one Ray connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import TINY_STUDY

SCRIPT = r"""
import io, json, os, re, subprocess, sys, threading, time
from pathlib import Path
import polars as pl
import pyarrow.fs as pafs

root, study_file = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, sys.argv[3])  # the tests folder
from s3server import start
server, env, fs = start("audit")
os.environ.update(env)

import ray
from ray.cluster_utils import Cluster
from yolo_audit.results.store import open_results
from yolo_audit.study.driver import run_study
from yolo_audit.study.spec import load_study

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
seen = {}

def kill_after_pretraining():  # the variants are then training, spread over both nodes
    while not fs.get_file_info(pafs.FileSelector("audit/study/runs", allow_not_found=True)):
        time.sleep(0.2)
    time.sleep(1.0)
    seen["runs_at_kill"] = len(fs.get_file_info(pafs.FileSelector("audit/study/runs")))
    cluster.remove_node(worker, allow_graceful=False)
    # a new node joins, as an autoscaler replaces a lost one (`ray start`: add_node works from the main thread only)
    seen["joined"] = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--address",
                                       cluster.address, "--num-cpus", "2", "--block"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)

killer = threading.Thread(target=kill_after_pretraining, daemon=True)
killer.start()
progress = io.StringIO()
NODES = r"\[(\w+)\] \[#+\] .* on (\d+) nodes?"  # a stage's last progress line: how many nodes ran its tasks
remote = run_study(load_study(study_file, out="s3://audit/study"), address=cluster.address, stream=progress)
killer.join(timeout=5)
seen["joined"].terminate()  # `ray start --block` stops its node's processes on SIGTERM
seen["joined"].wait(timeout=60)
cluster.shutdown()
local = run_study(load_study(study_file, out=str(root / "local")), stream=io.StringIO())
server_alive = server.poll() is None

def frames(out):
    return {t: f.collect() for t, f in open_results(out).items()}

a, b = frames(root / "local"), frames("s3://audit/study")
equal = {}
for t in ("weight_stats", "weight_divergence", "layer_freeze", "channel_weights"):
    keys = [c for c, k in a[t].schema.items() if not isinstance(k, pl.List)]
    equal[t] = a[t].sort(keys).equals(b[t].sort(keys))
runs = b["runs"].select("run", "status").sort("run").rows()
server.terminate()
print(json.dumps({"ok": remote.ok and local.ok, "equal": equal, "runs": runs,
                  "runs_at_kill": seen.get("runs_at_kill"), "ids": sorted(set(a["checkpoints"]["checkpoint_id"]))
                  == sorted(set(b["checkpoints"]["checkpoint_id"])), "moto": server_alive,
                  "nodes": {m[0]: int(m[1]) for m in re.findall(NODES, progress.getvalue())}}))
"""


def test_study_on_two_nodes_to_s3_survives_losing_a_node(tmp_path):
    study = {**TINY_STUDY, "variants": [{"name": "none", "freeze": 0}, {"name": "head", "freeze": 10}]}
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(study_file), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=420, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ok"] and r["moto"]
    assert r["runs_at_kill"] == 1  # only the base had finished: the variants were training when the node went away
    assert r["runs"] == [["base", "done"], ["head-s0", "done"], ["none-s0", "done"]]
    assert r["ids"]  # every checkpoint trained on the cluster is bit-identical to the local run's
    assert all(r["equal"].values()), r["equal"]
    assert r["nodes"]["weights"] == 2, r["nodes"]  # the analysis tasks ran on the head and the node that joined
    noise = [line for line in proc.stderr.splitlines() if any(w in line for w in ("raylet", "(autoscaler", "WARNING"))]
    assert not noise, noise[:5]  # losing a node prints none of Ray's state dumps into the driver's output
