"""The hand-written script `benchmarks/small_jobs.py` compares `yolo-audit weights` against: load each checkpoint and a
base with torch, then per tensor its statistics, a 64-bin histogram, and the L2 / relative difference to the base.

Usage: python benchmarks/handwritten_weights.py BASE CKPT [CKPT ...]  (prints one CSV row per tensor and checkpoint)
"""

from __future__ import annotations

import csv
import sys

import torch


def state(path: str) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    model = obj.get("ema") or obj.get("model")
    return {k: v.float() for k, v in model.state_dict().items() if v.is_floating_point()}


def main() -> None:
    base = state(sys.argv[1])
    out = csv.writer(sys.stdout)
    out.writerow(["checkpoint", "tensor", "mean", "std", "min", "max", "l2_diff", "rel_diff", "hist"])
    for path in sys.argv[2:]:
        for name, t in state(path).items():
            ref = base[name]
            diff = torch.linalg.vector_norm(t - ref).item()
            norm = torch.linalg.vector_norm(ref).item()
            hist = torch.histc(t, bins=64, min=t.min().item(), max=t.max().item()).tolist()
            std = t.std().item() if t.numel() > 1 else 0.0
            out.writerow([path, name, t.mean().item(), std, t.min().item(), t.max().item(), diff,
                          diff / norm if norm else None, " ".join(f"{h:g}" for h in hist)])  # fmt: skip


if __name__ == "__main__":
    main()
