"""What a results folder already holds, so reruns skip it: one `ledger` row per finished task, keyed by a hash of its
inputs (each file's URI, size and modification time) and its options, naming the result files it wrote.

A task is skipped when its key is recorded and every file it wrote is still there (in its own file or inside a
compacted one). A changed file, other options, a new yolo-audit version or `--force` recompute it. Tasks that failed
are never recorded, so a rerun retries them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yolo_audit.results.location import Location, Where, locate

VERSION = "0.1.0"  # bump when a statistic's definition changes: earlier rows are then recomputed


def fingerprint(where: Where) -> str:
    """A file's identity for reruns: URI, size and modification time (one stat, no read)."""
    loc = locate(where)
    info = loc.fs.get_file_info(loc.path)
    if info.type != pafs.FileType.File:
        return f"{loc.uri}|missing"
    return f"{loc.uri}|{info.size}|{info.mtime_ns}"


def done_key(task: str, *parts: Any) -> str:
    """The key of a task: its name, yolo-audit's version and a canonical rendering of its inputs and options."""
    text = json.dumps([task, VERSION, *parts], sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return repr(obj)


def skipped_line(stage: str, inputs: str, done: int | None = None, total: int | None = None) -> str:
    """What a rerun says about the work it skips: `done` of `total` tasks, or (without counts) the whole command."""
    if done is None:
        return f"[{stage}] already done for these {inputs} (--force recomputes)"
    return f"[{stage}] {done} of {total} already done (same {inputs}; --force recomputes)"


_here = threading.local()  # per thread: tasks may run side by side in threads of one process


@contextmanager
def recording() -> Iterator[list[str]]:
    """Collect the result files `files.write` writes in this block, on this thread (`table/key.parquet`)."""
    outer = getattr(_here, "recorded", None)
    _here.recorded = written = []
    try:
        yield written
    finally:
        _here.recorded = outer


def note_written(table: str, key: str) -> None:
    recorded = getattr(_here, "recorded", None)
    if recorded is not None:
        recorded.append(f"{table}/{key}.parquet")


class Ledger:
    """The ledger of one results folder for one command: what is done (read once) and what this command adds."""

    def __init__(self, out: Location, *, force: bool = False) -> None:
        self.out, self.force = out, force
        self._done: dict[str, tuple[list[str], str]] | None = None
        self._new: list[dict[str, Any]] = []

    def _load(self) -> dict[str, tuple[list[str], str]]:
        if self._done is not None:
            return self._done
        self._done = {}
        if self.force:
            return self._done
        from yolo_audit.results.compact import present

        for item in self.out.child("ledger").files(".parquet"):
            for row in pq.read_table(pa.BufferReader(item.read_bytes())).to_pylist():
                self._done[row["done_key"]] = (row["files"] or [], row["result"])
        tables = {f.split("/", 1)[0] for files, _ in self._done.values() for f in files}
        have = present(self.out, tables)
        self._done = {k: v for k, v in self._done.items() if all(f in have for f in v[0])}
        return self._done

    def lookup(self, key: str | None) -> dict[str, Any] | None:
        """The recorded result of a finished task with this key (as JSON data), or None."""
        if key is None:
            return None
        found = self._load().get(key)
        return json.loads(found[1]) if found else None

    def add(self, key: str | None, task: str, files: list[str], result: Any) -> None:
        if key is None or getattr(result, "errors", None):
            return
        data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
        self._new.append({"done_key": key, "task": task, "files": sorted(set(files)),
                          "result": json.dumps(data, default=_plain), "written_at": time.time()})  # fmt: skip

    def save(self) -> None:
        """One file per command with the tasks it finished (written last: a crash records nothing, reruns redo)."""
        if not self._new:
            return
        from yolo_audit.results import files

        cols = {name: [row[name] for row in self._new] for name in self._new[0]}
        files.write(self.out, "ledger", f"ledger-{uuid.uuid4().hex[:16]}", cols)
        self._new = []
