"""Driver of `yolo-audit activations`: one Ray task per (checkpoint x data shard), tree merges, then the tables.

The reference (if any) is analysed on the same images, so `newly_dead` compares like with like. Tasks ask for a GPU
where the cluster has one. A checkpoint that fails becomes an `errors` row; the others complete.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from yolo_audit import schema
from yolo_audit.activations_job import (
    ActivationOptions,
    ShardResult,
    activations_shard,
    dead_flags,
    merge_results,
    tables_for,
)
from yolo_audit.checkpoints import find_checkpoints
from yolo_audit.data import dataset_id, list_images, shards
from yolo_audit.orchestrate import Task, cluster_cpus, ray_session, run_tasks
from yolo_audit.storage import exclusive, local_dataset, locate
from yolo_audit.weights_job import ErrorRecord, error_key, write_errors


@dataclass
class ActivationsSummary:
    out: str
    dataset_id: str = ""
    images: int = 0
    analysed: list[str] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    failed_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def analyze_activations(
    paths: list[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    reference: str | Path | None = None,
    opts: ActivationOptions | None = None,
    max_images: int | None = None,
    split: str = "val",
    shards_per_checkpoint: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    stream: TextIO | None = None,
) -> ActivationsSummary:
    opts = opts or ActivationOptions()
    stream = stream or sys.stderr
    out_uri = schema.check_writable(out)
    files = find_checkpoints(list(paths), reference=reference)
    ref_path = locate(reference).uri if reference is not None else None
    images = list_images(local_dataset(str(data)), split=split, max_images=max_images)
    summary = ActivationsSummary(out=out_uri, dataset_id=dataset_id(images, opts.imgsz), images=len(images))
    with exclusive(out_uri):
        _run(files, ref_path, images, opts, summary, shards_per_checkpoint, address, num_cpus, stream)
    return summary


def _run(
    files: list[str],
    ref_path: str | None,
    images: list[str],
    opts: ActivationOptions,
    summary: ActivationsSummary,
    shards_per_checkpoint: int | None,
    address: str | None,
    num_cpus: int | None,
    stream: TextIO,
) -> None:
    out_uri = summary.out
    with ray_session(address, num_cpus=num_cpus):
        import ray

        gpus = ray.cluster_resources().get("GPU", 0) > 0
        n = shards_per_checkpoint or max(1, min(len(images) // max(opts.batch, 1), cluster_cpus() // len(files)))
        parts = shards(images, n)
        tasks = [
            Task(f"{Path(f).name}[{i}]", activations_shard, (f, part, opts),
                 {"first": i == 0, "maps": opts.maps if i == 0 else 0}, num_cpus=1, num_gpus=1 if gpus else 0)
            for f in files
            for i, part in enumerate(parts)
        ]  # fmt: skip
        partial = run_tasks(tasks, stage="activations", stream=stream)
        merged = _tree_merge(ray, [partial[i * len(parts) : (i + 1) * len(parts)] for i in range(len(files))])
    reference_dead = None
    if ref_path is not None:
        ref_result = merged[files.index(ref_path)]
        reference_dead = dead_flags(ref_result, opts.tau) if not ref_result.errors else None
    for result in merged:
        summary.failed_images += result.failed_images
        if result.errors or not result.states:
            summary.errors += result.errors[:1] or [ErrorRecord(result.path, "activations", "AuditError", "no output")]
            continue
        schema.remove(out_uri, "errors", error_key(result.path, "activations"))
        key = f"{result.checkpoint_id}-{summary.dataset_id}"
        for table, cols in tables_for(result, summary.dataset_id, opts, images, reference_dead).items():
            if cols:  # the checkpoints row has the same key as the weights analysis writes: one row per file
                schema.write(out_uri, table, result.checkpoint_id if table == "checkpoints" else key, cols)
        summary.analysed.append(result.path)
    write_errors(out_uri, summary.errors)


def _tree_merge(ray: Any, groups: list[list[ShardResult]]) -> list[ShardResult]:
    """Merge each checkpoint's shard results pairwise in Ray tasks (log2 rounds), all checkpoints at once."""
    if all(len(g) == 1 for g in groups):
        return [g[0] for g in groups]
    remote = ray.remote(merge_results)
    refs = [[ray.put(r) for r in g] for g in groups]
    while any(len(g) > 1 for g in refs):
        refs = [[remote.remote(*g[i : i + 2]) if i + 1 < len(g) else g[i] for i in range(0, len(g), 2)] for g in refs]
    return ray.get([g[0] for g in refs])
