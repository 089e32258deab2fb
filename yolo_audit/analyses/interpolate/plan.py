"""Driver of `yolo-audit interpolate`: one task per (checkpoint x α) on the line from the reference to the checkpoint,
each validated on the same data with the same settings; the barrier per checkpoint in the summary.

barrier = max over α of [(1 - α) m(0) + α m(1) - m(α)], m the mAP: how far accuracy dips below the straight line
between the two ends. A fine-tune whose barrier is small stays in the base's basin (linear mode connectivity).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from yolo_audit.analyses import StudyInputs
from yolo_audit.analyses.images import dataset_id, list_images
from yolo_audit.analyses.interpolate.job import InterpolateOptions, PointResult, interpolate_task
from yolo_audit.analyses.validation import labelled_images
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import checkpoint_table, find_checkpoints, load_checkpoint
from yolo_audit.results import files
from yolo_audit.results.errors import ErrorRecord, clear_errors, write_errors
from yolo_audit.results.ledger import Ledger, done_key, fingerprint
from yolo_audit.results.location import Location, Where, exclusive, locate
from yolo_audit.runtime.tasks import Task, cluster_gpus, ray_session, run_tasks, short_name

BASIN = 0.1  # a barrier within this share of the better end's mAP50-95: the fine-tune stays in the base's basin
STEADY = 0.005  # mAP50-95 that moves from one end to the other without turning back by more than this: monotonic


@dataclass
class InterpolationSummary:
    out: Location
    dataset_id: str = ""
    rows: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)
    barriers: Any = None  # polars DataFrame: per checkpoint, the ends, the barrier and where it is

    @property
    def ok(self) -> bool:
        return not self.errors

    def __repr__(self) -> str:
        return f"InterpolationSummary(out={self.out.uri!r}, rows={self.rows}, errors={len(self.errors)})"


def alphas(steps: int) -> list[float]:
    """`steps` evenly spaced points from 0 (the reference) to 1 (the checkpoint), both ends included."""
    if steps < 2:
        raise AuditError(f"--steps must be at least 2 (the two ends), not {steps}")
    return [i / (steps - 1) for i in range(steps)]


def analyze_interpolation(
    paths: list[Where],
    reference: Where,
    data: str,
    out: Where,
    *,
    steps: int = 11,
    opts: InterpolateOptions | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    stream: TextIO | None = None,
) -> InterpolationSummary:
    opts = opts or InterpolateOptions()
    points = alphas(steps)
    out_loc = files.check_writable(locate(out))
    ref_uri = locate(reference).uri
    checkpoints = [f for f in find_checkpoints(list(paths)) if f != ref_uri]
    local, images = labelled_images(data, opts.split, out_loc, "interpolate")
    if opts.recalibrate_bn:
        list_images(local, split="train", max_images=opts.recalibrate_bn)  # the training images exist: fail now
    ref = load_checkpoint(ref_uri, trust_pickle=opts.trust_pickle)
    summary = InterpolationSummary(out=out_loc, dataset_id=dataset_id(images, opts.imgsz))
    ledger = Ledger(out_loc, force=force)
    prints = {c: fingerprint(c) for c in [ref_uri, *checkpoints]}
    with exclusive(out_loc), ray_session(address, num_cpus=num_cpus, engine=engine):
        gpus = 1 if cluster_gpus() > 0 else 0
        tasks = [
            Task(f"{short_name(c)} α={a:.2f}", interpolate_task, (c, ref_uri, local, a, opts, out_loc.uri,
                                                                   summary.dataset_id),
                 num_gpus=gpus, revive=_revive,
                 done_key=done_key("interpolate", prints[c], prints[ref_uri], summary.dataset_id, a, opts))
            for c in checkpoints
            for a in points
        ]  # fmt: skip
        results = run_tasks(tasks, stage="interpolate", stream=stream or sys.stderr, ledger=ledger)
        failed = {r.path for r in results if r.errors}
        summary.errors += _first_per_file(results)
        for path in {r.path for r in results} - failed:
            clear_errors(out_loc, path, ("interpolate", "align"))
        files.write_checkpoints(out_loc, [checkpoint_table(ref)] + [r.checkpoint_row for r in results
                                                                     if r.checkpoint_row])  # fmt: skip
        done = [r for r in results if not r.errors and r.map50_95 is not None]
        files.write_references(out_loc, "interpolate", [(r.checkpoint_id, r.reference_id) for r in done])
        summary.rows = len(done)
        summary.barriers = barriers(done, recalibrated=bool(opts.recalibrate_bn))
        write_errors(out_loc, summary.errors)
        ledger.save()
    return summary


def _first_per_file(results: list[PointResult]) -> list[ErrorRecord]:
    """One error per file (every point of a file that cannot load fails the same way)."""
    seen: dict[str, ErrorRecord] = {}
    for r in results:
        for e in r.errors:
            seen.setdefault(r.path, e)
    return list(seen.values())


def _revive(data: dict) -> PointResult:
    """A point as the ledger recorded it (its row is already written)."""
    return PointResult(**{**data, "errors": []})


def barriers(points: list[PointResult], *, recalibrated: bool = False) -> Any:
    """Per checkpoint: mAP50-95 at both ends, the barrier (the largest dip below the straight line between them) and
    the α where it is, for mAP50-95 and mAP50; `in_basin` when the barrier is within BASIN of the better end;
    `monotonic` when mAP50-95 goes from one end to the other without turning back (by more than STEADY)."""
    import polars as pl

    frame = pl.DataFrame(
        [{"checkpoint_id": p.checkpoint_id, "path": p.path, "alpha": p.alpha, "map50_95": p.map50_95,
          "map50": p.map50} for p in points],
        schema={"checkpoint_id": pl.String, "path": pl.String, "alpha": pl.Float64, "map50_95": pl.Float64,
                "map50": pl.Float64},
    )  # fmt: skip
    return barrier_table(frame.with_columns(recalibrated=pl.lit(recalibrated)))


def barrier_table(rows: Any) -> Any:
    """The barrier of every (checkpoint, recalibrated) line in `interpolation` rows (also what the report reads)."""
    import polars as pl

    keys = ["checkpoint_id", "recalibrated"]
    ends = rows.group_by(keys).agg(
        *[pl.col(m).sort_by("alpha").first().alias(f"start{s}") for m, s in (("map50_95", ""), ("map50", "50"))],
        *[pl.col(m).sort_by("alpha").last().alias(f"end{s}") for m, s in (("map50_95", ""), ("map50", "50"))],
        pl.col("alpha").min().alias("a0"), pl.col("alpha").max().alias("a1"),
    )  # fmt: skip
    dips = rows.join(ends, on=keys).with_columns(
        dip=(1 - pl.col("alpha")) * pl.col("start") + pl.col("alpha") * pl.col("end") - pl.col("map50_95"),
        dip50=(1 - pl.col("alpha")) * pl.col("start50") + pl.col("alpha") * pl.col("end50") - pl.col("map50"),
    )
    out = dips.filter((pl.col("a0") == 0) & (pl.col("a1") == 1)).group_by(keys, maintain_order=True).agg(
        pl.col("start").first().alias("map50_95_reference"), pl.col("end").first().alias("map50_95_checkpoint"),
        pl.col("dip").max().alias("barrier_map50_95"), pl.col("alpha").sort_by("dip").last().alias("barrier_alpha"),
        pl.col("dip50").max().alias("barrier_map50"),
        pl.col("map50_95").max().alias("best_map50_95"), pl.col("alpha").sort_by("map50_95").last().alias("best_alpha"),
    )  # fmt: skip
    steps = (
        rows.sort("alpha").group_by(keys, maintain_order=True)
        .agg(pl.col("map50_95").diff().drop_nulls().alias("steps"))
        .with_columns(up=pl.col("steps").list.min() >= -STEADY, down=pl.col("steps").list.max() <= STEADY)
    )  # fmt: skip
    return (
        out.join(steps, on=keys, how="left")
        .with_columns(
            in_basin=pl.col("barrier_map50_95")
            <= BASIN * pl.max_horizontal("map50_95_reference", "map50_95_checkpoint") + 1e-9,
            monotonic=pl.when(pl.col("map50_95_checkpoint") >= pl.col("map50_95_reference"))
            .then(pl.col("up"))
            .otherwise(pl.col("down")),
        )
        .drop("steps", "up", "down")
        .sort(keys)
    )


def in_study(inputs: StudyInputs) -> InterpolationSummary:
    """Each run's last snapshot on the line from the base, on the study's validation data (the study's `interpolate:
    {steps, recalibrate_bn}`)."""
    if inputs.reference is None:
        raise AuditError("interpolate needs the base the runs started from; the study has none", path=inputs.out.uri)
    chosen = inputs.options.get("interpolate", {})
    opts = InterpolateOptions(imgsz=inputs.imgsz, batch=inputs.batch,
                              recalibrate_bn=int(chosen.get("recalibrate_bn", 0)))  # fmt: skip
    steps = int(chosen.get("steps", 11))
    print(f"[interpolate] {len(inputs.last)} runs' last snapshots on the line from the base, {steps} points",
          file=inputs.stream)  # fmt: skip
    return analyze_interpolation(inputs.last, inputs.reference, inputs.data, inputs.out, steps=steps, opts=opts,
                                 stream=inputs.stream)  # fmt: skip
