"""Compaction: many small per-task files of a table merged into one large file, without a reader ever seeing a row
twice or missing one.

A compacted file `compact-<id>.parquet` records in its footer the files it holds (name, mtime, size, and their rows'
range) and the compacted files it supersedes. Readers (`view`) take a covered file's rows from the compacted file
while that file is unchanged, and from the file itself once a rerun rewrote it (an empty rewrite removes the rows).
Steps: write the compacted file (atomically), then delete what it covers. Interrupted anywhere, the folder reads the
same: before the write nothing changed; after it the leftovers are recognised as covered and skipped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yolo_audit.results.location import Location

PREFIX = "compact-"
MANIFEST = b"yolo_audit.sources"


@dataclass(frozen=True)
class Source:
    """A file inside a compacted file: its rows are `length` rows from `start` (a superseded compacted file: -1)."""

    name: str
    mtime_ns: int
    size: int
    start: int
    length: int


@dataclass
class View:
    """What to read of one table folder: whole files, compacted files minus the row ranges overridden since, and the
    names of every file whose rows this holds."""

    folder: Location
    plain: list[str] = field(default_factory=list)
    compacted: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> ranges to drop
    sources: dict[str, tuple[str, Source]] = field(default_factory=dict)  # covered file -> (compacted file, where)
    infos: dict[str, pafs.FileInfo] = field(default_factory=dict)
    overridden: set[str] = field(default_factory=set)  # covered by a compacted file, then rewritten
    stale: list[Source] = field(default_factory=list)  # files a compaction covers but has not deleted yet

    @property
    def names(self) -> set[str]:
        return set(self.plain) | set(self.sources)

    def uris(self, names: list[str]) -> list[str]:
        return [self.folder.child(n).uri for n in names]


def manifest(folder: Location, name: str) -> list[Source]:
    with folder.fs.open_input_file(folder.child(name).path) as handle:
        meta = pq.read_metadata(handle).metadata or {}
    return [Source(**s) for s in json.loads(meta.get(MANIFEST, b"[]"))]


def _rewritten(info: pafs.FileInfo, source: Source) -> bool:
    return info.mtime_ns != source.mtime_ns or info.size != source.size


def view(folder: Location) -> View:
    """How to read one table folder now (one listing; one footer read per compacted file)."""
    infos = folder.listing(".parquet")
    v = View(folder, infos=infos)
    compacted = sorted(n for n in infos if n.startswith(PREFIX))
    manifests = {c: manifest(folder, c) for c in compacted}
    superseded = {s.name for srcs in manifests.values() for s in srcs
                  if s.start < 0 and s.name in infos and not _rewritten(infos[s.name], s)}  # fmt: skip
    v.stale = [s for srcs in manifests.values() for s in srcs if s.start < 0 and s.name in superseded]
    for c in compacted:
        if c in superseded:
            continue
        v.compacted[c] = []
        for s in manifests[c]:
            if s.start < 0:
                continue
            if s.name in infos and _rewritten(infos[s.name], s):  # rewritten since: its own file wins
                v.compacted[c].append((s.start, s.length))
                v.overridden.add(s.name)
            else:
                v.sources[s.name] = (c, s)
                if s.name in infos:
                    v.stale.append(s)
    v.plain = sorted(n for n in infos if not n.startswith(PREFIX) and n not in v.sources)
    return v


def present(out: Location, tables: set[str]) -> set[str]:
    """`table/name.parquet` of every file whose rows the folder holds, in its own file or inside a compacted one."""
    return {f"{t}/{n}" for t in tables for n in view(out.child(t)).names}


class KeyReader:
    """The rows of keys of one table, from their own files or from the compacted files that cover them: one listing
    for any number of keys, each compacted file read once."""

    def __init__(self, out: Location, table: str) -> None:
        self.view = view(out.child(table))
        self._whole: dict[str, pa.Table] = {}

    def get(self, key: str) -> pa.Table | None:
        name = f"{key}.parquet"
        if name in self.view.plain:
            return _read(self.view.folder, name)
        if name in self.view.sources:
            compacted, source = self.view.sources[name]
            if compacted not in self._whole:
                self._whole[compacted] = _read(self.view.folder, compacted)
            return self._whole[compacted].slice(source.start, source.length)
        return None


def read_key(out: Location, table: str, key: str) -> pa.Table | None:
    """The rows a key's file holds (from the file itself or from the compacted file that covers it), or None."""
    return KeyReader(out, table).get(key)


def _read(folder: Location, name: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(folder.child(name).read_bytes()))


def compact_table(out: Location, table: str, schema: pa.Schema) -> int:
    """Merge a table's files into one compacted file; returns how many files it merged (0: nothing to do)."""
    v = view(out.child(table))
    if len(v.plain) + len(v.compacted) <= 1 and not any(v.compacted.values()):
        _delete_covered(v.folder, v.stale)  # an interrupted compaction's leftovers
        return len(v.stale)
    pieces: list[pa.Table] = []
    sources: list[Source] = []
    rows = 0

    def add(name: str, mtime_ns: int, size: int, data: pa.Table) -> None:
        nonlocal rows
        data = data.select(schema.names).cast(schema) if set(schema.names) <= set(data.column_names) else data
        pieces.append(data)
        sources.append(Source(name, mtime_ns, size, rows, data.num_rows))
        rows += data.num_rows

    for name in v.plain:
        add(name, v.infos[name].mtime_ns, v.infos[name].size, _read(v.folder, name))
    for compacted in v.compacted:
        whole = _read(v.folder, compacted)
        for name, (where, source) in v.sources.items():
            if where == compacted:
                add(name, source.mtime_ns, source.size, whole.slice(source.start, source.length))
        info = v.infos[compacted]
        sources.append(Source(compacted, info.mtime_ns, info.size, -1, 0))
    merged = pa.concat_tables(pieces, promote_options="default") if pieces else schema.empty_table()
    merged = merged.replace_schema_metadata({**(merged.schema.metadata or {}),
                                             MANIFEST: json.dumps([asdict(s) for s in sources]).encode()})  # fmt: skip
    sink = pa.BufferOutputStream()
    pq.write_table(merged, sink, compression="zstd", row_group_size=1 << 20)
    v.folder.child(f"{PREFIX}{uuid.uuid4().hex[:16]}.parquet").write_bytes(sink.getvalue().to_pybytes())
    _delete_covered(v.folder, sources)
    return len(v.plain) + len(v.compacted)


def _delete_covered(folder: Location, sources: list[Source]) -> None:
    """The compacted file is in place: what it covers can go (unless rewritten meanwhile)."""
    for s in sources:
        now = folder.fs.get_file_info(folder.child(s.name).path)
        if now.type == pafs.FileType.File and not _rewritten(now, s):
            folder.fs.delete_file(now.path)


def compact(out: Location) -> dict[str, int]:
    """Compact every table under `out` (holding the results folder's lock, so no command of ours writes meanwhile);
    returns files merged per table."""
    from yolo_audit.errors import AuditError
    from yolo_audit.results.location import exclusive
    from yolo_audit.results.schema import TABLES, schema

    if not any(out.child(t).is_dir() for t in TABLES):
        raise AuditError("no results here; pass the --out of an earlier command", path=out.uri)
    merged = {}
    with exclusive(out):
        for table in TABLES:
            count = compact_table(out, table, schema(table))
            if count:
                merged[table] = count
    return merged
