"""The commands that make data and train: `study`, `demo`, `make-data`, `convert`. `register` adds them to the one app
(`cli.app`); this module never imports `cli`, so `python -m yolo_audit.cli` and `python -m yolo_audit` see every
command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from yolo_audit.cli_options import Address, TrustPickle, command, forward


@command
def study(
    file: Annotated[Path, typer.Argument(help="Study file (see workflows/).")],
    out: Annotated[str | None, typer.Option("--out", help="Results folder or URI (default: the file's `out`).")] = None,
    address: Address = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, print the task plan and resources.")] = False,
    cpu_only: Annotated[
        bool, typer.Option("--cpu-only", help="Train on CPUs whatever resources.gpus_per_task says.")
    ] = False,
    schedule_timeout: Annotated[
        float,
        typer.Option("--schedule-timeout", min=1, help="Seconds to wait for a node that can take a training task."),
    ] = 600,
) -> None:
    """Train freeze-depth variants as Ray tasks, then analyse every epoch snapshot."""
    args = locals()
    from yolo_audit.report.text import print_study_summary

    summary = forward("study", args)
    if not dry_run:
        print_study_summary(summary)
    if not summary.ok:
        raise typer.Exit(1)


@command
def demo(
    out: Annotated[str, typer.Option("--out", help="Where the demo writes data, runs and results.")] = "demo-results",
    address: Address = None,
) -> None:
    """Offline demo: workflows/demo.yaml (pretrain on synthetic A, fine-tune 4 ways on B, analyse)."""
    args = locals()
    from yolo_audit.report.text import print_study_summary

    summary = forward("demo", args)
    print_study_summary(summary, examples=True)
    if summary.report is not None:
        typer.echo(f"\nReport: {summary.report}")
    if not summary.ok:
        raise typer.Exit(1)


@command
def make_data(
    out: Annotated[Path, typer.Argument(help="Folder for the dataset (images/, labels/, data.yaml).")],
    images: Annotated[int, typer.Option("--images", min=2, help="Number of images (a quarter go to val).")] = 32,
    imgsz: Annotated[int, typer.Option("--imgsz", min=16, help="Image size in pixels.")] = 64,
    classes: Annotated[int, typer.Option("--classes", min=1, max=6, help="Number of shape classes.")] = 3,
    domain: Annotated[
        str, typer.Option("--domain", help="A (filled warm shapes, smooth) or B (outlines, stripes).")
    ] = "A",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    task: Annotated[str, typer.Option("--task", help="detect (boxes) or segment (polygon labels).")] = "detect",
) -> None:
    """Write a deterministic synthetic YOLO-format detection (or segmentation) dataset."""
    typer.echo(str(forward("make-data", locals())))


@command
def convert(
    source: Annotated[Path, typer.Argument(help="Checkpoint to convert (.pt).")],
    target: Annotated[Path, typer.Argument(help="Output .safetensors file (fp32, metadata kept).")],
    trust_pickle: TrustPickle = False,
) -> None:
    """Convert a checkpoint to .safetensors (no code runs when loading it later)."""
    typer.echo(str(forward("convert", locals())))


def register(app: typer.Typer) -> None:
    """Add these commands to `app` (the CLI's one app)."""
    for name, fn in (("study", study), ("demo", demo), ("make-data", make_data), ("convert", convert)):
        app.command(name)(fn)
