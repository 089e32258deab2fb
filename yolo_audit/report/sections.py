"""The report's sections: one function per section id, each reading the store through the context (never computing
statistics of its own beyond summaries), registered in `SECTIONS` in page order."""

from __future__ import annotations

import html
from collections.abc import Callable

import polars as pl

from yolo_audit.report import figures
from yolo_audit.report.explanations import gradient_flow, interpolation
from yolo_audit.report.findings import Context, freeze_table
from yolo_audit.report.markup import img as _img
from yolo_audit.report.markup import table as _table
from yolo_audit.results.store import layer_divergence, scan, tables, units


def _divergence(ctx: Context) -> str:
    layers = ctx.latest(layer_divergence(ctx.results).filter(pl.col("reference_id") == ctx.reference_id).collect())
    if layers.is_empty():
        return "<p class=note>No comparison against a base in these results.</p>"
    return _img(
        figures.heatmap(
            layers,
            "layer",
            "label",
            "rel_l2",
            "Relative L2 change of each layer's parameters vs the base",
            "||W - W_base|| / ||W_base||",
        ),  # fmt: skip
        "divergence heatmap",
    )


def _distributions(ctx: Context) -> str:
    hist = scan(ctx.results, "weight_hist")
    bins_id = hist.group_by("bins_id").len().sort("len", descending=True).collect()["bins_id"][0]
    wanted = ctx.labels.select("checkpoint_id", "label")
    frame = (
        hist.filter((pl.col("bins_id") == bins_id) & pl.col("param").str.ends_with("conv.weight"))
        .join(wanted.lazy(), on="checkpoint_id")
        .collect()
    )
    note = (
        f"<p class=note>First conv weight of each layer, bins {html.escape(bins_id)}; under/overflow bins left out.</p>"
    )
    return note + _img(figures.weight_distributions(frame, ctx.colors), "weight distributions")


def _dead(ctx: Context) -> str:
    """One figure and table per dataset: dead counts from different images are never added up."""
    stats = ctx.latest(units(ctx.results).collect(), keep_reference=True)
    datasets = stats.group_by("dataset_id").len().sort("len", "dataset_id", descending=[True, False])["dataset_id"]
    described = _datasets(ctx)
    parts = []
    for dataset_id in datasets:
        note = f"Dataset {dataset_id}{described.get(dataset_id, '')}."
        parts.append(
            f"<p class=note>{html.escape(note)}</p>" + _dead_on(stats.filter(pl.col("dataset_id") == dataset_id), ctx)
        )
    return "\n".join(parts)


def _datasets(ctx: Context) -> dict[str, str]:
    if "activation_passes" not in ctx.present:
        return {}
    passes = (
        scan(ctx.results, "activation_passes").group_by("dataset_id").agg(pl.col("images", "imgsz").max()).collect()
    )
    return {d: f" ({n} images at imgsz {s})" for d, n, s in passes.select("dataset_id", "images", "imgsz").iter_rows()}


def _dead_on(stats: pl.DataFrame, ctx: Context) -> str:
    per_layer = stats.group_by("label", "layer").agg(
        pl.col("dead", "newly_dead", "revived").sum(), pl.len().alias("units")
    )
    totals = (
        per_layer.group_by("label")
        .agg(
            pl.col("units", "dead", "newly_dead", "revived").sum(),
            pl.when(pl.col("newly_dead").max() > 0)  # no layer named when none newly died
            .then(pl.col("layer").sort_by("newly_dead", descending=True).first())
            .alias("layer_with_most_newly_dead"),
        )
        .sort("label")
    )
    return _img(figures.dead_units(per_layer.sort("label", "layer"), ctx.colors), "dead units per layer") + _table(
        totals
    )


def _maps(ctx: Context) -> str:
    """Per module, the channel whose maps differ most from the base's (relative L2 over the shown runs and images),
    on two images, side by side on one colour scale."""
    maps = ctx.latest(scan(ctx.results, "feature_maps").collect(), keep_reference=True)
    maps = maps.filter(
        pl.col("module").is_in(units(ctx.results).select("module").unique().collect()["module"].to_list())
    )
    if maps.is_empty():
        return "<p class=note>No feature maps of units of the shown checkpoints.</p>"
    arrays = maps.with_columns(pl.col("values").list.eval(pl.element().cast(pl.Float64)))
    key = ["module", "channel", "image", "height", "width"]  # maps of another architecture never compare
    base = arrays.filter(pl.col("label") == "base").select(*key, pl.col("values").alias("b"))
    if base.is_empty():  # no base among the shown: the first label's maps stand in
        base = arrays.filter(pl.col("label") == arrays["label"].min()).select(*key, pl.col("values").alias("b"))
    change = (
        arrays.join(base, on=key)
        .with_columns(
            d=(pl.col("values") - pl.col("b")).list.eval(pl.element().pow(2)).list.sum().sqrt()
            / pl.col("b").list.eval(pl.element().pow(2)).list.sum().sqrt().clip(1e-12)
        )
        .group_by("module", "channel").agg(pl.col("d").mean())
        .sort("d", descending=True).group_by("module", maintain_order=True).first()
        .join(maps.select("module", "layer").unique(), on="module").sort("layer", "module")
    )  # fmt: skip
    picked = change.rows(named=True)
    if len(picked) > 6:
        picked = [picked[round(i * (len(picked) - 1) / 5)] for i in range(6)]
    images = sorted(maps["image"].unique().to_list())[:2]
    rows = [(p["module"], p["channel"], image) for p in picked for image in images]
    labels = maps["label"].unique().sort().to_list()
    paths = maps.filter(pl.col("image").is_in(images)).select("image", "image_path").unique().sort("image")
    note = "; ".join(f"image {i}: {html.escape(str(p))}" for i, p in paths.iter_rows())
    return f"<p class=note>{note}. Units only.</p>" + _img(figures.feature_maps(maps, labels, rows), "feature maps")


def _similarity(ctx: Context) -> str:
    """CKA of each run's last checkpoint to the base per module (cells within 2 standard errors of the chance baseline
    grey), the Procrustes distance beside it, and per run module x module against the base."""
    names = ctx.labels.select("checkpoint_id", "label").lazy()
    sim = (
        scan(ctx.results, "similarity")
        .filter(pl.col("checkpoint_a") != pl.col("checkpoint_b"))
        .join(names.rename({"checkpoint_id": "checkpoint_a", "label": "a"}), on="checkpoint_a", how="left")
        .join(names.rename({"checkpoint_id": "checkpoint_b", "label": "b"}), on="checkpoint_b", how="left")
        .with_columns(  # the base on side a, so each run reads "base vs run" with the base's modules on the rows
            pl.when(pl.col("b") == "base").then(f"{c}{y}").otherwise(f"{c}{x}").alias(f"{c}{x}")
            for c in ("checkpoint_", "module_", "layer_", "")
            for x, y in (("a", "b"), ("b", "a"))
        )
        .with_columns(
            pair=pl.coalesce("a", pl.col("checkpoint_a").str.slice(0, 8))
            + " vs "
            + pl.coalesce("b", pl.col("checkpoint_b").str.slice(0, 8)),
            module=pl.format("{} {}", pl.col("layer_a").cast(pl.String).str.zfill(2), pl.col("module_a")),
            noise=(pl.col("cka") - pl.col("cka_chance")).abs() <= 2 * pl.col("cka_se"),
        )
        .collect()
    )
    if sim.filter(pl.col("a") == "base").height:  # one reference per answer: each run's last checkpoint vs the base
        sim = sim.filter((pl.col("a") == "base") & pl.col("b").is_not_null())
    same = sim.filter(pl.col("module_a") == pl.col("module_b"))
    if same.is_empty():
        return "<p class=note>Only one checkpoint in the similarity table.</p>"
    nulls = same.filter(pl.col("cka").is_null()).height
    noise = same.filter(pl.col("noise").fill_null(False)).height
    images = same["n_images"].max()
    note = (f"<p class=note>Corresponding modules, each run against the base, over {images} images; {nulls} "
            f"undefined (layers that do not vary across images); {noise} grey: within 2 standard errors of the "
            "chance baseline (cka_chance: the same estimator with one side's images shuffled), so no evidence of "
            "similarity there. Below: the angular Procrustes distance (radians; 0 = the same up to rotation and "
            "scale) of the same modules.</p>")  # fmt: skip
    out = note + _img(figures.heatmap(same, "module", "pair", "cka", "Linear CKA per module", "CKA", grey="noise"),
                      "CKA heatmap")  # fmt: skip
    if same["procrustes"].drop_nulls().len():
        out += _img(figures.heatmap(same, "module", "pair", "procrustes", "Angular Procrustes distance per module",
                                    "radians"), "Procrustes heatmap")  # fmt: skip
    cross = sim.filter(pl.col("a") == "base")
    if cross.filter(pl.col("module_a") != pl.col("module_b")).height:
        pairs = sorted(cross["pair"].unique().to_list())
        out += _img(figures.cka_cross(cross, pairs), "CKA module x module")
    return out


def _training(ctx: Context) -> str:
    metrics = scan(ctx.results, "train_metrics").collect()
    out = _img(figures.training_curves(metrics, ctx.colors), "training curves")
    if "runs" in tables(ctx.results) and "weight_divergence" in tables(ctx.results):
        div = ctx.latest(layer_divergence(ctx.results).filter(pl.col("reference_id") == ctx.reference_id).collect())
        points = (
            div.group_by("run").agg(pl.col("rel_l2").mean().alias("mean_rel_l2"))
            .join(scan(ctx.results, "runs").select("run", "best_map50_95").collect(), on="run")
            .drop_nulls()
        )  # fmt: skip
        if points.height:
            out += _img(figures.map_vs_divergence(points, ctx.colors), "mAP against divergence")
    return out


def _depth(ctx: Context) -> str:
    """Freeze depth on an axis (a sweep): per run its best mAP, how far its last checkpoint moved from the base, its
    dead units and the CKA of the model's last backbone layer to the base's."""
    runs = (
        scan(ctx.results, "runs").filter(pl.col("run") != "base").collect()
        .with_columns(depth=pl.col("frozen_layers").list.len(), last_backbone=pl.col("backbone").list.max())
        .join(ctx.labels.select("run", "checkpoint_id"), on="run", how="left")
    )  # fmt: skip
    if runs["depth"].n_unique() < 2:
        return "<p class=note>Every run freezes as many layers: no depth axis to draw.</p>"
    if "weight_divergence" in ctx.present and ctx.reference_id:
        div = layer_divergence(ctx.results).filter(pl.col("reference_id") == ctx.reference_id).collect()
        runs = runs.join(div.group_by("checkpoint_id").agg(pl.col("rel_l2").mean().alias("mean_rel_l2")),
                         on="checkpoint_id", how="left")  # fmt: skip
    if "channel_stats" in ctx.present:
        dead = units(ctx.results).group_by("checkpoint_id").agg(pl.col("dead").sum()).collect()
        runs = runs.join(dead, on="checkpoint_id", how="left")
    if "similarity" in ctx.present and ctx.reference_id:
        sim = scan(ctx.results, "similarity").filter(pl.col("module_a") == pl.col("module_b")).collect()
        pairs = pl.concat([
            sim.select(pl.col("checkpoint_b").alias("checkpoint_id"), "checkpoint_a", "module_a", "cka"),
            sim.select(pl.col("checkpoint_a").alias("checkpoint_id"), pl.col("checkpoint_b").alias("checkpoint_a"),
                       "module_a", "cka"),
        ]).filter(pl.col("checkpoint_a") == ctx.reference_id)  # fmt: skip
        runs = (
            runs.join(pairs, on="checkpoint_id", how="left")
            .filter(
                pl.col("module_a").is_null() | (pl.col("module_a") == pl.format("model.{}", pl.col("last_backbone")))
            )
            .rename({"cka": "cka_last_backbone"})
            .unique("run")
        )
    table = runs.sort("depth", "strategy").select(
        "run",
        "strategy",
        "depth",
        "best_map50_95",
        *[c for c in ("mean_rel_l2", "dead", "cka_last_backbone") if c in runs.columns],
    )
    return _img(figures.depth_curves(table), "metrics against freeze depth") + _table(table)


def _rewind(ctx: Context) -> str:
    rows = ctx.latest(scan(ctx.results, "rewind").filter(pl.col("direction") == "rewind").collect())
    if ctx.reference_id:
        rows = rows.filter(pl.col("reference_id") == ctx.reference_id)
    if rows.is_empty():
        return "<p class=note>No rewinding of a run's last checkpoint to the base in these results.</p>"
    note = ("<p class=note>Each cell: mAP50-95 of the run's last checkpoint with that layer (parameters and BatchNorm "
            "statistics) reset to the base, minus its own mAP50-95, on the same images. Negative: the accuracy needs "
            "that layer's change; exactly 0: the layer is bit-identical to the base, or its change does not matter."
            "</p>")  # fmt: skip
    per_layer = rows.filter(pl.col("layer").is_not_null())
    out = note
    if per_layer.height:
        out += _img(figures.heatmap(per_layer, "layer", "label", "delta_map50_95", "Layer rewinding: delta mAP50-95",
                                    "mAP50-95 change when reset to the base"), "rewind heatmap")  # fmt: skip
    groups = rows.filter(pl.col("layer").is_null())
    if groups.height:
        out += _table(groups.select("label", "group", "delta_map50_95", "map50_95", "baseline_map50_95").sort("label"))
    return out


def _pairwise(ctx: Context) -> str:
    """Distance between every pair of shown checkpoints (each run's last one, and the base) that was compared."""
    dist = ctx.distances
    names = ctx.labels.select("checkpoint_id", "label")
    pairs = dist.join(names, on="checkpoint_id").join(
        names.rename({"checkpoint_id": "reference_id", "label": "other"}), on="reference_id"
    )
    if pairs.is_empty():
        return "<p class=note>No comparisons between the shown checkpoints; `weights --pairwise` computes them.</p>"
    both = pl.concat([pairs, pairs.rename({"label": "other", "other": "label"}).select(pairs.columns)]).unique(
        ["label", "other"]
    )
    note = (
        "<p class=note>Relative L2 distance of all parameters (BN statistics excluded), ||A - B|| / ||B||, for "
        "each compared pair of runs (their last checkpoints) and the base; per group from the model's yaml.</p>"
    )
    table = pairs.select("label", "other", "rel_l2", "backbone", "neck", "head").sort("label", "other")
    return note + _img(figures.heatmap(both, "label", "other", "rel_l2", "Distance between runs", "relative L2"),
                       "distance between runs") + _table(table)  # fmt: skip


def _errors(ctx: Context) -> str:
    errors = scan(ctx.results, "errors").collect().sort("path", "stage")
    note = "<p class=note>What could not be analysed: no failed checkpoint silently disappears from this report.</p>"
    return note + _table(errors)


def _parameters(ctx: Context) -> str:
    hist = scan(ctx.results, "weight_hist")
    bins_id = hist.group_by("bins_id").len().sort("len", descending=True).collect()["bins_id"][0]
    roles = scan(ctx.results, "weight_stats").select("param", "role").unique()
    frame = (
        hist.filter((pl.col("bins_id") == bins_id) & pl.col("lo").is_finite() & pl.col("hi").is_finite())
        .join(roles, on="param").join(ctx.labels.select("checkpoint_id", "label").lazy(), on="checkpoint_id")
        .collect()
    )  # fmt: skip
    out = (
        "<p class=note>Per layer, its first tensor of each role on the shared bins, every run's last checkpoint and "
        "the base overlaid. Where the overlays coincide, the difference view below shows the change itself.</p>"
    )
    out += _img(figures.parameter_distributions(frame, ctx.colors), "parameter distributions")
    if "channel_divergence" in ctx.present and ctx.reference_id:
        change = ctx.latest(scan(ctx.results, "channel_divergence").filter(pl.col("reference_id") == ctx.reference_id)
                            .collect())  # fmt: skip
        q = (
            change.drop_nulls("rel_diff")
            .group_by("label", "layer")
            .agg(pl.col("rel_diff").quantile(p).alias(f"q{int(p * 100):02d}") for p in (0.05, 0.25, 0.5, 0.75, 0.95))
        )
        if q.height:
            out += _img(figures.change_quantiles(q, ctx.colors), "difference view")
    return out


def _activation_distributions(ctx: Context) -> str:
    hist = ctx.latest(scan(ctx.results, "activation_hist").collect(), keep_reference=True)
    kinds = units(ctx.results).select("module").unique().collect()["module"].to_list()
    hist = hist.filter(pl.col("module").is_in(kinds))
    dataset = hist.group_by("dataset_id").len().sort("len", descending=True)["dataset_id"]
    if not dataset.len():
        return "<p class=note>No activation histograms of units for the shown checkpoints.</p>"
    hist = hist.filter(pl.col("dataset_id") == dataset[0])
    modules = hist.select("layer", "module").unique().sort("layer", "module")["module"].to_list()
    if len(modules) > 16:  # spread over the depth
        keep = {modules[round(i * (len(modules) - 1) / 15)] for i in range(16)}
        hist = hist.filter(pl.col("module").is_in(list(keep)))
    note = (f"<p class=note>Dataset {html.escape(dataset[0])}: every checkpoint on the same images; octave bins (one "
            "per power of two and sign), counts on a log axis.</p>")  # fmt: skip
    return note + _img(figures.activation_distributions(hist, ctx.colors), "activation distributions")


def _trajectories(ctx: Context) -> str:
    dist = ctx.distances
    ckpts = scan(ctx.results, "checkpoints").select("checkpoint_id", "run", "epoch").collect().drop_nulls("epoch")
    to_base = dist.filter(pl.col("reference_id") == ctx.reference_id).join(ckpts, on="checkpoint_id")
    other = ckpts.rename({"checkpoint_id": "reference_id", "run": "ref_run", "epoch": "ref_epoch"})
    steps = dist.join(ckpts, on="checkpoint_id").join(other, on="reference_id").filter(
        (pl.col("run") == pl.col("ref_run")) & (pl.col("ref_epoch") < pl.col("epoch"))
    ).sort("ref_epoch").group_by("checkpoint_id", maintain_order=True).last()  # fmt: skip
    points = (
        to_base.select("run", "epoch", pl.col("rel_l2").alias("to_base"))
        .join(steps.select("run", "epoch", pl.col("rel_l2").alias("step")), on=["run", "epoch"], how="full",
              coalesce=True)
    )  # fmt: skip
    if points["epoch"].n_unique() < 2:
        return "<p class=note>One epoch per run: no trajectory (study snapshots or --trajectory give them).</p>"
    metrics = scan(ctx.results, "train_metrics").collect() if "train_metrics" in ctx.present else pl.DataFrame(
        schema={"run": pl.String, "epoch": pl.Int32, "metrics/mAP50-95(B)": pl.Float64}
    )  # fmt: skip
    return _img(figures.trajectories(points, metrics, ctx.colors), "trajectories")


# (table that must exist, section id, title, how to draw it), in page order
SECTIONS: list[tuple[str, str, str, Callable[[Context], str]]] = [
    ("errors", "errors", "Errors", _errors),
    ("weight_divergence", "pairwise", "Distances between runs", _pairwise),
    ("layer_freeze", "freeze", "Freeze verification (each run's last checkpoint vs the base)",
     lambda ctx: _table(freeze_table(ctx))),
    ("weight_divergence", "divergence", "Weight divergence per layer", _divergence),
    ("weight_hist", "distributions", "Weight distributions per layer", _distributions),
    ("weight_hist", "parameter-distributions", "Parameter distributions and the difference view", _parameters),
    ("weight_divergence", "trajectories", "Trajectories: distance to the base and step per epoch", _trajectories),
    ("channel_stats", "dead-units", "Dead units", _dead),
    ("activation_hist", "activation-distributions", "Activation distributions", _activation_distributions),
    ("feature_maps", "feature-maps", "Feature maps", _maps),
    ("similarity", "similarity", "Representation similarity (CKA)", _similarity),
    ("train_metrics", "training", "Training curves and final mAP", _training),
    ("runs", "depth", "Against freeze depth", _depth),
    ("rewind", "rewind", "Layer rewinding: which changes the accuracy needs", _rewind),
    ("interpolation", "interpolation", "Interpolation: is each run still in the base's basin?", interpolation),
    ("train_dynamics", "gradient-flow", "Gradient flow during training (layer x epoch)", gradient_flow),
]  # fmt: skip
