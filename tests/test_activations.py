"""Activations end to end: hooks leave outputs alone, statistics equal numpy on materialised activations, forced dead
channels are flagged by the right criterion, shards merge exactly, Detect and leaves are covered, bad inputs."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import save

from yolo_audit.analyses.activations.job import ActivationOptions
from yolo_audit.analyses.activations.plan import analyze_activations
from yolo_audit.analyses.images import list_images, load_batch
from yolo_audit.errors import AuditError
from yolo_audit.model.hooks import Recorder, select_modules
from yolo_audit.results.rank import rank_dead_units
from yolo_audit.study.synth import make_dataset

IMGSZ = 64
KILLED = {3: (0.0, -10.0), 5: (0.0, 2.0)}  # channel of layer 1: (BN gamma, BN beta)


NEGATIVE = 7  # channel of layer 1 whose SiLU input is moved to about [-1.2, -0.1]: negative outputs that vary


def _killed(model, images=None):
    m = deepcopy(model)
    with torch.no_grad():
        for c, (gamma, beta) in KILLED.items():
            m.model[1].bn.weight[c], m.model[1].bn.bias[c] = gamma, beta
        if images is not None:  # normalise NEGATIVE's conv output by its real statistics, then gamma 0.15, beta -0.6
            seen = []
            hook = m.model[1].conv.register_forward_hook(lambda mod, i, o: seen.append(o[:, NEGATIVE]))
            m.eval()(load_batch(list_images(images), IMGSZ)[0])
            hook.remove()
            bn = m.model[1].bn
            bn.running_mean[NEGATIVE] = seen[0].mean().half().float()  # fp16 values: the saved file is fp16
            bn.running_var[NEGATIVE] = seen[0].var().half().float()
            bn.weight[NEGATIVE], bn.bias[NEGATIVE] = 0.15, -0.6
    return m


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """All 12 images of a synthetic dataset, as a folder (the yaml's val split holds only 3)."""
    return (
        make_dataset(tmp_path_factory.mktemp("data") / "B", images=12, imgsz=IMGSZ, domain="B", seed=2).parent
        / "images"
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, base_model, data, ray_local):
    root = tmp_path_factory.mktemp("act")
    ref = save(base_model, root / "ckpts" / "base.pt", name="base")
    dead = save(_killed(base_model, data), root / "ckpts" / "dead.pt", name="dead")
    opts = ActivationOptions(imgsz=IMGSZ, batch=2, maps=2)
    out = root / "out"
    summary = analyze_activations(
        [dead], data, out, reference=ref, opts=opts, shards_per_checkpoint=3, stream=io.StringIO()
    )
    return {"out": out, "summary": summary, "ref": ref, "dead": dead, "root": root}


def _stats(out) -> pl.DataFrame:
    return pl.read_parquet(out / "channel_stats" / "*.parquet").join(
        pl.read_parquet(out / "checkpoints" / "*.parquet").select("checkpoint_id", "run"), on="checkpoint_id"
    )


def test_hooks_do_not_change_outputs(base_model, data):
    batch, _ = load_batch(list_images(data)[:2], IMGSZ)
    model = deepcopy(base_model).eval()
    with torch.inference_mode():
        plain = model(batch)
        for depth in ("modules", "leaves"):
            with Recorder(model, depth=depth, maps=1) as rec:
                rec.begin_batch(len(batch))
                hooked = model(batch)
            assert torch.equal(plain[0], hooked[0]) and rec.states
    names = select_modules(model, "modules")
    copies = {f"model.{i}" for i in (10, 11, 13, 14, 17, 20)}  # YOLOv8's Upsample and Concat: copies of channels
    assert len(names) == 22 - len(copies) + 6 and not copies & set(names)
    assert "model.22.cv2.0" in names and "model.22.cv3.2" in names and "model.22" not in names
    assert {names[n].kind for n in names if n.startswith("model.22.")} == {"head_output"}
    leaves = select_modules(model, "leaves")
    assert {"model.1.conv", "model.1.bn", "model.1.act", "model.22.cv3.0.2"} <= set(leaves)


def test_statistics_equal_numpy_on_materialised_activations(run, base_model, data):
    assert run["summary"].ok and run["summary"].images == 12
    captured = []
    model = _killed(base_model, data).eval()
    handle = model.model[4].register_forward_hook(lambda m, i, o: captured.append(o.detach().double().numpy()))
    with torch.inference_mode():
        for start in range(0, 12, 2):  # the tool's batches (batch 2), so these are the very same activations
            model(load_batch(list_images(data)[start : start + 2], IMGSZ)[0])
    handle.remove()
    a = np.moveaxis(np.concatenate(captured), 1, 0)
    a = a.reshape(a.shape[0], -1)
    rows = _stats(run["out"]).filter((pl.col("run") == "dead") & (pl.col("module") == "model.4")).sort("channel")
    np.testing.assert_allclose(rows["mean"].to_numpy(), a.mean(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rows["std"].to_numpy(), a.std(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rows["max"].to_numpy(), a.max(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows["mean_abs"].to_numpy(), np.abs(a).mean(1), rtol=1e-4, atol=1e-6)
    # Ray workers run torch with one thread, this process with two: values within rounding of 0 may flip sign
    np.testing.assert_allclose(rows["frac_positive"].to_numpy(), (a > 0).mean(1), atol=0.01)
    assert (rows["count"] == a.shape[1]).all()


def test_recorder_statistics_equal_numpy_on_the_same_forward(base_model, data):
    """Same forward pass, two hooks: the recorder's streaming states and a plain capture of the raw tensors."""
    model = _killed(base_model, data).eval()
    captured: dict[str, list[np.ndarray]] = {"model.4": [], "model.22.cv2.1": []}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: captured[n].append(o.double().numpy()))
        for name in captured
    ]
    with torch.inference_mode(), Recorder(model) as rec:
        for start in range(0, 12, 3):
            model(load_batch(list_images(data)[start : start + 3], IMGSZ)[0])
    for handle in handles:
        handle.remove()
    for name, parts in captured.items():
        a = np.moveaxis(np.concatenate(parts), 1, 0)
        a = a.reshape(a.shape[0], -1)
        got = rec.states[name].compute()
        expected = {"mean": a.mean(1), "std": a.std(1), "min": a.min(1), "max": a.max(1),
                    "mean_abs": np.abs(a).mean(1), "frac_positive": (a > 0).mean(1)}  # fmt: skip
        for key, value in expected.items():
            np.testing.assert_allclose(got[key].numpy(), value, rtol=2e-5, atol=1e-7, err_msg=f"{name} {key}")


def test_forced_dead_channels_flagged_by_the_right_criterion(run):
    rows = _stats(run["out"]).filter((pl.col("module") == "model.1") & pl.col("channel").is_in(list(KILLED)))
    dead = rows.filter(pl.col("run") == "dead").sort("channel")
    neg, pos = dead.row(0, named=True), dead.row(1, named=True)  # gamma 0 with beta -10, and with beta +2
    assert neg["constant"] and neg["never_positive"] and neg["dormant"] and neg["dead"] and neg["newly_dead"]
    assert pos["constant"] and not pos["never_positive"] and not pos["dormant"] and pos["dead"] and pos["newly_dead"]
    assert pos["mean"] == pytest.approx(2.0 / (1 + np.exp(-2.0)), rel=1e-4)  # SiLU(beta)
    base = rows.filter(pl.col("run") == "base")
    assert not base["constant"].any() and base["newly_dead"].null_count() == 0 and not base["newly_dead"].any()


def test_a_negative_only_silu_unit_that_varies_is_alive(run):
    """SiLU of a pre-activation in about [-1.2, -0.1]: every output negative (never_positive), yet it varies with the
    input and passes gradient, so it is not dead (never_positive is descriptive, not part of `dead`)."""
    row = (
        _stats(run["out"])
        .filter((pl.col("run") == "dead") & (pl.col("module") == "model.1") & (pl.col("channel") == NEGATIVE))
        .row(0, named=True)
    )
    assert row["never_positive"] and row["max"] < 0 and row["min"] > -0.3  # SiLU's minimum is -0.278
    assert not row["dormant"] and not row["constant"] and not row["dead"] and not row["newly_dead"]
    assert row["unit_kind"] == "unit"


def test_units_are_conv_block_outputs_and_copies_are_not_counted(run, data, tmp_path):
    """--depth leaves: the units of a model are exactly its Conv blocks' output channels (counted independently from
    the state dict: every X.bn.running_mean beside an X.conv.weight); head logits and pre-activation leaves are kept
    but marked. --depth modules: Upsample/Concat (copies) have no rows."""
    opts = ActivationOptions(imgsz=IMGSZ, batch=4, depth="leaves")
    analyze_activations([run["ref"]], data, tmp_path / "leaves", opts=opts, max_images=4, stream=io.StringIO())
    rows = _stats(tmp_path / "leaves")
    state = torch.load(run["ref"], weights_only=False)["model"].state_dict()
    blocks = [k[: -len(".bn.running_mean")] for k in state if k.endswith(".bn.running_mean")]
    expected = sum(state[f"{b}.bn.running_mean"].numel() for b in blocks if f"{b}.conv.weight" in state)
    assert rows.filter(pl.col("unit_kind") == "unit").height == expected
    head = rows.filter(pl.col("unit_kind") == "head_output")["module"].unique().sort().to_list()
    assert head == [f"model.22.{b}.{i}.2" for b in ("cv2", "cv3") for i in range(3)]
    modules = _stats(run["out"])["module"].unique().to_list()
    assert not {f"model.{i}" for i in (10, 11, 13, 14, 17, 20)} & set(modules)
    counted = rank_dead_units(run["out"], by="checkpoint", top=10).collect()
    per_ckpt = _stats(run["out"]).filter(pl.col("unit_kind") == "unit").group_by("checkpoint_id").len()
    assert dict(counted.select("checkpoint_id", "units").iter_rows()) == dict(per_ckpt.iter_rows())


def test_shards_merge_to_the_single_pass(run, data):
    out = run["root"] / "one-shard"
    opts = ActivationOptions(imgsz=IMGSZ, batch=2, maps=0)  # the same batches as the 3-shard run, in one task
    analyze_activations([run["dead"]], data, out, opts=opts, shards_per_checkpoint=1, stream=io.StringIO())
    a = _stats(run["out"]).filter(pl.col("run") == "dead").sort("module", "channel")
    b = _stats(out).sort("module", "channel")
    for col in ("count", "mean", "std", "min", "max", "mean_abs", "frac_positive"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-6, atol=1e-9, err_msg=col)


def test_detect_branches_histograms_maps_and_passes(run):
    out = run["out"]
    stats = _stats(out)
    assert {"model.22.cv2.0", "model.22.cv3.2"} <= set(stats["module"])
    assert stats.filter(pl.col("module") == "model.22.cv3.0")["channel"].max() == 79  # nc = 80 from the yaml
    hist = pl.read_parquet(out / "activation_hist" / "*.parquet")
    per_module = hist.group_by("checkpoint_id", "module").agg(pl.col("count").sum())
    counts = stats.group_by("checkpoint_id", "module").agg(pl.col("count").sum())
    assert (
        per_module.join(counts, on=["checkpoint_id", "module"]).filter(pl.col("count") != pl.col("count_right")).height
        == 0
    )
    maps = pl.read_parquet(out / "feature_maps" / "*.parquet")
    assert set(maps["image"]) == {0, 1} and maps.group_by("checkpoint_id", "module", "image").len()["len"].max() <= 8
    # the channels that moved most from the reference: the killed and the shifted channels of layer 1, the same
    # channels for both checkpoints, and units only (no head outputs)
    layer1 = maps.filter(pl.col("module") == "model.1").group_by("checkpoint_id").agg(pl.col("channel").unique().sort())
    assert layer1.height == 2 and all({*KILLED, NEGATIVE} <= set(c) for c in layer1["channel"].to_list())
    assert not maps["module"].str.starts_with("model.22").any()
    assert (maps["values"].list.len() == maps["height"] * maps["width"]).all() and maps["height"].max() <= 32
    passes = pl.read_parquet(out / "activation_passes" / "*.parquet")
    assert passes["images"].to_list() == [12, 12] and set(passes["device"]) == {"cpu"}


def test_leaves_depth(run, data):
    out = run["root"] / "leaves"
    opts = ActivationOptions(imgsz=IMGSZ, batch=6, depth="leaves", maps=0)
    analyze_activations([run["dead"]], data, out, opts=opts, max_images=6, stream=io.StringIO())
    modules = set(pl.read_parquet(out / "channel_stats" / "*.parquet")["module"])
    assert {"model.1.conv", "model.1.bn", "model.1.act", "model.22.dfl.conv"} <= modules


def test_dataset_yaml_split(run, data):
    yaml_path = data.parent / "data.yaml"
    assert len(list_images(yaml_path)) == 3 and len(list_images(yaml_path, split="train")) == 9
    with pytest.raises(AuditError, match="has no `test` split"):
        list_images(yaml_path, split="test")


def test_bad_inputs(tmp_path, run, data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditError, match="no images found"):
        analyze_activations([run["dead"]], tmp_path / "empty", tmp_path / "o")
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text("path: /does/not/exist\nval: images/val\nnames: {0: a}\n")
    with pytest.raises(AuditError, match="points nowhere"):
        analyze_activations([run["dead"]], nowhere, tmp_path / "o")
    images = tmp_path / "imgs"
    images.mkdir()
    for p in list_images(data)[:3]:
        (images / Path(p).name).write_bytes(Path(p).read_bytes())
    (images / "broken.png").write_bytes(b"not an image")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    opts = ActivationOptions(imgsz=IMGSZ, batch=2, maps=0)
    summary = analyze_activations([run["dead"], broken], images, tmp_path / "o", opts=opts, stream=io.StringIO())
    assert summary.failed_images == 1 and summary.images == 4 and len(summary.analysed) == 1
    assert [e.path for e in summary.errors] == [str(broken)] and not summary.ok
    assert pl.read_parquet(tmp_path / "o" / "errors" / "*.parquet")["stage"].to_list() == ["activations"]


def test_uneven_shards_give_the_same_statistics(run, data, tmp_path):
    """11 images, batch 4, split 1 vs 3 ways: shards are cut at batch boundaries, so every statistic agrees."""
    opts = ActivationOptions(imgsz=IMGSZ, batch=4)
    frames = []
    for shards in (1, 3):
        out = tmp_path / f"s{shards}"
        analyze_activations([run["dead"]], data, out, opts=opts, max_images=11, shards_per_checkpoint=shards,
                            stream=io.StringIO())  # fmt: skip
        frames.append(_stats(out).sort("module", "channel"))
    a, b = frames
    for col in ("count", "mean", "std", "min", "max", "mean_abs", "frac_positive", "dormant_score"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-9, atol=1e-15, err_msg=col)
    assert a["dead"].equals(b["dead"])


def test_another_architecture_than_the_reference_is_refused(run, data, tmp_path):
    """The command with its default options (feature maps on): one `align` error line and row, the reference's own
    tables written, no traceback (the maps wave once crashed comparing channels of two architectures)."""
    from conftest import save as save_ckpt
    from typer.testing import CliRunner

    from yolo_audit.cli import app
    from yolo_audit.model.synthetic import build_model

    other = save_ckpt(build_model("yolov8s.yaml", seed=0), tmp_path / "v8s.pt", name="v8s")
    out = tmp_path / "mixed"
    result = CliRunner().invoke(app, ["activations", str(other), "--reference", str(run["ref"]), "--data", str(data),
                                      "--out", str(out), "--imgsz", str(IMGSZ), "--max-images", "4"])  # fmt: skip
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error [align]")
    assert str(run["ref"]) in lines[0] and str(other) in lines[0]
    for table in ("channel_stats", "feature_maps"):  # only the reference's own rows: nothing of the other
        ids = pl.read_parquet(out / table / "*.parquet")["checkpoint_id"].unique().to_list()
        assert len(ids) == 1, table
    assert pl.read_parquet(out / "errors" / "*.parquet")["stage"].to_list() == ["align"]
