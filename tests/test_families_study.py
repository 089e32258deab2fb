"""One-epoch studies at tiny size on other families: YOLO11 (its backbone is 0-10, its head 23), a segmentation
model on synthetic polygon labels, and a freeze-depth sweep with the report's depth axis."""

from __future__ import annotations

import polars as pl
from conftest import result_tables, run_tiny_study

from yolo_audit.report import write_report


def _verdicts(t: dict[str, pl.DataFrame], run: str) -> dict[str, list[int]]:
    ck = t["checkpoints"].filter(pl.col("run") == run).sort("epoch")
    base = t["checkpoints"].filter(pl.col("run") == "base")["checkpoint_id"][0]
    lf = t["layer_freeze"].filter(
        (pl.col("checkpoint_id") == ck["checkpoint_id"][-1]) & (pl.col("reference_id") == base)
    )
    return {v: sorted(lf.filter(pl.col("verdict") == v)["layer"].to_list()) for v in set(lf["verdict"])}


def _base(model: str, task: str = "detect") -> dict:
    data = {"synthetic": {"domain": "A", "images": 8, "imgsz": 32, "task": task}}
    return {"model": model, "pretrain": {"data": data, "epochs": 1, "imgsz": 32, "batch": 4},
            "data": {"synthetic": {"domain": "B", "images": 8, "imgsz": 32, "seed": 1, "task": task}},
            "train": {"epochs": 1, "imgsz": 32, "batch": 4}}  # fmt: skip


def test_yolo11_backbone_freeze_covers_its_own_backbone(tmp_path, ray_local):
    summary = run_tiny_study(
        tmp_path,
        tmp_path / "v11",
        **_base("yolo11n.yaml"),
        analyses=["weights", "activations"],
        variants=[{"name": "bb", "freeze": "backbone"}, {"name": "all", "freeze": "all"}],
    )
    assert summary.ok
    t = result_tables(tmp_path / "v11")
    assert _verdicts(t, "bb-s0")["frozen_exact"][-1] == 10  # C2PSA at 10 is YOLO11's backbone too
    all_frozen = _verdicts(t, "all-s0")
    assert all_frozen["trained"] == [23] and 22 in all_frozen["frozen_exact"]  # every module but the head (23)
    runs = t["runs"].filter(pl.col("run") == "bb-s0")
    assert runs["backbone"].to_list() == [list(range(11))]


def test_a_segmentation_study_on_synthetic_polygons(tmp_path, ray_local):
    summary = run_tiny_study(
        tmp_path,
        tmp_path / "seg",
        **_base("yolov8n-seg.yaml", "segment"),
        analyses=["weights", "activations"],
        variants=[{"name": "bb", "freeze": "backbone"}],
    )
    assert summary.ok
    t = result_tables(tmp_path / "seg")
    assert _verdicts(t, "bb-s0")["frozen_exact"] == list(range(10))
    heads = t["channel_stats"].filter(pl.col("unit_kind") == "head_output")["module"].unique().to_list()
    assert "model.22.proto" in heads and "model.22.cv4.0" in heads  # prototypes and mask coefficients


def test_a_sweep_runs_offline_and_the_report_draws_depth(tmp_path, ray_local):
    summary = run_tiny_study(
        tmp_path,
        tmp_path / "sweep",
        variants=None,
        analyses=["weights"],
        sweep={"freeze": [0, 4, "backbone"], "strategy": ["ultralytics", "callback"]},
    )
    assert summary.ok
    t = result_tables(tmp_path / "sweep")
    assert sorted(t["runs"]["run"].to_list()) == sorted(
        ["base"] + [f"freeze-{d}-{s}-s0" for d in (0, 4, "backbone") for s in ("ultralytics", "callback")]
    )
    assert _verdicts(t, "freeze-4-ultralytics-s0")["frozen_exact"] == [0, 1, 2, 3]
    assert _verdicts(t, "freeze-4-callback-s0")["frozen_bn_drift"] == [0, 1, 2, 3]
    page = write_report(tmp_path / "sweep", tmp_path / "r.html").read_text()
    depth = page.split('<section id="depth">', 1)[1].split("</section>", 1)[0]
    assert "data:image/png;base64," in depth and "freeze-backbone-callback-s0" in depth
