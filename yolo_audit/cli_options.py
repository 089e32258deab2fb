"""What every command shares: option types (help text in `Annotated`); `command`, the wrapper that hashes the files a
command names ahead of need and turns AuditError into one line and exit code 1; `forward`, which hands a command's
parameters to its API function. Imported by `cli` and `cli_study`; `cli_study` never imports `cli` (which registers
the study commands on its app): one app with every command, no import cycle."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer

from yolo_audit.errors import AuditError

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

Against = Annotated[
    str,
    typer.Option(
        "--against",
        help="reference: each checkpoint against the reference it was analysed against (default); all: every "
        "comparison (pairwise, trajectories); or a checkpoint (id, label such as ft_free@3, run name, or file): the "
        "rows against it.",
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
ValidationBatch = Annotated[int, typer.Option("--batch", min=1, help="Validation batch size.")]


def forward(cmd: str, params: dict[str, Any]) -> Any:
    """Call the API function that does this command's work (`api.COMMANDS`) with the command's own parameters:
    the same names by construction, so the CLI and the Python API cannot drift apart."""
    from yolo_audit import api

    return getattr(api, api.COMMANDS[cmd])(**params)


def finish(printer: Callable[[Any], None], summary: Any) -> None:
    """Print an analysis' summary; exit code 1 when anything failed (the errors table says what)."""
    printer(summary)
    if not summary.ok:
        raise typer.Exit(1)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
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
