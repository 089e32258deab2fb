"""Table of the rewind analysis (see the README's schema section)."""

from __future__ import annotations

from yolo_audit.results.columns import CKPT, DATASET, F64, I32, REF, Column, S

TABLES: dict[str, list[Column]] = {
    "rewind": [
        CKPT,
        REF,
        DATASET,
        ("layer", I32, "the layer whose parameters and BatchNorm statistics were swapped (null for a group)"),
        ("group", S, "backbone, neck or head (from the model family's profile): the layer's, or the swapped group"),
        ("direction", S, "rewind (the checkpoint with this layer reset to the reference's) or into_reference (the "
         "reference with this layer taken from the checkpoint)"),
        ("map50_95", F64, "mAP50-95 (boxes) of the modified model on the dataset's split, Ultralytics' validator"),
        ("map50", F64, "mAP50 (boxes) of the modified model"),
        ("baseline_map50_95", F64, "mAP50-95 of the unmodified model (the checkpoint for rewind, the reference for "
         "into_reference), measured in the same run with the same settings"),
        ("delta_map50_95", F64, "map50_95 - baseline_map50_95: negative when the swap costs accuracy"),
        ("seconds", F64, "task time"),
    ],
}  # fmt: skip
