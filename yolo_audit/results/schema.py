"""Every Parquet table's schema and documentation: the core tables here, each analysis' tables from its own folder
(registered in `yolo_audit.analyses`). `yolo-audit schema` and the README's schema section are generated from it."""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from yolo_audit.analyses import ANALYSES
from yolo_audit.results.columns import CKPT, F64, I32, I64, Column, S

_CHECKPOINTS: dict[str, list[Column]] = {
    "checkpoints": [
        CKPT,
        ("path", S, "absolute path (or URI) the checkpoint was first read from"),
        ("run", S, "training run name (train_args.name, else the folder above weights/)"),
        (
            "epoch",
            I32,
            "epochs completed (1-based, as in results.csv; Ultralytics' epochN.pt is epoch N+1), the "
            "highest among the aliases; null where unknown",
        ),
        ("freeze", S, "the `freeze` training argument as JSON (null when the file has no train_args)"),
        ("declared_frozen", pa.list_(I32), "layers that `freeze` freezes (0..N-1 for an int N); null if unknown"),
        ("aliases", pa.list_(S), "every path seen holding these exact tensors (last.pt, best.pt, epochN.pt, ...)"),
        ("arch_hash", S, "hash of the sorted (name, shape) list: equal hashes mean comparable checkpoints"),
        ("n_params", I64, "elements in parameters (BatchNorm running statistics excluded)"),
        ("n_tensors", I32, "tensors in the state dict (parameters and buffers)"),
        ("sha256", S, "sha256 of the file at `path` (the id hashes the tensors, not the file)"),
        ("source_format", S, "ultralytics, state_dict or safetensors"),
        ("precision", S, "dtype the file stores (float16, float32, ...); statistics are computed in float32"),
        ("train_args", S, "the Ultralytics training arguments as JSON, when the file has them"),
    ],
    "analysed_against": [
        CKPT,
        ("reference_id", S, "checkpoint_id of the reference it was analysed against (--reference, a study's base)"),
        (
            "analysis",
            S,
            "weights, activations, similarity (the first checkpoint is the others' reference), rewind or "
            "interpolate: rankings, summaries and the report compare each checkpoint with these references by default "
            "(`rank --against`)",
        ),
    ],
}

_STUDY_AND_ERRORS: dict[str, list[Column]] = {
    "runs": [
        ("run", S, "run name: `<variant>-s<seed>`, or `base` for the pretraining run"),
        ("study", S, "the study file's `name`"),
        ("variant", S, "variant name from the study file"),
        (
            "freeze",
            S,
            "the variant's freeze spec, plain: backbone, all, a layer count (10) or a layer list (0,1,2); stores "
            "written before 2026-12-04 held JSON and read as plain",
        ),
        ("frozen_layers", pa.list_(I32), "the exact layers frozen (`all`: every module but the head; YOLOv8: 0-21)"),
        ("backbone", pa.list_(I32), "the model's backbone layers, from its yaml (YOLOv8: 0-9, YOLO11: 0-10)"),
        ("strategy", S, "ultralytics (built-in freeze argument) or callback (requires_grad=False in on_train_start)"),
        ("seed", I32, "training seed"),
        ("epochs", I32, "epochs asked for"),
        ("status", S, "done or failed (an interrupted run has no row and is trained again on rerun)"),
        ("best_map50_95", F64, "best metrics/mAP50-95(B) over the run's epochs"),
        ("seconds", F64, "wall time of the training task"),
        ("device", S, "cpu, or the CUDA device index inside the task"),
        ("error", S, "why a failed run failed"),
    ],
    "train_metrics": [
        ("run", S, "run name (see `runs`)"),
        ("epoch", I32, "epoch, from 1"),
        *[
            (name, F64, f"Ultralytics' per-epoch `{name}` (results.csv)")
            for name in (
                "time",
                "train/box_loss",
                "train/cls_loss",
                "train/dfl_loss",
                "metrics/precision(B)",
                "metrics/recall(B)",
                "metrics/mAP50(B)",
                "metrics/mAP50-95(B)",
                "val/box_loss",
                "val/cls_loss",
                "val/dfl_loss",
                "lr/pg0",
                "lr/pg1",
                "lr/pg2",
            )
        ],
    ],  # fmt: skip
    "train_dynamics": [
        ("run", S, "run name: the study's `<variant>-s<seed>`, or the name Ultralytics gave your run (its folder)"),
        ("epoch", I32, "epoch, from 1 (as train_metrics)"),
        ("layer", I32, "top-level layer index N of `model.N.` (null outside the layer list)"),
        ("param", S, "tensor name in the state dict: a parameter, or a BatchNorm running_mean / running_var"),
        ("role", S, "conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var or other"),
        ("requires_grad", pa.bool_(), "the parameter's requires_grad at the epoch's end (null for running statistics)"),
        ("steps", I32, "optimizer steps in the epoch"),
        (
            "grad_norm_mean",
            F64,
            "mean over the epoch's optimizer steps of the gradient's L2 norm (after AMP's unscaling and Ultralytics' "
            "clipping; an absent gradient counts as 0); null for running statistics",
        ),
        ("grad_norm_max", F64, "largest gradient L2 norm over the epoch's steps"),
        ("frac_zero_grad", F64, "share of the epoch's steps whose gradient was absent (requires_grad off) or all zero"),
        ("update_l2", F64, "||w_end - w_start|| over the epoch (running statistics too: BatchNorm drift)"),
        ("weight_l2", F64, "||w_end||"),
        ("update_ratio", F64, "update_l2 / weight_l2 (null for an all-zero tensor)"),
        ("lr", F64, "learning rate of the parameter's group at the epoch's end (null for running statistics)"),
    ],
    "errors": [
        ("path", S, "file the error is about"),
        ("stage", S, "load, align, weights, divergence, histogram, ..."),
        ("error_type", S, "exception class"),
        ("message", S, "one-line explanation with what to do"),
    ],
    "ledger": [
        (
            "done_key",
            S,
            "hash of a finished task's inputs (file URIs, sizes, mtimes), options and yolo-audit version",
        ),
        ("task", S, "weights:analyze, weights:histogram, weights:compare, activations or similarity"),
        (
            "files",
            pa.list_(S),
            "result files the task wrote (`table/key.parquet`): reruns skip it while all exist",
        ),
        ("result", S, "what the task reported to its driver, as JSON (bookkeeping, not results)"),
        ("written_at", F64, "when the task finished (Unix seconds)"),
    ],
}

TABLES: dict[str, list[Column]] = {
    **_CHECKPOINTS,
    **{name: cols for analysis in ANALYSES.values() for name, cols in analysis.tables.items()},
    **_STUDY_AND_ERRORS,
}


@cache
def schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(name, kind, metadata={"doc": doc}) for name, kind, doc in TABLES[table]])


def columns(table: str) -> list[str]:
    return [name for name, _, _ in TABLES[table]]


HEADER = """# Results schema

Every table and column yolo-audit writes, generated from the code by `yolo-audit schema` (this file is its output;
`tests/test_docs.py` fails when the two differ). How the files are laid out and read: [results](results.md); what the
numbers mean: [numbers](numbers.md).
"""


def markdown() -> str:
    """docs/schema.md, generated from TABLES so the two cannot drift apart."""
    lines: list[str] = [HEADER]
    for table, fields in TABLES.items():
        lines += [f"## `{table}`", "", "| column | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{name}` | {kind} | {doc} |" for name, kind, doc in fields]
        lines.append("")
    return "\n".join(lines)
