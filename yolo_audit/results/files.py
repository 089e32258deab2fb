"""The one atomic writer every result goes through, and removal of rows by file key (purge of a retrained run).

Layout: `OUT/<table>/<key>.parquet`, one file per (table, task key; see `keys`). No two tasks write the same file and
rerunning a command replaces its files rather than adding rows. Files appear by rename of a hidden temp file (one PUT
on object stores), so readers never see a partial file.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from yolo_audit.errors import AuditError
from yolo_audit.results import keys
from yolo_audit.results.compact import KeyReader, view
from yolo_audit.results.ledger import note_written
from yolo_audit.results.location import Location
from yolo_audit.results.schema import TABLES, columns, schema

ID_COLUMNS = ("checkpoint_id", "reference_id", "checkpoint_a", "checkpoint_b")


def table_file(out: Location, table: str, key: str) -> Location:
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}")
    return out.child(table, f"{keys.check(key)}.parquet")


@cache
def _dictionary_columns(table: str) -> list[str]:
    """Flat string, integer and boolean columns: ids and layer numbers repeat, measured floats rarely do (dictionary
    pages for them only add bytes: channel_stats files are ~16% smaller without)."""
    flat = (pa.types.is_string, pa.types.is_integer, pa.types.is_boolean)
    return [name for name, kind, _ in TABLES[table] if any(check(kind) for check in flat)]


def repeat(values: Sequence[str], counts: Sequence[int] | np.ndarray | int) -> pa.Array:
    """values[i] repeated counts[i] times (or each `counts` times), as a string column for `write`, built from
    buffers: long runs of one id or name cost no Python object per row (and no pyarrow.compute import)."""
    encoded = [str(v).encode() for v in values]
    times = np.broadcast_to(np.asarray(counts, dtype=np.int64), (len(encoded),))
    lengths = np.repeat(np.array([len(e) for e in encoded], dtype=np.int64), times)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(e * int(t) for e, t in zip(encoded, times, strict=True))
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def _column(values: Sequence[Any] | np.ndarray | pa.Array, kind: pa.DataType) -> pa.Array:
    if isinstance(values, pa.Array):
        return values if values.type == kind else values.cast(kind)
    if isinstance(values, np.ndarray):  # converted without Python objects; NaN in a float array is null
        return pa.array(values, type=kind, from_pandas=values.dtype.kind == "f")
    return pa.array(values, type=kind)


def write(out: Location, table: str, key: str, data: Mapping[str, Sequence[Any] | np.ndarray | pa.Array]) -> str:
    """Validate `data` against the table's schema and write it as OUT/<table>/<key>.parquet, atomically.

    Columns are lists, numpy arrays (a float array's NaN is written as null) or pyarrow arrays (see `repeat`).
    Replaces the file of an earlier run with the same key (idempotent). Raises KeyError on missing or extra columns.
    """
    names = columns(table)
    if set(data) != set(names):
        raise KeyError(f"{table}: missing {sorted(set(names) - set(data))}, extra {sorted(set(data) - set(names))}")
    kinds = schema(table)
    arrow = pa.Table.from_arrays([_column(data[f.name], f.type) for f in kinds], schema=kinds)
    target = table_file(out, table, key)
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink, compression="zstd", use_dictionary=_dictionary_columns(table))
    try:
        target.write_bytes(sink.getvalue().to_pybytes())
    except OSError as exc:
        raise AuditError(
            f"cannot write results ({getattr(exc, 'strerror', None) or exc}); choose a writable --out with free space",
            path=target.uri.rsplit("/", 1)[0],
            stage="write",
        ) from exc
    note_written(table, key)
    return target.uri


def write_checkpoints(out: Location, rows: Sequence[Mapping[str, Sequence[Any]]]) -> None:
    """Write `checkpoints` rows (one per content: several files with identical tensors are one checkpoint), merged
    with what is already recorded: aliases are the union of every path seen, the epoch the highest known, the first
    recorded path stays. Drivers call this once per command (under the results lock), never tasks."""
    merged: dict[str, dict[str, Any]] = {}
    recorded: dict[str, dict[str, Any] | None] = {}
    reader = KeyReader(out, "checkpoints") if rows else None
    for cols in rows:
        row = {k: v[0] for k, v in cols.items()}
        cid = row["checkpoint_id"]
        if cid not in merged and reader is not None:
            table = reader.get(keys.checkpoint_key(cid))
            recorded[cid] = table.to_pylist()[0] if table is not None and table.num_rows else None
            merged[cid] = recorded[cid] or row
        old = merged[cid]
        epochs = [e for e in (old["epoch"], row["epoch"]) if e is not None]
        merged[cid] = {**row, **{k: v for k, v in old.items() if v is not None}, "epoch": max(epochs, default=None),
                       "aliases": sorted({*(old["aliases"] or []), *(row["aliases"] or [])})}  # fmt: skip
    for cid, row in merged.items():
        if row != recorded[cid]:  # unchanged rows are not rewritten (a rerun with nothing new writes nothing)
            write(out, "checkpoints", keys.checkpoint_key(cid), {k: [v] for k, v in row.items()})


def write_references(out: Location, analysis: str, pairs: Sequence[tuple[str | None, str | None]]) -> None:
    """Record which reference each checkpoint was analysed against by `analysis` (`analysed_against`: what rankings,
    summaries and the report compare each checkpoint with by default). A checkpoint is never its own reference."""
    wanted = {keys.reference_key(c, r, analysis): (c, r) for c, r in pairs if c and r and c != r}
    if not wanted:
        return
    recorded = view(out.child("analysed_against")).names  # a rerun writes nothing it recorded before
    for key, (checkpoint_id, reference_id) in wanted.items():
        if f"{key}.parquet" not in recorded:
            write(out, "analysed_against", key, {
                "checkpoint_id": [checkpoint_id], "reference_id": [reference_id], "analysis": [analysis]})  # fmt: skip


def remove(out: Location, table: str, *names: str) -> None:
    """Drop the rows these keys wrote earlier (e.g. stale `errors` rows once the checkpoint loads), with one listing of
    the table. Rows inside a compacted file are dropped by an empty file of that key (see `compact`)."""
    if not names:
        return
    v = view(out.child(table))
    for key in names:
        name = f"{keys.check(key)}.parquet"
        if name in v.sources or name in v.overridden:
            write(out, table, key, {c: [] for c in columns(table)})
        elif name in v.plain:
            table_file(out, table, key).delete()


def purge(out: Location, checkpoint_ids: set[str]) -> int:
    """Remove every file with a row of one of these checkpoints, in every table: files whose key names one (as
    itself, a reference, or the source of its bins), and files whose key names none but whose id columns hold one
    (similarity). Used when a run is retrained, so rows of its earlier snapshots cannot linger beside the new ones."""
    if not checkpoint_ids:
        return 0
    removed = 0
    for table in TABLES:
        id_columns = [c for c in columns(table) if c in ID_COLUMNS]
        if not id_columns:
            continue
        reader = KeyReader(out, table)
        hits = []
        for name in sorted(reader.view.names):
            key = name.removesuffix(".parquet")
            named = keys.named_checkpoints(key)
            if named is None:
                frame = reader.get(key)
                named = {v for c in id_columns for v in frame[c].to_pylist()} if frame is not None else set()
            if named & checkpoint_ids:
                hits.append(key)
        remove(out, table, *hits)
        removed += len(hits)
    return removed


def check_writable(out: Location) -> Location:
    """Fail before any work when OUT cannot be created or written."""
    try:
        probe = out.child(f".write-probe-{uuid.uuid4().hex}")
        probe.write_bytes(b"ok")
        probe.delete()
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise AuditError(f"results folder is not writable ({reason}); pass another --out", path=out.uri) from exc
    return out
