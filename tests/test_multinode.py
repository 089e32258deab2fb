"""A head and a worker node on this machine (Ray's cluster test utilities), a weights job spread over both, the worker
node removed while tasks are pending: the job finishes (Ray retries the lost tasks on the head) and its tables equal
the same job run in process. Runs in a subprocess: the rest of the suite shares one embedded Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import io, json, sys, threading, time
from copy import deepcopy
from pathlib import Path
import polars as pl
import ray, torch
from ray.cluster_utils import Cluster
from yolo_audit.env import prepare
prepare()
from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.model.synthetic import build_model, save_ultralytics
from yolo_audit.results.store import open_results

root = Path(sys.argv[1])
base = build_model("yolov8n.yaml", seed=0)
ref = save_ultralytics(base, root / "base.pt", train_args={"name": "base"}, epoch=-1, key="model")
for i in range(8):
    m = deepcopy(base)
    with torch.no_grad():
        for p in m.model[12:].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.01)
    save_ultralytics(m, root / "runs" / f"r{i}" / "weights" / "last.pt", train_args={"name": f"r{i}"}, epoch=-1,
                     key="model")

analyze_weights([root / "runs"], root / "local", reference=ref, engine="local", stream=io.StringIO())

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")
seen = {}

def kill_when_started():
    folder = root / "cluster" / "weight_stats"
    while not (folder.is_dir() and any(folder.glob("*.parquet"))):
        time.sleep(0.05)
    seen["done_at_kill"] = len(list(folder.glob("*.parquet")))
    cluster.remove_node(worker, allow_graceful=False)

killer = threading.Thread(target=kill_when_started)
killer.start()
summary = analyze_weights([root / "runs"], root / "cluster", reference=ref, stream=io.StringIO())
killer.join()
alive = [n for n in ray.nodes() if n["Alive"]]
ray.shutdown()
cluster.shutdown()

def frames(out):
    return {t: f.collect() for t, f in open_results(out).items() if t != "ledger"}

a, b = frames(root / "local"), frames(root / "cluster")
equal = {}
for t in a:
    keys = [c for c, k in a[t].schema.items() if not isinstance(k, pl.List)]
    equal[t] = a[t].sort(keys).equals(b[t].sort(keys))
print(json.dumps({"ok": summary.ok, "errors": [str(e) for e in summary.errors], "equal": equal,
                  "done_at_kill": seen["done_at_kill"], "total": 9, "alive": len(alive)}))
"""


def test_worker_node_lost_mid_job_tables_equal_local(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ok"], r["errors"]
    assert r["done_at_kill"] < r["total"]  # the node went away while tasks were pending
    assert r["alive"] == 1
    assert r["equal"] and all(r["equal"].values()), r["equal"]
