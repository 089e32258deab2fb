"""cluster.yaml as Ray's cluster launcher reads it: its own defaults filled in and its schema validation passed, and
the things a first `ray up` needs: a current image, ray[default], the pinned torch, GPU workers from zero, workers that
may write the results bucket, and no virtual environment shipped to every node."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    return dict(re.findall(r'"(torch|torchvision|ultralytics)==([^"]+)"', text))


def test_cluster_yaml_passes_rays_launcher_validation():
    config = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))  # Ray's defaults filled in
    validate_config(config)  # raises on any schema error
    assert config["head_node_type"] == "head"
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] >= 1  # autoscaled from zero
    assert "IamInstanceProfile" in gpu["node_config"]  # workers write s3:// results themselves


def test_cluster_yaml_installs_what_the_project_pins():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    image = config["docker"]["image"]
    python = re.search(r"-py3(\d+)", image)
    assert image.startswith("rayproject/ray:2.60") and python and int(python.group(1)) >= 11 and "-cu12" in image
    setup = "\n".join(config["setup_commands"])
    pins = _pins()
    assert f"torch=={pins['torch']}" in setup and f"torchvision=={pins['torchvision']}" in setup
    assert "ray[default]" in setup and "pip install -q -e ." in setup
    assert all("latest_dlami" not in str(t["node_config"]) for t in config["available_node_types"].values())
    excluded = set(config["rsync_exclude"])
    assert {".venv", ".cache", "demo-results", "results"} <= excluded
    assert "--dashboard-host=0.0.0.0" in " ".join(config["head_start_ray_commands"])  # for `ray job submit`
