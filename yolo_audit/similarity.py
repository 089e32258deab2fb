"""`yolo-audit similarity`: every checkpoint sees the same batches in one pass; minibatch CKA for all pairs.

One Ray task per data shard loads every checkpoint, runs each batch through each of them with hooks that keep the
batch's features of every top-level module (Detect: its six branches), and folds all pairwise HSIC sums into one
`CKAState`; shard states add up in a tree of merges. Memory stays flat in the number of images.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from yolo_audit import schema
from yolo_audit.analysis import checkpoint_table
from yolo_audit.checkpoints import find_checkpoints, load_checkpoint
from yolo_audit.data import dataset_id, list_images, load_batch, shards
from yolo_audit.errors import AuditError
from yolo_audit.hooks import layer_of, select_modules
from yolo_audit.models import build_module
from yolo_audit.orchestrate import Task, cluster_cpus, ray_session, run_tasks
from yolo_audit.stats.cka import MIN_BATCH, CKAState
from yolo_audit.storage import exclusive, local_dataset
from yolo_audit.weights_job import ErrorRecord, record, write_errors


@dataclass(frozen=True)
class SimilarityOptions:
    imgsz: int = 640
    batch: int = 8
    pool: str = "avg"  # avg: per-channel spatial means; none: every activation
    cross_layer: bool = False
    device: str = "auto"
    cfg: str | None = None
    trust_pickle: bool = False


@dataclass
class SimilarityResult:
    ids: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    state: CKAState | None = None
    skipped_images: int = 0
    rows: list[dict[str, list]] = field(default_factory=list)  # checkpoints rows (first shard)
    errors: list[ErrorRecord] = field(default_factory=list)


def _features(output: torch.Tensor, pool: str) -> torch.Tensor:
    out = output.detach().float()
    return (
        out.mean(dim=tuple(range(2, out.dim()))) if pool == "avg" and out.dim() > 2 else out.reshape(out.shape[0], -1)
    )


def similarity_shard(
    paths: list[str], images: list[str], opts: SimilarityOptions, *, first: bool = False
) -> SimilarityResult:
    from yolo_audit.activations_job import resolve_device

    result = SimilarityResult()
    device = resolve_device(opts.device)
    models = []
    for path in paths:
        try:
            ckpt = load_checkpoint(path, trust_pickle=opts.trust_pickle)
            models.append(build_module(ckpt, cfg=opts.cfg).to(device))
            result.ids.append(ckpt.checkpoint_id)
            if first:
                result.rows.append(checkpoint_table(ckpt))
        except Exception as exc:  # noqa: BLE001 - that checkpoint is left out, with an errors row
            result.errors.append(record(path, "similarity", exc))
    if not models:
        return result
    result.modules = list(select_modules(models[0], "modules"))
    result.state = CKAState.empty(len(models) * len(result.modules))
    with torch.inference_mode():
        for start in range(0, len(images), opts.batch):
            batch, failed = load_batch(images[start : start + opts.batch], opts.imgsz)
            result.skipped_images += failed
            if len(batch) < MIN_BATCH:
                result.skipped_images += len(batch)
                continue
            feats: list[torch.Tensor] = []
            for model in models:
                feats += _run(model, batch.to(device), result.modules, opts.pool)
            result.state.update(feats)
    return result


def _run(model: torch.nn.Module, batch: torch.Tensor, names: list[str], pool: str) -> list[torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    modules = select_modules(model, "modules")
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, _features(o, pool)))
        for n in names
    ]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[n] for n in names]


def merge_results(a: SimilarityResult, b: SimilarityResult) -> SimilarityResult:
    state = a.state.merge(b.state) if a.state is not None and b.state is not None else (a.state or b.state)
    return SimilarityResult(a.ids or b.ids, a.modules or b.modules, state, a.skipped_images + b.skipped_images,
                            a.rows or b.rows, a.errors + [e for e in b.errors if e not in a.errors])  # fmt: skip


@dataclass
class SimilaritySummary:
    out: str
    dataset_id: str = ""
    images: int = 0
    pairs: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def analyze_similarity(
    paths: list[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    opts: SimilarityOptions | None = None,
    max_images: int | None = None,
    split: str = "val",
    shards_per_run: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    stream: TextIO | None = None,
) -> SimilaritySummary:
    opts = opts or SimilarityOptions()
    if opts.batch < MIN_BATCH:
        raise AuditError(f"--batch must be at least {MIN_BATCH}: the unbiased HSIC estimator needs 4 images a batch")
    if opts.pool not in ("avg", "none"):
        raise AuditError(f"--pool must be avg or none, not {opts.pool!r}")
    out_uri = schema.check_writable(out)
    files = find_checkpoints(list(paths))
    images = list_images(local_dataset(str(data)), split=split, max_images=max_images)
    summary = SimilaritySummary(out=out_uri, dataset_id=dataset_id(images, opts.imgsz), images=len(images))
    with exclusive(out_uri), ray_session(address, num_cpus=num_cpus):
        import ray

        gpus = ray.cluster_resources().get("GPU", 0) > 0
        parts = [p for p in shards(images, shards_per_run or cluster_cpus()) if p]
        tasks = [Task(f"shard {i}", similarity_shard, (files, part, opts), {"first": i == 0}, num_cpus=1,
                      num_gpus=1 if gpus else 0) for i, part in enumerate(parts)]  # fmt: skip
        results = run_tasks(tasks, stage="similarity", stream=stream or sys.stderr)
        merged = _tree_merge(ray, results)
    summary.errors = merged.errors
    if merged.state is None:
        raise AuditError("no checkpoint could be run; see the errors", path=str(paths[0]))
    for row in merged.rows:
        schema.write(out_uri, "checkpoints", row["checkpoint_id"][0], row)
    table = similarity_table(merged, opts, summary.dataset_id)
    summary.pairs = len(table["cka"])
    key = hashlib.sha256(",".join(sorted(merged.ids)).encode()).hexdigest()[:12]
    name = f"{summary.dataset_id}-{key}-{opts.pool}"  # with or without --cross-layer: one file, the latest run's
    schema.remove(out_uri, "similarity", f"{name}-x")  # where versions before 2026-11-28 put the cross-layer rows
    schema.write(out_uri, "similarity", name, table)
    write_errors(out_uri, summary.errors)
    return summary


def _tree_merge(ray: Any, results: list[SimilarityResult]) -> SimilarityResult:
    remote = ray.remote(merge_results)
    refs = [ray.put(r) for r in results]
    while len(refs) > 1:
        refs = [remote.remote(*refs[i : i + 2]) if i + 1 < len(refs) else refs[i] for i in range(0, len(refs), 2)]
    return ray.get(refs[0])


def similarity_table(merged: SimilarityResult, opts: SimilarityOptions, data_id: str) -> dict[str, list]:
    """Rows for every pair of checkpoints (a <= b, self-pairs included): corresponding modules, or all module pairs
    with cross_layer."""
    cka, reasons = merged.state.compute()
    n_mod = len(merged.modules)
    cols: dict[str, list] = {k: [] for k in schema.columns("similarity")}
    for a in range(len(merged.ids)):
        for b in range(a, len(merged.ids)):
            for i, mi in enumerate(merged.modules):
                for j, mj in enumerate(merged.modules):
                    if i != j and not opts.cross_layer:
                        continue
                    p, q = a * n_mod + i, b * n_mod + j
                    value = float(cka[p, q])
                    row = {
                        "checkpoint_a": merged.ids[a], "checkpoint_b": merged.ids[b], "layer_a": layer_of(mi),
                        "layer_b": layer_of(mj), "module_a": mi, "module_b": mj,
                        "cka": None if value != value else value, "reason": reasons[p][q],
                        "n_images": merged.state.images, "n_batches": merged.state.batches, "pool": opts.pool,
                        "dataset_id": data_id,
                    }  # fmt: skip
                    for k, v in row.items():
                        cols[k].append(v)
    return cols
