"""Process environment for offline, quiet Ultralytics and an embedded Ray.

Ultralytics reads its settings at import time, so `prepare()` must run before the first `import ultralytics`.
Every entry point (CLI, Ray task, test) calls it; it is idempotent and cheap.
"""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

_DONE = False
_COLLECTING: tuple[int, ...] | None = None  # the collector's thresholds while a command starts up (quiet_start)


def cache_dir() -> Path:
    """Where yolo-audit keeps Ultralytics' and matplotlib's config (never the user's cwd)."""
    root = os.environ.get("YOLO_AUDIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "yolo-audit")
    return Path(root)


def prepare() -> None:
    """Set the offline environment for Ultralytics, matplotlib and Ray (idempotent)."""
    global _DONE
    if _DONE:
        return
    root = cache_dir()
    yolo_cfg = root / "ultralytics-config"
    mpl_cfg = root / "matplotlib"
    defaults = {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_VERBOSE": "False",
        "YOLO_CONFIG_DIR": str(yolo_cfg),
        "MPLCONFIGDIR": str(mpl_cfg),
        "MPLBACKEND": "Agg",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    _install_fonts(Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics")
    Path(os.environ["MPLCONFIGDIR"]).mkdir(parents=True, exist_ok=True)
    _DONE = True


def _install_fonts(folder: Path) -> None:
    """Ultralytics downloads Arial on every plot unless it finds it; give it matplotlib's DejaVuSans instead."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / "Arial.ttf", folder / "Arial.Unicode.ttf"]
    if all(t.exists() for t in targets):
        return
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for target in targets:
        if not target.exists():
            shutil.copyfile(source, target)


def quiet_start() -> None:
    """A command is starting: its imports (torch, numba, polars, Ultralytics) create ~250k objects that live as long as
    the process, and the cyclic garbage collector, run every 700 new objects, scanned them again and again: ~0.5 s of
    a command's ~2.5 s start-up (measured 2026-12-02). Until `settled`, it runs every million instead (never off: a
    command that does not settle still collects)."""
    global _COLLECTING
    if _COLLECTING is None:
        _COLLECTING = gc.get_threshold()
        gc.set_threshold(1_000_000, *_COLLECTING[1:])


def settled() -> None:
    """The command is set up and its work begins: what exists now is frozen (never scanned again, so neither this
    process nor workers forked from it pay for it, and the workers never copy those pages to scan them) and the
    collector's thresholds are restored. A no-op unless `quiet_start` ran (a notebook's objects are never frozen)."""
    global _COLLECTING
    if _COLLECTING is not None:
        gc.freeze()
        gc.set_threshold(*_COLLECTING)
        _COLLECTING = None
