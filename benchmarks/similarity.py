"""Benchmark: streaming minibatch CKA (ours) against a straightforward implementation, same models and images.

The straightforward one runs every model over all images once, keeps every module's flattened features of every
image in memory, and at the end computes full-batch linear CKA (unbiased HSIC, centred, float64) for every pair of
models and every module. Ours folds each batch into HSIC sums and keeps nothing. Each method runs in its own process
(peak RSS from /proc), at two dataset sizes, to show which memory grows with the number of images.
Last line: {"benchmark": "similarity", "ratio": speedup, "goal": 5}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import parse

WORKER = r"""
import json, sys, time
from pathlib import Path
import torch
from yolo_audit.env import prepare
from yolo_audit.runtime.devices import set_threads as set_torch_threads
prepare(); set_torch_threads(2)
from yolo_audit.analyses.images import list_images, load_batch
from yolo_audit.analyses.similarity.job import SimilarityOptions, similarity_shard, _run
from yolo_audit.model.checkpoint import load_checkpoint
from yolo_audit.model.build import build_module
from yolo_audit.model.hooks import select_modules
from yolo_audit.stats.cka import centred_gram, hsic_matrix
method, folder, n, imgsz = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
paths = sorted(str(p) for p in folder.glob("*.pt"))
images = list_images(folder / "images")[:n]
opts = SimilarityOptions(imgsz=imgsz, batch=8, pool="none")
start = time.perf_counter()
if method == "ours":
    similarity_shard(paths, images, opts).state.compute()
else:
    models = [build_module(load_checkpoint(p)) for p in paths]
    names = list(select_modules(models[0]))
    store = [{name: [] for name in names} for _ in models]
    with torch.inference_mode():
        for s in range(0, len(images), 8):
            batch = load_batch(images[s:s + 8], imgsz)[0]
            for m, keep in zip(models, store):
                for name, f in _run(m, batch, names, "none").items():
                    keep[name].append(f)
    for a in range(len(models)):
        for b in range(a + 1, len(models)):
            for name in names:
                x, y = torch.cat(store[a][name]), torch.cat(store[b][name])
                h = hsic_matrix(torch.stack([centred_gram(x), centred_gram(y)]))
                float(h[0, 1] / (h[0, 0] * h[1, 1]).sqrt())
seconds = time.perf_counter() - start
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak}))
"""


def run(method: str, folder: Path, n: int, imgsz: int) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, method, str(folder), str(n), str(imgsz)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--images", type=int, nargs=2, default=[96, 768])
    parser.add_argument("--imgsz", type=int, default=160)
    args = parse(parser, {"model": "yolov8n.yaml", "models": 2, "images": [8, 16], "imgsz": 64})
    from yolo_audit.model.synthetic import build_model, perturb, save_ultralytics
    from yolo_audit.study.synth import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_model(args.model, seed=0)
        for i in range(args.models):
            perturb(model, range(23), scale=0.05, seed=i)
            save_ultralytics(model, folder / f"m{i}.pt", train_args={}, epoch=-1, key="model")
        make_dataset(folder / "data", images=max(args.images) * 4 // 3 + 2, imgsz=args.imgsz, domain="B", seed=3)
        (folder / "images").symlink_to(folder / "data" / "images")
        results = {}
        for n in args.images:
            for method in ("ours", "naive"):
                results[(method, n)] = run(method, folder, n, args.imgsz)
                r = results[(method, n)]
                print(f"{method:5s} {n:4d} images: {r['seconds']:7.2f} s, peak RSS {r['peak_mb']:7.0f} MB", flush=True)
    n = max(args.images)
    speedup = results[("naive", n)]["seconds"] / results[("ours", n)]["seconds"]
    memory = results[("naive", n)]["peak_mb"] / results[("ours", n)]["peak_mb"]
    print(f"at {n} images: speed-up {speedup:.2f}x, peak memory ratio (naive / ours) {memory:.2f}x")
    print(
        json.dumps({"benchmark": "similarity", "ratio": round(speedup, 3), "memory_ratio": round(memory, 3), "goal": 5})
    )


if __name__ == "__main__":
    main()
