"""Every Parquet table's schema, its documentation, and the one atomic writer all results go through.

Layout: `OUT/<table>/<key>.parquet`, one file per (table, task key). A key names what produced the rows (a checkpoint
id, or `<checkpoint>-vs-<reference>`), so no two tasks write the same file and rerunning a command replaces its files
rather than adding rows. Files appear by rename of a hidden temp file, so readers never see a partial file.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from yolo_audit.errors import AuditError
from yolo_audit.storage import Location, locate

S, I64, I32, F64, B = pa.string(), pa.int64(), pa.int32(), pa.float64(), pa.bool_()

_CKPT = ("checkpoint_id", S, "16 hex digits of the file's sha256: the same bytes always get the same id")
_REF = ("reference_id", S, "checkpoint_id of the reference the row compares against")
_PARAM = ("param", S, "tensor name in the state dict, e.g. model.2.m.0.cv1.conv.weight")
_LAYER = ("layer", I32, "top-level layer index N of `model.N.` (null outside the layer list)")
_MODULE = ("module", S, "module path owning the tensor(s), e.g. model.2.cv1")
_ROLE = ("role", S, "conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var or other")

TABLES: dict[str, list[tuple[str, pa.DataType, str]]] = {
    "checkpoints": [
        _CKPT,
        ("path", S, "absolute path the checkpoint was read from"),
        ("run", S, "training run name (train_args.name, else the folder above weights/)"),
        ("epoch", I32, "epoch of the checkpoint where known (null for a finished last.pt/best.pt)"),
        ("freeze", S, "the `freeze` training argument as JSON (null when the file has no train_args)"),
        ("declared_frozen", pa.list_(I32), "layers that `freeze` freezes (0..N-1 for an int N); null if unknown"),
        ("arch_hash", S, "hash of the sorted (name, shape) list: equal hashes mean comparable checkpoints"),
        ("n_params", I64, "elements in parameters (BatchNorm running statistics excluded)"),
        ("n_tensors", I32, "tensors in the state dict (parameters and buffers)"),
        ("sha256", S, "sha256 of the file"),
        ("source_format", S, "ultralytics, state_dict or safetensors"),
        ("precision", S, "dtype the file stores (float16, float32, ...); statistics are computed in float32"),
        ("train_args", S, "the Ultralytics training arguments as JSON, when the file has them"),
    ],
    "weight_stats": [
        _CKPT,
        _PARAM,
        _LAYER,
        _MODULE,
        ("module_type", S, "type of the top-level module: Conv, C2f, SPPF, Detect, ..."),
        _ROLE,
        ("numel", I64, "number of elements"),
        ("mean", F64, "mean"),
        ("std", F64, "population standard deviation (ddof=0)"),
        ("min", F64, "minimum"),
        ("max", F64, "maximum"),
        ("abs_mean", F64, "mean of |w|"),
        ("l2", F64, "L2 (Frobenius) norm"),
        ("frac_near_zero", F64, "fraction of elements with |w| < near_zero (default 1e-3)"),
        ("kurtosis", F64, "excess kurtosis m4/m2^2 - 3 (null for a constant tensor)"),
        ("spectral_norm", F64, "largest singular value of the (out, in*k*k) matrix; conv/linear weights only"),
        ("stable_rank", F64, "||W||_F^2 / spectral_norm^2; conv/linear weights only"),
    ],  # fmt: skip
    "weight_hist": [
        _CKPT,
        ("bins_id", S, "which shared bin edges: `ref-<reference_id>` or `pooled-<hash of the checkpoint set>`"),
        _PARAM,
        _LAYER,
        ("bin", I32, "bin index 0..bins-1; -1 is the underflow (< lo of bin 0), bins is the overflow"),
        ("lo", F64, "lower edge (inclusive; -inf for the underflow)"),
        ("hi", F64, "upper edge (exclusive; +inf for the overflow)"),
        ("count", I64, "elements in [lo, hi)"),
    ],  # fmt: skip
    "channel_weights": [
        _CKPT,
        _LAYER,
        ("module", S, "Conv block path (its .conv and .bn children), e.g. model.2.cv1"),
        ("channel", I32, "output channel"),
        ("filter_l2", F64, "L2 norm of the channel's conv filter"),
        ("bn_gamma", F64, "BatchNorm weight"),
        ("bn_beta", F64, "BatchNorm bias"),
        ("bn_mean", F64, "BatchNorm running_mean"),
        ("bn_var", F64, "BatchNorm running_var"),
        ("fused_l2", F64, "L2 norm of the BN-folded filter W * gamma / sqrt(var + eps), eps from the module"),
        ("dead_constant", B, "|gamma| < gamma_eps (default 1e-3): the channel outputs the constant SiLU(beta)"),
        ("dead_negative", B, "beta + 3|gamma| < neg_margin (default -4): pre-activation essentially always negative"),
        ("dead_by_weights", B, "dead_constant or dead_negative"),
    ],  # fmt: skip
    "weight_divergence": [
        _CKPT,
        _REF,
        _PARAM,
        _LAYER,
        _ROLE,
        ("l2_diff", F64, "||a - b||"),
        ("rel_diff", F64, "||a - b|| / ||b|| (null where the reference tensor is all zeros)"),
        ("rms_diff", F64, "||a - b|| / sqrt(numel)"),
        ("cosine", F64, "cosine similarity of a and b (null where either is all zeros)"),
        ("max_abs_diff", F64, "max |a - b|"),
        (
            "identical",
            B,
            "bitwise identical; when one file is fp16/bf16 and the other fp32, compared after rounding "
            "both to the coarser type (differences are then reported as 0)",
        ),
    ],  # fmt: skip
    "channel_divergence": [
        _CKPT,
        _REF,
        _PARAM,
        _LAYER,
        _MODULE,
        ("channel", I32, "output channel of a conv/linear weight"),
        ("l2_diff", F64, "||a_c - b_c||"),
        ("rel_diff", F64, "||a_c - b_c|| / ||b_c|| (null where the reference filter is all zeros)"),
    ],  # fmt: skip
    "layer_freeze": [
        _CKPT,
        _REF,
        _LAYER,
        (
            "verdict",
            S,
            "frozen_exact (parameters and BN statistics bit-identical), frozen_bn_drift (parameters "
            "identical, BN running statistics changed) or trained",
        ),
        ("declared_frozen", B, "the checkpoint's train_args freeze this layer (null when unknown)"),
        ("n_tensors", I32, "parameters and BN buffers compared (num_batches_tracked excluded)"),
        ("n_changed", I32, "of those, how many are not bitwise identical"),
        ("max_rel_diff", F64, "largest rel_diff among the layer's tensors"),
    ],  # fmt: skip
    "channel_stats": [
        _CKPT,
        ("dataset_id", S, "hash of the exact image list and imgsz: rows with the same dataset_id are comparable"),
        _LAYER,
        ("module", S, "hooked module: model.N, a Detect branch model.22.cv2.i / cv3.i, or a leaf with --depth leaves"),
        ("channel", I32, "output channel"),
        ("count", I64, "activation values seen for the channel (images x positions)"),
        ("mean", F64, "mean activation"),
        ("std", F64, "population standard deviation (streamed, Chan-merged across batches and shards)"),
        ("min", F64, "minimum"),
        ("max", F64, "maximum"),
        ("mean_abs", F64, "mean |a|"),
        ("frac_positive", F64, "fraction of values > 0"),
        ("dormant_score", F64, "mean|a_c| / mean over the module's channels of mean|a_k| (Sokar et al. 2023)"),
        ("dormant", B, "dormant_score <= tau"),
        ("constant", B, "std_c / mean over the module's channels of std_k <= tau (BN gamma ~ 0: outputs SiLU(beta))"),
        ("never_positive", B, "max <= 0"),
        ("newly_dead", B, "dead (any criterion) here but alive in the --reference on the same data; null without one"),
        ("tau", F64, "the threshold used for dormant and constant"),
    ],
    "activation_hist": [
        _CKPT,
        ("dataset_id", S, "see channel_stats"),
        _LAYER,
        ("module", S, "hooked module"),
        ("bin", I32, "octave bin: (sign << 8) | float32 exponent; fixed for every module and checkpoint"),
        ("lo", F64, "lower edge (a power of two, mirrored for negatives)"),
        ("hi", F64, "upper edge"),
        ("count", I64, "activation values in [lo, hi) over all images and channels (empty bins are omitted)"),
    ],  # fmt: skip
    "feature_maps": [
        _CKPT,
        ("dataset_id", S, "see channel_stats"),
        _LAYER,
        ("module", S, "hooked module"),
        ("image", I32, "index of the image in the dataset's list (the first --maps images)"),
        ("image_path", S, "the image file"),
        ("channel", I32, "channel (the first 16 of the module)"),
        ("height", I32, "map height after average pooling to at most 32x32"),
        ("width", I32, "map width"),
        ("values", pa.list_(pa.float32()), "height*width activations, row-major"),
    ],  # fmt: skip
    "activation_passes": [
        _CKPT,
        ("dataset_id", S, "see channel_stats"),
        ("images", I64, "images that went through the network"),
        ("failed_images", I64, "images that could not be read (skipped)"),
        ("imgsz", I32, "letterbox size"),
        ("depth", S, "modules or leaves"),
        ("device", S, "where the forward passes ran"),
        ("seconds", F64, "task time, summed over shards"),
    ],  # fmt: skip
    "similarity": [
        ("checkpoint_a", S, "checkpoint_id of the first checkpoint"),
        ("checkpoint_b", S, "checkpoint_id of the second (equal to checkpoint_a for the self-pair, CKA 1)"),
        ("layer_a", I32, "top-level layer of module_a"),
        ("layer_b", I32, "top-level layer of module_b"),
        ("module_a", S, "hooked module of checkpoint_a (model.N, or a Detect branch model.22.cv2.i / cv3.i)"),
        ("module_b", S, "hooked module of checkpoint_b (the same as module_a unless --cross-layer)"),
        ("cka", F64, "linear CKA, minibatch unbiased HSIC (Nguyen et al. 2021); null where undefined"),
        ("reason", S, "why cka is null (e.g. the layer does not vary across images); null otherwise"),
        ("n_images", I64, "images in full batches (batches under 4 images are skipped)"),
        ("n_batches", I64, "batches accumulated"),
        ("pool", S, "avg (per-channel spatial means) or none (every activation)"),
        ("dataset_id", S, "see channel_stats"),
    ],
    "runs": [
        ("run", S, "run name: `<variant>-s<seed>`, or `base` for the pretraining run"),
        ("study", S, "the study file's `name`"),
        ("variant", S, "variant name from the study file"),
        ("freeze", S, 'the variant\'s freeze spec as written (JSON): an int, "backbone", "all" or a list'),
        ("frozen_layers", pa.list_(I32), "the exact layers frozen (`all` = 0-21: every module but the Detect head)"),
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
    "errors": [
        ("path", S, "file the error is about"),
        ("stage", S, "load, align, weights, divergence, histogram, ..."),
        ("error_type", S, "exception class"),
        ("message", S, "one-line explanation with what to do"),
    ],
}


def schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(name, kind, metadata={"doc": doc}) for name, kind, doc in TABLES[table]])


def columns(table: str) -> list[str]:
    return [name for name, _, _ in TABLES[table]]


_KEY = re.compile(r"^[A-Za-z0-9_.=-]+$")


def table_file(out: str | Path, table: str, key: str) -> Location:
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}")
    if not _KEY.match(key):
        raise ValueError(f"unsafe file key {key!r}")
    return locate(out).child(table, f"{key}.parquet")


def _dictionary_columns(table: str) -> list[str]:
    """Flat string, integer and boolean columns: ids and layer numbers repeat, measured floats rarely do (dictionary
    pages for them only add bytes: channel_stats files are ~16% smaller without)."""
    flat = (pa.types.is_string, pa.types.is_integer, pa.types.is_boolean)
    return [name for name, kind, _ in TABLES[table] if any(check(kind) for check in flat)]


def write(out: str | Path, table: str, key: str, data: Mapping[str, Sequence[Any]]) -> str:
    """Validate `data` against the table's schema and write it as OUT/<table>/<key>.parquet, atomically.

    Replaces the file of an earlier run with the same key (idempotent). Raises KeyError on missing or extra columns.
    """
    names = columns(table)
    if set(data) != set(names):
        raise KeyError(f"{table}: missing {sorted(set(names) - set(data))}, extra {sorted(set(data) - set(names))}")
    arrow = pa.table({name: data[name] for name in names}, schema=schema(table))
    target = table_file(out, table, key)
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink, compression="zstd", use_dictionary=_dictionary_columns(table))
    try:
        target.write_bytes(sink.getvalue().to_pybytes())
    except OSError as exc:
        raise AuditError(
            f"cannot write results ({getattr(exc, 'strerror', None) or exc}); choose a writable --out with free space",
            path=target.uri.rsplit("/", 1)[0],
            stage="write",
        ) from exc
    return target.uri


def remove(out: str | Path, table: str, key: str) -> None:
    """Drop the rows a key wrote earlier (e.g. a stale `errors` row once the checkpoint loads)."""
    table_file(out, table, key).delete()


def purge(out: str | Path, checkpoint_ids: set[str]) -> int:
    """Remove every file whose key names one of these checkpoints (as itself, or either side of a comparison; for
    `similarity`, whose key hashes its checkpoints, every file with a row of one): used when a run is retrained, so
    rows of its earlier snapshots cannot linger beside the new ones."""
    if not checkpoint_ids:
        return 0
    removed = 0
    root = locate(out)
    for table in TABLES:
        for item in root.child(table).files(".parquet"):
            if table == "similarity":  # keyed by a hash of its checkpoints: look inside
                pairs = pq.read_table(pa.BufferReader(item.read_bytes()), columns=["checkpoint_a", "checkpoint_b"])
                parts = [*pairs["checkpoint_a"].to_pylist(), *pairs["checkpoint_b"].to_pylist()]
            else:
                parts = re.split(r"-vs-|-(?=ref-|pooled-)", item.name.removesuffix(".parquet"))
            if any(part.removeprefix("ref-") in checkpoint_ids for part in parts):
                item.delete()
                removed += 1
    return removed


def check_writable(out: str | Path) -> str:
    """Fail before any work when OUT cannot be created or written; return its canonical form (path or URI)."""
    loc = locate(out)
    try:
        probe = loc.child(f".write-probe-{uuid.uuid4().hex}")
        probe.write_bytes(b"ok")
        probe.delete()
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise AuditError(f"results folder is not writable ({reason}); pass another --out", path=loc.uri) from exc
    return loc.uri


def markdown() -> str:
    """The README's schema section, generated from TABLES so the two cannot drift apart."""
    lines: list[str] = []
    for table, fields in TABLES.items():
        lines += [f"#### `{table}`", "", "| column | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{name}` | {kind} | {doc} |" for name, kind, doc in fields]
        lines.append("")
    return "\n".join(lines)
