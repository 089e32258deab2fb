"""A real (tiny) freeze-depth study on Ray: training with both freeze strategies, verdicts, resume after a crash."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import result_tables, run_tiny_study, weight_values

VARIANTS = [
    {"name": "none", "freeze": 0},
    {"name": "backbone", "freeze": "backbone"},
    {"name": "callback", "freeze": "backbone", "strategy": "callback"},
]


def _run(tmp: Path, out: Path | str, **changes) -> object:
    return run_tiny_study(tmp, out, **{"variants": VARIANTS, "analyses": ["weights", "activations"], **changes})


@pytest.fixture(scope="module")
def full(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("study")
    summary = _run(tmp, tmp / "full")
    return tmp, summary


def _final_verdicts(t: dict[str, pl.DataFrame], run: str) -> dict[str, list[int]]:  # vs the pretrained base
    ck = t["checkpoints"].filter(pl.col("run") == run).sort("epoch")
    last = ck["checkpoint_id"][-1]
    lf = t["layer_freeze"].filter(pl.col("checkpoint_id") == last)
    base = t["checkpoints"].filter(pl.col("path").str.ends_with("train/base/weights/last.pt"))["checkpoint_id"][0]
    lf = lf.filter(pl.col("reference_id") == base)
    return {v: sorted(lf.filter(pl.col("verdict") == v)["layer"].to_list()) for v in set(lf["verdict"])}


def test_study_trains_every_variant_and_writes_runs(full):
    tmp, summary = full
    assert summary.ok
    t = result_tables(tmp / "full")
    runs = t["runs"].sort("run")
    assert runs["run"].to_list() == ["backbone-s0", "base", "callback-s0", "none-s0"]
    assert set(runs["status"]) == {"done"}
    assert runs.filter(pl.col("run") == "callback-s0")["frozen_layers"].to_list() == [list(range(10))]
    assert t["train_metrics"].group_by("run").len().sort("run")["len"].to_list() == [2, 1, 2, 2]
    assert "metrics/mAP50-95(B)" in t["train_metrics"].columns
    assert t["checkpoints"]["checkpoint_id"].is_unique().all()  # weights and activations share one row per file
    snaps = t["checkpoints"].filter(pl.col("source_format") == "safetensors")
    assert set(snaps["precision"]) == {"float32"} and snaps["aliases"].list.len().sum() == 6  # 3 runs x 2 epochs
    # each file is one alias of exactly one checkpoint, and a checkpoint's epoch is its aliases' highest
    assert snaps["aliases"].explode().is_unique().all() and set(snaps["epoch"]) <= {1, 2}
    # nbs = batch: an optimizer step per batch, so every epoch's snapshot is a checkpoint of its own (with
    # Ultralytics' nominal batch of 64, epoch 2 held epoch 1's exact tensors)
    assert snaps.height == snaps.filter(pl.col("aliases").list.len() == 1).height == 6
    # activations: the base and each run's last snapshot, on the study's validation images
    passes = t["activation_passes"].join(t["checkpoints"].select("checkpoint_id", "run", "epoch"), on="checkpoint_id")
    assert sorted(passes["run"]) == ["backbone-s0", "base", "callback-s0", "none-s0"]
    assert set(passes.filter(pl.col("run") != "base")["epoch"]) == {2} and set(passes["images"]) == {2}
    assert t["channel_stats"]["newly_dead"].null_count() == 0


def test_freeze_strategies_give_the_expected_verdicts(full):
    tmp, _ = full
    t = result_tables(tmp / "full")
    backbone = _final_verdicts(t, "backbone-s0")
    callback = _final_verdicts(t, "callback-s0")
    none = _final_verdicts(t, "none-s0")
    assert backbone["frozen_exact"] == list(range(10)) and "frozen_bn_drift" not in backbone
    assert callback["frozen_bn_drift"] == list(range(10)) and "frozen_exact" not in callback
    assert set(none) == {"trained"}
    # the callback's freeze is invisible in train_args: every one of its frozen layers is a declared mismatch
    decl = t["layer_freeze"].filter(pl.col("verdict") == "frozen_bn_drift")["declared_frozen"]
    assert decl.len() > 0 and not decl.any()


def test_resume_after_interruption_matches_an_uninterrupted_run(full, tmp_path):
    tmp, _ = full
    out = tmp_path / "resumed"
    # the driver died after the first variant: its row exists, nothing was analysed, and a second run was half done
    first = _run(tmp_path, out, variants=VARIANTS[:1], analyses=[])
    assert first.ok
    partial = out / "train" / "backbone-s0" / "snapshots"
    partial.mkdir(parents=True)
    (partial / "epoch0001.safetensors").write_bytes(b"half written")
    resumed = _run(tmp_path, out)
    assert resumed.ok and sorted(resumed.skipped) == ["base", "none-s0"]
    a, b = result_tables(tmp / "full"), result_tables(out)
    assert {k: v.height for k, v in a.items()} == {k: v.height for k, v in b.items()}
    for run in ("backbone-s0", "callback-s0", "none-s0"):
        assert _final_verdicts(a, run) == _final_verdicts(b, run)
    assert "errors" not in b
    assert weight_values(a).equals(
        weight_values(b)
    )  # training is deterministic on CPU: the same numbers, not just counts
    # rerunning a finished study trains nothing and changes nothing
    again = _run(tmp_path, out)
    assert again.trained == [] and {k: v.height for k, v in result_tables(out).items()} == {
        k: v.height for k, v in b.items()
    }


def test_study_with_a_filesystem_uri_out_stages_and_uploads(tmp_path, ray_local):
    out = f"file://{tmp_path}/remote"
    variants = VARIANTS[1:]
    summary = _run(tmp_path, out, variants=variants)
    assert summary.ok and summary.out.uri == out
    t = result_tables(out)
    snaps = t["checkpoints"].filter(pl.col("source_format") == "safetensors")
    assert snaps["aliases"].list.len().sum() == 4 and all(p.startswith(f"{out}/train/") for p in snaps["path"])
    assert (tmp_path / "remote" / "train" / "callback-s0" / "snapshots" / "epoch0002.safetensors").exists()
    assert (tmp_path / "remote" / "data").is_dir()
    assert _final_verdicts(t, "callback-s0")["frozen_bn_drift"] == list(range(10))
