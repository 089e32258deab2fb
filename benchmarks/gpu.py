"""Benchmark: does the analysis keep a GPU busy, and does it give the CPU's numbers? (CUDA when present, else the CPU.)

In one process, on the same images (synthetic, --imgsz px, written to disk as JPEG so decoding counts) and the same
--checkpoints yolov8s checkpoints (built offline from the packaged yaml, perturbed):
- plain: a hand-written forward pass over images already on the device, batch --batch, in true float32 (TF32 off:
  what the analyses run in), and with the device's defaults (`plain_default_images_per_s`: TF32 where cuDNN uses it);
- activations: `analyze_activations` (--maps 0) end to end in this warm process: loading, decoding, passes, per-channel
  statistics, writing; checkpoint-images per second;
- similarity: `analyze_similarity` the same way;
- the loader alone: images decoded and letterboxed per second with 1 thread and with a GPU task's threads;
- agreement: similarity and activation statistics over --agree images on the device against the CPU: max |delta CKA|
  and the largest relative difference of a channel's mean, std or mean |a| (relative to the module's largest value of
  that statistic, so channels near zero do not divide by zero). On a CPU the CPU is compared with itself.
`activations_ratio` and `similarity_ratio` are their images per second over plain's (fp32). Goals on one GPU: ratios
>= 0.5, max_cka_diff <= 1e-4, max_stat_rel_diff <= 1e-5.
Last line: {"benchmark": "gpu", "device": ..., "plain_images_per_s": ..., "activations_images_per_s": ...,
"similarity_images_per_s": ..., "activations_ratio": ..., "similarity_ratio": ..., "max_cka_diff": ...,
"max_stat_rel_diff": ..., ...}.
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
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--agree", type=int, default=64, help="images for the GPU vs CPU comparison")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse(parser, {"model": "yolov8n.yaml", "checkpoints": 2, "images": 16, "agree": 8, "imgsz": 64,
                          "batch": 4, "repeats": 1})  # fmt: skip
    prepare()
    import os

    import polars as pl
    import torch

    from yolo_audit.analyses import images as pipeline
    from yolo_audit.api import analyze_activations, analyze_similarity
    from yolo_audit.model.build import for_passes
    from yolo_audit.model.synthetic import build_model, perturb, save_ultralytics
    from yolo_audit.runtime.devices import exact_float32, set_threads
    from yolo_audit.study.synth import make_dataset

    set_threads(os.cpu_count() or 1, load_numba=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, object] = {"benchmark": "gpu", "device": torch.cuda.get_device_name(0) if device.type == "cuda"
                                 else "cpu", "imgsz": args.imgsz, "batch": args.batch}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        net = build_model(args.model, seed=0)
        ckpts = []
        for i in range(args.checkpoints):
            ckpts.append(str(save_ultralytics(net, root / f"c{i}.pt", train_args={"name": f"c{i}"}, epoch=-1,
                                              key="model")))  # fmt: skip
            perturb(net, range(10, 23), scale=0.01, seed=i)
        data = make_dataset(root / "data", images=args.images * 4 // 3 + 4, imgsz=args.imgsz, domain="B", seed=3)
        images = pipeline.list_images(data, split="train")[: args.images]
        link = root / "images"
        link.mkdir()
        for i, path in enumerate(images):
            (link / f"{i:05d}{Path(path).suffix}").symlink_to(path)

        # the loader alone
        groups = pipeline.batches(images, args.batch)
        many = max(2, pipeline.decode_workers(torch.device("cuda")))  # what a GPU task uses (min(8, CPUs))
        for name, workers in (("warm-up", 1), ("loader_images_per_s_1", 1), (f"loader_images_per_s_{many}", many)):
            start = time.perf_counter()
            for _ in pipeline.prefetched(groups, args.imgsz, torch.device("cpu"), workers=workers):
                pass
            result[name] = round(len(images) / (time.perf_counter() - start), 1)
        del result["warm-up"]
        result["loader_workers"] = pipeline.decode_workers(device)

        # plain forward passes, images already on the device
        model = for_passes(build_model(args.model, seed=0).eval(), device)
        on_device = [pipeline.load_batch(g, args.imgsz)[0].to(device) for g in groups]

        def plain() -> float:
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            with torch.inference_mode():
                model(on_device[0])  # warm-up
                sync()
                start = time.perf_counter()
                for batch in on_device:
                    model(batch)
                sync()
            return len(images) / (time.perf_counter() - start)

        result["plain_default_images_per_s"] = round(max(plain() for _ in range(args.repeats)), 1)
        with exact_float32():
            result["plain_images_per_s"] = round(max(plain() for _ in range(args.repeats)), 1)

        # the analyses end to end, warm (run once before)
        def timed(kind: str, out: Path) -> float:
            common = {"max_images": args.images, "imgsz": args.imgsz, "batch": args.batch, "device": str(device),
                      "engine": "local", "force": True, "stream": io.StringIO()}  # fmt: skip
            start = time.perf_counter()
            if kind == "activations":
                summary = analyze_activations(ckpts, str(link), out, maps=0, **common)
            else:
                summary = analyze_similarity(ckpts, str(link), out, **common)
            assert summary.ok, summary.errors
            return len(images) * len(ckpts) / (time.perf_counter() - start)

        for kind in ("activations", "similarity"):
            timed(kind, root / f"warm-{kind}")
            rate = max(timed(kind, root / f"{kind}-{r}") for r in range(args.repeats))
            result[f"{kind}_images_per_s"] = round(rate, 1)
            result[f"{kind}_ratio"] = round(rate / float(result["plain_images_per_s"]), 3)

        # agreement with the CPU on the same images
        tables = {}
        for where in ("cpu", str(device)):
            out = root / f"agree-{where.replace(':', '')}"
            common = {"max_images": args.agree, "imgsz": args.imgsz, "batch": min(args.batch, 16), "device": where,
                      "engine": "local", "force": True, "stream": io.StringIO()}  # fmt: skip
            analyze_similarity(ckpts, str(link), out, **common)
            analyze_activations(ckpts, str(link), out, maps=0, **common)
            tables[where] = {t: pl.read_parquet(out / t / "*.parquet") for t in ("similarity", "channel_stats")}
        cpu, dev = tables["cpu"], tables[str(device)]
        key = ["checkpoint_a", "checkpoint_b", "module_a", "module_b"]
        cka = cpu["similarity"].join(dev["similarity"], on=key, suffix="_d").drop_nulls(["cka", "cka_d"])
        result["max_cka_diff"] = float((cka["cka"] - cka["cka_d"]).abs().max() or 0.0)
        key = ["checkpoint_id", "module", "channel"]
        stats = cpu["channel_stats"].join(dev["channel_stats"], on=key, suffix="_d")
        worst = 0.0
        for stat in ("mean", "std", "mean_abs"):
            scale = pl.col(stat).abs().max().over("checkpoint_id", "module").clip(lower_bound=1e-30)
            diff = stats.select(((pl.col(stat) - pl.col(f"{stat}_d")).abs() / scale).max()).item()
            worst = max(worst, float(diff or 0.0))
        result["max_stat_rel_diff"] = worst
        flags = stats.filter((pl.col("dead") != pl.col("dead_d")) & (pl.col("unit_kind") == "unit")).height
        result["dead_flags_changed"] = flags
    result["goals"] = {"ratios": 0.5, "max_cka_diff": 1e-4, "max_stat_rel_diff": 1e-5}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
