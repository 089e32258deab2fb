"""Numbers a user quotes first: noise floors for near-zero references, steps of the stored precision, and weight
statistics that are the same bits alone, against a reference (frozen tensors reused), and with 1 or 2 threads."""

from __future__ import annotations

import io
from copy import deepcopy

import numpy as np
import polars as pl
import pytest
import torch
from conftest import save

from yolo_audit.analyses.weights.columns import (
    WeightOptions,
    analyze,
    reference_cache,
    shared_edges,
    tensor_stats_ranges,
)
from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.model.checkpoint import load_checkpoint
from yolo_audit.results.rank import rank_divergence
from yolo_audit.runtime.devices import set_threads

BIAS = "model.22.cv2.2.2.bias"  # a box-branch output bias: set near zero in the base, then nudged
CONV = "model.12.cv1.conv.weight"


def _tuned(model):
    base, tuned = deepcopy(model), deepcopy(model)
    with torch.no_grad():
        base.get_parameter(BIAS).fill_(4e-7 / 8)  # ||b|| = 4e-7 over 64 values: RMS 5e-8
        tuned.get_parameter(BIAS).fill_(4e-7 / 8 + 1.1e-7)  # a 2.2x "relative" change of pure noise
        w = tuned.get_parameter(CONV)
        w.add_(w.sign() * w.abs() * 0.02)  # a real 2% change
    return base, tuned


@pytest.fixture(scope="module")
def pair(tmp_path_factory, base_model, ray_local):
    root = tmp_path_factory.mktemp("trust")
    base, tuned = _tuned(base_model)
    paths = {
        "base": save(base.float(), root / "base.pt", name="base"),
        "tuned": save(tuned.float(), root / "tuned" / "weights" / "last.pt", name="tuned"),
    }
    out = root / "out"
    analyze_weights([paths["tuned"]], out, reference=paths["base"], stream=io.StringIO())
    return paths, out


def test_a_near_zero_reference_gets_no_ratio_and_ranks_below_a_real_change(pair):
    _, out = pair
    div = pl.read_parquet(out / "weight_divergence" / "*.parquet")
    bias = div.filter(pl.col("param") == BIAS).row(0, named=True)
    assert bias["rel_diff"] is None and "near zero" in bias["reason"] and bias["l2_diff"] > 0
    conv = div.filter(pl.col("param") == CONV).row(0, named=True)
    assert conv["rel_diff"] == pytest.approx(0.02, rel=0.05) and conv["reason"] is None
    top = rank_divergence(out, by="param", top=5).collect()
    assert top["param"][0] == CONV and BIAS not in top["param"].to_list()


def test_differences_in_steps_of_the_stored_precision(pair):
    """The files are fp16 (Ultralytics' layout): a change of one fp16 step at the tensor's largest value is 1 step."""
    _, out = pair
    div = pl.read_parquet(out / "weight_divergence" / "*.parquet").filter(~pl.col("identical"))
    stats = pl.read_parquet(out / "weight_stats" / "*.parquet")
    conv = div.filter(pl.col("param") == CONV).row(0, named=True)
    ref_max = stats.filter((pl.col("param") == CONV) & (pl.col("checkpoint_id") == conv["reference_id"]))
    top = max(abs(ref_max["min"][0]), abs(ref_max["max"][0]))
    step = 2.0 ** (np.floor(np.log2(top)) - 10)  # fp16: 10 mantissa bits
    assert conv["max_abs_steps"] == pytest.approx(conv["max_abs_diff"] / step, rel=1e-12)
    assert (div["max_abs_steps"] >= 0).all()


def test_weight_statistics_are_the_same_bits_alone_with_a_reference_and_with_any_threads(pair):
    paths, _ = pair
    opts = WeightOptions()
    ref = load_checkpoint(paths["base"])
    edges = shared_edges([tensor_stats_ranges(ref)])
    runs = []
    try:
        for threads, with_ref in ((1, False), (2, False), (1, True), (2, True)):
            set_threads(threads)
            ckpt = load_checkpoint(paths["tuned"])
            kw = {"reference": ref, "cache": reference_cache(ref, opts, edges), "edges": edges, "bins_id": "x"}
            steps = {s.stage: s.compute() for s in analyze(ckpt, opts, **(kw if with_ref else {}))}
            runs.append(steps)
    finally:
        set_threads(2)
    first = pl.DataFrame(runs[0]["weights"]["weight_stats"])
    for other in runs[1:]:
        assert first.equals(pl.DataFrame(other["weights"]["weight_stats"]))  # bitwise, nulls included
    div = [pl.DataFrame(r["divergence"]["weight_divergence"]) for r in runs[2:]]
    freeze = [pl.DataFrame(r["divergence"]["layer_freeze"]) for r in runs[2:]]
    assert div[0].equals(div[1]) and freeze[0].equals(freeze[1])


def test_files_of_identical_tensors_are_one_checkpoint_with_aliases(base_model, tmp_path, ray_local):
    """Ultralytics writes one epoch's tensors to last.pt, best.pt and epochN.pt (byte-different files)."""
    from yolo_audit.model.synthetic import save_ultralytics

    weights = tmp_path / "exp" / "weights"
    args = {"name": "exp", "freeze": None}
    save_ultralytics(base_model, weights / "epoch4.pt", train_args=args, epoch=4, key="ema")
    save_ultralytics(base_model, weights / "last.pt", train_args=args, epoch=4, key="model")
    save_ultralytics(base_model, weights / "best.pt", train_args={**args, "note": "x"}, epoch=-1, key="model")
    other = deepcopy(base_model)
    with torch.no_grad():
        other.get_parameter(CONV).mul_(1.01)
    save_ultralytics(other, weights / "epoch5.pt", train_args=args, epoch=5, key="ema")
    out = tmp_path / "out"
    summary = analyze_weights([weights], out, pairwise=True, stream=io.StringIO())
    assert summary.ok and summary.distinct == 2 and len(summary.analysed) == 4
    ckpts = pl.read_parquet(out / "checkpoints" / "*.parquet").sort("epoch")
    assert ckpts.height == 2 and ckpts["epoch"].to_list() == [5, 6]  # epochs completed (file index + 1)
    assert sorted(p.rsplit("/", 1)[1] for p in ckpts["aliases"][0]) == ["best.pt", "epoch4.pt", "last.pt"]
    stats = pl.read_parquet(out / "weight_stats" / "*.parquet")
    assert stats.group_by("checkpoint_id").len()["len"].to_list() == [stats.height // 2] * 2  # once per content
    pairs = pl.read_parquet(out / "weight_divergence" / "*.parquet").select("checkpoint_id", "reference_id").unique()
    assert pairs.height == 1  # the two distinct checkpoints; no comparison of a file with its own alias


def test_alpha_only_when_asked(pair, tmp_path):
    paths, out = pair
    plain = pl.read_parquet(out / "weight_stats" / "*.parquet")
    assert plain["alpha"].null_count() == plain.height  # off by default: it costs about a second per yolov8s
    analyze_weights([paths["tuned"]], tmp_path / "a", opts=WeightOptions(alpha=True), stream=io.StringIO())
    stats = pl.read_parquet(tmp_path / "a" / "weight_stats" / "*.parquet")
    convs = stats.filter((pl.col("role") == "conv_weight") & (pl.col("numel") >= 64 * 64))
    assert convs["alpha"].null_count() == 0 and (convs["alpha"] > 1).all()
    assert (
        stats.filter(pl.col("role") != "conv_weight")["alpha"].null_count()
        == stats.filter(pl.col("role") != "conv_weight").height
    )
