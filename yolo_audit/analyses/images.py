"""Images for passes through networks (activations, similarity): a dataset yaml (a split), a folder or a glob;
Ultralytics' letterbox; batches and shards; the one pipeline that feeds them to a device.

Preprocessing is Ultralytics' predict path with a square canvas (LetterBox(auto=False), grey 114 padding, BGR -> RGB,
0..1), so every batch has one shape. Unreadable images are skipped and counted, never fatal. Batches are fixed by the
image order and the batch size alone; shards are cut only at batch boundaries, so how the work is spread over tasks,
CPUs and nodes never changes a batch (and so never changes a statistic).

`prefetched` keeps a device busy: threads decode and letterbox the images of the next batches (OpenCV releases the
GIL) straight into their slots of a uint8 batch (pinned host memory for a GPU), up to `ahead` batches before they are
used; a batch goes to the device with a non-blocking copy and becomes float there. Batches come out in order, each
image in its place: the same tensors as `load_batch`, bit for bit, for any number of threads.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from yolo_audit.errors import AuditError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(data: str | Path, *, split: str = "val", max_images: int | None = None) -> list[str]:
    """Image paths from a dataset yaml's `split` (a path, or an Ultralytics dataset name such as coco128.yaml), a
    folder (recursive) or a glob pattern, sorted and capped."""
    text = resolve_dataset(str(data))
    if text.endswith((".yaml", ".yml")):
        found = _from_yaml(Path(text), split)
    elif Path(text).is_dir():
        found = sorted(str(p) for p in Path(text).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        found = sorted(p for p in glob.glob(text, recursive=True) if p.lower().endswith(IMAGE_SUFFIXES))
    if not found:
        raise AuditError("no images found; pass a dataset yaml, an image folder or a glob", path=text)
    return found[:max_images] if max_images else found


def packaged_dataset(name: str) -> Path | None:
    """The dataset yaml Ultralytics ships under this name (coco128.yaml, ...), without importing Ultralytics."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None or "/" in name:
        return None
    path = Path(spec.origin).parent / "cfg" / "datasets" / name
    return path if path.is_file() else None


def resolve_dataset(data: str) -> str:
    """A dataset named the way `yolo train data=coco128.yaml` names it: Ultralytics' packaged yaml, whose images it
    downloads where online; offline, one line saying where it looked. Paths come back unchanged."""
    if "/" in data or not data.endswith((".yaml", ".yml")) or Path(data).is_file():
        return data
    import os

    from yolo_audit.env import prepare

    prepare()
    from ultralytics.utils import SETTINGS

    packaged = packaged_dataset(data)
    if packaged is None:
        return data  # not an Ultralytics name either: the caller's "no such dataset yaml" names it
    config = yaml.safe_load(packaged.read_text()) or {}
    root = Path(SETTINGS["datasets_dir"]) / str(config.get("path", Path(data).stem))
    if root.is_dir():
        from yolo_audit.env import cache_dir

        config["path"] = str(root)
        local = cache_dir() / "datasets" / data  # the packaged yaml pointed at the downloaded images
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(local)
    if os.environ.get("YOLO_OFFLINE") == "1":
        raise AuditError(
            f"the Ultralytics dataset is not on this machine (looked in {root}) and downloads are off "
            "(offline); run once where it can download, or pass a local dataset yaml",
            path=data,
        )
    from ultralytics.data.utils import check_det_dataset

    return str(check_det_dataset(data)["yaml_file"])


def _from_yaml(path: Path, split: str) -> list[str]:
    if not path.is_file():
        raise AuditError("no such dataset yaml; check the path", path=str(path))
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AuditError(f"not valid YAML ({str(exc).splitlines()[0]})", path=str(path)) from exc
    if split not in config:
        splits = sorted(k for k in ("train", "val", "test", "minival") if config.get(k))
        hint = f"use --split with one of {splits}" if splits else "add a `val:` entry (an image folder or a .txt list)"
        raise AuditError(f"has no `{split}` split; {hint}", path=str(path))
    root = Path(config.get("path") or path.parent)
    root = root if root.is_absolute() else (path.parent / root)
    entries = config[split] if isinstance(config[split], list) else [config[split]]
    images: list[str] = []
    for entry in entries:
        where = root / entry
        if where.is_dir():
            images += sorted(str(p) for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif where.is_file() and where.suffix == ".txt":
            images += [str((root / line.strip()).resolve()) for line in where.read_text().splitlines() if line.strip()]
        else:
            raise AuditError(f"`{split}: {entry}` points nowhere ({where}); fix the dataset yaml", path=str(path))
    return images


def load_batch(paths: list[str], imgsz: int) -> tuple[torch.Tensor, int]:
    """Letterboxed images (N, 3, imgsz, imgsz) in 0..1 on the CPU, and how many files could not be read."""
    batch, failed = _decoded(paths, imgsz, _letterbox(imgsz), None, pin=False)
    return _as_float(batch), failed


def _letterbox(imgsz: int) -> Callable[..., np.ndarray]:
    from ultralytics.data.augment import LetterBox

    return LetterBox(new_shape=(imgsz, imgsz), auto=False)


def _decode_into(path: str, letterbox: Callable[..., np.ndarray], slot: np.ndarray) -> bool:
    """One image, read, letterboxed and written as RGB channels-first into `slot` (3, imgsz, imgsz) uint8."""
    import cv2

    image = cv2.imread(path)
    if image is None:
        return False
    slot[...] = letterbox(image=image)[..., ::-1].transpose(2, 0, 1)
    return True


def _decoded(
    paths: list[str], imgsz: int, letterbox: Callable[..., np.ndarray], pool: ThreadPoolExecutor | None, *, pin: bool
) -> tuple[torch.Tensor, int]:
    """The readable images of `paths` as one uint8 batch (N, 3, imgsz, imgsz) in their order, decoded by `pool`'s
    threads (or here), and how many could not be read."""
    out = torch.empty((len(paths), 3, imgsz, imgsz), dtype=torch.uint8, pin_memory=pin)
    slots = out.numpy()
    if pool is None:
        ok = [_decode_into(p, letterbox, slots[i]) for i, p in enumerate(paths)]
    else:
        ok = [f.result() for f in [pool.submit(_decode_into, p, letterbox, slots[i]) for i, p in enumerate(paths)]]
    failed = ok.count(False)
    return (out if not failed else out[torch.tensor(ok)]), failed


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


def decode_workers(device: torch.device) -> int:
    """Threads that decode ahead of the passes: several for a GPU (it runs a yolov8s batch faster than one thread
    decodes it), one on a CPU (its cores run the passes; one thread decoding the next batch overlaps them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus)) if device.type == "cuda" else 1


def prefetched(
    groups: list[list[str]], imgsz: int, device: torch.device, *, workers: int | None = None, ahead: int = 2
) -> Iterator[tuple[list[str], torch.Tensor, int]]:
    """Each group's images as one float batch (0..1) on `device`, with the number of unreadable files: decoded by
    `workers` threads (default `decode_workers`; 0: here, when asked for) up to `ahead` batches early, in order."""
    workers = decode_workers(device) if workers is None else workers
    letterbox = _letterbox(imgsz)
    pin = device.type == "cuda" and torch.cuda.is_available()

    def ready(batch: torch.Tensor) -> torch.Tensor:
        return _as_float(batch.to(device, non_blocking=True)) if device.type != "cpu" else _as_float(batch)

    if workers <= 0:
        for group in groups:
            batch, failed = _decoded(group, imgsz, letterbox, None, pin=pin)
            yield group, ready(batch), failed
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool, ThreadPoolExecutor(1) as feeder:
        queued: deque[tuple[list[str], Future[tuple[torch.Tensor, int]]]] = deque()
        for group in groups:
            queued.append((group, feeder.submit(_decoded, group, imgsz, letterbox, pool, pin=pin)))
            if len(queued) > ahead:
                done, future = queued.popleft()
                batch, failed = future.result()
                yield done, ready(batch), failed
        while queued:
            done, future = queued.popleft()
            batch, failed = future.result()
            yield done, ready(batch), failed


def batches(paths: list[str], batch: int) -> list[list[str]]:
    """Consecutive batches of `batch` images in list order (the last one may be shorter)."""
    return [paths[i : i + batch] for i in range(0, len(paths), max(1, batch))]


def shards(paths: list[str], n: int, *, batch: int = 1) -> list[list[str]]:
    """At most n contiguous shards of whole batches, nearly equal in batches (order kept: shard 0 starts with the
    first images). Every shard's batches are exactly the batches of one pass over `paths`."""
    groups = batches(paths, batch)
    n = max(1, min(n, len(groups)))
    size, extra = divmod(len(groups), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append([p for group in groups[start:end] for p in group])
        start = end
    return out


def dataset_id(paths: list[str], imgsz: int) -> str:
    """Identifies the exact image list and preprocessing: rows of the same dataset_id are comparable."""
    digest = hashlib.sha256(f"{imgsz}\n".encode() + "\n".join(paths).encode())
    return digest.hexdigest()[:16]
