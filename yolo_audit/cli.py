"""`yolo-audit` commands: each parses options and forwards to one function; AuditError becomes one line + exit 1."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from yolo_audit import cli_study
from yolo_audit.cli_options import (
    Address,
    Against,
    Cfg,
    Data,
    Device,
    EngineOpt,
    Force,
    Imgsz,
    MaxImages,
    NumCpus,
    OutLocation,
    Split,
    TrustPickle,
    ValidationBatch,
    command,
    finish,
    forward,
)
from yolo_audit.env import quiet_start
from yolo_audit.errors import AuditError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Audit what transfer learning changed inside YOLO.")


@app.command()
@command
def weights(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Checkpoint files or folders (searched for *.pt, *.safetensors), or URIs.")
    ],
    out: Annotated[str, typer.Option("--out", help="Results folder or URI (Parquet tables, one folder per table).")],
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Compare every checkpoint against this one (e.g. the base model)."),
    ] = None,
    pairwise: Annotated[bool, typer.Option("--pairwise", help="Also compare every pair of checkpoints.")] = False,
    trajectory: Annotated[
        bool, typer.Option("--trajectory", help="Also compare consecutive epochs within each run.")
    ] = False,
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    trust_pickle: TrustPickle = False,
    bins: Annotated[int, typer.Option("--bins", min=2, max=4096, help="Histogram bins per parameter.")] = 64,
    near_zero: Annotated[
        float, typer.Option("--near-zero", min=0.0, help="|w| below this counts as near zero.")
    ] = 1e-3,
    gamma_eps: Annotated[
        float, typer.Option("--gamma-eps", min=0.0, help="|BN gamma| below this: dead channel.")
    ] = 1e-3,
    alpha: Annotated[
        bool, typer.Option("--alpha", help="Also WeightWatcher's power-law alpha per conv (~1 s per yolov8s).")
    ] = False,
    force: Force = False,
) -> None:
    """Weight & bias statistics, divergence and freeze verification of checkpoints, written as Parquet."""
    args = locals()
    from yolo_audit.report.text import print_weights_summary

    finish(print_weights_summary, forward("weights", args))


@app.command()
@command
def activations(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders, or URIs.")],
    data: Data,
    out: OutLocation,
    reference: Annotated[
        str | None, typer.Option("--reference", help="Also run it, and flag channels dead here but alive there.")
    ] = None,
    tau: Annotated[float, typer.Option("--tau", min=0.0, help="Dormant / constant threshold.")] = 0.025,
    max_images: MaxImages = None,
    imgsz: Imgsz = 640,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per forward pass.")] = 8,
    depth: Annotated[
        str, typer.Option("--depth", help="modules (23 top-level) or leaves (every Conv/BN/act).")
    ] = "modules",
    maps: Annotated[int, typer.Option("--maps", min=0, help="Save small feature maps of the first K images.")] = 4,
    split: Split = "val",
    cfg: Cfg = None,
    device: Device = "auto",
    shards: Annotated[
        int | None, typer.Option("--shards", min=1, help="Data shards per task group (of up to 8 checkpoints).")
    ] = None,
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Per-channel activation statistics and dead units over a dataset, written as Parquet."""
    args = locals()
    from yolo_audit.report.text import print_activations_summary

    finish(print_activations_summary, forward("activations", args))


@app.command()
@command
def similarity(
    checkpoints: Annotated[
        list[str],
        typer.Argument(help="Checkpoint files or folders (all compared pairwise; the first is the reference)."),
    ],
    data: Data,
    out: OutLocation,
    cross_layer: Annotated[bool, typer.Option("--cross-layer", help="Every layer against every layer.")] = False,
    pool: Annotated[str, typer.Option("--pool", help="avg (channel means) or none (all activations).")] = "avg",
    max_images: MaxImages = None,
    imgsz: Imgsz = 640,
    batch: Annotated[int, typer.Option("--batch", help="Images per batch (at least 4).")] = 8,
    split: Split = "val",
    cfg: Cfg = None,
    device: Device = "auto",
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    force: Force = False,
    trust_pickle: TrustPickle = False,
) -> None:
    """Representation similarity (linear CKA) between checkpoints, layer by layer."""
    args = locals()
    from yolo_audit.report.text import print_similarity_summary

    finish(print_similarity_summary, forward("similarity", args))


@app.command()
@command
def rewind(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders, or URIs.")],
    reference: Annotated[str, typer.Option("--reference", help="The checkpoint to rewind layers to (the base).")],
    data: Annotated[str, typer.Option("--data", help="Dataset yaml with labels (uses --split).")],
    out: OutLocation,
    layers: Annotated[str, typer.Option("--layers", help="all, backbone, neck, head, or a list like 0,1,2.")] = "all",
    groups: Annotated[bool, typer.Option("--groups", help="Swap backbone, neck and head as whole groups.")] = False,
    into_reference: Annotated[
        bool, typer.Option("--into-reference", help="Also: the reference with one layer from the checkpoint.")
    ] = False,
    imgsz: Imgsz = 640,
    batch: ValidationBatch = 16,
    split: Split = "val",
    device: Device = "auto",
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    force: Force = False,
    trust_pickle: TrustPickle = False,
) -> None:
    """Which layers the accuracy needs: reset each layer to the reference and re-measure mAP (layer rewinding)."""
    args = locals()
    from yolo_audit.report.text import print_rewind_summary

    finish(print_rewind_summary, forward("rewind", args))


@app.command()
@command
def interpolate(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders, or URIs.")],
    reference: Annotated[str, typer.Option("--reference", help="The start of each line (the base).")],
    data: Annotated[str, typer.Option("--data", help="Dataset yaml with labels (uses --split).")],
    out: OutLocation,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Points on each line, both ends included.")] = 11,
    recalibrate_bn: Annotated[
        int,
        typer.Option("--recalibrate-bn", min=0, help="Re-estimate BatchNorm statistics on N training images, each α."),
    ] = 0,
    imgsz: Imgsz = 640,
    batch: ValidationBatch = 16,
    split: Split = "val",
    device: Device = "auto",
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    force: Force = False,
    trust_pickle: TrustPickle = False,
) -> None:
    """Is each fine-tune still in the base's basin? mAP along the straight line between the base and it."""
    args = locals()
    from yolo_audit.report.text import print_interpolation_summary

    finish(print_interpolation_summary, forward("interpolate", args))


rank_app = typer.Typer(no_args_is_help=True, help="Rank dead units, weight divergence, BN drift, or rewinding.")
app.add_typer(rank_app, name="rank")
Results = Annotated[str, typer.Option("--results", help="Results folder or URI (the --out of earlier commands).")]
Top = Annotated[int, typer.Option("--top", min=1, help="How many rows.")]


@rank_app.command("dead-units")
@command
def rank_dead_units(
    results: Results,
    top: Top = 20,
    by: Annotated[str, typer.Option("--by", help="channel, layer or checkpoint.")] = "layer",
    criterion: Annotated[
        str,
        typer.Option("--criterion", help="any (= dead), dead, dormant, constant, never_positive, newly_dead, revived."),
    ] = "any",
    against: Against = "reference",
) -> None:
    """Dead units across every checkpoint (newly dead vs the reference first)."""
    _ranked("rank dead-units", locals(), "activations")


@rank_app.command("divergence")
@command
def rank_divergence(
    results: Results,
    top: Top = 20,
    by: Annotated[str, typer.Option("--by", help="param, layer or checkpoint.")] = "layer",
    against: Against = "reference",
) -> None:
    """Weight divergence across checkpoints and runs, largest first."""
    _ranked("rank divergence", locals(), "weights")


@rank_app.command("drift")
@command
def rank_drift(results: Results, top: Top = 20, against: Against = "reference") -> None:
    """Layers whose BatchNorm statistics moved while their weights did not."""
    _ranked("rank drift", locals(), "weights")


@rank_app.command("rewind")
@command
def rank_rewind(results: Results, top: Top = 5, against: Against = "reference") -> None:
    """Per run, the layers whose reset to the reference costs most mAP50-95."""
    _ranked("rank rewind", locals(), "rewind")


@rank_app.command("gradient-flow")
@command
def rank_gradient_flow(
    results: Results,
    run: Annotated[str | None, typer.Option("--run", help="One run (default: every run).")] = None,
    top: Top = 1000,
) -> None:
    """Per run, the gradient that reached each layer, epoch by epoch (recorded live during training)."""
    args = locals()
    import polars as pl

    frame = forward("rank gradient-flow", args)
    typer.echo("Gradient flow: the L2 norm of each layer's gradient, averaged over each epoch's optimizer steps (0: "
               "no gradient reached it, e.g. frozen); bn moved: how far its BatchNorm statistics moved that epoch, "
               "relative to their size. Every column: rank_gradient_flow / train_dynamics.")  # fmt: skip
    for (name,), part in frame.group_by("run", maintain_order=True):
        shown = part.with_columns(
            pl.format("{}{}", pl.col("grad_norm").round_sig_figs(2),
                      pl.when(pl.col("bn_update_ratio") > 0).then(pl.format(" (bn moved {})",
                      pl.col("bn_update_ratio").round_sig_figs(2))).otherwise(pl.lit(""))).alias("cell")
        ).pivot(on="epoch", index="layer", values="cell").sort("layer")  # fmt: skip
        typer.echo(f"\n{name} (rows: layers; columns: epochs)")
        _show(shown)


def _ranked(cmd: str, params: dict[str, Any], analysis: str) -> None:
    """A ranking, under the line that says what it compares against (one reference per answer)."""
    from yolo_audit.results.references import describe

    frame = forward(cmd, params)
    typer.echo(describe(params["results"], params["against"], analysis))
    _show(frame)


@app.command()
@command
def query(
    sql: Annotated[str, typer.Argument(help='SQL over the tables, e.g. "select * from layer_freeze limit 5".')],
    results: Results,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet (binary, to stdout).")] = "table",
) -> None:
    """Run SQL (Polars SQL) over every results table."""
    if fmt not in ("table", "csv", "json", "parquet"):
        raise AuditError(f"--format must be table, csv, json or parquet, not {fmt!r}")
    frame = forward("query", {"sql": sql, "results": results})
    if fmt == "table":
        _show(frame)
    elif fmt in ("csv", "json"):
        typer.echo(frame.write_csv() if fmt == "csv" else frame.write_json(), nl=fmt == "json")
    else:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        sys.stdout.buffer.write(buffer.getvalue())


def _show(frame: Any) -> None:
    import polars as pl

    with pl.Config(tbl_rows=200, tbl_cols=20, fmt_str_lengths=60, tbl_width_chars=220, tbl_hide_dataframe_shape=True):
        typer.echo(str(frame))


@app.command()
@command
def report(
    results: Results,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """A self-contained HTML report (plots embedded, no network) of whatever tables exist."""
    typer.echo(str(forward("report", locals())))


@app.command()
@command
def compact(results: Results) -> None:
    """Merge each table's per-task files into one large file (readers never see a row twice or miss one; run it while
    no other command writes there). Rankings, queries and reports on thousands of checkpoints read far fewer files."""
    merged = forward("compact", locals())
    done = ", ".join(f"{t} ({n} files)" for t, n in merged.items()) or "nothing to merge"
    typer.echo(f"compacted {results}: {done}")


cache_app = typer.Typer(no_args_is_help=True, help="The local cache of files fetched from URIs.")
app.add_typer(cache_app, name="cache")


@cache_app.command("clear")
@command
def cache_clear() -> None:
    """Empty the fetch cache (~/.cache/yolo-audit/fetched; its size is bounded by YOLO_AUDIT_CACHE_MAX)."""
    from yolo_audit.results.location import cache_root

    typer.echo(f"removed {forward('cache clear', {}) / 2**20:.1f} MiB from {cache_root()}")


@app.command("schema")
def schema_cmd() -> None:
    """Print every results table and column (Markdown): docs/schema.md is this output."""
    typer.echo(forward("schema", {}), nl=False)


cli_study.register(app)  # study, demo, make-data, convert


def main() -> None:
    """The `yolo-audit` program. Once a command has returned, its results are written and closed and its output is
    flushed here; the process then ends at once (os._exit) instead of tearing down torch, numba and pyarrow module by
    module (~0.4 s of every command), unless child processes still need the interpreter's exit handlers."""
    import logging
    import multiprocessing

    quiet_start()  # analyses settle once set up (runtime.tasks.ray_session)
    try:
        app(prog_name="yolo-audit")
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if multiprocessing.active_children():
        sys.exit(code)
    os._exit(code or 0)


if __name__ == "__main__":
    sys.exit(main())
