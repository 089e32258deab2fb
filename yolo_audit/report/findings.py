"""What the report says in words, computed from the tables: which checkpoints it shows, and the findings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from yolo_audit.report.figures import Palette, palette
from yolo_audit.results.labels import content_files, unique_labels
from yolo_audit.results.references import main_reference
from yolo_audit.results.store import compact_ranges, is_last_of_run, layer_divergence, pairwise_distance, scan, units


@dataclass
class Context:
    """The checkpoints a report shows (each run's last one, and the base) with labels and colours."""

    results: str | Path
    present: list[str]
    reference_id: str | None
    labels: pl.DataFrame  # checkpoint_id, label, run, epoch
    colors: Palette

    @cached_property
    def distances(self) -> pl.DataFrame:
        """Relative L2 distances of every compared pair (`store.pairwise_distance`), read once per report: the
        findings, the pairwise section and the trajectories all use it."""
        return pairwise_distance(self.results)

    @classmethod
    def load(cls, results: str | Path, present: list[str]) -> Context:
        ckpts = scan(results, "checkpoints").collect() if "checkpoints" in present else pl.DataFrame()
        reference_id = main_reference(results)  # the base: every section shows each run against it
        if ckpts.is_empty():
            labels = pl.DataFrame(
                schema={"checkpoint_id": pl.String, "label": pl.String, "run": pl.String, "epoch": pl.Int32}
            )
        else:
            run = pl.coalesce(pl.col("run"), pl.col("checkpoint_id").str.slice(0, 8))
            is_ref = pl.col("checkpoint_id") == (reference_id or "")
            shown = ckpts.with_columns(run=run).filter(is_last_of_run() | is_ref)
            # a run's name, the base's "base"; runs whose last epoch has several contents (files without epochs
            # saved side by side in one folder share its name as their run) show each, named apart by their files
            names = {
                cid: "base" if cid == reference_id else r for cid, r in shown.select("checkpoint_id", "run").rows()
            }
            label = unique_labels(names, content_files(shown.select("checkpoint_id", "path").iter_rows(named=True)))
            labels = (
                shown.unique("checkpoint_id", keep="last", maintain_order=True)
                .with_columns(label=pl.col("checkpoint_id").replace_strict(label, return_dtype=pl.String))
                .select("checkpoint_id", "label", "run", "epoch")
                .sort("label")
            )
        return cls(results, present, reference_id, labels, palette(labels["label"].to_list()))

    def latest(self, frame: pl.DataFrame, *, keep_reference: bool = False) -> pl.DataFrame:
        """Rows of the shown checkpoints, with their label (the base only if asked)."""
        shown = self.labels if keep_reference else self.labels.filter(pl.col("label") != "base")
        return frame.drop([c for c in ("run", "epoch", "label") if c in frame.columns]).join(
            shown, on="checkpoint_id", how="inner"
        )


def freeze_table(ctx: Context) -> pl.DataFrame:
    lf = ctx.latest(scan(ctx.results, "layer_freeze").filter(pl.col("reference_id") == ctx.reference_id).collect())
    mismatch = pl.col("declared_frozen").is_not_null() & (pl.col("declared_frozen") != (pl.col("verdict") != "trained"))
    out = lf.group_by("label").agg(
        *[
            pl.col("layer").filter(pl.col("verdict") == v).sort().alias(v)
            for v in ("frozen_exact", "frozen_bn_drift", "trained")
        ],
        mismatch.sum().alias("declared_vs_seen_mismatch"),
    )
    return out.with_columns(
        [
            pl.col(v).map_elements(compact_ranges, return_dtype=pl.String)
            for v in ("frozen_exact", "frozen_bn_drift", "trained")
        ]
    ).sort("label")


def _layers(ranges: str) -> str:
    """'layer 22' or 'layers 0-9,12' for compact ranges."""
    return f"layers {ranges}" if "," in ranges or "-" in ranges else f"layer {ranges}"


def findings(ctx: Context) -> list[str]:
    """Plain-language sentences, one per fact worth reading first."""
    out: list[str] = []
    if "layer_freeze" in ctx.present and ctx.reference_id:
        for row in freeze_table(ctx).iter_rows(named=True):
            parts = []
            if row["frozen_exact"]:
                parts.append(f"{_layers(row['frozen_exact'])} bit-identical to the base")
            if row["frozen_bn_drift"]:
                parts.append(
                    f"{_layers(row['frozen_bn_drift'])} weights identical to the base but BatchNorm statistics drifted"
                )
            if row["trained"]:
                parts.append(f"{_layers(row['trained'])} trained")
            note = (
                f"; the training arguments disagree with this for {row['declared_vs_seen_mismatch']} layers"
                if row["declared_vs_seen_mismatch"]
                else ""
            )
            out.append(f"{row['label']}: " + "; ".join(parts) + note + ".")
    if "weight_divergence" in ctx.present and ctx.reference_id:
        div = ctx.latest(layer_divergence(ctx.results).filter(pl.col("reference_id") == ctx.reference_id).collect())
        for label, layer, rel in (
            div.sort("rel_l2", descending=True, nulls_last=True).group_by("label", maintain_order=True).first()
            .sort("label").select("label", "layer", "rel_l2").iter_rows()
        ):  # fmt: skip
            if rel:
                out.append(f"{label}: the most changed layer is {layer} (relative L2 change {rel:.2%}).")
    if "channel_stats" in ctx.present:
        stats = ctx.latest(units(ctx.results).collect())
        several = stats["dataset_id"].n_unique() > 1
        for flag, words in (("newly_dead", "units newly dead"), ("revived", "units revived (dead in the base)")):
            flagged = stats.filter(pl.col(flag).fill_null(False))
            for (label, dataset_id), part in flagged.sort("label", "dataset_id").group_by(
                "label", "dataset_id", maintain_order=True
            ):
                layer, count = part.group_by("layer").len().sort("len", "layer", descending=[True, False]).row(0)
                on = f" on dataset {dataset_id}" if several else ""
                out.append(f"{label}: {part.height} {words} vs the base{on}, most in layer {layer} ({count}).")
    if "layer_freeze" in ctx.present and ctx.reference_id:
        out += _explain(ctx)
    if "rewind" in ctx.present and ctx.reference_id:
        out += _rewind_findings(ctx)
    if "runs" in ctx.present:
        runs = (
            scan(ctx.results, "runs").filter(pl.col("run") != "base").sort("best_map50_95", descending=True).collect()
        )
        ranked = [f"{r} {m:.3f}" for r, m in runs.select("run", "best_map50_95").iter_rows() if m is not None]
        if ranked:
            out.append("Best mAP50-95, highest first: " + ", ".join(ranked) + ".")
    return out or ["No comparisons against a base in these results yet."]


def _rewind_findings(ctx: Context) -> list[str]:
    """Per run: what resetting to the base costs, by group where measured, else the costliest layer."""
    rows = ctx.latest(
        scan(ctx.results, "rewind")
        .filter((pl.col("direction") == "rewind") & (pl.col("reference_id") == ctx.reference_id))
        .collect()
    )
    out = []
    for (label,), part in rows.sort("label").group_by("label", maintain_order=True):
        groups = part.filter(pl.col("layer").is_null()).sort("delta_map50_95")
        layers = part.filter(pl.col("layer").is_not_null()).sort("delta_map50_95", "layer")
        if groups.height:
            costs = ", ".join(f"the {g} {-d:.3f}" for g, d in groups.select("group", "delta_map50_95").iter_rows())
            where = groups["group"][0]
            out.append(f"{label}: rewinding to the base costs mAP50-95 {costs}: the fine-tune's gain lives mostly in "
                       f"the {where}." if groups["delta_map50_95"][0] < 0 else
                       f"{label}: rewinding any group to the base costs nothing ({costs}).")  # fmt: skip
        if layers.height:
            layer, delta, group = layers.select("layer", "delta_map50_95", "group").row(0)
            zero = layers.filter(pl.col("delta_map50_95") == 0)["layer"].to_list()
            exact = f"; resetting {_layers(compact_ranges(zero))} changes nothing (delta exactly 0)" if zero else ""
            if delta < 0:
                out.append(f"{label}: resetting layer {layer} ({group}) to the base costs the most, {-delta:.3f} "
                           f"mAP50-95{exact}.")  # fmt: skip
            else:
                out.append(f"{label}: no single layer's reset to the base lowers mAP50-95{exact}.")
    return out


def _explain(ctx: Context) -> list[str]:
    """Per run, why it differs from the base, in one sentence a reader can check against the plots: how much of the
    model could train, how far each group moved, BN drift under a freeze, and how CKA to the base falls with depth."""
    freeze = ctx.latest(scan(ctx.results, "layer_freeze").filter(pl.col("reference_id") == ctx.reference_id).collect())
    sizes = (
        scan(ctx.results, "weight_stats").filter(pl.col("role").is_in(["conv_weight", "conv_bias", "bn_weight",
                                                                       "bn_bias"]))
        .group_by("checkpoint_id", "layer").agg(pl.col("numel").sum()).collect()
    )  # fmt: skip
    dist = ctx.distances.filter(pl.col("reference_id") == ctx.reference_id)
    cka = _cka_to_base(ctx)
    out = []
    for (label,), part in freeze.sort("label").group_by("label", maintain_order=True):
        cid = part["checkpoint_id"][0]
        sized = part.join(sizes, on=["checkpoint_id", "layer"], how="left").with_columns(pl.col("numel").fill_null(0))
        total = max(int(sized["numel"].sum()), 1)
        trained = sized.filter(pl.col("verdict") == "trained")
        share = int(trained["numel"].sum()) / total
        layers = compact_ranges(trained["layer"].to_list())
        words = [f"{share:.0%} of its parameters changed ({_layers(layers) if layers else 'no layer'})"]
        row = dist.filter(pl.col("checkpoint_id") == cid)
        if row.height:
            moved = [f"{g} {row[g][0]:.2%}" for g in ("backbone", "neck", "head") if row[g][0] is not None]
            words.append("relative L2 distance to the base: " + ", ".join(moved))
        drift = part.filter(pl.col("verdict") == "frozen_bn_drift")
        if drift.height:
            words.append(f"its frozen {_layers(compact_ranges(drift['layer'].to_list()))} kept their weights but not "
                         "their BatchNorm statistics")  # fmt: skip
        if cid in cka:
            words.append(cka[cid])
        if trained.height and set(trained["layer"].to_list()) == {int(part["layer"].max())} and not drift.height:
            words.append("so its features are the base's up to the head: only the head could adapt to the new data")
        out.append(f"{label}: " + "; ".join(words) + ".")
    return out


def _cka_to_base(ctx: Context) -> dict[str, str]:
    """checkpoint -> how its CKA to the base (corresponding modules) falls with depth."""
    if "similarity" not in ctx.present:
        return {}
    sim = scan(ctx.results, "similarity").filter(pl.col("module_a") == pl.col("module_b")).collect()
    pairs = pl.concat([
        sim.filter(pl.col("checkpoint_a") == ctx.reference_id).select(pl.col("checkpoint_b").alias("id"), "layer_a",
                                                                      "module_a", "cka", "cka_se"),
        sim.filter(pl.col("checkpoint_b") == ctx.reference_id).select(pl.col("checkpoint_a").alias("id"), "layer_a",
                                                                      "module_a", "cka", "cka_se"),
    ]).filter(pl.col("id") != ctx.reference_id).drop_nulls("cka")  # fmt: skip
    out = {}
    for (cid,), part in pairs.sort("layer_a", "module_a").group_by("id", maintain_order=True):
        same = part.with_columns(ok=pl.col("cka") >= 0.99)["ok"].to_list()
        kept = next((i for i, ok in enumerate(same) if not ok), len(same))
        low = part.sort("cka").row(0, named=True)
        where = (f"CKA to the base stays at 0.99 or above up to {part['module_a'][kept - 1]}" if kept else
                 "CKA to the base is below 0.99 from the first layer")  # fmt: skip
        error = f" ± {low['cka_se']:.2f}" if low["cka_se"] is not None else ""
        out[cid] = f"{where}, lowest {low['cka']:.2f}{error} at {low['module_a']}"
    return out
