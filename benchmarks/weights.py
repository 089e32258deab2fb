"""Benchmark: (load + statistics + divergence) / torch.load of the same file, yolov8s-sized, measured side by side.

Builds two yolov8s checkpoints offline (Ultralytics' fp16 layout: a base and a fine-tune of it with layers
0..`--frozen`-1 left as they were, like Ultralytics' freeze=10), then alternates, for `--repeats` rounds, timing
`torch.load(file, map_location="cpu")` (torch's default since 2.6: weights_only=True, the model classes allowed),
`load_checkpoint` alone (sha256 of the file, restricted unpickling, fp32 conversion, content hash) and the full
per-checkpoint work of `yolo-audit weights --reference`: load, weight_stats (moments, spectral norm, stable rank),
channel_weights, shared-bin histograms, and divergence, channel divergence and freeze verdicts against the reference
(in memory with its cached statistics, as in a task). Medians compared.
Last line: {"benchmark": "weights", "ratio": full / torch.load, "ratio_to_load_checkpoint": ..., "goal": 2.0}.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import parse

from yolo_audit.env import prepare
from yolo_audit.runtime.devices import set_threads as set_torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8s.yaml")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frozen", type=int, default=10, help="layers 0..N-1 left as in the base (0: all trained)")
    args = parse(parser, {"model": "yolov8n.yaml", "repeats": 1})
    prepare()
    set_torch_threads(args.threads)
    import torch

    from yolo_audit.analyses.weights.columns import (
        WeightOptions,
        analyze,
        reference_cache,
        shared_edges,
        tensor_stats_ranges,
    )
    from yolo_audit.model.checkpoint import load_checkpoint
    from yolo_audit.model.synthetic import build_model, perturb, save_ultralytics

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.model, seed=0)
        base = save_ultralytics(model, Path(tmp) / "base.pt", train_args={"name": "base"}, epoch=-1, key="model")
        perturb(model, range(args.frozen, 23), scale=0.05, seed=1)
        tuned = save_ultralytics(
            model, Path(tmp) / "tuned.pt", train_args={"freeze": args.frozen}, epoch=-1, key="model"
        )
        ref = load_checkpoint(base)
        opts = WeightOptions()
        edges = shared_edges([tensor_stats_ranges(ref)])
        cache = reference_cache(ref, opts, edges)  # once per command, in the driver

        import importlib

        # allow the file's model classes, as Ultralytics' restricted loader does (our loader needs none of them)
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(tuned)):
            module, _, attr = name.rpartition(".")
            torch.serialization.add_safe_globals([getattr(importlib.import_module(module), attr)])

        def torch_load() -> None:
            torch.load(tuned, map_location="cpu")  # weights_only=True (the default), the classes allowed

        def load_only() -> None:
            load_checkpoint(tuned)

        def full() -> None:  # exactly what each Ray task of `yolo-audit weights --reference` computes
            for step in analyze(load_checkpoint(tuned), opts, reference=ref, cache=cache, edges=edges, bins_id="ref"):
                step.compute()

        gc.freeze()  # what exists now is never scanned again, as in a command once it is set up (env.settled)
        for fn in (torch_load, load_only, full):  # warm-up
            fn()
        t_torch, t_load, t_full = [], [], []
        for _ in range(args.repeats):
            for fn, sink in ((torch_load, t_torch), (load_only, t_load), (full, t_full)):
                start = time.perf_counter()
                fn()
                sink.append(time.perf_counter() - start)
        n_params = sum(v.numel() for v in ref.tensors.values())
    torch_s, load_s, full_s = statistics.median(t_torch), statistics.median(t_load), statistics.median(t_full)
    print(
        f"model {args.model}: {n_params / 1e6:.1f}M values, {len(ref.tensors)} tensors, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"torch.load        median {torch_s * 1000:7.1f} ms  (min {min(t_torch) * 1000:.1f})")
    print(f"load_checkpoint   median {load_s * 1000:7.1f} ms  (min {min(t_load) * 1000:.1f})")
    print(f"load + analysis   median {full_s * 1000:7.1f} ms  (min {min(t_full) * 1000:.1f})")
    ratios = {"ratio": round(full_s / torch_s, 3), "ratio_to_load_checkpoint": round(full_s / load_s, 3)}
    print(json.dumps({"benchmark": "weights", **ratios, "goal": 2.0}))


if __name__ == "__main__":
    main()
