"""Layer rewinding on a real (tiny) study: a layer bit-identical to the base gives exactly the baseline's mAP, the
trained head of a domain-B fine-tune is what its domain-B mAP needs, and a rerun gives the same rows."""

from __future__ import annotations

import io

import polars as pl
import pytest
from conftest import run_tiny_study

from yolo_audit.analyses.rewind.job import RewindOptions
from yolo_audit.analyses.rewind.plan import analyze_rewind
from yolo_audit.errors import AuditError
from yolo_audit.report import write_report
from yolo_audit.results.rank import rank_rewind

A = {"synthetic": {"domain": "A", "images": 96, "imgsz": 64, "seed": 0}}  # the demo's base: real features
B = {"synthetic": {"domain": "B", "images": 64, "imgsz": 64, "seed": 1}}


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    """A base pretrained on A; its head alone fine-tuned on B (freeze: all), in a study that runs rewind too."""
    tmp = tmp_path_factory.mktemp("rewind")
    out = tmp / "out"
    summary = run_tiny_study(
        tmp, out, pretrain={"data": A, "epochs": 30, "imgsz": 64, "batch": 16, "lr0": 0.02},
        data=B, train={"epochs": 8, "imgsz": 64, "batch": 16}, variants=[{"name": "head", "freeze": "all"}],
        analyses=["weights", "rewind"],
    )  # fmt: skip
    assert summary.ok
    return tmp, out


def _rows(out) -> pl.DataFrame:
    return pl.read_parquet(out / "rewind" / "*.parquet").join(
        pl.read_parquet(out / "checkpoints" / "*.parquet").select("checkpoint_id", "run"), on="checkpoint_id"
    )


def test_frozen_layers_rewind_to_exactly_the_baseline(study):
    _, out = study
    rows = _rows(out).filter(pl.col("run") == "head-s0")
    frozen = pl.read_parquet(out / "layer_freeze" / "*.parquet").join(
        rows.select("checkpoint_id", "reference_id").unique(), on=["checkpoint_id", "reference_id"]
    )
    exact = frozen.filter(pl.col("verdict") == "frozen_exact")["layer"].to_list()
    assert len(exact) >= 10
    for layer in exact:  # any preprocessing or state leaking between validations would show here
        assert rows.filter(pl.col("layer") == layer)["delta_map50_95"].to_list() == [0.0], layer


def test_the_trained_head_is_what_the_domain_b_map_needs(study):
    _, out = study
    head = _rows(out).filter((pl.col("run") == "head-s0") & (pl.col("layer") == 22)).row(0, named=True)
    assert head["group"] == "head" and head["baseline_map50_95"] > 0
    assert head["delta_map50_95"] < 0  # resetting the fine-tuned head to the A-trained base loses domain-B mAP
    ranked = rank_rewind(out, top=1).collect()
    assert ranked.filter(pl.col("run") == "head-s0")["layer"].to_list() == [22]
    page = write_report(out, study[0] / "r.html").read_text()
    assert '<section id="rewind">' in page and "head-s0: resetting layer 22 (head) to the base costs the most" in page
    # "everything frozen is worse", explained: only the head moved, so only the head could adapt
    assert "changed (layer 22); relative L2 distance to the base: backbone 0.00%, neck 0.00%" in page
    assert "only the head could adapt to the new data" in page


def test_groups_both_directions_and_a_rerun_gives_the_same_rows(study):
    tmp, out = study
    snap = sorted((out / "train" / "head-s0" / "snapshots").glob("*.safetensors"))[-1]
    base = out / "train" / "base" / "weights" / "last.pt"
    data = next((out / "data").glob("synthetic-B-*")) / "data.yaml"
    opts = RewindOptions(imgsz=64, batch=16)
    frames = []
    for run in ("one", "two"):
        summary = analyze_rewind([snap], base, str(data), tmp / run, groups=True, into_reference=True, opts=opts,
                                 stream=io.StringIO())  # fmt: skip
        assert summary.ok and summary.rows == 6
        frames.append(_rows(tmp / run).drop("seconds").sort("direction", "group"))
    assert frames[0].equals(frames[1])
    stream = io.StringIO()  # the same command again on the same folder: skipped, rows untouched
    again = analyze_rewind([snap], base, str(data), tmp / "two", groups=True, into_reference=True, opts=opts,
                           stream=stream)  # fmt: skip
    assert "[rewind] already done" in stream.getvalue() and again.rows == 6
    assert _rows(tmp / "two").drop("seconds").sort("direction", "group").equals(frames[1])
    g = frames[0]
    rewind = dict(g.filter(pl.col("direction") == "rewind").select("group", "delta_map50_95").iter_rows())
    into = dict(g.filter(pl.col("direction") == "into_reference").select("group", "delta_map50_95").iter_rows())
    assert rewind["backbone"] == rewind["neck"] == 0.0 and rewind["head"] < 0  # only the head was trained
    assert into["head"] == -rewind["head"]  # the base with the tuned head is the tuned model, and vice versa
    with pytest.raises(AuditError, match="--layers"):
        analyze_rewind([snap], base, str(data), tmp / "bad", layers="10", opts=opts, stream=io.StringIO())
