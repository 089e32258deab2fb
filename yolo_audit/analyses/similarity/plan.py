"""Driver of `yolo-audit similarity`: every checkpoint sees the same batches; minibatch CKA for all pairs.

One Ray task per shard of whole batches (batches are fixed by image order and --batch alone, so CKA does not depend
on how many tasks, CPUs or nodes share the work); shard states add up in a tree of merges. Memory stays flat in the
number of images.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from yolo_audit.analyses import StudyInputs
from yolo_audit.analyses.images import dataset_id, list_images, shards
from yolo_audit.analyses.similarity.job import SimilarityOptions, SimilarityResult, similarity_shard
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import find_checkpoints
from yolo_audit.model.keys import layer_of
from yolo_audit.results import files
from yolo_audit.results.compact import read_key
from yolo_audit.results.errors import ErrorRecord, write_errors
from yolo_audit.results.keys import similarity_key
from yolo_audit.results.labels import checkpoint_labels, unique_labels
from yolo_audit.results.ledger import Ledger, done_key, fingerprint, recording, skipped_line
from yolo_audit.results.location import Location, Where, exclusive, local_dataset, locate
from yolo_audit.results.schema import columns
from yolo_audit.runtime.tasks import Task, cluster_cpus, cluster_gpus, ray_session, run_tasks, tree_merge
from yolo_audit.stats.cka import MIN_BATCH, CKAState


@dataclass
class SimilaritySummary:
    out: Location
    dataset_id: str = ""
    images: int = 0
    pairs: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)
    by_group: Any = None  # polars DataFrame: per pair with the reference, mean CKA of backbone / neck / head ± SE
    used_images: int = 0  # images in full batches: what CKA was computed from

    @property
    def ok(self) -> bool:
        return not self.errors

    def __repr__(self) -> str:
        return (f"SimilaritySummary(out={self.out.uri!r}, images={self.images}, rows={self.pairs}, "
                f"errors={len(self.errors)})")  # fmt: skip


def analyze_similarity(
    paths: list[Where],
    data: str | Path,
    out: Where,
    *,
    opts: SimilarityOptions | None = None,
    max_images: int | None = None,
    split: str = "val",
    shards_per_run: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    stream: TextIO | None = None,
) -> SimilaritySummary:
    opts = opts or SimilarityOptions()
    if opts.batch < MIN_BATCH:
        raise AuditError(f"--batch must be at least {MIN_BATCH}: the unbiased HSIC estimator needs 4 images a batch")
    if opts.pool not in ("avg", "none"):
        raise AuditError(f"--pool must be avg or none, not {opts.pool!r}")
    out_loc = files.check_writable(locate(out))
    checkpoints = find_checkpoints(list(paths))
    images = list_images(local_dataset(str(data)), split=split, max_images=max_images)
    summary = SimilaritySummary(out=out_loc, dataset_id=dataset_id(images, opts.imgsz), images=len(images))
    ledger = Ledger(out_loc, force=force)
    key = done_key("similarity", [fingerprint(c) for c in checkpoints], summary.dataset_id, opts)
    done = ledger.lookup(key)
    if done is not None:
        print(skipped_line("similarity", "files, images and options"), file=stream or sys.stderr)
        table = read_key(out_loc, "similarity", done["file"])
        summary.pairs = done["pairs"]
        if table is not None:
            summary.by_group = _by_group(table.to_pydict(), done["groups"], done["names"])
            summary.used_images = int(table["n_images"][0].as_py()) if table.num_rows else 0
        return summary
    with exclusive(out_loc), ray_session(address, num_cpus=num_cpus, engine=engine), recording() as written:
        gpus = 1 if cluster_gpus() > 0 else 0
        parts = [p for p in shards(images, shards_per_run or cluster_cpus(), batch=opts.batch) if p]
        tasks = [Task(f"shard {i}", similarity_shard, (checkpoints, part, opts), {"first": i == 0}, num_cpus=1,
                      num_gpus=gpus) for i, part in enumerate(parts)]  # fmt: skip
        results = run_tasks(tasks, stage="similarity", stream=stream or sys.stderr)
        (merged,) = tree_merge([results])
        summary.errors = merged.errors
        write_errors(out_loc, summary.errors)
        if not merged.ids:
            raise AuditError("no checkpoint could be run; see the errors", path=str(paths[0]))
        if merged.state is None:  # no batch of 4 readable images anywhere: every row says so
            merged.state = CKAState.empty(len(merged.ids) * len(merged.modules))
        files.write_checkpoints(out_loc, merged.rows)
        files.write_references(out_loc, "similarity", [(i, merged.ids[0]) for i in merged.ids[1:]])
        table = similarity_table(merged, opts, summary.dataset_id)
        summary.pairs = len(table["cka"])
        # with or without --cross-layer: one file per (dataset, checkpoints, pool), the latest run's
        file_key = similarity_key(summary.dataset_id, merged.ids, opts.pool)
        files.write(out_loc, "similarity", file_key, table)
        names = checkpoint_labels({k: v[0] for k, v in r.items()} for r in merged.rows)
        summary.by_group = _by_group(table, merged.groups, names)
        summary.used_images = merged.state.images
        if summary.ok:
            ledger.add(key, "similarity", written, {"file": file_key, "pairs": summary.pairs, "groups": merged.groups,
                                                    "names": names})  # fmt: skip
            ledger.save()
    return summary


def _by_group(
    table: dict[str, list], groups: dict[str, str | None], names: dict[str, str | None], *, against: str = "reference"
) -> Any:
    """Per pair of checkpoints (`reference`: the reference, the first checkpoint, with each other one; `all`: every
    pair): mean CKA of corresponding modules in the backbone, neck and head with the mean of their standard errors
    (an upper bound on the standard error of the mean, whatever the modules' correlation), the mean Procrustes
    distance, and the module where CKA is lowest (where the two representations differ most)."""
    import polars as pl

    rows = pl.DataFrame(table)
    for column in ("cka_se", "procrustes"):  # files written before 2026-12-04 have neither
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, pl.Float64).alias(column))
    reference = table["checkpoint_a"][0] if table["checkpoint_a"] else None  # rows start with the reference's
    rows = rows.filter(
        (pl.col("module_a") == pl.col("module_b")) & (pl.col("checkpoint_a") != pl.col("checkpoint_b"))
        & ((pl.col("checkpoint_a") == reference) if against == "reference" else pl.lit(True))
    )  # fmt: skip
    if rows.is_empty():
        return None
    # names: `checkpoint_labels`, or what a ledger recorded (before 2026-12-02: run names, which repeat); a label
    # that repeats would merge different pairs into one row
    label = unique_labels(names)
    rows = rows.with_columns(
        pl.col("module_a").replace_strict(groups, default=None, return_dtype=pl.String).alias("group"),
        pl.col("checkpoint_a").replace_strict(label, default=None).alias("a"),
        pl.col("checkpoint_b").replace_strict(label, default=None).alias("b"),
    )
    per_group = (
        rows.filter(pl.col("group").is_not_null()).group_by("a", "b", "group")
        .agg(pl.col("cka").mean(), pl.col("cka_se").mean().alias("se"))
    )  # fmt: skip
    means = per_group.pivot(on="group", index=["a", "b"], values=["cka", "se"])
    means = means.rename({c: c.removeprefix("cka_") for c in means.columns if c.startswith("cka_")})
    means = means.rename({c: f"{c.removeprefix('se_')}_se" for c in means.columns if c.startswith("se_")})
    lowest = (
        rows.drop_nulls("cka")
        .sort("cka")
        .group_by("a", "b", maintain_order=True)
        .agg(
            pl.col("module_a").first().alias("lowest_module"),
            pl.col("cka").first().alias("lowest_cka"),
            pl.col("cka_se").first().alias("lowest_se"),
            pl.col("procrustes").mean(),
        )  # fmt: skip
    )
    order = [c for g in ("backbone", "neck", "head") for c in (g, f"{g}_se") if c in means.columns]
    return means.join(lowest, on=["a", "b"], how="left").select("a", "b", *order, "procrustes", "lowest_module",
                                                                "lowest_cka", "lowest_se").sort("a", "b")  # fmt: skip


def similarity_table(merged: SimilarityResult, opts: SimilarityOptions, data_id: str) -> dict[str, list]:
    """Rows for every pair of checkpoints (a <= b, self-pairs included): corresponding modules, or all module pairs
    with cross_layer; Procrustes for corresponding modules of checkpoint pairs (channel means only)."""
    result = merged.state.compute()
    shapes = merged.procrustes.compute() if merged.procrustes is not None else {}
    n_mod = len(merged.modules)
    cols: dict[str, list] = {k: [] for k in columns("similarity")}

    def value(matrix: torch.Tensor, p: int, q: int) -> float | None:
        v = float(matrix[p, q])
        return None if v != v else v

    for a in range(len(merged.ids)):
        for b in range(a, len(merged.ids)):
            for i, mi in enumerate(merged.modules):
                for j, mj in enumerate(merged.modules):
                    if i != j and not opts.cross_layer:
                        continue
                    p, q = a * n_mod + i, b * n_mod + j
                    cka = value(result.cka, p, q)
                    row = {
                        "checkpoint_a": merged.ids[a], "checkpoint_b": merged.ids[b], "layer_a": layer_of(mi),
                        "layer_b": layer_of(mj), "module_a": mi, "module_b": mj, "cka": cka,
                        "cka_se": value(result.se, p, q), "cka_chance": value(result.chance, p, q),
                        "procrustes": (0.0 if p == q else shapes.get((p, q))) if cka is not None else None,
                        "reason": result.reasons[p][q], "n_images": merged.state.images,
                        "n_batches": merged.state.batches, "pool": opts.pool, "precision": merged.precision,
                        "dataset_id": data_id,
                    }  # fmt: skip
                    for k, v in row.items():
                        cols[k].append(v)
    return cols


def in_study(inputs: StudyInputs) -> SimilaritySummary:
    """CKA between the base and every run's last snapshot, every module pair (cross-layer: all pairs come out of the
    same matrix product anyway, and the report draws them), over the study's validation images."""
    paths = ([inputs.reference] if inputs.reference else []) + inputs.last
    opts = SimilarityOptions(imgsz=inputs.imgsz, batch=max(MIN_BATCH, min(inputs.batch, 16)), cross_layer=True)
    print(f"[similarity] CKA between {len(paths)} checkpoints over {inputs.data}", file=inputs.stream)
    return analyze_similarity(paths, inputs.data, inputs.out, opts=opts, stream=inputs.stream)
