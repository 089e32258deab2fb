"""Checkpoints without training, for tests and benchmarks: a YOLOv8 from Ultralytics' packaged yaml, edits of it,
and files in Ultralytics' own layouts. Nothing is downloaded. (`yolo-audit demo` trains for real: workflows/demo.yaml.)
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch

from yolo_audit.env import prepare


def build_model(cfg: str = "yolov8n.yaml", *, seed: int = 0) -> torch.nn.Module:
    """A DetectionModel from Ultralytics' packaged yaml (random init, deterministic for a seed)."""
    prepare()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    return DetectionModel(cfg, verbose=False)


def save_ultralytics(model: torch.nn.Module, path: Path, *, train_args: dict[str, Any], epoch: int, key: str) -> Path:
    """Write a checkpoint laid out as Ultralytics writes it: fp16 model under `model` (final) or `ema` (epochN.pt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    half = deepcopy(model).half()
    ckpt = {"epoch": epoch, "model": half if key == "model" else None, "ema": half if key == "ema" else None,
            "train_args": train_args}  # fmt: skip
    torch.save(ckpt, path)
    return path


def perturb(
    model: torch.nn.Module, layers: Iterable[int], *, scale: float, seed: int, bn_stats_only: bool = False
) -> None:
    """Move every tensor of `layers` by `scale` x its own std (or only BN running statistics), in place."""
    gen = torch.Generator().manual_seed(seed)
    prefixes = tuple(f"model.{i}." for i in layers)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not name.startswith(prefixes) or not value.is_floating_point() or ".dfl." in name:
                continue
            is_stat = name.endswith(("running_mean", "running_var"))
            if bn_stats_only and not is_stat:
                continue
            spread = float(value.std()) if value.numel() > 1 else 0.0
            noise = torch.randn(value.shape, generator=gen) * scale * (spread if spread > 0 else 1.0)
            value.add_(noise.abs() if name.endswith("running_var") else noise)
