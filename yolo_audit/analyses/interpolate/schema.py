"""Table of the interpolation analysis (see docs/schema.md)."""

from __future__ import annotations

import pyarrow as pa

from yolo_audit.results.columns import CKPT, DATASET, F64, I32, REF, B, Column, S

TABLES: dict[str, list[Column]] = {
    "interpolation": [
        CKPT,
        REF,
        DATASET,
        ("alpha", F64, "where on the line: 0 is the reference, 1 the checkpoint; θ(α) = (1 - α) θ_ref + α θ_ckpt"),
        ("map50_95", F64, "mAP50-95 (boxes) of θ(α) on the dataset's split, Ultralytics' validator"),
        ("map50", F64, "mAP50 (boxes) of θ(α)"),
        ("recalibrated", B, "BatchNorm running statistics re-estimated at this α on training images (REPAIR)"),
        ("recalibration_images", I32, "training images the statistics were re-estimated on (0: interpolated as is)"),
        ("mismatched", I32, "tensors whose shape differs from the reference's (a head with another class count): "
         "taken from the checkpoint at every α"),
        ("mismatched_names", pa.list_(S), "their names"),
        ("seconds", F64, "task time"),
    ],
}  # fmt: skip
