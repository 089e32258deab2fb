"""The report's sections that explain a variant rather than describe it: from its training (the gradient flow,
recorded live) and from the path between the base and it (interpolation); their figures and their findings."""

from __future__ import annotations

import numpy as np
import polars as pl

from yolo_audit.report.figures import Palette, _png, plt
from yolo_audit.report.findings import Context
from yolo_audit.report.markup import img, table
from yolo_audit.results.store import compact_ranges, layer_dynamics, scan


def _runs_shown(ctx: Context, frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of the runs the report shows (the base's own training left out), labelled as elsewhere."""
    base = ctx.labels.filter(pl.col("label") == "base")["run"].to_list()
    named = ctx.labels.filter(pl.col("label") != "base").select("run", "label").unique("run")
    frame = frame.filter(~pl.col("run").is_in(base))
    return frame.join(named, on="run", how="left").with_columns(pl.coalesce("label", "run").alias("label"))


def gradient_flow(ctx: Context) -> str:
    rows = _runs_shown(ctx, layer_dynamics(ctx.results).collect())
    if rows.is_empty():
        return "<p class=note>No training dynamics of the shown runs.</p>"
    note = ("<p class=note>Recorded live during training (<code>train_dynamics</code>): per run, the L2 norm of each "
            "layer's gradient averaged over each epoch's optimizer steps (log scale; black: no gradient reached the "
            "layer, as under a freeze), and how far the layer's BatchNorm running statistics moved in that epoch, "
            "relative to their size (a frozen layer in train mode keeps updating them).</p>")  # fmt: skip
    return note + img(_flow_figure(rows), "gradient flow")


def _flow_figure(rows: pl.DataFrame) -> bytes:
    labels = sorted(rows["label"].unique().to_list())
    layers = sorted(rows["layer"].unique().to_list())
    epochs = sorted(rows["epoch"].unique().to_list())
    fig, axes = plt.subplots(2, len(labels), figsize=(2.6 * len(labels) + 1.5, 0.25 * len(layers) * 2 + 2),
                             squeeze=False)  # fmt: skip
    positive = rows.filter(pl.col("grad_norm") > 0)["grad_norm"]
    scales = {  # one colour scale per row of panels, shared by the runs: their cells compare
        "grad_norm": (float(np.log10(positive.min())), float(np.log10(positive.max()))) if positive.len() else (0, 1),
        "bn_update_ratio": (0.0, float(rows["bn_update_ratio"].max() or 1.0)),
    }
    for col, label in enumerate(labels):
        part = rows.filter(pl.col("label") == label)
        panels = (("grad_norm", "log10 gradient norm", "viridis", "black"),
                  ("bn_update_ratio", "BN statistics moved", "cividis", "lightgrey"))  # fmt: skip
        for row, (value, title, cmap, empty) in enumerate(panels):
            grid = np.full((len(layers), len(epochs)), np.nan)
            for layer, epoch, v in part.select("layer", "epoch", value).iter_rows():
                if v is not None:
                    grid[layers.index(layer), epochs.index(epoch)] = v
            if value == "grad_norm":
                grid = np.where(grid > 0, np.log10(np.where(grid > 0, grid, 1.0)), np.nan)
            ax = axes[row, col]
            ax.set_facecolor(empty)  # black: no gradient at all; grey: not recorded
            low, high = scales[value]
            image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, interpolation="nearest",
                              vmin=low, vmax=high)  # fmt: skip
            ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
            ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=6)
            ax.set_title(f"{label}: {title}", fontsize=8)
            ax.set_xlabel("epoch", fontsize=7)
            fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return _png(fig)


def explained(ctx: Context) -> list[str]:
    """The findings these sections add to the summary."""
    out = dynamics_findings(ctx) if "train_dynamics" in ctx.present else []
    return out + (interpolation_findings(ctx) if "interpolation" in ctx.present else [])


def dynamics_findings(ctx: Context) -> list[str]:
    """Per run: which layers no gradient reached (and whether their BatchNorm statistics still moved)."""
    rows = _runs_shown(ctx, layer_dynamics(ctx.results).collect())
    out = []
    for (label,), part in rows.sort("label").group_by("label", maintain_order=True):
        per_layer = part.group_by("layer").agg(pl.col("grad_norm").max(), pl.col("bn_update_ratio").max())
        starved = per_layer.filter(pl.col("grad_norm") == 0).sort("layer")
        if starved.is_empty():
            out.append(f"{label}: gradient reached every layer in every epoch.")
            continue
        layers = compact_ranges(starved["layer"].to_list())
        drift = starved["bn_update_ratio"].drop_nulls()
        if drift.len() and drift.max() > 0:
            out.append(
                f"{label}: no gradient reached layers {layers} in any epoch, yet their BatchNorm statistics "
                f"moved by up to {drift.max():.1%} per epoch: frozen weights, drifting normalisation."
            )
        else:
            out.append(f"{label}: no gradient reached layers {layers} in any epoch, and neither they nor their "
                       "BatchNorm statistics moved: frozen exactly.")  # fmt: skip
    return out


def interpolation(ctx: Context) -> str:
    from yolo_audit.analyses.interpolate.plan import barrier_table

    rows = _interpolation_rows(ctx)
    if rows.is_empty():
        return "<p class=note>No interpolation of the shown runs against the base.</p>"
    note = ("<p class=note>mAP50-95 of the weights on the straight line from the base (α = 0) to each run's last "
            "checkpoint (α = 1), θ(α) = (1 − α) θ_base + α θ_run, on the same validation images; dashed: BatchNorm "
            "statistics re-estimated at each α. The barrier is the largest dip below the straight line between the "
            "two ends: a run whose barrier is small stays in the base's basin.</p>")  # fmt: skip
    barriers = barrier_table(rows).join(ctx.labels.select("checkpoint_id", "label"), on="checkpoint_id")
    shown = barriers.select("label", "recalibrated", "map50_95_reference", "map50_95_checkpoint", "barrier_map50_95",
                            "barrier_alpha", "monotonic", "in_basin").sort("label", "recalibrated")  # fmt: skip
    return note + img(_lines(rows, ctx.colors), "mAP along the line") + table(shown)


def _interpolation_rows(ctx: Context) -> pl.DataFrame:
    rows = scan(ctx.results, "interpolation")
    if ctx.reference_id:
        rows = rows.filter(pl.col("reference_id") == ctx.reference_id)
    return ctx.latest(rows.collect())


def _lines(rows: pl.DataFrame, colors: Palette) -> bytes:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for (label, recalibrated), part in rows.sort("alpha").group_by("label", "recalibrated", maintain_order=True):
        ax.plot(
            part["alpha"],
            part["map50_95"],
            marker="o",
            ms=3,
            color=colors.get(label),
            ls="--" if recalibrated else "-",
            label=f"{label}{' (BN re-estimated)' if recalibrated else ''}",
        )
    ax.set_xlabel("α (0: the base, 1: the run)")
    ax.set_ylabel("mAP50-95")
    ax.set_title("mAP along the straight line from the base", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)


def interpolation_findings(ctx: Context) -> list[str]:
    """Per run: whether it stays in the base's basin, with its barrier."""
    from yolo_audit.analyses.interpolate.plan import STEADY, barrier_table

    rows = _interpolation_rows(ctx)
    if rows.is_empty():
        return []
    out = []
    barriers = barrier_table(rows).join(ctx.labels.select("checkpoint_id", "label"), on="checkpoint_id")
    for row in barriers.sort("label", "recalibrated").iter_rows(named=True):
        how = " with BatchNorm re-estimated" if row["recalibrated"] else ""
        barrier, alpha = row["barrier_map50_95"], row["barrier_alpha"]
        ends = f"from the base's {row['map50_95_reference']:.3f} to its {row['map50_95_checkpoint']:.3f}"
        if row["best_map50_95"] > max(row["map50_95_reference"], row["map50_95_checkpoint"]) + STEADY:
            out.append(f"{row['label']}{how}: along the line from the base, mAP50-95 peaks at "
                       f"{row['best_map50_95']:.3f} (α = {row['best_alpha']:.2f}), above both ends ({ends}): a blend "
                       "of the base and the fine-tune beats the fine-tune itself, as WiSE-FT finds.")  # fmt: skip
        elif row["in_basin"]:
            out.append(
                f"{row['label']} stays in the base's basin{how}: mAP50-95 goes {ends} along the line from "
                f"the base, never more than {barrier:.3f} below the straight line between them (barrier)."
            )
        elif row["monotonic"]:
            out.append(f"{row['label']}{how}: mAP50-95 climbs {ends} along the line from the base without turning "
                       f"back, but up to {barrier:.3f} below the straight line between them (at α = {alpha:.2f}): "
                       "part way, the blend is worse than its share of the way.")  # fmt: skip
        else:
            out.append(
                f"{row['label']} leaves the base's basin{how}: along the line from the base mAP50-95 goes "
                f"{ends} and dips {barrier:.3f} below the straight line between them (at α = {alpha:.2f})."
            )
    return out
