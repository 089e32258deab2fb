"""`yolo-audit` commands: each parses options and forwards to one function; AuditError becomes one line + exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from yolo_audit.errors import AuditError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Audit what transfer learning changed inside YOLO.")

Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (e.g. auto, ray://head:10001); default: embedded local Ray."),
]
NumCpus = Annotated[
    int | None, typer.Option("--num-cpus", min=1, help="CPUs for the embedded local Ray (default: all).")
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow pickles that need code outside Ultralytics' allow-list. Runs that code!"
    ),
]


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@_one_line_errors
def weights(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoint files or folders (searched for *.pt, *.safetensors).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Results folder (Parquet tables, one folder per table).")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Compare every checkpoint against this one (e.g. the base model)."),
    ] = None,
    pairwise: Annotated[bool, typer.Option("--pairwise", help="Also compare every pair of checkpoints.")] = False,
    trajectory: Annotated[
        bool, typer.Option("--trajectory", help="Also compare consecutive epochs within each run.")
    ] = False,
    address: Address = None,
    num_cpus: NumCpus = None,
    trust_pickle: TrustPickle = False,
    bins: Annotated[int, typer.Option("--bins", min=2, max=4096, help="Histogram bins per parameter.")] = 64,
    near_zero: Annotated[
        float, typer.Option("--near-zero", min=0.0, help="|w| below this counts as near zero.")
    ] = 1e-3,
    gamma_eps: Annotated[
        float, typer.Option("--gamma-eps", min=0.0, help="|BN gamma| below this: dead channel.")
    ] = 1e-3,
) -> None:
    """Weight & bias statistics, divergence and freeze verification of checkpoints, written as Parquet."""
    from yolo_audit.analysis import WeightOptions
    from yolo_audit.report_text import print_weights_summary
    from yolo_audit.weights_plan import analyze_weights

    opts = WeightOptions(near_zero=near_zero, gamma_eps=gamma_eps, bins=bins)
    summary = analyze_weights(
        list(checkpoints), out, reference=reference, pairwise=pairwise, trajectory=trajectory, address=address,
        num_cpus=num_cpus, opts=opts, trust_pickle=trust_pickle,
    )  # fmt: skip
    print_weights_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@_one_line_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes checkpoints and results.")] = Path(
        "demo-results"
    ),
    model: Annotated[str, typer.Option("--model", help="Ultralytics model yaml to build offline.")] = "yolov8n.yaml",
    num_cpus: NumCpus = None,
) -> None:
    """Offline demo: build a base model and simulated fine-tunes of it, then analyse their weights."""
    from yolo_audit.demo import build_demo_checkpoints
    from yolo_audit.report_text import print_weights_summary
    from yolo_audit.weights_plan import analyze_weights

    folder = build_demo_checkpoints(out / "checkpoints", cfg=model)
    typer.echo(f"built demo checkpoints under {folder}", err=True)
    summary = analyze_weights(
        [folder], out / "results", reference=folder / "base" / "weights" / "last.pt", trajectory=True, num_cpus=num_cpus
    )
    print_weights_summary(summary, examples=True)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@_one_line_errors
def convert(
    source: Annotated[Path, typer.Argument(help="Checkpoint to convert (.pt).")],
    target: Annotated[Path, typer.Argument(help="Output .safetensors file (fp32, metadata kept).")],
    trust_pickle: TrustPickle = False,
) -> None:
    """Convert a checkpoint to .safetensors (no code runs when loading it later)."""
    from yolo_audit.checkpoints import load_checkpoint, save_safetensors

    if target.suffix != ".safetensors":
        raise AuditError("the target must end in .safetensors", path=str(target))
    written = save_safetensors(load_checkpoint(source, trust_pickle=trust_pickle), target)
    typer.echo(str(written))


@app.command("schema")
def schema_cmd() -> None:
    """Print every results table and column (Markdown), as documented in the README."""
    from yolo_audit.schema import markdown

    typer.echo(markdown())


def main() -> None:
    app(prog_name="yolo-audit")


if __name__ == "__main__":
    sys.exit(main())
