"""Driver of `yolo-audit activations`: one Ray task per (group of checkpoints x shard of whole batches: each image is
decoded once per task for all of its checkpoints), tree merges per checkpoint, tables.

The reference (if any) is analysed on the same images, so `newly_dead` and `revived` compare like with like; a
checkpoint of another architecture than the reference is refused (an `errors` row naming both, no numbers). Tasks
ask for a GPU where the cluster has one. A checkpoint that fails becomes an `errors` row; the others complete.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from yolo_audit.analyses import StudyInputs
from yolo_audit.analyses.activations.job import (
    ActivationOptions,
    ShardResult,
    activations_shard,
    changed_channels,
    dead_flags,
    feature_maps_task,
    tables_for,
)
from yolo_audit.analyses.images import dataset_id, list_images, shards
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import find_checkpoints
from yolo_audit.results import files
from yolo_audit.results.errors import ErrorRecord, clear_errors, write_errors
from yolo_audit.results.keys import dataset_key
from yolo_audit.results.ledger import Ledger, done_key, fingerprint, recording, skipped_line
from yolo_audit.results.location import Location, Where, exclusive, local_dataset, locate
from yolo_audit.runtime.tasks import Task, cluster_cpus, cluster_gpus, ray_session, run_tasks, short_name, tree_merge

# checkpoints a task runs side by side over its shard, each image decoded once for all of them (more would hold more
# networks in a worker's memory: 8 yolov8s are ~0.4 GB of weights)
CHECKPOINTS_PER_TASK = 8


@dataclass
class ActivationsSummary:
    out: Location
    dataset_id: str = ""
    images: int = 0
    analysed: list[str] = field(default_factory=list)
    checkpoint_ids: set[str] = field(default_factory=set)  # distinct contents among the analysed files
    errors: list[ErrorRecord] = field(default_factory=list)
    failed_images: int = 0
    architectures: int = 1  # distinct architectures among the checkpoints (without a reference they are grouped)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __repr__(self) -> str:
        return (
            f"ActivationsSummary(out={self.out.uri!r}, dataset_id={self.dataset_id!r}, images={self.images}, "
            f"checkpoints={len(self.checkpoint_ids)}, files={len(self.analysed)}, errors={len(self.errors)})"
        )


def analyze_activations(
    paths: list[Where],
    data: str | Path,
    out: Where,
    *,
    reference: Where | None = None,
    opts: ActivationOptions | None = None,
    max_images: int | None = None,
    split: str = "val",
    shards_per_checkpoint: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    stream: TextIO | None = None,
) -> ActivationsSummary:
    """Channel statistics of every checkpoint over the images (see the README). Checkpoints already done for the same
    file, reference, images and options are skipped (see `results.ledger`) unless `force`; the reference is measured
    again whenever another checkpoint is (its statistics give newly_dead), and new feature maps reuse the channels
    chosen before, so every checkpoint's maps show the same channels."""
    opts = opts or ActivationOptions()
    if opts.depth not in ("modules", "leaves"):
        raise AuditError(f"--depth must be modules or leaves, not {opts.depth!r}")
    out_loc = files.check_writable(locate(out))
    checkpoints = find_checkpoints(list(paths), reference=reference)
    ref_path = locate(reference).uri if reference is not None else None
    images = list_images(local_dataset(str(data)), split=split, max_images=max_images)
    summary = ActivationsSummary(out=out_loc, dataset_id=dataset_id(images, opts.imgsz), images=len(images))
    ledger = Ledger(out_loc, force=force)
    ref_print = fingerprint(ref_path) if ref_path else None
    keys = {c: done_key("activations", fingerprint(c), ref_print, summary.dataset_id, opts) for c in checkpoints}
    found = {c: ledger.lookup(keys[c]) for c in checkpoints}
    todo = [c for c in checkpoints if found[c] is None]
    if len(todo) < len(checkpoints):
        print(skipped_line("activations", "files, images and options", len(checkpoints) - len(todo), len(checkpoints)),
              file=stream or sys.stderr)  # fmt: skip
    compute = [ref_path, *[c for c in todo if c != ref_path]] if todo and ref_path else todo
    arches: set[str] = set()
    for c, d in found.items():
        if d is not None and c not in compute:
            summary.analysed.append(c)
            summary.checkpoint_ids.add(d["checkpoint_id"])
            summary.failed_images += d["failed_images"]
            arches.add(d["arch_hash"])
    summary.architectures = len(arches)
    if not compute:
        return summary
    maps_key = done_key("activations:maps", ref_print, summary.dataset_id, opts)
    chosen = ledger.lookup(maps_key) if ref_path and len(compute) < len(checkpoints) else None
    with exclusive(out_loc), ray_session(address, num_cpus=num_cpus, engine=engine):
        n_batches = -(-len(images) // max(opts.batch, 1))
        groups = [compute[i : i + CHECKPOINTS_PER_TASK] for i in range(0, len(compute), CHECKPOINTS_PER_TASK)]
        n = shards_per_checkpoint or max(1, min(n_batches, cluster_cpus() // len(groups)))
        parts = shards(images, n, batch=opts.batch)
        gpus = 1 if cluster_gpus() > 0 else 0
        tasks = [
            Task(f"{short_name(group[0])}{f' +{len(group) - 1}' if len(group) > 1 else ''}[{i}]", activations_shard,
                 (group, part, opts), {"first": i == 0}, num_cpus=1, num_gpus=gpus)
            for group in groups
            for i, part in enumerate(parts)
        ]  # fmt: skip
        partial = run_tasks(tasks, stage="activations", stream=stream or sys.stderr)
        per_checkpoint = [[r for shard in partial[g * len(parts) : (g + 1) * len(parts)] for r in shard if r.path == f]
                          for g, group in enumerate(groups) for f in group]  # fmt: skip
        merged = tree_merge(per_checkpoint)
        ref = merged[compute.index(ref_path)] if ref_path else None
        summary.architectures = len(arches | {r.arch_hash for r in merged if r.arch_hash})
        merged, refused = _same_architecture(merged, ref)  # neither maps nor rows for another architecture
        summary.errors += refused
        if opts.maps:
            errors, shared = _add_maps(merged, ref, images[: opts.maps], opts, stream,
                                       shared=chosen["channels"] if chosen else None)  # fmt: skip
            summary.errors += errors
            if shared is not None and chosen is None:
                ledger.add(maps_key, "activations:maps", [], {"channels": shared})
        written = _write(merged, ref, images, opts, summary)
        for result in merged:
            if result.path in written:
                ledger.add(keys[result.path], "activations", written[result.path], {
                    "checkpoint_id": result.checkpoint_id, "failed_images": result.failed_images,
                    "arch_hash": result.arch_hash})  # fmt: skip
        ledger.save()
    return summary


def _same_architecture(
    merged: list[ShardResult], ref: ShardResult | None
) -> tuple[list[ShardResult], list[ErrorRecord]]:
    """The results whose architecture is the reference's (all of them without a reference), and an `align` error for
    each of the others: their channels are not the reference's, so nothing of them is compared or written."""
    if ref is None or not ref.arch_hash:
        return merged, []
    same = [r for r in merged if not r.arch_hash or r.arch_hash == ref.arch_hash]
    refused = [
        ErrorRecord(r.path, "align", "AuditError", f"{r.path}: architecture differs from the reference {ref.path}; its "
                    "channels are not the reference's, so nothing was compared. Compare checkpoints of the same model")
        for r in merged if r.arch_hash and r.arch_hash != ref.arch_hash
    ]  # fmt: skip
    return same, refused


def _add_maps(
    merged: list[ShardResult],
    ref: ShardResult | None,
    images: list[str],
    opts: ActivationOptions,
    stream: TextIO | None,
    *,
    shared: dict[str, list[int]] | None = None,
) -> tuple[list[ErrorRecord], dict[str, list[int]] | None]:
    """A second, small wave: feature maps of the first images for the channels that changed most vs the reference
    (without one, each checkpoint's own most varying channels). A failure here costs only the maps (an errors row);
    the statistics are written all the same. `shared`: the channels an earlier run chose (reused); returns the errors
    and the channels shared by every checkpoint (None without a reference)."""
    ok = [r for r in merged if not r.errors and r.states]
    if not ok:
        return [], shared
    ref = ref if ref is not None and not ref.errors else None
    if shared is None and ref is not None:
        shared = changed_channels([r for r in ok if r is not ref], ref)
    tasks = [
        Task(
            f"{short_name(r.path)} maps",
            feature_maps_task,
            (r.path, images, shared if shared is not None else changed_channels([r], None), opts),
            num_cpus=1,
        )
        for r in ok
    ]  # fmt: skip  (without a reference each checkpoint's own most varying channels)
    errors: list[ErrorRecord] = []
    for result, maps in zip(ok, run_tasks(tasks, stage="feature maps", stream=stream or sys.stderr), strict=True):
        result.maps, result.map_channels = maps.maps, maps.map_channels
        errors += maps.errors
    return errors, shared


def _write(
    merged: list[ShardResult],
    ref: ShardResult | None,
    images: list[str],
    opts: ActivationOptions,
    summary: ActivationsSummary,
) -> dict[str, list[str]]:
    """Each checkpoint's rows; returns, per checkpoint written, the result files it wrote."""
    out = summary.out
    written: dict[str, list[str]] = {}
    reference_dead = dead_flags(ref, opts.tau) if ref is not None and not ref.errors else None
    ref_id = ref.checkpoint_id if reference_dead is not None and ref is not None else None
    for result in merged:
        summary.failed_images += result.failed_images
        if result.errors or not result.states:
            summary.errors += result.errors[:1] or [ErrorRecord(result.path, "activations", "AuditError", "no output")]
            continue
        clear_errors(out, result.path, ("activations", "align", "feature_maps"))
        key = dataset_key(result.checkpoint_id, summary.dataset_id)
        with recording() as own:
            against = ref_id if result.checkpoint_id != ref_id else None  # the reference itself: flags vs itself
            for table, cols in tables_for(result, summary.dataset_id, opts, images, against, reference_dead).items():
                if cols:  # no feature maps asked for: no file
                    files.write(out, table, key, cols)
        written[result.path] = list(own)
        summary.analysed.append(result.path)
        summary.checkpoint_ids.add(result.checkpoint_id)
    files.write_checkpoints(out, [r.checkpoint_row for r in merged if r.checkpoint_row and r.path in summary.analysed])
    files.write_references(out, "activations", [(r.checkpoint_id, ref_id) for r in merged if r.path in written])
    write_errors(out, summary.errors)
    return written


def in_study(inputs: StudyInputs) -> ActivationsSummary:
    """Each finished run's last snapshot (and the base) over the study's validation images, at the training size."""
    last = inputs.last
    opts = ActivationOptions(imgsz=inputs.imgsz, batch=inputs.batch, maps=4)
    print(f"[activations] {len(last)} runs' last snapshots over {inputs.data}", file=inputs.stream)
    return analyze_activations(last, inputs.data, inputs.out, reference=inputs.reference, opts=opts,
                               stream=inputs.stream)  # fmt: skip
