"""Benchmark: throughput of a forward pass with every top-level module hooked vs the same pass without hooks.

yolov8s built offline, batch 8, torch threads = the machine's cores, imgsz 640 (the user's) and 320, plain and hooked
passes alternated `--repeats` times on the same input; medians compared. The worse ratio of the two sizes counts.
Last line: {"benchmark": "activations", "ratio": R, "goal": 0.85}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from yolo_audit.env import prepare
from yolo_audit.runtime.devices import set_threads as set_torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8s.yaml")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    args = parser.parse_args()
    prepare()
    set_torch_threads(os.cpu_count() or 1)
    import torch

    from yolo_audit.model.hooks import Recorder
    from yolo_audit.model.synthetic import build_model

    model = build_model(args.model, seed=0).eval()
    ratios = {}
    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        recorder = Recorder(model)

        def plain(x: torch.Tensor = x) -> None:
            model(x)

        def hooked(x: torch.Tensor = x, recorder: Recorder = recorder) -> None:
            with recorder:
                model(x)

        times: dict[str, list[float]] = {"plain": [], "hooked": []}
        with torch.inference_mode():
            plain(), hooked()  # warm-up
            for _ in range(args.repeats):
                for name, fn in (("plain", plain), ("hooked", hooked)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        p, h = statistics.median(times["plain"]), statistics.median(times["hooked"])
        ratios[size] = p / h
        print(f"imgsz {size}: plain {args.batch / p:6.2f} img/s, hooked {args.batch / h:6.2f} img/s, ratio {p / h:.3f}")
    print(json.dumps({"benchmark": "activations", "ratio": round(min(ratios.values()), 3), "goal": 0.85}))


if __name__ == "__main__":
    main()
