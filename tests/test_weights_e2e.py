"""`yolo-audit weights` end to end on Ray: checkpoints with known edits, read back from Parquet, checked in numpy."""

from __future__ import annotations

import io
import os
from copy import deepcopy
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import moved, save, save_state_dict

from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.errors import AuditError
from yolo_audit.results import schema
from yolo_audit.results.store import freeze_summary, open_results, top_divergent_layers

DEAD = (1, 5)


def _edit(model, *, layer12=False, dead=False, drift=False):
    m = deepcopy(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if layer12:
            for p in m.model[12].parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        if dead:
            m.model[4].cv1.bn.weight[list(DEAD)] = 0.0
        if drift:
            m.model[2].cv1.bn.running_var.mul_(1.5)
    return m


@pytest.fixture(scope="module")
def study(tmp_path_factory, base_model, ray_local):
    root = tmp_path_factory.mktemp("study")
    ckpts = root / "ckpts"
    paths = {
        "base": save(base_model, ckpts / "base" / "weights" / "last.pt", name="base"),
        "layer12": save(
            _edit(base_model, layer12=True), ckpts / "layer12" / "weights" / "last.pt", freeze=12, name="layer12"
        ),
        "dead": save(_edit(base_model, dead=True), ckpts / "dead" / "weights" / "last.pt", name="dead"),
        "drift": save(_edit(base_model, drift=True), ckpts / "drift" / "weights" / "epoch1.pt", epoch=1, key="ema"),
        "fp32": save_state_dict(base_model, ckpts / "fp32" / "snapshot.pt"),
    }
    out = root / "results"
    summary = analyze_weights([ckpts], out, reference=paths["base"], stream=io.StringIO())
    return {"paths": paths, "out": out, "summary": summary, "root": root}


def _frames(out):
    return {k: v.collect() for k, v in open_results(out).items()}


def _id(study, name):
    return _frames(study["out"])["checkpoints"].filter(pl.col("path") == str(study["paths"][name].resolve()))[
        "checkpoint_id"
    ][0]


def test_tables_and_checkpoint_rows(study):
    assert study["summary"].ok
    t = _frames(study["out"])
    assert set(t) == {"checkpoints", "weight_stats", "weight_hist", "channel_weights", "weight_divergence",
                      "channel_divergence", "layer_freeze", "ledger", "analysed_against"}  # fmt: skip
    assert t["checkpoints"].height == 5
    against = t["analysed_against"]  # what every checkpoint but the reference was analysed against
    assert against.height == 4 and set(against["analysis"]) == {"weights"} and against["reference_id"].n_unique() == 1
    for table, frame in t.items():
        assert frame.columns == schema.columns(table)
    row = t["checkpoints"].filter(pl.col("run") == "layer12").row(0, named=True)
    assert row["freeze"] == "12" and row["declared_frozen"] == list(range(12)) and row["source_format"] == "ultralytics"
    assert row["aliases"] == [row["path"]] and row["precision"] == "float16" and len(row["checkpoint_id"]) == 16


def test_only_layer_12_diverges(study):
    t = _frames(study["out"])
    div = t["weight_divergence"].filter(pl.col("checkpoint_id") == _id(study, "layer12"))
    moved = div.filter(~pl.col("identical"))
    assert set(moved["layer"].to_list()) == {12}
    assert (moved["l2_diff"] > 0).all() and (moved.filter(pl.col("role") == "conv_weight")["rel_diff"] > 0).all()
    assert div.filter(pl.col("layer") != 12)["l2_diff"].max() == 0.0
    verdicts = t["layer_freeze"].filter(pl.col("checkpoint_id") == _id(study, "layer12"))
    assert verdicts.filter(pl.col("verdict") == "trained")["layer"].to_list() == [12]
    assert set(verdicts.filter(pl.col("layer") < 12)["declared_frozen"].to_list()) == {True}
    chans = t["channel_divergence"].filter(pl.col("checkpoint_id") == _id(study, "layer12"))
    assert (chans.filter(pl.col("layer") == 12)["rel_diff"] > 0).all()
    assert chans.filter(pl.col("layer") != 12)["l2_diff"].max() == 0.0


def test_zero_bias_reference_gives_null_relative_diff_not_nan(study):
    div = _frames(study["out"])["weight_divergence"]
    zero_bias = div.filter((pl.col("role") == "bn_bias") & (pl.col("layer") == 0))
    assert zero_bias["rel_diff"].null_count() == zero_bias.height  # random-init BN beta is all zeros
    assert not div.select(pl.col(pl.Float64).is_nan().any()).row(0)[0] if div.height else True
    for col in ("l2_diff", "rel_diff", "rms_diff", "cosine", "max_abs_diff"):
        assert div[col].is_nan().sum() == 0 and div[col].is_infinite().sum() == 0


def test_dead_channels_flagged_exactly(study):
    cw = _frames(study["out"])["channel_weights"]
    dead = cw.filter(pl.col("dead_by_weights"))
    assert set(dead["checkpoint_id"]) == {_id(study, "dead")}
    assert dead.select("layer", "module", "channel").rows() == [(4, "model.4.cv1", c) for c in DEAD]
    assert dead["dead_constant"].all() and not dead["dead_negative"].any()


def test_bn_statistics_drift_is_told_apart_from_frozen(study):
    lf = _frames(study["out"])["layer_freeze"].filter(pl.col("checkpoint_id") == _id(study, "drift"))
    assert lf.filter(pl.col("verdict") != "frozen_exact").select("layer", "verdict").rows() == [(2, "frozen_bn_drift")]
    assert set(lf["declared_frozen"]) == {False}  # nothing declared frozen in train_args: the callback trap


def test_fp32_snapshot_of_fp16_weights_counts_as_identical(study):
    t = _frames(study["out"])
    lf = t["layer_freeze"].filter(pl.col("checkpoint_id") == _id(study, "fp32"))
    assert set(lf["verdict"]) == {"frozen_exact"} and lf["declared_frozen"].null_count() == lf.height
    div = t["weight_divergence"].filter(pl.col("checkpoint_id") == _id(study, "fp32"))
    assert div["identical"].all() and div["l2_diff"].max() == 0.0


def test_weight_stats_match_numpy_on_the_file(study):
    ws = _frames(study["out"])["weight_stats"].filter(pl.col("checkpoint_id") == _id(study, "layer12"))
    raw = torch.load(study["paths"]["layer12"], weights_only=False)["model"].state_dict()
    for name in ("model.12.cv1.conv.weight", "model.0.bn.weight", "model.22.cv3.0.2.bias"):
        x = raw[name].float().double().numpy().ravel()
        row = ws.filter(pl.col("param") == name).row(0, named=True)
        assert row["numel"] == x.size
        assert row["mean"] == pytest.approx(x.mean(), abs=1e-7, rel=1e-5)
        assert row["std"] == pytest.approx(x.std(), rel=1e-5)
        assert row["l2"] == pytest.approx(np.linalg.norm(x), rel=1e-5)
        assert (row["min"], row["max"]) == pytest.approx((x.min(), x.max()))
    conv = ws.filter(pl.col("param") == "model.12.cv1.conv.weight").row(0, named=True)
    w = raw["model.12.cv1.conv.weight"].float().double().numpy()
    assert conv["spectral_norm"] == pytest.approx(
        np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)[0], rel=1e-4
    )
    assert conv["module_type"] == "C2f" and conv["role"] == "conv_weight" and conv["layer"] == 12


def test_histograms_share_reference_bins_and_match_numpy(study):
    hist = _frames(study["out"])["weight_hist"]
    ref_id = _id(study, "base")
    assert set(hist["bins_id"]) == {f"ref-{ref_id}"}
    name = "model.12.cv1.conv.weight"
    per_ckpt = hist.filter(pl.col("param") == name).sort("checkpoint_id", "bin")
    edges = per_ckpt.group_by("bin").agg(pl.col("lo").n_unique(), pl.col("hi").n_unique())
    assert (edges["lo"] == 1).all() and (edges["hi"] == 1).all()  # same edges for every checkpoint
    raw = torch.load(study["paths"]["layer12"], weights_only=False)["model"].state_dict()[name].float().numpy().ravel()
    mine = per_ckpt.filter(pl.col("checkpoint_id") == _id(study, "layer12"))
    assert mine["count"].sum() == raw.size
    inner = mine.filter((pl.col("bin") >= 0) & (pl.col("bin") < 64))
    expected, _ = np.histogram(raw, bins=np.linspace(inner["lo"][0], inner["hi"][-1], 65))
    assert np.abs(inner["count"].to_numpy() - expected).sum() <= 2
    assert mine.filter(pl.col("bin") == -1)["count"][0] == (raw < inner["lo"][0]).sum()


def test_rerun_replaces_rows_and_leaves_no_temp_files(study):
    before = {k: v.height for k, v in _frames(study["out"]).items()}
    files = sorted(p.relative_to(study["out"]) for p in study["out"].rglob("*"))
    analyze_weights([study["root"] / "ckpts"], study["out"], reference=study["paths"]["base"], stream=io.StringIO())
    assert {k: v.height for k, v in _frames(study["out"]).items()} == before
    assert sorted(p.relative_to(study["out"]) for p in study["out"].rglob("*")) == files
    assert not [p for p in study["out"].rglob(".*") if p.name != ".yolo-audit.lock"]  # no temp files left


def test_summaries(study):
    top = top_divergent_layers(study["out"], 3, reference_id=_id(study, "base"))
    assert top["layer"].to_list()[0] in (4, 12)  # zeroed gammas or the perturbed layer lead
    fs = freeze_summary(study["out"], reference_id=_id(study, "base"))
    row = fs.filter((pl.col("run") == "layer12") & (pl.col("verdict") == "frozen_exact")).row(0, named=True)
    assert row["layers"] == "0-9,11,13-22" or row["layers"].startswith("0-9")


def test_bad_and_foreign_checkpoints_become_error_rows(tmp_path, base_model, ray_local):
    from yolo_audit.model.synthetic import build_model

    folder = tmp_path / "ckpts"
    ref = save(base_model, folder / "base.pt", name="base")
    save(_edit(base_model, layer12=True), folder / "good.pt", name="good")
    bad = folder / "bad.pt"
    bad.write_bytes(ref.read_bytes()[:1000])
    foreign = save_state_dict(build_model("yolov8s.yaml"), folder / "v8s.pt")
    out = tmp_path / "out"
    summary = analyze_weights([folder], out, reference=ref, stream=io.StringIO())
    assert not summary.ok
    errors = pl.read_parquet(out / "errors" / "*.parquet").sort("path")
    assert errors.select("path", "stage").rows() == [(str(bad.resolve()), "load"), (str(foreign.resolve()), "align")]
    assert "truncated" in errors["message"][0] and "shape-mismatched" in errors["message"][1]
    assert pl.read_parquet(out / "checkpoints" / "*.parquet").height == 3  # base, good, and v8s's own statistics
    # fix the bad file and rerun: its error row goes, nothing else changes
    bad.write_bytes(ref.read_bytes())
    foreign.unlink()
    assert analyze_weights([folder], out, reference=ref, stream=io.StringIO()).ok
    assert pl.read_parquet(out / "errors" / "*.parquet")["path"].to_list() == [str(foreign.resolve())]


def test_pairwise_trajectory_and_pooled_bins(tmp_path, base_model, ray_local):
    folder = tmp_path / "run"
    m = deepcopy(base_model)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            m.model[15].cv2.conv.weight.mul_(1.1)
        save(m, folder / "weights" / f"epoch{epoch}.pt", name="r", epoch=epoch, key="ema")
    out = tmp_path / "out"
    summary = analyze_weights([folder], out, pairwise=True, trajectory=True, stream=io.StringIO())
    assert summary.ok and summary.bins_id.startswith("pooled-")
    ck = pl.read_parquet(out / "checkpoints" / "*.parquet").sort("epoch")
    ids = ck["checkpoint_id"].to_list()
    div = pl.read_parquet(out / "weight_divergence" / "*.parquet")
    pairs = set(div.select("checkpoint_id", "reference_id").unique().rows())
    assert pairs == {(ids[1], ids[0]), (ids[2], ids[0]), (ids[2], ids[1])}
    moved = div.filter(~pl.col("identical"))
    assert set(moved["param"]) == {"model.15.cv2.conv.weight"}
    rel = moved.filter(pl.col("reference_id") == ids[0]).sort("checkpoint_id")
    assert sorted(rel["rel_diff"].to_list()) == pytest.approx([0.1, 0.21], rel=2e-3)  # fp16 storage rounding
    hist = pl.read_parquet(out / "weight_hist" / "*.parquet").filter(pl.col("param") == "model.15.cv2.conv.weight")
    assert hist.group_by("bin").agg(pl.col("lo").n_unique())["lo"].max() == 1
    assert hist.filter(pl.col("bin") == 64)["count"].sum() == 0  # pooled range covers every value


def test_distance_matrix_tells_files_saved_side_by_side_apart(tmp_path, base_model, ray_local):
    """Bare state dicts in one folder all take the folder's name as their run: the summary's distance matrix names
    each by its file too (it had merged them into one `same` row and column), as the similarity summary does."""
    from yolo_audit.report.text import print_weights_summary

    folder = tmp_path / "same"
    ref = save_state_dict(base_model, folder / "base.pt")
    save_state_dict(_edit(base_model, layer12=True), folder / "a.pt")
    save_state_dict(_edit(base_model, dead=True), folder / "b.pt")
    summary = analyze_weights([folder], tmp_path / "out", reference=ref, pairwise=True, stream=io.StringIO())
    assert summary.ok
    shown = io.StringIO()
    print_weights_summary(summary, stream=shown)
    matrix = shown.getvalue().split("Distance between the reference")[1].split("\n\n")[0]
    names = ["same a.pt", "same b.pt", "same base.pt"]
    rows = [line for line in matrix.splitlines() if line.startswith("│ same")]
    assert [r.split("┆")[0].strip("│ ") for r in rows] == names
    assert all(name in matrix.splitlines()[2] for name in names)  # the header: one column each


def test_the_terminal_distance_matrix_shows_the_reference_and_each_runs_last_checkpoint(
    tmp_path, base_model, ray_local
):
    """Every epoch of two runs, pairwise and trajectory: the terminal shows base, a@3 and b@3 (the table keeps every
    pair; the demo's 21 x 21 matrix was mostly null)."""
    from yolo_audit.report.text import print_weights_summary

    ref = save(base_model, tmp_path / "base.pt", name="base")
    for run, first in (("a", 15), ("b", 18)):
        for epoch in (1, 2, 3):
            save(moved(base_model, epoch, first=first), tmp_path / run / "weights" / f"epoch{epoch}.pt", name=run,
                 epoch=epoch - 1, key="ema")  # fmt: skip
    out = tmp_path / "out"
    summary = analyze_weights([tmp_path / "a", tmp_path / "b"], out, reference=ref, pairwise=True, trajectory=True,
                              stream=io.StringIO())  # fmt: skip
    assert summary.ok
    shown = io.StringIO()
    print_weights_summary(summary, stream=shown)
    matrix = shown.getvalue().split("Distance between the reference")[1].split("\n\n")[0]
    rows = [line.split("┆")[0].strip("│ ") for line in matrix.splitlines() if line.startswith("│ ")]
    assert rows[3:] == ["a@3", "b@3", "base"], rows  # after the header (name, ---, str)
    pairs = pl.read_parquet(out / "weight_divergence" / "*.parquet").select("checkpoint_id", "reference_id").unique()
    assert pairs.height == 7 * 6 // 2  # every pair of the 7 checkpoints is still in the table


def test_unwritable_out_fails_before_any_work(tmp_path, model):
    if os.geteuid() == 0:
        target = Path("/proc/yolo-audit-cannot-write-here")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    with pytest.raises(AuditError, match="not writable"):
        analyze_weights([save_state_dict(model, tmp_path / "a.pt")], target)


def test_tables_read_with_duckdb_hive_glob_and_polars_recursive_glob(study):
    import duckdb

    out = study["out"]
    for table in ("weight_stats", "layer_freeze", "checkpoints"):
        ours = pl.scan_parquet(f"{out}/{table}/**/*.parquet").select(pl.len()).collect().item()
        sql = f"select count(*) from read_parquet('{out}/{table}/**/*.parquet', hive_partitioning=true)"
        assert duckdb.sql(sql).fetchall()[0][0] == ours > 0


def test_filesystem_uris_for_checkpoints_and_results(tmp_path, base_model, ray_local):
    folder = tmp_path / "ck"
    save(base_model, folder / "base.pt", name="base")
    save(_edit(base_model, layer12=True), folder / "tuned.pt", name="tuned")
    out = f"file://{tmp_path}/results"
    summary = analyze_weights([f"file://{folder}"], out, reference=f"file://{folder}/base.pt", stream=io.StringIO())
    assert summary.ok
    ck = pl.read_parquet(tmp_path / "results" / "checkpoints" / "*.parquet")
    assert sorted(ck["path"]) == [f"file://{folder}/base.pt", f"file://{folder}/tuned.pt"]
    assert set(open_results(out)["layer_freeze"].collect()["verdict"]) == {"frozen_exact", "trained"}
