"""The `errors` table: every failure of a task becomes one row (path, stage, type, message), never a crash that takes
the other checkpoints down with it. Shared by every analysis."""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from yolo_audit.errors import AuditError
from yolo_audit.results import files
from yolo_audit.results.keys import error_key
from yolo_audit.results.location import Location
from yolo_audit.results.schema import columns


@dataclass(frozen=True)
class ErrorRecord:
    path: str
    stage: str
    error_type: str
    message: str

    @property
    def key(self) -> str:
        return error_key(self.path, self.stage)


def record(path: str, stage: str, exc: BaseException) -> ErrorRecord:
    """An error row for `exc` at `stage` (an architecture mismatch is always stage `align`)."""
    if isinstance(exc, AuditError):
        return ErrorRecord(str(path), "align" if exc.stage == "align" else stage, type(exc).__name__, str(exc))
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None  # keep it actionable
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"
    return ErrorRecord(str(path), stage, type(exc).__name__, message)


def write_errors(out: Location, errors: Iterable[ErrorRecord]) -> None:
    for err in errors:
        files.write(out, "errors", err.key, {k: [getattr(err, k)] for k in columns("errors")})


def clear_errors(out: Location, path: str, stages: Iterable[str]) -> None:
    """Drop earlier error rows of `path` once it got through these stages."""
    files.remove(out, "errors", *(error_key(path, stage) for stage in stages))
