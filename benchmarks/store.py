"""Benchmark: rankings, a query and the report on a store shaped like a large cluster study, before and after
`yolo-audit compact`.

Generates (through the project's own writer and schema) the files a study of --runs runs x --epochs snapshots of
YOLOv8s writes: per checkpoint one file each of `checkpoints` (1 row), `weight_stats` and `weight_divergence` (355
rows: YOLOv8s' tensors), `layer_freeze` (23 rows) and `channel_stats` (3,456 rows: its units at module depth). Then
times `rank dead-units`, `rank divergence`, a `query` and the `report`, compacts, and times them again. With
--s3 the same is done on a copy of the store in an S3 API on localhost (moto's server, as in the tests).
Last line: {"benchmark": "store", "checkpoints": N, "max_ranking_s_compacted": s, "speedup_local": x, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import parse

TENSORS, LAYERS, UNITS = 355, 23, 3456
ROLES = ("conv_weight", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")


def _fill(table: str, n: int, rng: np.random.Generator, fixed: dict[str, object]) -> dict[str, object]:
    from yolo_audit.results.schema import schema

    cols: dict[str, object] = {}
    for field in schema(table):
        kind = field.type
        if field.name in fixed:
            value = fixed[field.name]
            cols[field.name] = value if isinstance(value, list | np.ndarray) else [value] * n
        elif pa.types.is_floating(kind):
            cols[field.name] = rng.random(n)
        elif pa.types.is_integer(kind):
            cols[field.name] = np.arange(n, dtype=np.int64) % 1000
        elif pa.types.is_boolean(kind):
            cols[field.name] = rng.random(n) < 0.01
        elif pa.types.is_string(kind):
            cols[field.name] = [f"{field.name}-{i % 50}" for i in range(n)]
        else:
            cols[field.name] = [None] * n
    return cols


def build(out: Path, runs: int, epochs: int) -> int:
    from yolo_audit.results import files
    from yolo_audit.results.location import locate

    loc = locate(out)
    rng = np.random.default_rng(0)
    params = [f"model.{i % LAYERS}.p{i}.weight" for i in range(TENSORS)]
    tensor_layers = np.array([i % LAYERS for i in range(TENSORS)], dtype=np.int32)
    roles = [ROLES[i % len(ROLES)] for i in range(TENSORS)]
    unit_layers = np.repeat(np.arange(LAYERS - 1, dtype=np.int32), -(-UNITS // (LAYERS - 1)))[:UNITS]
    base = "b" * 16
    count = 0
    for r in range(runs):
        for e in range(1, epochs + 1):
            cid = f"{r:04x}{e:012x}"
            common = {"checkpoint_id": cid}
            files.write(loc, "checkpoints", cid, _fill("checkpoints", 1, rng, {
                **common, "run": f"run{r}", "epoch": e, "path": f"/runs/run{r}/epoch{e}.safetensors", "aliases": [[]],
                "declared_frozen": [[]], "freeze": "10"}))  # fmt: skip
            files.write(loc, "weight_stats", cid, _fill("weight_stats", TENSORS, rng, {
                **common, "param": params, "layer": tensor_layers, "role": roles}))  # fmt: skip
            files.write(loc, "weight_divergence", f"{cid}-vs-{base}", _fill("weight_divergence", TENSORS, rng, {
                **common, "reference_id": base, "param": params, "layer": tensor_layers, "role": roles,
                "reason": None}))  # fmt: skip
            files.write(loc, "layer_freeze", f"{cid}-vs-{base}", _fill("layer_freeze", LAYERS, rng, {
                **common, "reference_id": base, "layer": np.arange(LAYERS, dtype=np.int32)}))  # fmt: skip
            files.write(loc, "channel_stats", f"{cid}-{'d' * 16}", _fill("channel_stats", UNITS, rng, {
                **common, "dataset_id": "d" * 16, "layer": unit_layers, "unit_kind": "unit",
                "module": [f"model.{x}" for x in unit_layers], "channel": np.arange(UNITS, dtype=np.int32),
                "newly_dead": None, "revived": None}))  # fmt: skip
            count += 1
    return count


SQL = "select run, count(*) as n, max(epoch) as last from checkpoints group by run order by run"


def timings(where: str, report_to: Path) -> dict[str, float]:
    from yolo_audit.report import write_report
    from yolo_audit.results.rank import query, rank_dead_units, rank_divergence

    work: dict[str, Callable[[], object]] = {
        "rank dead-units": lambda: rank_dead_units(where).collect(),
        "rank divergence": lambda: rank_divergence(where).collect(),
        "query": lambda: query(where, SQL),
        "report": lambda: write_report(where, report_to),
    }
    seconds = {}
    for name, fn in work.items():
        start = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        print(f"  {name}: {seconds[name]:.2f} s", flush=True)
    return seconds


def start_s3(port: int) -> subprocess.Popen:
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       "AWS_ALLOW_HTTP": "true"})  # fmt: skip
    import pyarrow.fs as pafs

    for _ in range(100):
        try:
            pafs.S3FileSystem(
                endpoint_override=f"http://127.0.0.1:{port}", scheme="http", allow_bucket_creation=True
            ).create_dir("bench")
            return server
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--s3", action="store_true", help="also through an S3 API on localhost (moto)")
    parser.add_argument("--keep", type=Path, help="build the store here (reused when it exists)")
    args = parse(parser, {"runs": 2, "epochs": 3, "s3": False})
    from yolo_audit.env import prepare

    prepare()
    from yolo_audit.results.compact import compact
    from yolo_audit.results.location import locate, upload_dir

    tmp = Path(tempfile.mkdtemp())
    store = args.keep or tmp / "store"
    start = time.perf_counter()
    n = args.runs * args.epochs
    if not (store / "checkpoints").is_dir():
        n = build(store, args.runs, args.epochs)
    files = sum(1 for _ in store.rglob("*.parquet"))
    print(f"store: {n} checkpoints, {files} files ({time.perf_counter() - start:.0f} s to build)", flush=True)
    result: dict[str, object] = {"benchmark": "store", "checkpoints": n, "files": files}
    work = tmp / "local"
    shutil.copytree(store, work)
    print("local, per-task files:")
    before = timings(str(work), tmp / "r1.html")
    start = time.perf_counter()
    compact(locate(work))
    print(f"compact: {time.perf_counter() - start:.1f} s")
    print("local, compacted:")
    after = timings(str(work), tmp / "r2.html")
    rankings = ("rank dead-units", "rank divergence", "query")
    result["max_ranking_s_compacted"] = max(after[k] for k in rankings)
    result["speedup_local"] = round(sum(before[k] for k in rankings) / sum(after[k] for k in rankings), 2)
    result["local_before"], result["local_after"] = before, after
    if args.s3:
        server = start_s3(5555)
        try:
            upload_dir(store, locate("s3://bench/store"))
            print("S3, per-task files:")
            s3_before = timings("s3://bench/store", tmp / "r3.html")
            compact(locate("s3://bench/store"))
            print("S3, compacted:")
            s3_after = timings("s3://bench/store", tmp / "r4.html")
            result["speedup_s3"] = round(sum(s3_before[k] for k in rankings) / sum(s3_after[k] for k in rankings), 2)
            result["s3_before"], result["s3_after"] = s3_before, s3_after
        finally:
            server.terminate()
    shutil.rmtree(tmp, ignore_errors=True)
    result["goal_ranking_s"], result["goal_speedup_s3"] = 2.0, 5.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
