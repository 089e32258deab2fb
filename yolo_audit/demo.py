"""Offline demo checkpoints: a YOLOv8 built from Ultralytics' packaged yaml, and simulated fine-tunes of it.

Nothing is downloaded. The variants mimic the user's three trainings (and the callback trap) by editing the base
weights the way each freeze strategy would: frozen layers stay bit-identical, trained layers move, and freezing by
callback leaves BatchNorm running statistics drifting. Real training of such variants is `yolo-audit study`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch

from yolo_audit.env import prepare

N_LAYERS = 23  # YOLOv8 top-level modules; 22 is the Detect head
BACKBONE = range(10)

# variant -> (trained layers, layers whose BN statistics drift although frozen, train_args freeze)
VARIANTS: dict[str, tuple[Iterable[int], Iterable[int], Any]] = {
    "freeze-none": (range(N_LAYERS), (), None),
    "freeze-backbone": (range(10, N_LAYERS), (), 10),
    "freeze-backbone-callback": (range(10, N_LAYERS), BACKBONE, None),
    "freeze-all-but-head": ((22,), (), 22),
}


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


def build_demo_checkpoints(folder: str | Path, *, cfg: str = "yolov8n.yaml", epochs: int = 2, seed: int = 0) -> Path:
    """Base `base/weights/last.pt` and, per variant, `weights/epoch{1..epochs}.pt` (EMA layout) and `last.pt`."""
    folder = Path(folder)
    base = build_model(cfg, seed=seed)
    args = {"model": cfg, "data": "synthetic", "epochs": epochs, "imgsz": 640}
    save_ultralytics(
        base, folder / "base" / "weights" / "last.pt", train_args={**args, "name": "base"}, epoch=-1, key="model"
    )
    for v, (name, (trained, drift, freeze)) in enumerate(VARIANTS.items()):
        model = deepcopy(base)
        train_args = {**args, "name": name, "freeze": freeze}
        for epoch in range(1, epochs + 1):
            perturb(model, trained, scale=0.05, seed=100 * v + epoch)
            perturb(model, drift, scale=0.2, seed=100 * v + epoch, bn_stats_only=True)
            if name == "freeze-none" and epoch == epochs:
                _kill_channels(model, layer=8, channels=range(4))
            save_ultralytics(
                model, folder / name / "weights" / f"epoch{epoch}.pt", train_args=train_args, epoch=epoch, key="ema"
            )
        save_ultralytics(model, folder / name / "weights" / "last.pt", train_args=train_args, epoch=-1, key="model")
    return folder


def _kill_channels(model: torch.nn.Module, *, layer: int, channels: Iterable[int]) -> None:
    """Zero BN gamma of a few channels of a layer's first Conv block: they become constant (dead by weights)."""
    bn = model.model[layer].cv1.bn
    with torch.no_grad():
        for c in channels:
            bn.weight[c] = 0.0
