"""The `train_metrics` table: Ultralytics' per-epoch results.csv, read and recorded per run, by studies (their own
runs) and by `weights` (the results.csv beside a checkpoint's weights/ folder, so users never convert it)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from yolo_audit.results import files
from yolo_audit.results.keys import run_key
from yolo_audit.results.location import Location
from yolo_audit.results.schema import columns


def read_results(path: Path) -> list[dict[str, float]]:
    """Ultralytics' results.csv as rows of floats (every column, names as Ultralytics writes them)."""
    if not path.exists():
        return []
    with path.open() as handle:
        return [{k.strip(): _float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def write_train_metrics(out: Location, run: str, metrics: list[dict[str, float]]) -> None:
    names = [c for c in columns("train_metrics") if c not in ("run", "epoch")]
    table = {
        "run": [run] * len(metrics),
        "epoch": [int(m.get("epoch", i + 1)) for i, m in enumerate(metrics)],
        **{n: [_clean(m.get(n)) for m in metrics] for n in names},
    }
    files.write(out, "train_metrics", run_key(run), table)


def record_beside(out: Location, runs: Iterable[tuple[str | None, str]]) -> int:
    """For (run, checkpoint path) pairs of local Ultralytics run folders (`<run>/weights/x.pt`): record the
    `results.csv` beside `weights/` as that run's train_metrics. Returns how many runs had one."""
    seen: dict[str, Path] = {}
    for run, path in runs:
        folder = Path(path).parent
        if run and "://" not in str(path) and folder.name == "weights" and (folder.parent / "results.csv").is_file():
            seen.setdefault(run, folder.parent / "results.csv")
    for run, csv_path in seen.items():
        write_train_metrics(out, run, read_results(csv_path))
    return len(seen)
