"""Interpolation between the base and each fine-tune on a real tiny study: the ends reproduce the validator's own
metrics of the two checkpoints exactly, a head with another class count is taken from the checkpoint and reported,
reruns skip, bad inputs are one line and an errors row, and studies and the report carry it."""

from __future__ import annotations

import io

import polars as pl
import pytest
import torch
from conftest import run_tiny_study, save

from yolo_audit.analyses.interpolate.job import InterpolateOptions
from yolo_audit.analyses.interpolate.plan import analyze_interpolation
from yolo_audit.analyses.validation import validate
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import load_checkpoint
from yolo_audit.model.synthetic import build_model


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("interp")
    variants = [{"name": "none", "freeze": 0}, {"name": "head", "freeze": "all"}]
    summary = run_tiny_study(tmp, tmp / "out", variants=variants, analyses=["weights", "interpolate"],
                             interpolate={"steps": 3})  # fmt: skip
    assert summary.ok, summary
    out = tmp / "out"
    data = next((out / "data").glob("synthetic-B-*/data.yaml"))
    return tmp, out, data, summary.analyses["interpolate"]


def test_the_ends_are_the_validator_s_metrics_of_the_two_checkpoints(study):
    _, out, data, summary = study
    rows = pl.read_parquet(out / "interpolation" / "*.parquet")
    assert sorted(set(rows["alpha"])) == [0.0, 0.5, 1.0] and rows.height == 6 and not rows["recalibrated"].any()
    opts = InterpolateOptions(imgsz=32, batch=4)
    base = load_checkpoint(out / "train" / "base" / "weights" / "last.pt")
    threads = torch.get_num_threads()
    assert set(rows.filter(pl.col("alpha") == 0)["map50_95"]) == {validate(base, str(data), opts)[0]}
    assert torch.get_num_threads() == threads  # Ultralytics' validator no longer resets the caller's threads
    for run in ("none-s0", "head-s0"):
        last = load_checkpoint(sorted((out / "train" / run / "snapshots").glob("*.safetensors"))[-1])
        end = rows.filter((pl.col("alpha") == 1) & (pl.col("checkpoint_id") == last.checkpoint_id))
        assert end.height == 1 and end["map50_95"][0] == validate(last, str(data), opts)[0], run
    assert summary.barriers.height == 2 and (summary.barriers["barrier_map50_95"] >= 0).all()
    against = pl.read_parquet(out / "analysed_against" / "*.parquet").filter(pl.col("analysis") == "interpolate")
    assert against.height == 2 and set(against["reference_id"]) == {base.checkpoint_id}


def test_a_head_with_another_class_count_is_taken_from_the_checkpoint_and_reported(study, tmp_path):
    """The base has 80 classes (as yolov8s.pt has), the fine-tune 3: the line moves everything but the head's class
    branch, which comes from the fine-tune at every α."""
    _, out, data, _ = study
    coco_like = save(build_model("yolov8n.yaml", seed=1), tmp_path / "coco80.pt", name="coco")
    tuned = sorted((out / "train" / "none-s0" / "snapshots").glob("*.safetensors"))[-1]
    summary = analyze_interpolation([tuned], coco_like, str(data), tmp_path / "o", steps=2,
                                    opts=InterpolateOptions(imgsz=32, batch=4), stream=io.StringIO())  # fmt: skip
    assert summary.ok, summary.errors
    rows = pl.read_parquet(tmp_path / "o" / "interpolation" / "*.parquet")
    names = rows["mismatched_names"][0].to_list()
    # the class branch of each scale (yolov8n's is max(64, classes) wide: 80 vs 64 channels); nothing else
    assert set(rows["mismatched"]) == {len(names)} and len(names) > 3
    assert all(n.startswith("model.22.cv3.") for n in names)


def test_a_rerun_skips_every_point_and_force_recomputes(study):
    tmp, out, data, _ = study
    tuned = sorted((out / "train" / "head-s0" / "snapshots").glob("*.safetensors"))[-1]
    base = out / "train" / "base" / "weights" / "last.pt"
    opts = InterpolateOptions(imgsz=32, batch=4)
    first = analyze_interpolation([tuned], base, str(data), tmp / "again", steps=3, opts=opts, stream=io.StringIO())
    log = io.StringIO()
    again = analyze_interpolation([tuned], base, str(data), tmp / "again", steps=3, opts=opts, stream=log)
    assert "3 of 3 already done" in log.getvalue() and again.barriers.equals(first.barriers)
    log = io.StringIO()
    analyze_interpolation([tuned], base, str(data), tmp / "again", steps=3, opts=opts, force=True, stream=log)
    assert "already done" not in log.getvalue()


def test_bad_inputs_are_one_line_and_an_errors_row(study, tmp_path):
    _, out, data, _ = study
    base = out / "train" / "base" / "weights" / "last.pt"
    opts = InterpolateOptions(imgsz=32, batch=4)
    other = save(build_model("yolov8s.yaml", seed=0), tmp_path / "v8s.pt", name="v8s")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04garbage")
    summary = analyze_interpolation([other, broken], base, str(data), tmp_path / "o", steps=2, opts=opts,
                                    stream=io.StringIO())  # fmt: skip
    assert not summary.ok and sorted(e.stage for e in summary.errors) == ["align", "interpolate"]
    assert all(len(e.message.splitlines()) == 1 for e in summary.errors)
    assert "beyond its output head" in next(e.message for e in summary.errors if e.stage == "align")
    assert "broken.pt" in next(e.message for e in summary.errors if e.stage == "interpolate")
    assert sorted(pl.read_parquet(tmp_path / "o" / "errors" / "*.parquet")["stage"]) == ["align", "interpolate"]
    with pytest.raises(AuditError, match="pass a dataset yaml"):
        analyze_interpolation([other], base, str(data.parent / "images"), tmp_path / "p", opts=opts)
    import shutil

    unlabelled = tmp_path / "nolabels"
    shutil.copytree(data.parent, unlabelled)
    shutil.rmtree(unlabelled / "labels")
    (unlabelled / "data.yaml").write_text((unlabelled / "data.yaml").read_text().replace(str(data.parent),
                                                                                          str(unlabelled)))  # fmt: skip
    with pytest.raises(AuditError, match="the `val` split has no labels") as raised:
        analyze_interpolation([other], base, str(unlabelled / "data.yaml"), tmp_path / "q", opts=opts)
    assert len(str(raised.value).splitlines()) == 1
    assert pl.read_parquet(tmp_path / "q" / "errors" / "*.parquet")["stage"].to_list() == ["interpolate"]
    with pytest.raises(AuditError, match="--steps must be at least 2"):
        analyze_interpolation([other], base, str(data), tmp_path / "p", steps=1, opts=opts)


def test_batchnorm_statistics_re_estimated_along_the_line(study):
    """--recalibrate-bn N: at every α the BatchNorm statistics are re-estimated on N training images before
    validating; the rows say so, and an interior point is measured on other statistics than the plain line's."""
    tmp, out, data, _ = study
    tuned = sorted((out / "train" / "none-s0" / "snapshots").glob("*.safetensors"))[-1]
    base = out / "train" / "base" / "weights" / "last.pt"
    summary = analyze_interpolation([tuned], base, str(data), tmp / "recal", steps=3, stream=io.StringIO(),
                                    opts=InterpolateOptions(imgsz=32, batch=4, recalibrate_bn=4))  # fmt: skip
    assert summary.ok and summary.barriers["recalibrated"].to_list() == [True]
    rows = pl.read_parquet(tmp / "recal" / "interpolation" / "*.parquet")
    assert rows["recalibrated"].all() and set(rows["recalibration_images"]) == {4} and rows.height == 3

    from yolo_audit.analyses.images import list_images
    from yolo_audit.analyses.interpolate.job import blend, recalibrate

    mid, _ = blend(load_checkpoint(base), load_checkpoint(tuned), 0.5)
    images = list_images(data, split="train", max_images=4)
    again = recalibrate(mid, images, InterpolateOptions(imgsz=32, batch=4))
    stats = [n for n in mid.tensors if n.endswith(("running_mean", "running_var"))]
    assert any(not (again.tensors[n] == mid.tensors[n]).all() for n in stats)  # re-estimated ...
    assert all((again.tensors[n] == t).all() for n, t in mid.tensors.items() if n not in stats
               and not n.endswith("num_batches_tracked"))  # ... and nothing else changed  # fmt: skip


def test_the_report_draws_map_along_the_line_and_says_who_stays_in_the_basin(study, tmp_path):
    from yolo_audit.report import write_report

    _, out, _, _ = study
    page = write_report(out, tmp_path / "report.html").read_text()
    section = page.split('<section id="interpolation">', 1)[1].split("</section>", 1)[0]
    assert 'alt="mAP along the line"' in section and "barrier_map50_95" in section
    import html

    findings = html.unescape(page.split('<section id="summary">', 1)[1].split("</section>", 1)[0])
    assert "none-s0 stays in the base's basin" in findings or "none-s0 leaves the base's basin" in findings
