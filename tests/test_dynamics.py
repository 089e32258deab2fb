"""Training dynamics recorded live by `yolo_audit.integrations.ultralytics.attach` in a user's own training script:
Ultralytics' freeze gives frozen layers no gradient and no update (BatchNorm statistics included); the question's
requires_grad=False callback gives them no gradient while their BatchNorm statistics move; rank and report show the
gradient flow."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from yolo_audit.cli import app
from yolo_audit.errors import AuditError
from yolo_audit.results import rank
from yolo_audit.study.synth import make_dataset

STATISTICS = ("bn_running_mean", "bn_running_var")


def freeze_layer(trainer):  # the question's callback, as written there
    model = trainer.model
    num_freeze = 10
    freeze = [f"model.{x}." for x in range(num_freeze)]  # layers to freeze
    for k, v in model.named_parameters():
        v.requires_grad = True  # train all layers
        if any(x in k for x in freeze):
            v.requires_grad = False


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two user scripts, attach() the only addition: Ultralytics' freeze=10, and the question's callback."""
    from yolo_audit.env import prepare

    prepare()
    import torch
    from ultralytics import YOLO

    from yolo_audit.integrations.ultralytics import attach

    threads = torch.get_num_threads()  # Ultralytics sets this process's torch threads to CPUs - 1 when it trains
    root = tmp_path_factory.mktemp("dynamics")
    data = str(make_dataset(root / "data", images=16, imgsz=32, domain="B", seed=2))
    common = dict(data=data, epochs=2, imgsz=32, batch=4, nbs=4, workers=0, amp=False, device="cpu", plots=False,
                  project=str(root / "runs"), exist_ok=True, verbose=False)  # fmt: skip
    out = root / "results"
    recorders = {}
    model = YOLO("yolov8n.yaml")
    recorders["builtin"] = attach(model, out=out)
    model.train(name="builtin", freeze=10, **common)
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", freeze_layer)
    recorders["callback"] = attach(model, out=out)
    model.train(name="callback", **common)
    torch.set_num_threads(threads)
    return out, recorders


def _rows(out, run: str) -> pl.DataFrame:
    return pl.read_parquet(out / "train_dynamics" / "*.parquet").filter(pl.col("run") == run)


def test_ultralytics_freeze_gives_frozen_layers_no_gradient_and_no_update(trained):
    out, recorders = trained
    rows = _rows(out, "builtin")
    assert sorted(rows["epoch"].unique().to_list()) == [1, 2] == recorders["builtin"].epochs_written
    frozen = rows.filter(pl.col("layer") < 10)
    params = frozen.filter(~pl.col("role").is_in(STATISTICS))
    assert params.height > 0 and (params["grad_norm_max"] == 0).all() and (params["frac_zero_grad"] == 1).all()
    assert (frozen["update_l2"] == 0).all()  # weights and BatchNorm statistics: bit-identical (BN in eval mode)
    trained_layers = rows.filter((pl.col("layer") >= 10) & ~pl.col("role").is_in(STATISTICS))
    assert (trained_layers["grad_norm_mean"] > 0).any() and (trained_layers["update_l2"] > 0).any()
    assert rows["steps"].min() >= 2 and rows.filter(pl.col("lr").is_not_null())["lr"].min() >= 0


def test_the_question_s_callback_freezes_weights_but_batchnorm_statistics_move(trained):
    out, _ = trained
    frozen = _rows(out, "callback").filter(pl.col("layer") < 10)
    params = frozen.filter(~pl.col("role").is_in(STATISTICS))
    assert (params["grad_norm_max"] == 0).all() and (params["update_l2"] == 0).all()
    assert not params["requires_grad"].any()
    statistics = frozen.filter(pl.col("role").is_in(STATISTICS))
    moved = statistics.group_by("layer").agg(pl.col("update_l2").max())["update_l2"]
    assert statistics.height > 0 and (moved > 0).all()  # every frozen layer's BatchNorm statistics moved


def test_rank_and_report_show_the_gradient_flow(trained, tmp_path):
    from yolo_audit.report import write_report

    out, _ = trained
    flow = rank.rank_gradient_flow(out).collect()
    callback = flow.filter(pl.col("run") == "callback")
    assert set(callback.filter(pl.col("layer") < 10)["grad_norm"]) == {0.0}
    assert (callback.filter(pl.col("layer") < 10)["bn_update_ratio"] > 0).all()
    builtin = flow.filter((pl.col("run") == "builtin") & (pl.col("layer") < 10))
    assert (builtin["bn_update_ratio"] == 0).all() and not builtin["trainable"].any()
    shown = CliRunner().invoke(app, ["rank", "gradient-flow", "--results", str(out), "--run", "callback"])
    assert shown.exit_code == 0 and "callback (rows: layers; columns: epochs)" in shown.stdout
    assert "0.0 (bn moved" in shown.stdout
    page = write_report(out, tmp_path / "report.html").read_text()
    assert '<section id="gradient-flow">' in page and 'alt="gradient flow"' in page
    assert "no gradient reached layers 0-9 in any epoch, yet their BatchNorm statistics moved" in page
    assert "neither they nor their BatchNorm statistics moved: frozen exactly" in page
    with pytest.raises(AuditError, match="no train_dynamics table here"):
        rank.rank_gradient_flow(tmp_path)
