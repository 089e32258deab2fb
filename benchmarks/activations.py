"""Benchmark: throughput of a forward pass with every top-level module hooked vs the same pass without hooks.

yolov8s built offline, batch 8, torch threads = the machine's cores, imgsz 640 (the user's) and 320, on the same
input, alternated `--repeats` times, medians compared:
- plain: the network as a hand-written script runs it (`model(x)`, default memory format);
- hooked: as `yolo-audit activations` runs it (`model.build.for_passes`: channels-last on the CPU; every top-level
  module hooked, its per-channel statistics folded in);
- plain as placed: the same placement without hooks (what the hooks alone cost).
`ratio` = plain / hooked throughput ratio (the worse of the two sizes; above 1: faster than the plain script's pass);
`hook_ratio` = plain-as-placed / hooked (the hooks' own cost).
Last line: {"benchmark": "activations", "ratio": R, "hook_ratio": H, "goal": 0.85}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from common import parse

from yolo_audit.env import prepare
from yolo_audit.runtime.devices import set_threads as set_torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8s.yaml")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    args = parse(parser, {"model": "yolov8n.yaml", "batch": 2, "repeats": 1, "sizes": [64]})
    prepare()
    set_torch_threads(os.cpu_count() or 1)
    import copy

    import torch

    from yolo_audit.model.build import for_passes
    from yolo_audit.model.hooks import Recorder
    from yolo_audit.model.synthetic import build_model
    from yolo_audit.runtime.devices import keep_freed_memory

    keep_freed_memory()  # as the command's tasks do
    model = build_model(args.model, seed=0).eval()
    placed = for_passes(copy.deepcopy(model), torch.device("cpu"))
    ratios, hook_ratios = {}, {}
    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        recorder = Recorder(placed)

        def plain(x: torch.Tensor = x) -> None:
            model(x)

        def as_placed(x: torch.Tensor = x) -> None:
            placed(x)

        def hooked(x: torch.Tensor = x, recorder: Recorder = recorder) -> None:
            with recorder:
                placed(x)

        runs = (("plain", plain), ("as placed", as_placed), ("hooked", hooked))
        times: dict[str, list[float]] = {name: [] for name, _ in runs}
        with torch.inference_mode():
            for _, fn in runs:  # warm-up
                fn()
            for _ in range(args.repeats):
                for name, fn in runs:
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        p, a, h = (statistics.median(times[name]) for name, _ in runs)
        ratios[size], hook_ratios[size] = p / h, a / h
        print(f"imgsz {size}: plain {args.batch / p:6.2f} img/s, as placed {args.batch / a:6.2f} img/s, hooked "
              f"{args.batch / h:6.2f} img/s; ratio {p / h:.3f}, hooks alone {a / h:.3f}")  # fmt: skip
    print(json.dumps({"benchmark": "activations", "ratio": round(min(ratios.values()), 3),
                      "hook_ratio": round(min(hook_ratios.values()), 3), "goal": 0.85}))  # fmt: skip


if __name__ == "__main__":
    main()
