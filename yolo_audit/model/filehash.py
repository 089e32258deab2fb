"""The sha256 of checkpoint files (the `checkpoints.sha256` column), each computed once per process, and for a
command ahead of need.

`prefetch` starts one background thread that hashes the command's local checkpoint files while the process is still
importing torch and the rest (~1.3 s on one core, while the other is idle): reading and hashing release the GIL, so it
does not slow the imports down. `file_sha256` returns a known digest, waits for one being computed, or computes it.
Digests are keyed by path, size and modification time (what the ledger trusts too). No torch here: the command
imports this before torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path

SUFFIXES = (".pt", ".safetensors")
_LOCK = threading.Lock()
_DIGESTS: dict[tuple[str, int, int], Future[str]] = {}


def _after_fork() -> None:
    """In a forked worker: the hashing thread is gone (its digests in progress would never finish) and the lock may
    have been held when the process forked."""
    global _LOCK
    _LOCK = threading.Lock()
    for key in [k for k, future in _DIGESTS.items() if not future.done()]:
        del _DIGESTS[key]


os.register_at_fork(after_in_child=_after_fork)


def file_key(path: Path) -> tuple[str, int, int]:
    """What identifies a file's bytes here: its resolved path, size and modification time."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _claim(key: tuple[str, int, int]) -> tuple[Future[str], bool]:
    """The future of this file's digest, and whether the caller must compute it (nobody else is)."""
    with _LOCK:
        found = _DIGESTS.get(key)
        if found is not None:
            return found, False
        if len(_DIGESTS) >= 4096:
            _DIGESTS.clear()
        fresh: Future[str] = Future()
        _DIGESTS[key] = fresh
        return fresh, True


def _compute(path: Path, key: tuple[str, int, int], future: Future[str]) -> None:
    try:
        future.set_result(_digest(path))
    except BaseException as exc:  # noqa: BLE001 - the waiter re-raises it; the entry is dropped for a retry
        with _LOCK:
            _DIGESTS.pop(key, None)
        future.set_exception(exc)


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes (hex), computed at most once per path, size and modification time."""
    key = file_key(path)
    future, mine = _claim(key)
    if mine:
        _compute(path, key, future)
    return future.result()


def _local_files(paths: list[str]) -> list[Path]:
    """The local files `find_checkpoints` will load, found as `Location.listing` finds them (recursive, sorted,
    hidden names skipped), without importing pyarrow this early."""
    found: list[Path] = []
    for raw in paths:
        if "://" in raw:
            continue  # remote files are fetched first; they are hashed when loaded
        path = Path(raw)
        if path.is_dir():
            inside = (p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            found += sorted(p for p in inside if not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.suffix in SUFFIXES and path.is_file():
            found.append(path)
    return list(dict.fromkeys(found))


def prefetch(paths: list[str]) -> threading.Thread:
    """Hash these local checkpoint files (folders searched) in order, in a daemon thread; loads that reach a file
    first hash it themselves, and the thread skips it."""

    def run() -> None:
        for path in _local_files(paths):
            try:
                key = file_key(path)
            except OSError:
                continue
            future, mine = _claim(key)
            if mine:
                _compute(path, key, future)

    thread = threading.Thread(target=run, name="prefetch-sha256", daemon=True)
    thread.start()
    return thread
