"""Matplotlib figures of a results store, each returned as PNG bytes. Reads frames; computes no statistics."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

Palette = dict[str, tuple[float, float, float, float]]


def palette(labels: list[str]) -> Palette:
    """One colour per checkpoint label, the same in every figure."""
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def weight_distributions(hist: pl.DataFrame, colors: Palette) -> bytes:
    """Small multiples: per layer, its first conv weight's histogram on the shared bins, every checkpoint overlaid."""
    params = (
        hist.select("layer", "param").unique().sort("layer", "param").group_by("layer", maintain_order=True).first()
    )
    n = params.height
    cols = 5
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 2.3 * math.ceil(n / cols)), squeeze=False)
    for ax, (layer, param) in zip(axes.flat, params.iter_rows(), strict=False):
        inner = hist.filter((pl.col("param") == param) & pl.col("lo").is_finite() & pl.col("hi").is_finite())
        for label, part in inner.sort("bin").group_by("label", maintain_order=True):
            centres = ((part["lo"] + part["hi"]) / 2).to_numpy()
            density = part["count"].to_numpy() / max(part["count"].sum(), 1)
            ax.plot(centres, density, color=colors.get(label[0]), lw=1.2, label=label[0])
        ax.set_title(f"layer {layer}: {param.split('.', 2)[-1]}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 5), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle("Weight distributions on shared bins (fraction of weights per bin)", y=1.06, fontsize=10)
    return _png(fig)


def heatmap(
    matrix: pl.DataFrame, row: str, col: str, value: str, title: str, cbar: str, *, grey: str | None = None
) -> bytes:
    """A labelled heatmap of `value` with rows `row` (e.g. layer) and columns `col` (e.g. checkpoint label); cells
    whose boolean column `grey` is true are drawn grey instead (e.g. CKA within 2 SE of its chance baseline)."""
    wide = matrix.pivot(on=col, index=row, values=value, aggregate_function="mean").sort(row)
    labels = sorted(c for c in wide.columns if c != row)  # pivot columns come in row order, which varies
    data = wide.select(labels).to_numpy().astype(float)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(labels), 0.9 + 0.28 * wide.height))
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis")
    if grey is not None:
        flags = matrix.with_columns(pl.col(grey).cast(pl.Float64)).pivot(
            on=col, index=row, values=grey, aggregate_function="max"
        ).sort(row)  # fmt: skip
        greyed = np.nan_to_num(flags.select([c if c in flags.columns else pl.lit(None) for c in labels])
                               .to_numpy().astype(float)) > 0  # fmt: skip
        ax.imshow(np.ma.masked_where(~greyed, np.ones_like(data)), aspect="auto", cmap="Greys", vmin=0, vmax=2.5)
    ax.set_yticks(range(wide.height), [str(v) for v in wide[row]], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(row)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=cbar)
    return _png(fig)


def dead_units(per_layer: pl.DataFrame, colors: Palette) -> bytes:
    """Dead channels per layer, one bar per checkpoint; below, on its own scale, the newly dead (vs the base)."""
    labels = per_layer["label"].unique(maintain_order=True).to_list()
    layers = sorted(per_layer["layer"].unique().to_list())
    width = 0.8 / max(len(labels), 1)
    panels = [("dead", "dead units", "Dead units per layer (dormant or constant; units only)")]
    if per_layer["newly_dead"].fill_null(0).sum() > 0:
        panels.append(("newly_dead", "newly dead", "Newly dead: dead here, alive in the base on the same images"))
    if per_layer["revived"].fill_null(0).sum() > 0:
        panels.append(("revived", "revived", "Revived: alive here, dead in the base on the same images"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 0.4 + 2.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (column, ylabel, title) in zip(axes[:, 0], panels, strict=True):
        for i, label in enumerate(labels):
            part = per_layer.filter(pl.col("label") == label)
            lookup = dict(zip(part["layer"].to_list(), part[column].fill_null(0).to_list(), strict=True))
            ax.bar([x + i * width for x in range(len(layers))], [lookup.get(layer, 0) for layer in layers], width,
                   color=colors.get(label), label=label)  # fmt: skip
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=7, ncol=3, frameon=False)
    ax = axes[-1, 0]
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(layers))], [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel("layer")
    fig.tight_layout()
    return _png(fig)


def feature_maps(maps: pl.DataFrame, labels: list[str], rows: list[tuple[str, int, int]]) -> bytes:
    """Rows: (module, channel, image); columns: checkpoints; one colour scale per row, shared by every checkpoint,
    so a brighter map is a stronger activation."""
    fig, axes = plt.subplots(len(rows), len(labels), figsize=(1.8 * len(labels), 1.8 * len(rows)), squeeze=False)
    for r, (module, channel, image) in enumerate(rows):
        cells = maps.filter((pl.col("module") == module) & (pl.col("channel") == channel) & (pl.col("image") == image))
        arrays = {lab: np.asarray(v, dtype=float).reshape(h, w)
                  for lab, v, h, w in cells.select("label", "values", "height", "width").iter_rows()}  # fmt: skip
        lo = min((a.min() for a in arrays.values()), default=0.0)
        hi = max((a.max() for a in arrays.values()), default=1.0)
        for c, label in enumerate(labels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if label in arrays:
                ax.imshow(arrays[label], cmap="magma", vmin=lo, vmax=hi)
            if r == 0:
                ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{module}\nch {channel}, img {image}", fontsize=6)
    fig.suptitle("Feature maps: the channels that changed most vs the base, one colour scale per row", fontsize=10)
    return _png(fig)


def training_curves(metrics: pl.DataFrame, colors: Palette) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for (run,), part in metrics.sort("epoch").group_by("run", maintain_order=True):
        for ax, column in zip(axes, ("metrics/mAP50-95(B)", "train/box_loss", "val/box_loss"), strict=True):
            ax.plot(part["epoch"], part[column], marker="o", ms=3, color=colors.get(run), label=run)
            ax.set_title(column, fontsize=9)
            ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7, frameon=False)
    return _png(fig)


def map_vs_divergence(points: pl.DataFrame, colors: Palette) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for run, x, y in points.select("run", "mean_rel_l2", "best_map50_95").iter_rows():
        ax.scatter([x], [y], color=colors.get(run), s=40)
        ax.annotate(run, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("mean relative L2 change per layer vs the base")
    ax.set_ylabel("best mAP50-95")
    ax.set_title("Final mAP against how far the weights moved", fontsize=10)
    return _png(fig)


def cka_cross(sim: pl.DataFrame, pairs: list[str]) -> bytes:
    """Small multiples, one per checkpoint pair: linear CKA of every module of the first (rows) against every module
    of the second (columns). A bright diagonal means the layers still compute what they did; an off-diagonal ridge,
    that a representation moved to another depth."""
    order = sim.select("layer_a", "module_a").unique().with_columns(n=pl.col("module_a").str.len_chars())
    modules = order.sort("layer_a", "n", "module_a")["module_a"].to_list()  # depth order: model.2 before model.10
    index = {m: i for i, m in enumerate(modules)}
    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 5.0 * rows), squeeze=False)
    fig.subplots_adjust(wspace=0.55, hspace=0.45)
    image = None
    for ax, pair in zip(axes.flat, pairs, strict=False):
        grid = np.full((len(modules), len(modules)), np.nan)
        part = sim.filter(pl.col("pair") == pair)
        for a, b, value in part.select("module_a", "module_b", "cka").iter_rows():
            grid[index[a], index[b]] = np.nan if value is None else value
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis")
        ticks = range(0, len(modules), max(1, len(modules) // 12))
        ax.set_yticks(list(ticks), [modules[t] for t in ticks], fontsize=6)
        ax.set_xticks(list(ticks), [modules[t] for t in ticks], fontsize=6, rotation=90)
        first, second = pair.split(" vs ", 1)
        ax.set_ylabel(first, fontsize=8)
        ax.set_xlabel(second, fontsize=8)
        ax.set_title(pair, fontsize=9)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="CKA", shrink=0.8)
    fig.suptitle("Linear CKA, module x module, for each checkpoint against the base", fontsize=10)
    return _png(fig)


DEPTH_PANELS = (
    ("best_map50_95", "best mAP50-95"),
    ("mean_rel_l2", "mean relative L2 change per layer vs the base"),
    ("dead", "dead units (last checkpoint)"),
    ("cka_last_backbone", "CKA of the last backbone layer vs the base"),
)


def depth_curves(runs: pl.DataFrame) -> bytes:
    """Small multiples against freeze depth (layers frozen), one line per strategy: whatever of mAP, distance to the
    base, dead units and CKA of the last backbone layer the store has."""
    panels = [(c, t) for c, t in DEPTH_PANELS if c in runs.columns and runs[c].drop_nulls().len() > 0]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels, strict=True):
        for (strategy,), part in runs.sort("depth").group_by("strategy", maintain_order=True):
            points = part.drop_nulls(column)
            ax.plot(points["depth"], points[column], marker="o", ms=4, label=strategy)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layers frozen")
    axes[0, 0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)


def trajectories(points: pl.DataFrame, metrics: pl.DataFrame, colors: Palette) -> bytes:
    """Per run, against epoch: relative L2 distance to the base and the step from the previous epoch; mAP50-95 of
    the run (results.csv) on a second axis of the first panel."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    twin = axes[0].twinx()
    for (run,), part in points.sort("epoch").group_by("run", maintain_order=True):
        color = colors.get(run)
        base = part.drop_nulls("to_base")
        axes[0].plot(base["epoch"], base["to_base"], marker="o", ms=3, color=color, label=run)
        step = part.drop_nulls("step")
        axes[1].plot(step["epoch"], step["step"], marker="o", ms=3, color=color, label=run)
        curve = metrics.filter(pl.col("run") == run).sort("epoch")
        if curve.height:
            twin.plot(curve["epoch"], curve["metrics/mAP50-95(B)"], ls="--", lw=1, color=color)
    axes[0].set_title("distance to the base (solid) and mAP50-95 (dashed)", fontsize=9)
    axes[0].set_ylabel("||W - W_base|| / ||W_base||")
    twin.set_ylabel("mAP50-95")
    axes[1].set_title("step from the previous epoch", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)


def activation_distributions(hist: pl.DataFrame, colors: Palette) -> bytes:
    """Small multiples, one per module: the distribution of activations (octave bins, exact) of every checkpoint on
    the same images, overlaid, counts on a log axis."""
    modules = hist.select("layer", "module").unique().sort("layer", "module")["module"].to_list()
    cols = 4
    rows = math.ceil(len(modules) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    for ax, module in zip(axes.flat, modules, strict=False):
        for (label,), part in hist.filter(pl.col("module") == module).sort("lo").group_by("label", maintain_order=True):
            centre = np.where(part["lo"].to_numpy() < 0, part["hi"].to_numpy(), part["lo"].to_numpy()) * 1.41
            ax.plot(centre, part["count"].to_numpy(), drawstyle="steps-mid", lw=1, color=colors.get(label), label=label)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_yscale("log")
        ax.set_title(module, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(modules) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 5), fontsize=8,
               frameon=False)  # fmt: skip
    return _png(fig)


ROLES = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")


def parameter_distributions(hist: pl.DataFrame, colors: Palette) -> bytes:
    """Rows: layers; columns: roles (conv weight and bias, BN gamma, beta, running mean and variance) of the layer's
    first tensor of that role; every checkpoint overlaid on the shared bins."""
    layers = sorted(hist["layer"].drop_nulls().unique().to_list())
    roles = [r for r in ROLES if r in set(hist["role"].to_list())]
    fig, axes = plt.subplots(len(layers), len(roles), figsize=(2.6 * len(roles), 1.6 * len(layers)), squeeze=False)
    for r, layer in enumerate(layers):
        for c, role in enumerate(roles):
            ax = axes[r, c]
            ax.tick_params(labelsize=5)
            part = hist.filter((pl.col("layer") == layer) & (pl.col("role") == role))
            if part.is_empty():
                ax.axis("off")
                continue
            first = part["param"].min()
            for (label,), one in (
                part.filter(pl.col("param") == first).sort("bin").group_by("label", maintain_order=True)
            ):
                ax.plot((one["lo"] + one["hi"]).to_numpy() / 2, one["count"].to_numpy() / max(one["count"].sum(), 1),
                        color=colors.get(label), lw=0.9, label=label)  # fmt: skip
            if r == 0:
                ax.set_title(role, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 5), fontsize=8,
               frameon=False)  # fmt: skip
    return _png(fig)


def change_quantiles(q: pl.DataFrame, colors: Palette) -> bytes:
    """The difference view: per layer, the distribution over output channels of the relative change
    ||w_c - w_base,c|| / ||w_base,c|| (5th, 25th, 50th, 75th and 95th percentiles), one box per run."""
    labels = q["label"].unique().sort().to_list()
    layers = sorted(q["layer"].unique().to_list())
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(12, 3.4))
    for i, label in enumerate(labels):
        part = q.filter(pl.col("label") == label)
        for x, layer in enumerate(layers):
            row = part.filter(pl.col("layer") == layer)
            if row.is_empty():
                continue
            q05, q25, q50, q75, q95 = (row[c][0] for c in ("q05", "q25", "q50", "q75", "q95"))
            pos = x + (i - (len(labels) - 1) / 2) * width
            color = colors.get(label)
            ax.vlines(pos, q05, q95, color=color, lw=0.8)
            ax.add_patch(plt.Rectangle((pos - width / 2.5, q25), width / 1.25, max(q75 - q25, 1e-12), color=color,
                                       alpha=0.6, label=label if x == 0 else None))  # fmt: skip
            ax.hlines(q50, pos - width / 2.5, pos + width / 2.5, color="black", lw=0.8)
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative change per output channel")
    ax.set_title("Difference view: ||w_c - w_base,c|| / ||w_base,c|| over each layer's conv output channels "
                 "(box 25-75%, whiskers 5-95%, line: median)", fontsize=9)  # fmt: skip
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.legend(fontsize=7, ncol=4, frameon=False)
    fig.tight_layout()
    return _png(fig)
