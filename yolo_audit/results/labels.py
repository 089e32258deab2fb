"""How summaries name checkpoints: one unique, readable label per checkpoint id, the same in every summary.

`run@epoch` (the highest epoch among a content's files, as the `checkpoints` table keeps it; the bare run where no
file records one, e.g. a finished last.pt); without a run, the file's name. Where two checkpoints would share a label
(fine-tunes saved side by side in one folder take the folder's name as their run), the file's name follows it, and
where they still share one, the start of the id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def checkpoint_labels(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Labels from `checkpoints` rows (checkpoint_id, run, epoch, path; one row per file of a content)."""
    rows = list(rows)
    seen: dict[str, tuple[str | None, int | None]] = {}
    for r in rows:
        cid, run, epoch = r["checkpoint_id"], r["run"], r["epoch"]
        seen_run, seen_epoch = seen.get(cid, (None, None))
        epochs = [e for e in (epoch, seen_epoch) if e is not None and e >= 0]
        seen[cid] = (seen_run or run, max(epochs, default=None))
    base = {cid: (f"{run}@{epoch}" if epoch is not None else run) if run else None
            for cid, (run, epoch) in seen.items()}  # fmt: skip
    return unique_labels(base, content_files(rows))


def content_files(rows: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """Per checkpoint id, the name of one of its files (the first in order, whichever order the rows come in)."""
    files: dict[str, str | None] = {}
    for r in rows:
        cid = r["checkpoint_id"]
        files[cid] = min((n for n in (files.get(cid), file_name(r.get("path"))) if n), default=None)
    return files


def unique_labels(labels: Mapping[str, str | None], files: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Labels made unique: a missing one becomes the file's name (or the id's start); one that repeats gets the
    file's name appended, then the id's start where it still repeats (also for labels older ledgers recorded)."""
    files = files or {}
    first = {cid: label or files.get(cid) or cid[:8] for cid, label in labels.items()}
    counts = Counter(first.values())
    second = {cid: f"{label} {files[cid]}" if counts[label] > 1 and files.get(cid) and files[cid] != label else label
              for cid, label in first.items()}  # fmt: skip
    counts = Counter(second.values())
    return {cid: f"{label} {cid[:8]}" if counts[label] > 1 else label for cid, label in second.items()}


def file_name(path: str | None) -> str | None:
    """The last part of a path or URI."""
    return path.rstrip("/").rsplit("/", 1)[-1] or None if path else None
