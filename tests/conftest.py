"""Shared fixtures: the offline environment, one embedded Ray per session, a YOLOv8n built from its yaml."""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_AUDIT_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))

from yolo_audit.env import prepare  # noqa: E402

prepare()

import torch  # noqa: E402

from yolo_audit.model.synthetic import build_model, save_ultralytics  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (starting Ray costs ~3 s); analyze_weights reuses it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")  # never another Ray here
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def base_model() -> torch.nn.Module:
    return build_model("yolov8n.yaml", seed=0)


@pytest.fixture
def model(base_model: torch.nn.Module) -> torch.nn.Module:
    """A fresh copy of the base model to edit."""
    return deepcopy(base_model)


def save(model: torch.nn.Module, path: Path, *, freeze=None, name: str = "run", epoch: int = -1, key: str = "model"):
    args = {"model": "yolov8n.yaml", "data": "synthetic", "epochs": 3, "name": name, "freeze": freeze}
    return save_ultralytics(model, path, train_args=args, epoch=epoch, key=key)


def moved(model: torch.nn.Module, seed: int, *, first: int = 12, scale: float = 0.01) -> torch.nn.Module:
    """A copy of `model` whose layers from `first` on moved by seeded noise (a fine-tune in miniature)."""
    m = deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.model[first:].parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


# The smallest real study: a base pretrained 1 epoch on 8 synthetic A images at 32 px, variants trained 2 epochs on B
# (nbs = batch: an optimizer step per batch; Ultralytics' default would accumulate 16 batches, more than there are)
TINY_STUDY = {
    "name": "tiny",
    "model": "yolov8n.yaml",
    "pretrain": {
        "data": {"synthetic": {"domain": "A", "images": 8, "imgsz": 32}},
        "epochs": 1,
        "imgsz": 32,
        "batch": 4,
        "nbs": 4,
    },
    "data": {"synthetic": {"domain": "B", "images": 8, "imgsz": 32, "seed": 1}},
    "train": {"epochs": 2, "imgsz": 32, "batch": 4, "nbs": 4},
    "variants": [{"name": "none", "freeze": 0}],
    "analyses": ["weights"],
}


def write_study(folder: Path, name: str = "study", **changes) -> Path:
    """TINY_STUDY with top-level keys replaced, as a study file."""
    import yaml

    path = folder / f"{name}.yaml"
    study = {k: v for k, v in {**TINY_STUDY, **changes}.items() if v is not None}  # None: leave the key out
    path.write_text(yaml.safe_dump(study))
    return path


def run_tiny_study(folder: Path, out: Path | str, **changes):
    """Write the study file beside `folder` and run it into `out` (a path or URI), quietly."""
    import io

    from yolo_audit.study.driver import run_study
    from yolo_audit.study.spec import load_study

    study = write_study(folder, f"study-{Path(str(out)).name}", **changes)
    return run_study(load_study(study, out=str(out)), stream=io.StringIO())


def result_tables(out: Path | str) -> dict:
    from yolo_audit.results.store import open_results

    return {k: v.collect() for k, v in open_results(out).items()}


def weight_values(tables: dict):
    """weight_stats keyed by what they describe (checkpoint ids embed paths, so they differ between folders)."""
    ck = tables["checkpoints"].select("checkpoint_id", "run", "epoch")
    stats = tables["weight_stats"].join(ck, on="checkpoint_id").drop("checkpoint_id")
    return stats.sort("run", "epoch", "param").select(sorted(stats.columns))
