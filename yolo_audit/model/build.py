"""Rebuild a runnable network from a loaded checkpoint (for forward passes), strictly: the model class of its task
(from the family profile), its recorded architecture (or `cfg`), and its exact weights."""

from __future__ import annotations

import copy
import json
import platform
import sys
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from yolo_audit.env import prepare
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import Checkpoint
from yolo_audit.model.profile import profile_from_yaml

MODEL_CLASSES = {
    "detect": "DetectionModel", "segment": "SegmentationModel", "pose": "PoseModel", "obb": "OBBModel",
    "classify": "ClassificationModel",
}  # fmt: skip


def model_class(arch: dict[str, Any]) -> type[nn.Module]:
    """Ultralytics' model class for this architecture (RT-DETR has its own detection model)."""
    prepare()
    from ultralytics.nn import tasks

    profile = profile_from_yaml(arch)
    if profile.head_type == "RTDETRDecoder":
        return tasks.RTDETRDetectionModel
    return getattr(tasks, MODEL_CLASSES[profile.task])


def build_module(ckpt: Checkpoint, *, cfg: str | None = None) -> nn.Module:
    """The checkpoint's network with its exact weights, in eval mode, float32."""
    from yolo_audit.model.profile import load_yaml

    arch = copy.deepcopy(ckpt.model_yaml) if ckpt.model_yaml else (load_yaml(cfg) if cfg else None)
    if arch is None:
        raise AuditError(
            "the file records no architecture; pass --cfg with its model yaml (e.g. yolov8s.yaml)",
            path=ckpt.path,
            stage="model",
        )
    try:
        nc = arch.get("nc") if ckpt.model_yaml else _class_count(ckpt, arch)
        model = copy.deepcopy(_template(json.dumps(arch, sort_keys=True, default=str), nc))
        missing, unexpected = _diff(model.state_dict(), ckpt.tensors)
        if missing or unexpected:
            raise AuditError(
                f"architecture and weights disagree: {len(missing)} missing ({', '.join(missing[:3])}), "
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}); pass the right --cfg",
                path=ckpt.path,
                stage="model",
            )
        model.load_state_dict(ckpt.tensors, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise AuditError(
            f"cannot rebuild the model ({reason}); pass the right --cfg", path=ckpt.path, stage="model"
        ) from exc
    return model.float().eval()


def for_passes(model: nn.Module, device: torch.device) -> nn.Module:
    """The network placed for forward passes on `device`; on an x86 CPU with oneDNN (Linux or Windows: where
    Ultralytics 8.4's own predictors and validators switch to it) in channels-last memory format, in which oneDNN's
    convolutions ran YOLOv8s 20-30% faster (batch 8, 320-640 px, 2 cores; measured 2026-12-02). Its outputs agree
    with the default format's to float32 rounding (~3e-7 of their scale), not bit for bit; the format of the input
    batch does not matter (the first convolution's output takes its weights' format)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" and _onednn_x86() else model


def _onednn_x86() -> bool:
    mkldnn = torch.backends.mkldnn
    return (platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith(("linux", "win"))
            and mkldnn.is_available() and bool(mkldnn.enabled))  # fmt: skip


@lru_cache(maxsize=4)
def _template(arch: str, nc: int | None) -> nn.Module:
    """A freshly built network of this architecture, built once per process: Ultralytics' constructor initialises
    every weight and runs a forward pass to find the strides (~0.4 s for YOLOv8s); a deep copy of it costs ~0.05 s.
    Callers copy it and load their weights; the template itself is never used."""
    spec = json.loads(arch)
    cls = model_class(spec)
    return cls(spec, nc=nc, verbose=False) if nc else cls(spec, verbose=False)


def _class_count(ckpt: Checkpoint, arch: dict[str, Any]) -> int | None:
    """For a bare state dict built from --cfg: the class count its head's class branch was trained with."""
    head = profile_from_yaml(arch).head
    key = f"model.{head}.cv3.0.2.weight"  # Detect and its subclasses: the class branch's output conv
    return int(ckpt.tensors[key].shape[0]) if key in ckpt.tensors else None


def _diff(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
