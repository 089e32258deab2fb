"""Rebuild a runnable network from a loaded checkpoint (for forward passes), strictly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from yolo_audit.checkpoints import Checkpoint
from yolo_audit.env import prepare
from yolo_audit.errors import AuditError

NC_KEY = "model.22.cv3.0.2.weight"  # YOLOv8's class-branch output conv: its out-channels are the class count


def build_module(ckpt: Checkpoint, *, cfg: str | None = None) -> nn.Module:
    """A DetectionModel with the checkpoint's architecture (recorded model yaml, else `cfg`) and its exact weights."""
    prepare()
    from ultralytics.nn.tasks import DetectionModel

    arch = copy.deepcopy(ckpt.model_yaml) if ckpt.model_yaml else cfg
    if arch is None:
        raise AuditError(
            "the file records no architecture; pass --cfg with its model yaml (e.g. yolov8s.yaml)",
            path=ckpt.path,
            stage="model",
        )
    nc = ckpt.tensors[NC_KEY].shape[0] if NC_KEY in ckpt.tensors else None
    try:
        model = DetectionModel(arch, nc=nc, verbose=False) if nc else DetectionModel(arch, verbose=False)
        missing, unexpected = _diff(model.state_dict(), ckpt.tensors)
        if missing or unexpected:
            raise AuditError(
                f"architecture and weights disagree: {len(missing)} missing ({', '.join(missing[:3])}), "
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}); pass the right --cfg",
                path=ckpt.path,
                stage="model",
            )
        model.load_state_dict(ckpt.tensors, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise AuditError(
            f"cannot rebuild the model ({reason}); pass the right --cfg", path=ckpt.path, stage="model"
        ) from exc
    return model.float().eval()


def _diff(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
