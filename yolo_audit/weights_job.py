"""The weights analysis as plain functions over files: load, analyse, write. Ray calls these; so can a notebook.

Each function is one task's worth of work (one checkpoint, or one pair) and writes only files keyed by its inputs,
so tasks never collide and reruns replace their own rows. Every failure becomes an `ErrorRecord`, never an exception
that would take the other checkpoints down with it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

from yolo_audit import schema
from yolo_audit.analysis import (
    ReferenceCache,
    WeightOptions,
    analyse,
    divergence_tables,
    hist_table,
    ranges_of,
)
from yolo_audit.checkpoints import Checkpoint, load_checkpoint
from yolo_audit.errors import AuditError


@dataclass(frozen=True)
class ErrorRecord:
    path: str
    stage: str
    error_type: str
    message: str

    @property
    def key(self) -> str:
        return error_key(self.path, self.stage)


@dataclass
class TaskResult:
    """What a task reports back to the driver: small, so it travels cheaply through Ray."""

    path: str
    checkpoint_id: str | None = None
    run: str | None = None
    epoch: int | None = None
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)


def error_key(path: str, stage: str) -> str:
    import hashlib

    return f"{stage}-" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


def record(path: str, stage: str, exc: BaseException) -> ErrorRecord:
    if isinstance(exc, AuditError):
        message = str(exc)
    else:  # a bug or an unforeseen file: keep the last frame so the row is actionable
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"
    return ErrorRecord(str(path), stage, type(exc).__name__, message)


def write_errors(out: str | Path, errors: list[ErrorRecord]) -> None:
    for err in errors:
        schema.write(out, "errors", err.key, {k: [getattr(err, k)] for k in schema.columns("errors")})


def _write_tables(out: str | Path, key: str, tables: dict[str, dict[str, list]], result: TaskResult) -> None:
    for table, cols in tables.items():
        schema.write(out, table, key, cols)
        result.rows[table] = len(cols["checkpoint_id"])


def analyse_checkpoint(
    path: str,
    out: str,
    *,
    reference: Checkpoint | None = None,
    cache: ReferenceCache | None = None,
    edges: dict[str, tuple[float, float]] | None = None,
    bins_id: str | None = None,
    opts: WeightOptions | None = None,
    trust_pickle: bool = False,
) -> TaskResult:
    """One checkpoint: `checkpoints`, `weight_stats`, `channel_weights`; vs `reference` the divergence tables;
    with `edges` its histogram on those shared bins."""
    opts = opts or WeightOptions()
    result = TaskResult(path=path)
    stage = "load"
    try:
        ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
        result.checkpoint_id, result.run, result.epoch = ckpt.checkpoint_id, ckpt.run, ckpt.epoch
        for stale in ("load", "weights", "histogram", "divergence", "align"):
            schema.remove(out, "errors", error_key(path, stale))
        stage = "weights"
        upcoming = iter((["histogram"] if edges is not None and bins_id is not None else []) + ["divergence"])
        for key, tables in analyse(ckpt, opts, reference=reference, cache=cache, edges=edges, bins_id=bins_id):
            if "weight_stats" in tables:
                result.ranges = ranges_of(tables["weight_stats"])
            _write_tables(out, key, tables, result)
            stage = next(upcoming, stage)  # what the generator computes next, should it fail
    except Exception as exc:  # noqa: BLE001 - every failure becomes an errors row; other checkpoints go on
        result.errors.append(
            record(path, "align" if isinstance(exc, AuditError) and exc.stage == "align" else stage, exc)
        )
    return result


def histogram_checkpoint(
    path: str, out: str, *, edges: dict[str, tuple[float, float]], bins_id: str, bins: int, trust_pickle: bool = False
) -> TaskResult:
    """Second wave when bins are pooled over all checkpoints: the histogram of one checkpoint."""
    result = TaskResult(path=path)
    try:
        ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
        result.checkpoint_id = ckpt.checkpoint_id
        _write_tables(
            out, f"{ckpt.checkpoint_id}-{bins_id}", {"weight_hist": hist_table(ckpt, edges, bins_id, bins)}, result
        )
    except Exception as exc:  # noqa: BLE001
        result.errors.append(record(path, "histogram", exc))
    return result


def compare_pair(path_a: str, path_b: str, out: str, *, trust_pickle: bool = False) -> TaskResult:
    """Divergence of checkpoint a against checkpoint b (pairwise and trajectory modes)."""
    result = TaskResult(path=path_a)
    current = path_a
    try:
        a = load_checkpoint(path_a, trust_pickle=trust_pickle)
        current = path_b
        b = load_checkpoint(path_b, trust_pickle=trust_pickle)
        current = path_a
        result.checkpoint_id = a.checkpoint_id
        if a.checkpoint_id != b.checkpoint_id:
            _write_tables(out, f"{a.checkpoint_id}-vs-{b.checkpoint_id}", divergence_tables(a, b), result)
    except Exception as exc:  # noqa: BLE001
        stage = "align" if isinstance(exc, AuditError) and exc.stage == "align" else "divergence"
        result.errors.append(record(current, stage, exc))
    return result
