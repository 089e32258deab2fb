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

from yolo_audit.synthetic_models import build_model, save_ultralytics  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (starting Ray costs ~3 s); analyze_weights reuses it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
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


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
