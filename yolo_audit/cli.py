"""`yolo-audit` commands: each parses options and forwards to one function; AuditError becomes one line + exit 1."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from yolo_audit.env import quiet_start
from yolo_audit.errors import AuditError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Audit what transfer learning changed inside YOLO.")

Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (e.g. auto, ray://head:10001); default: embedded local Ray."),
]
NumCpus = Annotated[
    int | None, typer.Option("--num-cpus", min=1, help="CPUs for the embedded local Ray (default: all).")
]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="auto: in this process unless --address is given (no Ray start-up); ray: Ray tasks (embedded when no "
        "--address); local: in this process.",
    ),
]
Force = Annotated[
    bool, typer.Option("--force", help="Recompute what an earlier run already wrote for the same files and options.")
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow pickles that need code outside Ultralytics' allow-list. Runs that code!"
    ),
]

# options shared by the commands that run images through networks (activations, similarity)
Data = Annotated[str, typer.Option("--data", help="Dataset yaml (uses --split), image folder, or glob.")]
OutLocation = Annotated[str, typer.Option("--out", help="Results folder or filesystem URI.")]
MaxImages = Annotated[int | None, typer.Option("--max-images", min=1, help="Use the first N images.")]
Imgsz = Annotated[int, typer.Option("--imgsz", min=32, help="Letterbox size.")]
Split = Annotated[str, typer.Option("--split", help="Split of a dataset yaml.")]
Cfg = Annotated[str | None, typer.Option("--cfg", help="Model yaml for bare state dicts that record no architecture.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda:N.")]


def _at(where: str) -> Any:
    """A location given on the command line (a path or a URI), resolved once, here."""
    from yolo_audit.results.location import locate

    return locate(where)


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every command: files it names are hashed while it imports (model/filehash.py); AuditError ends it in a line."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        files = [f for f in (kwargs.get("reference"), *(kwargs.get("checkpoints") or ())) if isinstance(f, str)]
        if files:
            from yolo_audit.model.filehash import prefetch

            prefetch(files)
        try:
            return fn(*args, **kwargs)
        except AuditError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@_command
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
    from yolo_audit.analyses.weights.columns import WeightOptions
    from yolo_audit.analyses.weights.plan import analyze_weights
    from yolo_audit.report.text import print_weights_summary

    opts = WeightOptions(near_zero=near_zero, gamma_eps=gamma_eps, bins=bins, alpha=alpha)
    summary = analyze_weights(
        list(checkpoints), _at(out), reference=reference, pairwise=pairwise, trajectory=trajectory, address=address,
        num_cpus=num_cpus, engine=engine, opts=opts, trust_pickle=trust_pickle, force=force,
    )  # fmt: skip
    print_weights_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@_command
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
    shards: Annotated[int | None, typer.Option("--shards", min=1, help="Data shards per checkpoint.")] = None,
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Per-channel activation statistics and dead units over a dataset, written as Parquet."""
    from yolo_audit.analyses.activations.job import ActivationOptions
    from yolo_audit.analyses.activations.plan import analyze_activations
    from yolo_audit.report.text import print_activations_summary

    if depth not in ("modules", "leaves"):
        raise AuditError(f"--depth must be modules or leaves, not {depth!r}")
    opts = ActivationOptions(imgsz=imgsz, batch=batch, depth=depth, maps=maps, tau=tau, device=device, cfg=cfg,
                             trust_pickle=trust_pickle)  # fmt: skip
    summary = analyze_activations(
        list(checkpoints), data, _at(out), reference=reference, opts=opts, max_images=max_images, split=split,
        shards_per_checkpoint=shards, address=address, num_cpus=num_cpus, engine=engine, force=force,
    )  # fmt: skip
    print_activations_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@_command
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
    from yolo_audit.analyses.similarity.plan import SimilarityOptions, analyze_similarity
    from yolo_audit.report.text import print_similarity_summary

    opts = SimilarityOptions(imgsz=imgsz, batch=batch, pool=pool, cross_layer=cross_layer, device=device, cfg=cfg,
                             trust_pickle=trust_pickle)  # fmt: skip
    summary = analyze_similarity(list(checkpoints), data, _at(out), opts=opts, max_images=max_images, split=split,
                                 address=address, num_cpus=num_cpus, engine=engine, force=force)  # fmt: skip
    print_similarity_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@_command
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
    batch: Annotated[int, typer.Option("--batch", min=1, help="Validation batch size.")] = 16,
    split: Split = "val",
    device: Device = "auto",
    address: Address = None,
    num_cpus: NumCpus = None,
    engine: EngineOpt = "auto",
    force: Force = False,
    trust_pickle: TrustPickle = False,
) -> None:
    """Which layers the accuracy needs: reset each layer to the reference and re-measure mAP (layer rewinding)."""
    from yolo_audit.analyses.rewind.job import RewindOptions
    from yolo_audit.analyses.rewind.plan import analyze_rewind
    from yolo_audit.report.text import print_rewind_summary

    opts = RewindOptions(imgsz=imgsz, batch=batch, split=split, device=device, trust_pickle=trust_pickle)
    summary = analyze_rewind(list(checkpoints), reference, data, _at(out), layers=layers, groups=groups,
                             into_reference=into_reference, opts=opts, address=address, num_cpus=num_cpus,
                             engine=engine, force=force)  # fmt: skip
    print_rewind_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


rank_app = typer.Typer(no_args_is_help=True, help="Rank dead units, weight divergence, BN drift, or rewinding.")
app.add_typer(rank_app, name="rank")
Results = Annotated[str, typer.Option("--results", help="Results folder or URI (the --out of earlier commands).")]
Top = Annotated[int, typer.Option("--top", min=1, help="How many rows.")]


@rank_app.command("dead-units")
@_command
def rank_dead_units(
    results: Results,
    top: Top = 20,
    by: Annotated[str, typer.Option("--by", help="channel, layer or checkpoint.")] = "layer",
    criterion: Annotated[
        str,
        typer.Option("--criterion", help="any (= dead), dead, dormant, constant, never_positive, newly_dead, revived."),
    ] = "any",
) -> None:
    """Dead units across every checkpoint (newly dead vs the reference first)."""
    from yolo_audit.results import rank

    _show(rank.rank_dead_units(_at(results), by=by, criterion=criterion, top=top).collect())


@rank_app.command("divergence")
@_command
def rank_divergence(
    results: Results,
    top: Top = 20,
    by: Annotated[str, typer.Option("--by", help="param, layer or checkpoint.")] = "layer",
) -> None:
    """Weight divergence across checkpoints and runs, largest first."""
    from yolo_audit.results import rank

    _show(rank.rank_divergence(_at(results), by=by, top=top).collect())


@rank_app.command("drift")
@_command
def rank_drift(results: Results, top: Top = 20) -> None:
    """Layers whose BatchNorm statistics moved while their weights did not."""
    from yolo_audit.results import rank

    _show(rank.rank_drift(_at(results), top=top).collect())


@rank_app.command("rewind")
@_command
def rank_rewind(results: Results, top: Top = 5) -> None:
    """Per run, the layers whose reset to the reference costs most mAP50-95."""
    from yolo_audit.results import rank

    _show(rank.rank_rewind(_at(results), top=top).collect())


@app.command()
@_command
def query(
    sql: Annotated[str, typer.Argument(help='SQL over the tables, e.g. "select * from layer_freeze limit 5".')],
    results: Results,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet (binary, to stdout).")] = "table",
) -> None:
    """Run SQL (Polars SQL) over every results table."""
    from yolo_audit.results import rank

    if fmt not in ("table", "csv", "json", "parquet"):
        raise AuditError(f"--format must be table, csv, json or parquet, not {fmt!r}")
    frame = rank.query(_at(results), sql)
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
@_command
def report(
    results: Results,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """A self-contained HTML report (plots embedded, no network) of whatever tables exist."""
    from yolo_audit.report import write_report

    typer.echo(str(write_report(_at(results), out)))


@app.command()
@_command
def compact(results: Results) -> None:
    """Merge each table's per-task files into one large file (readers never see a row twice or miss one; run it while
    no other command writes there). Rankings, queries and reports on thousands of checkpoints read far fewer files."""
    from yolo_audit.results.compact import compact as compact_results

    merged = compact_results(_at(results))
    done = ", ".join(f"{t} ({n} files)" for t, n in merged.items()) or "nothing to merge"
    typer.echo(f"compacted {results}: {done}")


cache_app = typer.Typer(no_args_is_help=True, help="The local cache of files fetched from URIs.")
app.add_typer(cache_app, name="cache")


@cache_app.command("clear")
@_command
def cache_clear() -> None:
    """Empty the fetch cache (~/.cache/yolo-audit/fetched; its size is bounded by YOLO_AUDIT_CACHE_MAX)."""
    from yolo_audit.results.location import cache_root, trim_cache

    typer.echo(f"removed {trim_cache(0) / 2**20:.1f} MiB from {cache_root()}")


@app.command("schema")
def schema_cmd() -> None:
    """Print every results table and column (Markdown), as documented in the README."""
    from yolo_audit.results.schema import markdown

    typer.echo(markdown())


from yolo_audit import cli_study  # noqa: E402, F401 - registers study, demo, make-data and convert on `app`


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
