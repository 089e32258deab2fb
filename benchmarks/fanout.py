"""Benchmark: the same weight analysis of 32 checkpoints on an embedded Ray with 1 and with 2 worker CPUs.

Builds 32 perturbed copies of a model (Ultralytics fp16 layout) and a base, then for each worker count starts Ray,
warms the workers up on a few checkpoints (process start and imports are not the fan-out being measured), and times
`analyze_weights` over all 32 against the base: statistics, histograms, divergence, freeze verdicts, Parquet writes.
Last line: {"benchmark": "fanout", "ratio": speedup, "goal": 1.7}.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

from common import parse

from yolo_audit.env import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8s.yaml")
    parser.add_argument("--checkpoints", type=int, default=32)
    args = parse(parser, {"model": "yolov8n.yaml", "checkpoints": 4})
    prepare()
    import ray

    from yolo_audit.analyses.weights.plan import analyze_weights
    from yolo_audit.model.synthetic import build_model, perturb, save_ultralytics

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(args.model, seed=0)
        base = save_ultralytics(model, root / "base.pt", train_args={"name": "base"}, epoch=-1, key="model")
        for i in range(args.checkpoints):
            perturb(model, range(10, 23), scale=0.01, seed=i)
            save_ultralytics(
                model, root / "ckpts" / f"epoch{i + 1}.pt", train_args={"name": "r"}, epoch=i + 1, key="ema"
            )
        warm = sorted((root / "ckpts").glob("*.pt"))[:4]
        seconds = {}
        for workers in (1, 2):
            # address="local": a new Ray of these CPUs, never one that happens to run here (the tests' own)
            ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR")
            try:
                analyze_weights(warm, root / f"warm{workers}", reference=base, stream=io.StringIO())
                start = time.perf_counter()
                summary = analyze_weights(
                    [root / "ckpts"], root / f"out{workers}", reference=base, stream=io.StringIO()
                )
                seconds[workers] = time.perf_counter() - start
                assert summary.ok, summary.errors
            finally:
                ray.shutdown()
            print(f"{workers} worker(s): {args.checkpoints} checkpoints of {args.model} in {seconds[workers]:.2f} s")
    print(json.dumps({"benchmark": "fanout", "ratio": round(seconds[1] / seconds[2], 3), "goal": 1.7}))


if __name__ == "__main__":
    main()
