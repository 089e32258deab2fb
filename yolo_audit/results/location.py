"""Where results live: a local folder or a pyarrow filesystem URI (`s3://bucket/x`, `gs://bucket/x`, `file:///x`).

Cluster workers on different machines need storage they all reach: a shared filesystem mounted at the same path, or
an object store given as a URI. Files that tools insist on reading locally (checkpoints for torch, datasets and
weights for Ultralytics) are fetched into a local cache first; training writes locally and uploads its run folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from yolo_audit.errors import AuditError


def is_uri(location: str | Path | Location) -> bool:
    return "://" in str(location)


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem. `path` is the filesystem's own path; `uri` is what users and Polars see."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def __str__(self) -> str:
        return self.uri

    def child(self, *parts: str) -> Location:
        tail = "/".join(p.strip("/") for p in parts)
        return Location(self.fs, f"{self.path.rstrip('/')}/{tail}", f"{self.uri.rstrip('/')}/{tail}")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_remote(self) -> bool:
        return is_uri(self.uri)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def listing(self, *suffixes: str, recursive: bool = False) -> dict[str, pafs.FileInfo]:
        """Visible files directly inside (or anywhere below) this folder ending with one of `suffixes`: their paths
        relative to it, sorted, with size and mtime (one listing request)."""
        if not self.is_dir():
            return {}
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive))
        root = self.path.rstrip("/")
        found = {i.path[len(root) + 1 :]: i for i in infos
                 if i.type == pafs.FileType.File and i.path.endswith(suffixes or ("",))}  # fmt: skip
        return {name: found[name] for name in sorted(found) if not _hidden(name)}

    def files(self, *suffixes: str, recursive: bool = False) -> list[Location]:
        """Files directly inside (or anywhere below) this folder ending with one of `suffixes`, sorted."""
        return [self.child(name) for name in self.listing(*suffixes, recursive=recursive)]

    def write_bytes(self, data: bytes) -> None:
        """Atomic on local disks (temp file + rename); one PUT on object stores, which never show partial objects."""
        parent = self.path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{parent}/.{self.name}.{uuid.uuid4().hex}.tmp"
            try:
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                os.replace(tmp, self.path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        else:
            with self.fs.open_output_stream(self.path) as out:
                out.write(data)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def delete(self) -> None:
        if self.exists():
            self.fs.delete_file(self.path)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


Where = str | Path | Location  # what users pass: resolved once, at the edge, by `locate`


def locate(location: Where) -> Location:
    """A Location for a local path or a filesystem URI (errors name the location and what to do); a Location is
    returned as it is."""
    if isinstance(location, Location):
        return location
    text = str(location)
    if not is_uri(text):
        path = str(Path(text).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), path, path)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise AuditError(
            f"unsupported or unreachable location ({exc}); use a path or s3:// gs:// file://", path=text
        ) from exc
    return Location(fs, path, text.rstrip("/"))


def cache_root() -> Path:
    from yolo_audit.env import cache_dir

    return cache_dir() / "fetched"


def cache_limit() -> int:
    """Bytes the fetch cache may hold (YOLO_AUDIT_CACHE_MAX, e.g. 20G; default 20 GiB)."""
    raw = os.environ.get("YOLO_AUDIT_CACHE_MAX", "20G").strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw[-1:], 1)
    try:
        return int(float(raw.rstrip("KMGT")) * scale)
    except ValueError:
        raise AuditError(f"YOLO_AUDIT_CACHE_MAX={raw!r}: give a size such as 500M or 20G") from None


def trim_cache(limit: int | None = None, *, keep: Path | None = None) -> int:
    """Remove the least recently used fetched files until the cache holds at most `limit` bytes (0: everything; never
    `keep`, the file just fetched); returns the bytes removed. Safe while other tasks fetch: their hidden temp files
    are left alone and files that vanish meanwhile are skipped."""
    limit = cache_limit() if limit is None else limit
    entries = []
    for path in cache_root().rglob("*"):
        if path.name.startswith(".") or path == keep:
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            entries.append((info.st_atime, info.st_size, path))
    total = sum(size for _, size, _ in entries) + (keep.stat().st_size if keep is not None and keep.exists() else 0)
    removed = 0
    for _, size, path in sorted(entries):
        if total - removed <= limit:
            break
        path.unlink(missing_ok=True)
        removed += size
    return removed


def fetch_file(location: Where) -> Path:
    """A local path for a file: itself when local, else a cached download (keyed by URI and size)."""
    if not is_uri(location):
        return Path(str(location))
    loc = locate(location)
    info = loc.fs.get_file_info(loc.path)
    if info.type != pafs.FileType.File:
        raise AuditError("no such file; check the URI", path=str(location))
    key = hashlib.sha256(f"{loc.uri}|{info.size}|{info.mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / key / loc.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(loc.read_bytes())
        tmp.replace(target)
        trim_cache(keep=target)  # bounded, least recently used first
    else:
        os.utime(target)  # recently used
    return target


def fetch_dir(location: str | Path) -> Path:
    """A local copy of a folder (itself when local)."""
    if not is_uri(location):
        return Path(location)
    loc = locate(location)
    target = cache_root() / hashlib.sha256(loc.uri.encode()).hexdigest()[:16] / loc.name
    for item in loc.files(recursive=True):
        local = target / item.path[len(loc.path.rstrip("/")) + 1 :]
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(item.read_bytes())
    return target


def upload_dir(local: Path, location: str | Path) -> None:
    """Copy a local folder to a location (used for run folders trained in a local staging area)."""
    dest = locate(location)
    if not dest.is_remote:
        if Path(dest.path) != local.resolve():
            shutil.copytree(local, dest.path, dirs_exist_ok=True)
        return
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        dest.child(str(path.relative_to(local))).write_bytes(path.read_bytes())


def local_dataset(data: str) -> str:
    """Ultralytics and the image loader read datasets locally: a dataset yaml given by URI is fetched with its folder
    and its `path` pointed at the local copy. Local paths come back unchanged."""
    if not is_uri(data):
        return data
    import yaml

    folder = fetch_dir(data.rsplit("/", 1)[0])
    config = yaml.safe_load((folder / data.rsplit("/", 1)[1]).read_text())
    config["path"] = str(folder)
    local = folder / "data.local.yaml"
    local.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(local)


_HELD: dict[str, int] = {}  # results folders this process holds the lock of (commands nest: a study runs weights)
LOCK_NAME = ".yolo-audit.lock"


@contextmanager
def exclusive(location: Location) -> Iterator[None]:
    """One writing command per local results folder at a time; a second fails at once with a clear message.

    An flock, so a killed command releases it by dying; whoever takes it next removes the temp files such a command
    left half-written (hidden `.<file>.<uuid>.tmp`, never read by anyone). Object-store URIs need none: every file is
    written whole by one PUT under a key no other task uses.
    """
    out = location.uri
    if location.is_remote or out in _HELD:
        yield
        return
    path = Path(out) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AuditError(
            f"another yolo-audit command ({holder or 'unknown'}) is writing here; wait for it or use another --out",
            path=out,
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    _HELD[out] = fd
    for stale in Path(out).glob("*/.*.tmp"):  # left by writes killed mid-way; no other writer can be here now
        stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        del _HELD[out]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
