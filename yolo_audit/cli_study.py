"""The commands that make data and train: `study`, `demo`, `make-data`, `convert` (registered on `cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from yolo_audit.cli import Address, TrustPickle, _command, app
from yolo_audit.errors import AuditError

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


@app.command()
@_command
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
    _run_study(file, out, address, dry_run, cpu_only=cpu_only, schedule_timeout=schedule_timeout)


@app.command()
@_command
def demo(
    out: Annotated[str, typer.Option("--out", help="Where the demo writes data, runs and results.")] = "demo-results",
    address: Address = None,
) -> None:
    """Offline demo: workflows/demo.yaml (pretrain on synthetic A, fine-tune 4 ways on B, analyse)."""
    if not (WORKFLOWS / "demo.yaml").exists():
        raise AuditError("workflows/demo.yaml is not beside the package; install from a checkout (pip install -e .)")
    _run_study(WORKFLOWS / "demo.yaml", out, address, False, examples=True)


def _run_study(
    file: Path,
    out: str | None,
    address: str | None,
    dry_run: bool,
    *,
    examples: bool = False,
    cpu_only: bool = False,
    schedule_timeout: float = 600,
) -> None:
    from yolo_audit.report.text import print_study_summary
    from yolo_audit.study.driver import run_study
    from yolo_audit.study.spec import load_study

    summary = run_study(load_study(file, out=out), address=address, dry_run=dry_run, cpu_only=cpu_only,
                        schedule_timeout=schedule_timeout)  # fmt: skip
    if not dry_run:
        print_study_summary(summary, examples=examples)
    if examples and not summary.out.is_remote:
        from yolo_audit.report import write_report

        typer.echo(f"\nReport: {write_report(summary.out, Path(summary.out.path) / 'report.html')}")
    if not summary.ok:
        raise typer.Exit(1)


@app.command("make-data")
@_command
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
    from yolo_audit.study.synth import make_dataset

    typer.echo(str(make_dataset(out, images=images, imgsz=imgsz, classes=classes, domain=domain, seed=seed,
                                task=task)))  # fmt: skip


@app.command()
@_command
def convert(
    source: Annotated[Path, typer.Argument(help="Checkpoint to convert (.pt).")],
    target: Annotated[Path, typer.Argument(help="Output .safetensors file (fp32, metadata kept).")],
    trust_pickle: TrustPickle = False,
) -> None:
    """Convert a checkpoint to .safetensors (no code runs when loading it later)."""
    from yolo_audit.model.checkpoint import load_checkpoint, save_safetensors

    if target.suffix != ".safetensors":
        raise AuditError("the target must end in .safetensors", path=str(target))
    written = save_safetensors(load_checkpoint(source, trust_pickle=trust_pickle), target)
    typer.echo(str(written))
