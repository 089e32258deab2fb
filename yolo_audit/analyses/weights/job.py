"""The weights analysis as plain functions over files: load, analyse, write. Ray calls these; so can a notebook.

Each function is one task's worth of work (one checkpoint, or one pair) and writes only files keyed by its inputs,
so tasks never collide and reruns replace their own rows. Every failure becomes an `ErrorRecord` naming the stage the
task was in, never an exception that would take the other checkpoints down with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yolo_audit.analyses.weights.columns import (
    ReferenceCache,
    Tables,
    WeightOptions,
    analyze,
    divergence_tables,
    hist_table,
    ranges_of,
)
from yolo_audit.model.checkpoint import Checkpoint, checkpoint_table, load_checkpoint
from yolo_audit.results import files
from yolo_audit.results.errors import ErrorRecord, clear_errors, record
from yolo_audit.results.keys import comparison_key, hist_key
from yolo_audit.results.location import Location, locate

STAGES = ("load", "weights", "histogram", "divergence", "align")


@dataclass
class TaskResult:
    """What a task reports back to the driver: small, so it travels cheaply through Ray."""

    path: str
    checkpoint_id: str | None = None
    arch_hash: str | None = None
    run: str | None = None
    epoch: int | None = None
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)
    checkpoint_row: dict[str, list] | None = None  # the `checkpoints` row (the driver merges aliases and writes it)


def _write_tables(out: Location, key: str, tables: Tables, result: TaskResult) -> None:
    for table, cols in tables.items():
        files.write(out, table, key, cols)
        result.rows[table] = len(cols["checkpoint_id"])


def analyze_checkpoint(
    path: str,
    out: Location,
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
        if reference is not None and locate(reference.path).uri == locate(path).uri:
            ckpt = reference  # the reference's own task: it is loaded already
        else:
            ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
        result.checkpoint_id, result.run, result.epoch = ckpt.checkpoint_id, ckpt.run, ckpt.epoch
        result.arch_hash, result.checkpoint_row = ckpt.arch_hash, checkpoint_table(ckpt)
        clear_errors(out, path, STAGES)
        for step in analyze(ckpt, opts, reference=reference, cache=cache, edges=edges, bins_id=bins_id):
            stage = step.stage
            tables = step.compute()
            if "weight_stats" in tables:
                result.ranges = ranges_of(tables["weight_stats"])
            _write_tables(out, step.key, tables, result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an errors row; other checkpoints go on
        result.errors.append(record(path, stage, exc))
    return result


def histogram_checkpoint(
    path: str,
    out: Location,
    *,
    edges: dict[str, tuple[float, float]],
    bins_id: str,
    bins: int,
    trust_pickle: bool = False,
) -> TaskResult:
    """Second wave when bins are pooled over all checkpoints: the histogram of one checkpoint."""
    result = TaskResult(path=path)
    try:
        ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
        result.checkpoint_id = ckpt.checkpoint_id
        table = {"weight_hist": hist_table(ckpt, edges, bins_id, bins)}
        _write_tables(out, hist_key(ckpt.checkpoint_id, bins_id), table, result)
    except Exception as exc:  # noqa: BLE001
        result.errors.append(record(path, "histogram", exc))
    return result


def compare_pair(
    path_a: str, path_b: str, out: Location, *, opts: WeightOptions | None = None, trust_pickle: bool = False
) -> TaskResult:
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
            tables = divergence_tables(a, b, near_zero=(opts or WeightOptions()).near_zero)
            _write_tables(out, comparison_key(a.checkpoint_id, b.checkpoint_id), tables, result)
    except Exception as exc:  # noqa: BLE001
        result.errors.append(record(current, "divergence", exc))
    return result
