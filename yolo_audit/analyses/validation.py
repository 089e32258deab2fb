"""Validation with Ultralytics' own validator of a model's task: what `rewind` and `interpolate` measure (box mAP of
a checkpoint they built), in true float32 with cuDNN's deterministic algorithms, and what each such task reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from yolo_audit.env import prepare
from yolo_audit.errors import AuditError
from yolo_audit.model.build import build_module
from yolo_audit.model.checkpoint import Checkpoint
from yolo_audit.results.errors import ErrorRecord, write_errors
from yolo_audit.results.location import Location, local_dataset
from yolo_audit.runtime.devices import exact_float32, keep_freed_memory, resolve_device, task_threads_in_ultralytics

VALIDATORS = {
    "detect": "ultralytics.models.yolo.detect:DetectionValidator",
    "segment": "ultralytics.models.yolo.segment:SegmentationValidator",
    "pose": "ultralytics.models.yolo.pose:PoseValidator",
    "obb": "ultralytics.models.yolo.obb:OBBValidator",
    "rtdetr": "ultralytics.models.rtdetr:RTDETRValidator",
}


class Settings(Protocol):
    """What a validation needs of an analysis' options."""

    imgsz: int
    batch: int
    split: str
    device: str


@dataclass(kw_only=True)
class Validated:
    """What a validating task reports to its driver (small; a ledger records it as JSON)."""

    path: str
    checkpoint_id: str | None = None
    reference_id: str | None = None
    map50_95: float | None = None
    map50: float | None = None
    seconds: float = 0.0
    errors: list[ErrorRecord] = field(default_factory=list)
    checkpoint_row: dict[str, list] | None = None  # the `checkpoints` row the driver writes


def validate(ckpt: Checkpoint, data: str, opts: Settings) -> tuple[float, float]:
    """(mAP50-95, mAP50) of the boxes, with the validator of the checkpoint's task, in true float32 and with cuDNN's
    deterministic algorithms (`exact_float32`): on a GPU, TF32 and nondeterministic convolutions would move mAP between
    two validations of the same weights, and a rewound layer's delta must be exactly 0 when nothing changed."""
    prepare()
    import importlib

    from ultralytics.cfg import get_cfg

    profile = ckpt.profile
    kind = "rtdetr" if profile.head_type == "RTDETRDecoder" else profile.task
    if kind not in VALIDATORS:
        raise AuditError(
            f"validation measures box mAP; a {profile.task} model has none", path=ckpt.path, stage="rewind"
        )
    module, _, name = VALIDATORS[kind].partition(":")
    validator_cls = getattr(importlib.import_module(module), name)
    device = resolve_device(opts.device)
    keep_freed_memory()  # forward passes reuse their activations' memory
    args = get_cfg(overrides={
        "mode": "val", "data": data, "imgsz": opts.imgsz, "batch": opts.batch, "split": opts.split,
        "device": "cpu" if device.type == "cpu" else device.index or 0, "plots": False, "verbose": False,
        "save_json": False, "half": False, "workers": 0,
    })  # fmt: skip
    with exact_float32(), task_threads_in_ultralytics():
        stats = validator_cls(args=args)(model=build_module(ckpt))
    return float(stats["metrics/mAP50-95(B)"]), float(stats["metrics/mAP50(B)"])


def labelled_images(data: str, split: str, out: Location, analysis: str) -> tuple[str, list[str]]:
    """The local dataset yaml and its split's images, for an analysis that validates against labels: a folder of
    images, or a split whose images have no label files (Ultralytics' layout: labels/ beside images/), is one line and
    an `errors` row naming the dataset, before any work."""
    from yolo_audit.analyses.images import list_images

    local = str(local_dataset(str(data)))
    try:
        if not local.endswith((".yaml", ".yml")):
            raise AuditError(f"{analysis} validates with labels: pass a dataset yaml (images alone have no boxes)",
                             path=str(data))  # fmt: skip
        images = list_images(local, split=split)
        if not any(Path(_label_file(i)).is_file() for i in images):
            raise AuditError(
                f"the `{split}` split has no labels (no {_label_file(images[0])}); {analysis} validates with labels: "
                "add them, or pass another --split",
                path=str(data),
            )
    except AuditError as exc:
        write_errors(out, [ErrorRecord(str(data), analysis, "AuditError", str(exc))])
        raise
    return local, images


def _label_file(image: str) -> str:
    """Where Ultralytics looks for an image's labels: the last images/ of its path becomes labels/, .txt."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return labels.join(image.rsplit(images, 1)).rsplit(".", 1)[0] + ".txt"
