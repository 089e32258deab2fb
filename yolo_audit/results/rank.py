"""Rankings over a results store: lazy Polars queries built from small expression functions, one collect each.

No Python loops over rows: every ranking is a `scan_parquet` chain, so it scales with the store (benchmarks/rank.py).
"""

from __future__ import annotations

import polars as pl

from yolo_audit.errors import AuditError
from yolo_audit.results import references
from yolo_audit.results.location import Where
from yolo_audit.results.store import (
    COUNTED,
    dead_expr,
    layer_divergence,
    layer_dynamics,
    open_results,
    scan,
    tables,
    units,
)

DEAD_BY = ("channel", "layer", "checkpoint")
DIVERGENCE_BY = ("param", "layer", "checkpoint")


def _with_runs(frame: pl.LazyFrame, out: Where) -> pl.LazyFrame:
    if "checkpoints" not in tables(out):
        return frame.with_columns(run=pl.lit(None, pl.String), epoch=pl.lit(None, pl.Int32))
    runs = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch")
    return frame.join(runs, on="checkpoint_id", how="left", maintain_order="left")


def rank_dead_units(
    out: Where, *, by: str = "layer", criterion: str = "any", top: int = 20, against: str = "reference"
) -> pl.LazyFrame:
    """Dead units (units only: outputs of a nonlinearity) across every checkpoint, newly dead (vs the reference) first
    where known, then by the criterion's count (`any`: dead = dormant or constant). `against` a checkpoint: only those
    measured against it (and itself; see `references`)."""
    if by not in DEAD_BY:
        raise AuditError(f"--by must be one of {', '.join(DEAD_BY)}")
    matches = dead_expr(criterion)  # validates the criterion
    if "channel_stats" not in tables(out):
        raise AuditError(
            f"no channel_stats table here; run `yolo-audit activations ... --out {out}` first (dead units are measured "
            "on images)",
            path=str(out),
        )
    stats = references.select_passes(units(out), out, against)
    if by == "channel":
        ranked = stats.filter(matches).sort(
            [pl.col("newly_dead").fill_null(False), "dormant_score", "mean_abs"], descending=[True, False, False],
            nulls_last=True,
        )  # fmt: skip
        cols = ["checkpoint_id", "layer", "module", "channel", "dead", "newly_dead", "revived", "dormant", "constant",
                "never_positive", "dormant_score", "mean_abs", "std", "max"]  # fmt: skip
        return _with_runs(ranked.head(top).select(cols), out)
    keys = ["checkpoint_id", "dataset_id", "layer"] if by == "layer" else ["checkpoint_id", "dataset_id"]
    grouped = stats.group_by(keys).agg(  # aggregate the flags in place: no helper columns over the whole store
        pl.len().alias("units"), *[pl.col(c).sum() for c in COUNTED]
    )
    by_criterion = "dead" if criterion == "any" else criterion
    ranked = grouped.with_columns(
        (pl.col("dead") / pl.col("units")).alias("frac_dead"),
        pl.col(by_criterion)
        .rank("min", descending=True)
        .over("checkpoint_id", "dataset_id")
        .alias("rank_in_checkpoint")
        if by == "layer"
        else pl.col(by_criterion).rank("min", descending=True).alias("rank"),
    ).sort(["newly_dead", by_criterion, *keys], descending=[True, True] + [False] * len(keys))
    return _with_runs(ranked.head(top), out)


def rank_divergence(out: Where, *, by: str = "layer", top: int = 20, against: str = "reference") -> pl.LazyFrame:
    """Weight divergence across checkpoints and runs: per tensor (rel_diff), per layer (relative L2 of the layer's
    parameters) or per checkpoint (mean over its layers), largest first; each checkpoint against its own reference
    unless `against` says otherwise (see `references`)."""
    if by not in DIVERGENCE_BY:
        raise AuditError(f"--by must be one of {', '.join(DIVERGENCE_BY)}")
    if by == "param":
        frame = (
            references.select(scan(out, "weight_divergence"), out, against)
            .sort(
                ["rel_diff", "checkpoint_id", "reference_id", "param"],
                descending=[True, False, False, False],
                nulls_last=True,
            )
            .head(top)
        )  # ties (frozen tensors: 0.0) in a fixed order, however the files are laid out
        return _with_runs(frame, out)
    layers = references.select(layer_divergence(out), out, against)
    if by == "layer":
        return layers.sort(
            ["rel_l2", "checkpoint_id", "reference_id", "layer"],
            descending=[True, False, False, False],
            nulls_last=True,
        ).head(top)
    return (
        layers.group_by("checkpoint_id", "reference_id", "run", "epoch")
        .agg(
            pl.col("rel_l2").mean().alias("mean_rel_l2"),
            pl.col("rel_l2").max().alias("max_rel_l2"),
            pl.col("layer").sort_by("rel_l2", descending=True).first().alias("most_moved_layer"),
        )  # fmt: skip
        .sort(["mean_rel_l2", "checkpoint_id", "reference_id"], descending=[True, False, False], nulls_last=True)
        .head(top)
    )


def rank_drift(out: Where, *, top: int = 20, against: str = "reference") -> pl.LazyFrame:
    """Layers whose BatchNorm running statistics moved while every parameter stayed bit-identical (the callback
    freeze trap), by how far the statistics moved; against each checkpoint's own reference unless `against` says
    otherwise."""
    bn = (
        scan(out, "weight_divergence")
        .filter(pl.col("role").is_in(["bn_running_mean", "bn_running_var"]))
        .group_by("checkpoint_id", "reference_id", "layer")
        .agg(
            pl.col("rel_diff").max().alias("max_bn_stat_rel_diff"),
            pl.col("max_abs_diff").max().alias("max_bn_abs_diff"),
        )
    )
    drift = references.select(scan(out, "layer_freeze"), out, against).filter(pl.col("verdict") == "frozen_bn_drift")
    ranked = drift.join(bn, on=["checkpoint_id", "reference_id", "layer"], how="left").sort(
        ["max_bn_stat_rel_diff", "checkpoint_id", "reference_id", "layer"],
        descending=[True, False, False, False],
        nulls_last=True,
    )
    cols = ["checkpoint_id", "reference_id", "layer", "declared_frozen", "max_bn_stat_rel_diff", "max_bn_abs_diff"]
    return _with_runs(ranked.select(cols).head(top), out)


def query(out: Where, sql: str) -> pl.DataFrame:
    """Polars SQL over every table present (table names as in the README)."""
    context = pl.SQLContext(frames=open_results(out))
    try:
        return context.execute(sql).collect()
    except (pl.exceptions.SQLInterfaceError, pl.exceptions.SQLSyntaxError, pl.exceptions.ColumnNotFoundError,
            pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:  # fmt: skip
        reason = str(exc).splitlines()[0]
        raise AuditError(f"query failed: {reason}; tables: {', '.join(tables(out))}", path=str(out)) from exc


def rank_rewind(out: Where, *, top: int = 5, against: str = "reference") -> pl.LazyFrame:
    """Per run (its checkpoint) and direction, the swaps whose delta mAP50-95 is most negative: the layers whose
    change the accuracy depends on most. `top` rows per checkpoint and direction."""
    frame = references.select(scan(out, "rewind"), out, against, "rewind").with_columns(
        pl.col("delta_map50_95").rank("ordinal").over("checkpoint_id", "direction").alias("rank_in_checkpoint")
    )
    ranked = frame.filter(pl.col("rank_in_checkpoint") <= top).sort("checkpoint_id", "direction", "rank_in_checkpoint")
    cols = ["checkpoint_id", "direction", "rank_in_checkpoint", "layer", "group", "delta_map50_95", "map50_95",
            "baseline_map50_95"]  # fmt: skip
    return _with_runs(ranked.select(cols), out)


def rank_gradient_flow(out: Where, *, run: str | None = None, top: int = 1000) -> pl.LazyFrame:
    """The gradient flow, layer x epoch per run (`train_dynamics`, recorded live): how much gradient reached each layer,
    the share of steps without one, how far its parameters and its BatchNorm statistics moved; by run, layer, epoch."""
    if "train_dynamics" not in tables(out):
        raise AuditError(
            "no train_dynamics table here; studies record it, or attach yolo_audit.integrations.ultralytics.attach("
            f"model, out={str(out)!r}) to your YOLO model before .train()",
            path=str(out),
        )
    frame = layer_dynamics(out)
    if run is not None:
        frame = frame.filter(pl.col("run") == run)
    cols = ["run", "layer", "epoch", "trainable", "grad_norm", "grad_norm_max", "frac_zero_grad", "update_ratio",
            "bn_update_ratio", "steps"]  # fmt: skip
    return frame.select(cols).sort("run", "layer", "epoch").head(top)
