"""Terminal summaries of a results folder (reads the store; never computes statistics)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

import polars as pl

from yolo_audit.analyses import ANALYSES
from yolo_audit.results import store
from yolo_audit.results.errors import ErrorRecord
from yolo_audit.results.labels import checkpoint_labels

if TYPE_CHECKING:  # a command imports only its own analysis (the others' drivers cost ~30 ms of every start-up)
    from yolo_audit.analyses.activations.plan import ActivationsSummary
    from yolo_audit.analyses.interpolate.plan import InterpolationSummary
    from yolo_audit.analyses.rewind.plan import RewindSummary
    from yolo_audit.analyses.similarity.plan import SimilaritySummary
    from yolo_audit.analyses.weights.plan import WeightsSummary
    from yolo_audit.study.driver import StudySummary

EXAMPLES = """\
Example queries (Python, Polars):
  import polars as pl
  R = "{out}"
  pl.scan_parquet(f"{{R}}/layer_freeze/*.parquet").filter(pl.col("verdict") == "frozen_bn_drift").collect()
  pl.scan_parquet(f"{{R}}/channel_weights/*.parquet").filter("dead_by_weights").group_by("layer").len().collect()
  pl.scan_parquet(f"{{R}}/weight_divergence/*.parquet").sort("rel_diff", descending=True).head(10).collect()
"""


def print_weights_summary(summary: WeightsSummary, *, examples: bool = False, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    out = summary.out
    with pl.Config(tbl_rows=60, tbl_cols=12, fmt_str_lengths=60, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        if "weight_divergence" in store.tables(out):
            print("\nMost divergent layers of each run's last checkpoint (relative L2 of the layer's parameters vs the "
                  "reference; every epoch: rank divergence):", file=stream)  # fmt: skip
            print(store.top_divergent_layers(out, 10, reference_id=summary.reference_id, latest=True), file=stream)
        if "layer_freeze" in store.tables(out):
            print("\nFreeze verification of each run's last checkpoint (layers per verdict; declared_mismatch counts"
                  " layers where train_args and the weights disagree):", file=stream)  # fmt: skip
            frame = store.freeze_summary(out, reference_id=summary.reference_id, latest=True)
            print(
                frame.drop("reference_id") if summary.reference_id else frame, file=stream
            )  # without one: say vs what
    if "weight_divergence" in store.tables(out):
        _print_pairwise(summary, stream)
    if summary.architectures > 1:
        print(f"\n{summary.architectures} different architectures among these checkpoints (arch_hash in the "
              "checkpoints table): statistics are per checkpoint; compare only within one architecture"
              + ("" if summary.reference_id else "; no --reference, so nothing was compared across them"),
              file=stream)  # fmt: skip
    counts = {t: store.scan(out, t).select(pl.len()).collect().item() for t in store.tables(out)}
    print(f"\nResults in {out}: " + ", ".join(f"{t} ({n} rows)" for t, n in counts.items()), file=stream)
    if examples:
        print(EXAMPLES.format(out=out), file=stream)
    _print_errors(summary.errors)
    if summary.errors:
        print(f"{len(summary.errors)} problem(s); see the errors table. Other checkpoints completed.", file=sys.stderr)


def _print_errors(errors: list[ErrorRecord]) -> None:
    for err in errors:
        print(f"error [{err.stage}] {err.message}", file=sys.stderr)


def print_study_summary(summary: StudySummary, *, examples: bool = False, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    out = summary.out
    if "runs" in store.tables(out):
        with pl.Config(
            tbl_rows=60, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=200, tbl_hide_dataframe_shape=True
        ):
            print("\nRuns:", file=stream)
            runs = store.scan(out, "runs").sort("run").collect()
            print(runs.select("run", "strategy", "frozen_layers", "status", "best_map50_95", "seconds"), file=stream)
    for name, result in summary.analyses.items():
        ANALYSES[name].print_summary(result, stream=stream)
    if examples:
        print("\n" + EXAMPLES.format(out=out), file=stream)
    failed = [r.spec.run for r in summary.trained if r.status != "done"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see the runs table's error column", file=sys.stderr)


def print_activations_summary(summary: ActivationsSummary, *, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    out = summary.out
    print(f"\n{len(summary.checkpoint_ids)} checkpoint(s) ({len(summary.analysed)} files) over {summary.images} images"
          f" (dataset {summary.dataset_id});"
          f" {summary.failed_images} unreadable image(s) skipped", file=stream)  # fmt: skip
    if "channel_stats" in store.tables(out):
        with pl.Config(
            tbl_rows=30, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=200, tbl_hide_dataframe_shape=True
        ):
            print("\nDead units per checkpoint (units only; dead = dormant or constant; never_positive is not death "
                  "for SiLU units; newly dead / revived vs the reference):", file=stream)  # fmt: skip
            print(store.dead_unit_summary(out, summary.dataset_id), file=stream)
    if summary.architectures > 1:
        print(f"\n{summary.architectures} different architectures among these checkpoints: compare rows within one "
              "arch_hash (checkpoints table) only", file=stream)  # fmt: skip
    print(f"\nResults in {out}: channel_stats, activation_hist, feature_maps, activation_passes", file=stream)
    _print_errors(summary.errors)


FEW_IMAGES = 64  # below this many images, CKA's standard errors are large: the commands say so


def print_similarity_summary(summary: SimilaritySummary, *, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if summary.by_group is not None:
        frame = summary.by_group
        shown = frame.select(
            "a", "b",
            *[_plus_minus(g, f"{g}_se") for g in ("backbone", "neck", "head") if g in frame.columns],
            pl.col("procrustes").round(3), "lowest_module", _plus_minus("lowest_cka", "lowest_se"),
        )  # fmt: skip
        with pl.Config(tbl_rows=60, tbl_cols=10, fmt_str_lengths=40, tbl_width_chars=200,
                       tbl_hide_dataframe_shape=True, float_precision=3):  # fmt: skip
            print(
                "\nRepresentation similarity of each checkpoint to the reference (a, the first checkpoint): mean "
                "linear CKA of corresponding modules in the backbone, neck and head ± the mean of their standard "
                "errors (1 = the same representation; within 2 SE of cka_chance = no evidence of similarity), the mean "
                "angular Procrustes distance (radians, 0 = the same up to rotation and scale), and the module where "
                "CKA is lowest:",
                file=stream,
            )
            print(shown, file=stream)
    print(f"\n{summary.pairs} CKA rows over {summary.used_images or summary.images} images in {summary.out}/similarity",
          file=stream)  # fmt: skip
    if 0 < summary.used_images < FEW_IMAGES:
        print(f"warning: CKA from {summary.used_images} images (fewer than {FEW_IMAGES}): its standard errors are "
              "large; read cka with cka_se and cka_chance, or pass more images", file=sys.stderr)  # fmt: skip
    _print_errors(summary.errors)


def _plus_minus(value: str, se: str) -> pl.Expr:
    """`0.930 ± 0.020` (the standard error left out where there is none); a summary's few rows."""

    def text(row: dict[str, float | None]) -> str | None:
        v, e = row[value], row[se]
        return None if v is None else f"{v:.3f}" if e is None or e != e else f"{v:.3f} ± {e:.3f}"

    return pl.struct(value, se).map_elements(text, return_dtype=pl.String).alias(value)


def print_rewind_summary(summary: RewindSummary, *, stream: TextIO | None = None) -> None:
    """The swaps that cost most, per run, and what the numbers mean."""
    from yolo_audit.results.rank import rank_rewind

    stream = stream or sys.stdout
    if "rewind" in store.tables(summary.out):
        with pl.Config(tbl_rows=30, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=200,
                       tbl_hide_dataframe_shape=True):  # fmt: skip
            print("\nLayer rewinding: what resetting each layer to the reference costs in mAP50-95 (most first; "
                  "delta 0: the accuracy does not need that layer's change):", file=stream)  # fmt: skip
            print(rank_rewind(summary.out, top=3).collect(), file=stream)
    print(f"\n{summary.rows} rewind rows in {summary.out}/rewind", file=stream)
    _print_errors(summary.errors)


def print_interpolation_summary(summary: InterpolationSummary, *, stream: TextIO | None = None) -> None:
    """Per checkpoint: mAP50-95 at the base and at the checkpoint, and the barrier on the line between them."""
    from yolo_audit.analyses.interpolate.plan import BASIN

    stream = stream or sys.stdout
    if summary.barriers is not None and summary.barriers.height and "checkpoints" in store.tables(summary.out):
        rows = store.scan(summary.out, "checkpoints").select("checkpoint_id", "run", "epoch", "path").collect()
        label = checkpoint_labels(rows.iter_rows(named=True))
        shown = summary.barriers.with_columns(
            pl.col("checkpoint_id").replace_strict(label, default=None).alias("checkpoint")
        ).select("checkpoint", "recalibrated", "map50_95_reference", "map50_95_checkpoint", "barrier_map50_95",
                 "barrier_alpha", "barrier_map50", "monotonic", "in_basin")  # fmt: skip
        with pl.Config(tbl_rows=40, tbl_cols=10, fmt_str_lengths=40, tbl_width_chars=200,
                       tbl_hide_dataframe_shape=True, float_precision=4):  # fmt: skip
            print("\nOn the straight line from the reference (α = 0) to each checkpoint (α = 1): mAP50-95 at both ends "
                  "and the barrier, the largest dip of mAP below the straight line between them, with its α; "
                  f"monotonic: no turning back on the way; in_basin: a barrier within {BASIN:.0%} of the better "
                  "end's mAP50-95 (linear mode connectivity):", file=stream)  # fmt: skip
            print(shown, file=stream)
    print(f"\n{summary.rows} interpolation rows in {summary.out}/interpolation", file=stream)
    _print_errors(summary.errors)


def _print_pairwise(summary: WeightsSummary, stream: TextIO) -> None:
    """The distance matrix (relative L2 of all parameters) of the reference and each run's last checkpoint, among the
    pairs this command compared; every pair is in weight_divergence, and the report's `pairwise` section."""
    ids = {r.checkpoint_id for r in summary.analysed}
    rows = store.scan(summary.out, "checkpoints").filter(pl.col("checkpoint_id").is_in(list(ids))).collect()
    shown = rows.filter(
        store.is_last_of_run() | pl.col("run").is_null() | (pl.col("checkpoint_id") == (summary.reference_id or ""))
    )
    keep = shown["checkpoint_id"].unique().to_list()
    dist = store.pairwise_distance(summary.out).filter(
        pl.col("checkpoint_id").is_in(keep) & pl.col("reference_id").is_in(keep)
    )
    if dist.height < 2:
        return
    label = checkpoint_labels(rows.select("checkpoint_id", "run", "epoch", "path").iter_rows(named=True))
    pairs = dist.with_columns(
        pl.col("checkpoint_id").replace_strict(label, return_dtype=pl.String).alias("name"),
        pl.col("reference_id").replace_strict(label, return_dtype=pl.String).alias("other"),
    )
    both = pl.concat(
        [
            pairs.select("name", "other", "rel_l2"),
            pairs.select(pl.col("other").alias("name"), pl.col("name").alias("other"), "rel_l2"),
        ]
    ).unique(["name", "other"])
    matrix = both.pivot(on="other", index="name", values="rel_l2", aggregate_function="first").sort("name")
    with pl.Config(tbl_rows=40, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=220, tbl_hide_dataframe_shape=True,
                   float_precision=4):  # fmt: skip
        print("\nDistance between the reference and each run's last checkpoint (relative L2 of all parameters, "
              "||A - B|| / ||B||; run@epoch; every compared pair: weight_divergence, and the report):",
              file=stream)  # fmt: skip
        print(matrix.select("name", *sorted(c for c in matrix.columns if c != "name")), file=stream)
