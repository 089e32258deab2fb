"""Process environment for offline, quiet Ultralytics and an embedded Ray.

Ultralytics reads its settings at import time, so `prepare()` must run before the first `import ultralytics`.
Every entry point (CLI, Ray task, test) calls it; it is idempotent and cheap.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_DONE = False


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
