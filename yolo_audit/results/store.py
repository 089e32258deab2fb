"""A results folder as lazy Polars frames, and the summaries built on them (expressions, no per-row Python)."""

from __future__ import annotations

from functools import cache

import polars as pl

from yolo_audit.errors import AuditError
from yolo_audit.model.freeze import declared_mismatch
from yolo_audit.results import schema
from yolo_audit.results.compact import view
from yolo_audit.results.location import Where, locate

PARAM_ROLES = ("conv_weight", "conv_bias", "bn_weight", "bn_bias")
CRITERIA = ("any", "dead", "dormant", "constant", "never_positive", "newly_dead", "revived")


def dead_expr(criterion: str = "any") -> pl.Expr:
    """A unit counts by this criterion; `any` is `dead` (dormant or constant: the definition the activations analysis
    writes in `channel_stats.dead`); never_positive is descriptive, not death, for SiLU units."""
    if criterion not in CRITERIA:
        raise AuditError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    return pl.col("dead" if criterion == "any" else criterion).fill_null(False)


def units(out: Where) -> pl.LazyFrame:
    """`channel_stats` rows of units only (outputs of a nonlinearity): what every count, rank and finding uses. Head
    outputs (logits) and pre-activation leaves are kept in the table but never counted."""
    return scan(out, "channel_stats").filter(pl.col("unit_kind") == "unit")


def tables(out: Where) -> list[str]:
    """Tables that have at least one file under `out` (a folder or a filesystem URI)."""
    root = locate(out)
    return [t for t in schema.TABLES if root.child(t).files(".parquet")]


def scan(out: Where, table: str) -> pl.LazyFrame:
    """One table as a lazy frame (the same glob a user would pass to pl.scan_parquet)."""
    if table not in schema.TABLES:
        raise AuditError(f"unknown table {table!r}; tables are {', '.join(schema.TABLES)}")
    root = locate(out)
    v = view(root.child(table))
    if not v.names:
        raise AuditError(f"no {table} table here; run `yolo-audit weights ... --out {out}` first", path=str(out))
    if not v.compacted:
        return _read_as_today(table, _scan(f"{root.uri}/{table}/*.parquet", table))
    frames = [_scan(v.uris(v.plain), table)] if v.plain else []
    for name, drops in v.compacted.items():  # rows of files rewritten since compaction come from those files
        frame = _scan(v.folder.child(name).uri, table)
        if drops:
            row = pl.int_range(pl.len())
            frame = frame.filter(~pl.any_horizontal([row.is_between(a, a + n - 1) for a, n in drops]))
        frames.append(frame)
    return _read_as_today(table, pl.concat(frames, how="diagonal_relaxed"))


@cache
def _schema(table: str) -> pl.Schema:
    return pl.from_arrow(schema.schema(table).empty_table()).schema  # type: ignore[union-attr]


def _scan(source: str | list[str], table: str) -> pl.LazyFrame:
    """Files of one table read with today's columns: a file written before a column existed reads it as null, so
    stores that mix older and newer files still read (e.g. similarity files from before cka_se)."""
    return pl.scan_parquet(source, schema=_schema(table), missing_columns="insert", extra_columns="ignore")


def _read_as_today(table: str, frame: pl.LazyFrame) -> pl.LazyFrame:
    """Older stores read as today's: `runs.freeze` held JSON ('"backbone"', '[0, 1]') before 2026-12-04."""
    if table != "runs":
        return frame
    freeze = pl.col("freeze")
    plain = freeze.str.strip_chars('"').str.replace_all(r"[\[\] ]", "")
    return frame.with_columns(pl.when(freeze.str.starts_with('"') | freeze.str.starts_with("[")).then(plain)
                              .otherwise(freeze).alias("freeze"))  # fmt: skip


def open_results(out: Where) -> dict[str, pl.LazyFrame]:
    """Every table present under `out`, as lazy frames keyed by table name."""
    if not locate(out).is_dir():
        raise AuditError("no results folder here; pass the --out of an earlier run", path=str(out))
    return {t: scan(out, t) for t in tables(out)}


def is_last_of_run(run: str = "run") -> pl.Expr:
    """Over `checkpoints` rows: the run's last checkpoint, the one with the highest epoch (a checkpoint without an
    epoch only where the run has none with one)."""
    epoch = pl.col("epoch").fill_null(-1)
    return epoch == epoch.max().over(run)


def layer_divergence(out: Where) -> pl.LazyFrame:
    """Relative L2 change of each layer's parameters (BN statistics excluded) vs the reference:
    sqrt(sum ||a-b||^2) / sqrt(sum ||b||^2) over the layer's parameter tensors."""
    ref_norms = scan(out, "weight_stats").select(
        pl.col("checkpoint_id").alias("reference_id"), "param", pl.col("l2").alias("ref_l2")
    )
    runs = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch", "path")
    return (
        scan(out, "weight_divergence")
        .filter(pl.col("role").is_in(PARAM_ROLES) & pl.col("layer").is_not_null())
        .join(ref_norms, on=["reference_id", "param"], how="left")
        .group_by("checkpoint_id", "reference_id", "layer")
        .agg(
            (pl.col("l2_diff").pow(2).sum().sqrt() / pl.col("ref_l2").pow(2).sum().sqrt()).alias("rel_l2"),
            pl.col("max_abs_diff").max(),
            pl.col("identical").all().alias("all_identical"),
        )
        .join(runs, on="checkpoint_id", how="left")
    )


def pairwise_distance(out: Where) -> pl.DataFrame:
    """Per compared pair (checkpoint, reference): the relative L2 change of all parameters, sqrt(sum ||a-b||^2) /
    sqrt(sum ||b||^2) over every parameter tensor (BN statistics excluded), for the whole model and per group
    (backbone, neck, head): the accepted answer's "norm between the weights of the models"."""
    ref_norms = scan(out, "weight_stats").select(
        pl.col("checkpoint_id").alias("reference_id"), "param", pl.col("l2").alias("ref_l2")
    )
    rows = (
        scan(out, "weight_divergence")
        .filter(pl.col("role").is_in(PARAM_ROLES))
        .join(ref_norms, on=["reference_id", "param"], how="left")
    )

    def rel(frame: pl.LazyFrame, by: list[str]) -> pl.LazyFrame:
        return frame.group_by(by).agg(
            (pl.col("l2_diff").pow(2).sum().sqrt() / pl.col("ref_l2").pow(2).sum().sqrt()).alias("rel_l2")
        )

    whole = rel(rows, ["checkpoint_id", "reference_id"])
    groups = rel(rows.filter(pl.col("group").is_not_null()), ["checkpoint_id", "reference_id", "group"]).collect()
    wide = groups.pivot(on="group", index=["checkpoint_id", "reference_id"], values="rel_l2") if groups.height else None
    frame = whole.collect()
    if wide is not None:
        frame = frame.join(wide, on=["checkpoint_id", "reference_id"], how="left")
    for group in ("backbone", "neck", "head"):
        if group not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(group))
    return frame.select("checkpoint_id", "reference_id", "rel_l2", "backbone", "neck", "head")


def _against(frame: pl.LazyFrame, reference_id: str | None) -> pl.LazyFrame:
    return frame if reference_id is None else frame.filter(pl.col("reference_id") == reference_id)


def top_divergent_layers(
    out: Where, n: int = 10, *, reference_id: str | None = None, latest: bool = False
) -> pl.DataFrame:
    """The layers that moved most against the reference; `latest`: each run's last checkpoint only (not its epochs)."""
    frame = _against(layer_divergence(out), reference_id)
    if latest:
        last = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch").filter(is_last_of_run())
        frame = frame.join(last.select("checkpoint_id"), on="checkpoint_id", how="semi")
    return (
        frame.sort("rel_l2", descending=True, nulls_last=True)
        .head(n)
        .select("run", "epoch", "checkpoint_id", "reference_id", "layer", "rel_l2", "max_abs_diff")
        .collect()
    )


def freeze_summary(out: Where, *, reference_id: str | None = None, latest: bool = False) -> pl.DataFrame:
    """Per checkpoint and verdict, the layers it covers as compact ranges (e.g. 0-9), and how many layers the
    declared freeze (train_args) contradicts."""
    runs = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch", "freeze")
    if latest:
        runs = runs.filter(is_last_of_run())
    return (
        _against(scan(out, "layer_freeze"), reference_id)
        .join(runs, on="checkpoint_id", how="inner")
        .group_by("run", "epoch", "checkpoint_id", "reference_id", "freeze", "verdict")
        .agg(pl.col("layer").sort().alias("layers"), declared_mismatch().sum().alias("declared_mismatch"))
        .sort("run", "epoch", "checkpoint_id", "verdict", nulls_last=True)
        .collect()
        .with_columns(
            pl.col("layers").map_elements(compact_ranges, return_dtype=pl.String),
            pl.col("freeze").map_elements(_compact_freeze, return_dtype=pl.String),
        )
    )


def compact_ranges(layers: list[int] | pl.Series) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    values = sorted(int(x) for x in layers)
    parts: list[str] = []
    start = prev = None
    for x in [*values, None]:
        if start is not None and (x is None or x != prev + 1):
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if x is not None and start is None:
            start = x
        prev = x
    return ",".join(parts)


def _compact_freeze(freeze: str) -> str:
    """The `freeze` JSON for display: a layer list as ranges ([0, 1, 2] -> '0-2'), anything else as written."""
    import json

    value = json.loads(freeze)
    return compact_ranges(value) if isinstance(value, list) and value else freeze


COUNTED = ("dead", "dormant", "constant", "never_positive", "newly_dead", "revived")


def dead_unit_summary(out: Where, dataset_id: str | None = None) -> pl.DataFrame:
    """Per checkpoint (units only): units dead, by each criterion, newly dead and revived vs the reference, the layer
    with most dead, and how the data's verdict agrees with the weights' (`dead_by_weights` of the same Conv block
    channel, where both were measured)."""
    stats = units(out)
    if dataset_id is not None:
        stats = stats.filter(pl.col("dataset_id") == dataset_id)
    per_layer = stats.group_by("checkpoint_id", "layer").agg(
        pl.len().alias("units"), *[pl.col(c).sum() for c in COUNTED]
    )
    frame = per_layer.group_by("checkpoint_id").agg(
        pl.col("units", *COUNTED).sum(),
        pl.when(pl.col("dead").max() > 0).then(pl.col("layer").sort_by("dead", descending=True).first())
        .alias("most_dead_layer"),
    )  # fmt: skip
    if "channel_weights" in tables(out):
        frame = frame.join(_agreement(stats, scan(out, "channel_weights")), on="checkpoint_id", how="left")
    if "checkpoints" in tables(out):
        runs = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch")
        frame = runs.join(frame, on="checkpoint_id", how="inner")
    return (
        frame.sort("run", "epoch", "checkpoint_id", nulls_last=True).collect()
        if "checkpoints" in tables(out)
        else frame.sort("checkpoint_id").collect()
    )


def _agreement(stats: pl.LazyFrame, weights: pl.LazyFrame) -> pl.LazyFrame:
    """Per checkpoint: units measured both on data and by weights (a Conv block's output: `<block>.act` at --depth
    leaves, a top-level Conv layer at --depth modules), and how many each verdict calls dead."""
    data = stats.select("checkpoint_id", pl.col("module").str.strip_suffix(".act"), "channel", "dead")
    both = data.join(weights.select("checkpoint_id", "module", "channel", "dead_by_weights"),
                     on=["checkpoint_id", "module", "channel"], how="inner")  # fmt: skip
    return both.group_by("checkpoint_id").agg(
        pl.len().alias("compared_with_weights"),
        (pl.col("dead") & pl.col("dead_by_weights")).sum().alias("dead_by_both"),
        (pl.col("dead") & ~pl.col("dead_by_weights")).sum().alias("dead_by_data_only"),
        (~pl.col("dead") & pl.col("dead_by_weights")).sum().alias("dead_by_weights_only"),
    )


STATISTICS_ROLES = ("bn_running_mean", "bn_running_var")


def layer_dynamics(out: Where) -> pl.LazyFrame:
    """`train_dynamics` per run, epoch and layer: the gradient's norm over the layer's parameters (root of the sum of
    squared per-tensor means), its largest step, the share of zero-or-absent gradients, whether any parameter could
    train, how far the parameters moved relative to their size, and how far the BatchNorm statistics did."""
    rows = scan(out, "train_dynamics").filter(pl.col("layer").is_not_null())
    keys = ["run", "epoch", "layer"]

    moved = pl.col("update_l2").pow(2).sum().sqrt() / pl.col("weight_l2").pow(2).sum().sqrt()
    params = (
        rows.filter(~pl.col("role").is_in(STATISTICS_ROLES))
        .group_by(keys)
        .agg(
            pl.col("grad_norm_mean").pow(2).sum().sqrt().alias("grad_norm"),
            pl.col("grad_norm_max").max(),
            pl.col("frac_zero_grad").mean(),
            pl.col("requires_grad").any().alias("trainable"),
            moved.alias("update_ratio"),
            pl.col("steps").max(),
        )
    )
    stats = rows.filter(pl.col("role").is_in(STATISTICS_ROLES)).group_by(keys).agg(moved.alias("bn_update_ratio"))
    return params.join(stats, on=keys, how="left")
