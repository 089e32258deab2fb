"""Minibatch CKA: properties against numpy, exact shard merges, and real trained checkpoints end to end."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
import torch
from conftest import run_tiny_study

from yolo_audit.analyses.similarity.plan import SimilarityOptions, analyze_similarity
from yolo_audit.errors import AuditError
from yolo_audit.stats.cka import CKAState, hsic_matrix
from yolo_audit.study.synth import make_dataset


def _np_hsic1(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased HSIC_1 written out from the paper's formula, with explicit centring."""
    n = x.shape[0]
    k = (x - x.mean(0)) @ (x - x.mean(0)).T
    ll = (y - y.mean(0)) @ (y - y.mean(0)).T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(ll, 0)
    one = np.ones(n)
    return (
        (k * ll).sum() + (one @ k @ one) * (one @ ll @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ ll @ one
    ) / (n * (n - 3))


def _cka(*features: torch.Tensor, batch: int) -> torch.Tensor:
    state = CKAState.empty(len(features))
    for start in range(0, features[0].shape[0], batch):
        state.update([f[start : start + batch] for f in features])
    return state.compute().cka


def test_hsic_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 5, generator=g), torch.randn(9, 7, generator=g)
    from yolo_audit.stats.cka import centred_gram

    h = hsic_matrix(torch.stack([centred_gram(x), centred_gram(y)]))
    assert float(h[0, 1]) == pytest.approx(_np_hsic1(x.double().numpy(), y.double().numpy()), rel=1e-10)
    assert float(h[0, 0]) == pytest.approx(_np_hsic1(x.double().numpy(), x.double().numpy()), rel=1e-10)


def test_cka_properties():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 20, generator=g) + 50.0  # a large offset: centring must remove it
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    rotated_scaled = (x.double() @ q * 7.5).float()
    other = torch.randn(64, 30, generator=g)
    cka = _cka(x, rotated_scaled, other, batch=8)
    assert float(cka[0, 0]) == pytest.approx(1.0, abs=1e-9)
    assert float(cka[0, 1]) == pytest.approx(1.0, abs=1e-5)  # orthogonal transform and isotropic scaling
    assert abs(float(cka[0, 2])) < 0.3  # unrelated features


def test_minibatch_close_to_full_batch_and_exact_with_one_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, 10, generator=g)
    y = x @ torch.randn(10, 10, generator=g) + 0.5 * torch.randn(48, 10, generator=g)
    xs, ys = x.double().numpy(), y.double().numpy()
    full = _np_hsic1(xs, ys) / np.sqrt(_np_hsic1(xs, xs) * _np_hsic1(ys, ys))
    assert float(_cka(x, y, batch=48)[0, 1]) == pytest.approx(full, rel=1e-9)
    assert float(_cka(x, y, batch=8)[0, 1]) == pytest.approx(full, abs=0.1)


def test_layers_that_do_not_vary_get_null_and_a_reason():
    g = torch.Generator().manual_seed(3)
    varying = torch.randn(16, 8, generator=g)
    constant = torch.full((16, 8), 3.0)  # identical for every image
    state = CKAState.empty(2)
    for start in range(0, 16, 8):
        state.update([varying[start : start + 8], constant[start : start + 8]])
    result = state.compute()
    cka, reasons = result.cka, result.reasons
    assert torch.isnan(cka[0, 1]) and torch.isnan(cka[1, 1]) and float(cka[0, 0]) == pytest.approx(1.0)
    assert "does not vary" in reasons[0][1] and reasons[0][0] is None


def test_merge_of_shards_equals_one_pass():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 6, generator=g), torch.randn(32, 6, generator=g)
    one, a, b = CKAState.empty(2), CKAState.empty(2), CKAState.empty(2)
    for start in range(0, 32, 8):
        one.update([x[start : start + 8], y[start : start + 8]])
        (a if start < 16 else b).update([x[start : start + 8], y[start : start + 8]])
    merged = a.merge(b)
    assert torch.allclose(merged.hsic, one.hsic, rtol=1e-12) and merged.images == 32 and merged.batches == 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    """A tiny pretrained base and two fine-tunes of it: real trained checkpoints."""
    tmp = tmp_path_factory.mktemp("sim")
    at64 = {"data": {"synthetic": {"domain": "A", "images": 8, "imgsz": 64}}, "epochs": 2, "imgsz": 64, "batch": 4}
    assert run_tiny_study(
        tmp, tmp / "out", pretrain=at64, data={"synthetic": {"domain": "B", "images": 8, "imgsz": 64, "seed": 1}},
        train={"epochs": 2, "imgsz": 64, "batch": 4}, analyses=[],
        variants=[{"name": "none", "freeze": 0}, {"name": "head", "freeze": "all"}],
    ).ok  # fmt: skip
    ckpts = [tmp / "out" / "train" / r / "weights" / "last.pt" for r in ("base", "none-s0", "head-s0")]
    images = make_dataset(tmp / "imgs", images=16, imgsz=64, domain="B", seed=5).parent / "images"
    return tmp, ckpts, images


def test_trained_checkpoints_give_finite_cka_in_range_and_shards_merge(trained):
    tmp, ckpts, images = trained
    opts = SimilarityOptions(imgsz=64, batch=4)
    one = analyze_similarity(ckpts, images, tmp / "one", opts=opts, shards_per_run=1, stream=io.StringIO())
    two = analyze_similarity(ckpts, images, tmp / "two", opts=opts, shards_per_run=2, stream=io.StringIO())
    assert one.ok and two.ok
    a = pl.read_parquet(tmp / "one" / "similarity" / "*.parquet").sort("checkpoint_a", "checkpoint_b", "module_a")
    b = pl.read_parquet(tmp / "two" / "similarity" / "*.parquet").sort("checkpoint_a", "checkpoint_b", "module_a")
    defined = a.filter(pl.col("cka").is_not_null())
    # this barely trained tiny model collapses in depth: from layer ~9 its features vary between images by 1e-14 of
    # their energy or less (fp32 rounding is ~4e-15), so null with a reason there is right; earlier layers must count
    assert a.filter(pl.col("layer_a") <= 8)["cka"].null_count() == 0
    assert a.filter(pl.col("cka").is_null())["reason"].null_count() == 0
    assert defined["cka"].is_finite().all() and defined["cka"].min() >= -1e-6 and defined["cka"].max() <= 1 + 1e-6
    selfs = defined.filter(pl.col("checkpoint_a") == pl.col("checkpoint_b"))
    assert np.allclose(selfs["cka"].to_numpy(), 1.0, atol=1e-9)
    _same_values(a, b)
    assert set(a["n_images"]) == {16} and set(a["n_batches"]) == {4}
    assert np.allclose(selfs["procrustes"].to_numpy(), 0.0) and np.allclose(selfs["cka_se"].to_numpy(), 0.0)
    shapes = defined.filter(pl.col("checkpoint_a") != pl.col("checkpoint_b"))["procrustes"].drop_nulls()
    assert shapes.len() and shapes.min() >= 0 and shapes.max() <= np.pi / 2 + 1e-9
    # the all-but-head fine-tune keeps layers 0-21 identical to the base: CKA 1 there, lower in the head
    ck = pl.read_parquet(tmp / "one" / "checkpoints" / "*.parquet").select("checkpoint_id", "run")
    named = a.join(ck.rename({"checkpoint_id": "checkpoint_a", "run": "run_a"}), on="checkpoint_a").join(
        ck.rename({"checkpoint_id": "checkpoint_b", "run": "run_b"}), on="checkpoint_b"
    )
    frozen = named.filter(pl.col("run_a").is_in(["base", "head-s0"]) & pl.col("run_b").is_in(["base", "head-s0"])
                          & (pl.col("run_a") != pl.col("run_b")) & (pl.col("layer_a") < 22))  # fmt: skip
    assert np.allclose(frozen["cka"].drop_nulls().to_numpy(), 1.0, atol=1e-6)


def _same_values(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """CKA, its standard error, its chance baseline and Procrustes, whatever the sharding, to float64 rounding: a
    standard error near 0 (CKA ~1) is the root of a sum that cancels, and an angle near 0 is arccos near 1, where
    rounding of ~1e-16 becomes ~1e-8 (in CKA units, in radians)."""
    for column, atol in (("cka", 1e-12), ("cka_se", 1e-7), ("cka_chance", 1e-12), ("procrustes", 1e-7)):
        assert a[column].is_null().to_list() == b[column].is_null().to_list(), column
        np.testing.assert_allclose(a[column].fill_null(-9).to_numpy(), b[column].fill_null(-9).to_numpy(), rtol=1e-9,
                                   atol=atol, err_msg=column)  # fmt: skip


def test_summary_labels_stay_unique_when_checkpoints_share_a_run():
    """Epoch checkpoints of one run share its name: each pair must keep its own summary row; labels read as the
    weights summary's `run@epoch`, then the file's name, then the id's start where they would repeat."""
    from yolo_audit.analyses.similarity.plan import _by_group
    from yolo_audit.results.labels import checkpoint_labels

    def row(cid: str, run: str | None, epoch: int | None, path: str | None = None) -> dict[str, object]:
        return {"checkpoint_id": cid, "run": run, "epoch": epoch, "path": path}

    ids = ["a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64, "f" * 64, "0" * 64, "1" * 64]
    rows = [row(ids[0], "base", -1, "/w/base.pt"), row(ids[1], "r", None, "/w/r/last.pt"), row(ids[1], "r", 1),
            row(ids[1], "r", 0), row(ids[2], "r", 2, "/w/r/epoch1.pt"), row(ids[3], "r", 2, "s3://b/q/epoch1.pt"),
            row(ids[4], None, None), row(ids[5], None, None, "/x/model.safetensors"),
            row(ids[6], "same", None, "/s/a.pt"), row(ids[7], "same", None, "/s/b.pt")]  # fmt: skip
    labels = checkpoint_labels(rows)
    assert labels == {ids[0]: "base", ids[1]: "r@1", ids[2]: f"r@2 epoch1.pt {ids[2][:8]}",
                      ids[3]: f"r@2 epoch1.pt {ids[3][:8]}", ids[4]: ids[4][:8], ids[5]: "model.safetensors",
                      ids[6]: "same a.pt", ids[7]: "same b.pt"}  # fmt: skip
    pairs = [(ids[1], ids[2], 0.9), (ids[1], ids[3], 0.5), (ids[2], ids[3], 0.7)]
    table = {"checkpoint_a": [a for a, _, _ in pairs], "checkpoint_b": [b for _, b, _ in pairs],
             "module_a": ["model.1"] * 3, "module_b": ["model.1"] * 3, "cka": [c for _, _, c in pairs]}  # fmt: skip
    for names in (labels, {i: "r" for i in ids}):  # ours, and run names as ledgers recorded them before
        summary = _by_group(table, {"model.1": "backbone"}, names, against="all").sort("backbone")
        assert summary["backbone"].to_list() == [0.5, 0.7, 0.9]
        assert len(set(zip(summary["a"], summary["b"], strict=True))) == 3
    assert set(_by_group(table, {"model.1": "backbone"}, labels, against="all")["a"]) == {"r@1", labels[ids[2]]}
    # by default each checkpoint against the reference (the first checkpoint) only: one reference per answer
    assert _by_group(table, {"model.1": "backbone"}, labels).select("a", "b").rows() == [
        ("r@1", labels[ids[2]]),
        ("r@1", labels[ids[3]]),
    ]


def test_cross_layer_and_bad_batch(trained):
    tmp, ckpts, images = trained
    opts = SimilarityOptions(imgsz=64, batch=4, cross_layer=True)
    analyze_similarity(ckpts[:1], images, tmp / "x", opts=opts, max_images=8, stream=io.StringIO())
    x = pl.read_parquet(tmp / "x" / "similarity" / "*.parquet")
    modules = x["module_a"].n_unique()
    assert x.height == modules * modules and (x["module_a"] != x["module_b"]).any()
    with pytest.raises(AuditError, match="at least 4"):
        analyze_similarity(ckpts, images, tmp / "y", opts=SimilarityOptions(batch=3))


def test_cka_is_the_same_for_any_number_of_shards_with_an_uneven_image_count(trained):
    """15 images, batch 4: batches are images 0-3, 4-7, 8-11 (12-14 is short and skipped), however the work is split."""
    tmp, ckpts, images = trained
    opts = SimilarityOptions(imgsz=64, batch=4)
    frames = []
    for shards in (1, 3):
        out = tmp / f"uneven-{shards}"
        analyze_similarity(ckpts, images, out, opts=opts, max_images=15, shards_per_run=shards, stream=io.StringIO())
        frames.append(
            pl.read_parquet(out / "similarity" / "*.parquet").sort("checkpoint_a", "checkpoint_b", "module_a")
        )
    a, b = frames
    assert set(a["n_images"]) == set(b["n_images"]) == {12} and set(a["n_batches"]) == {3}
    _same_values(a, b)
    assert a["procrustes"].drop_nulls().len() > 0 and set(a["precision"]) == {"fp32"}


def test_channel_means_are_float64_means_in_either_layout():
    """`--pool avg` features: per image and channel, the float64 mean of the float32 activations, in the default
    layout and channels-last (how CPU passes run), in chunks smaller than a channel or holding many; numpy oracle."""
    from yolo_audit.analyses.similarity import job

    g = torch.Generator().manual_seed(0)
    for shape in ((4, 3, 300, 301), (5, 70, 9, 11), (4, 6, 7)):
        x = torch.randn(*shape, generator=g) * 0.01 + 1e4  # variation at 1e-6 of the size: float32 sums lose it
        expected = x.numpy().astype(np.float64).reshape(shape[0], shape[1], -1).mean(axis=2)
        layouts = [x, x.contiguous(memory_format=torch.channels_last)] if x.dim() == 4 else [x]
        for laid_out in layouts:
            got = job._features(laid_out, "avg")
            assert got.dtype == torch.float64 and got.shape == shape[:2]
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-15, atol=0)
    flat = job._features(x, "none")
    assert flat.dtype == torch.float64 and torch.equal(flat, x.double().reshape(x.shape[0], -1))


def test_avg_pooling_agrees_with_a_float64_oracle(trained):
    """Channel means taken in float64 from the float32 activations, HSIC per batch in numpy: the tool agrees to
    ~1e-12 (float32 pooling would not, where features vary by 1e-13 of their size)."""
    from yolo_audit.analyses.images import list_images, load_batch
    from yolo_audit.model.build import build_module, for_passes
    from yolo_audit.model.checkpoint import load_checkpoint
    from yolo_audit.runtime.devices import set_threads
    from yolo_audit.runtime.tasks import torch_threads

    tmp, ckpts, images = trained
    opts = SimilarityOptions(imgsz=64, batch=4)
    # the activations must be the same bits on both sides: float32 convolutions may round differently with another
    # thread count (on some CPUs) or memory format, so the tool runs in this process on one thread, and the oracle
    # below does too, with the network placed as the tool places it (`for_passes`: channels-last on the CPU)
    analyze_similarity(ckpts[:2], images, tmp / "oracle", opts=opts, max_images=8, engine="local", num_cpus=1,
                       stream=io.StringIO())  # fmt: skip
    before = torch_threads()
    set_threads(1)
    got = pl.read_parquet(tmp / "oracle" / "similarity" / "*.parquet").filter(
        (pl.col("checkpoint_a") != pl.col("checkpoint_b")) & pl.col("module_a").is_in(["model.2", "model.6"])
    )
    feats = {}
    for i, path in enumerate(ckpts[:2]):
        model = for_passes(build_module(load_checkpoint(path)), torch.device("cpu"))
        for name in ("model.2", "model.6"):
            kept = []
            hook = model.get_submodule(name).register_forward_hook(lambda m, a, o, kept=kept: kept.append(o))
            with torch.inference_mode():
                for start in (0, 4):
                    model(load_batch(list_images(images)[start : start + 4], 64)[0])
            hook.remove()
            feats[i, name] = [o.numpy().astype(np.float64).mean(axis=(2, 3)) for o in kept]
    set_threads(before)
    for name, cka in got.select("module_a", "cka").iter_rows():
        xy = sum(_np_hsic1(x, y) for x, y in zip(feats[0, name], feats[1, name], strict=True))
        xx = sum(_np_hsic1(x, x) for x in feats[0, name])
        yy = sum(_np_hsic1(y, y) for y in feats[1, name])
        assert cka == pytest.approx(xy / np.sqrt(xx * yy), rel=1e-10), name


def test_another_architecture_is_refused_with_an_error_row(trained):
    from conftest import save

    from yolo_audit.model.synthetic import build_model

    tmp, ckpts, images = trained
    small = save(build_model("yolov8s.yaml", seed=0), tmp / "arch" / "v8s.pt", name="v8s")
    summary = analyze_similarity([ckpts[0], small], images, tmp / "arch-out", opts=SimilarityOptions(imgsz=64, batch=4),
                                 max_images=8, stream=io.StringIO())  # fmt: skip
    assert not summary.ok and summary.errors[0].stage == "align" and "architecture differs" in summary.errors[0].message
    rows = pl.read_parquet(tmp / "arch-out" / "similarity" / "*.parquet")
    assert rows["checkpoint_a"].n_unique() == 1 and (rows["checkpoint_a"] == rows["checkpoint_b"]).all()
    errors = pl.read_parquet(tmp / "arch-out" / "errors" / "*.parquet")
    assert errors["stage"].to_list() == ["align"] and str(small) in errors["path"][0]


def _latent_features(seed: int, n: int = 256) -> list[torch.Tensor]:
    """Representations of n images sharing a latent to different degrees (and one unrelated), with offsets."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    reps = [z @ torch.randn(6, d, generator=g, dtype=torch.float64) + noise * torch.randn(n, d, generator=g,
            dtype=torch.float64) + 5.0 for d, noise in ((8, 0.3), (12, 1.0), (10, 3.0), (16, 0.1))]  # fmt: skip
    return [*reps, torch.randn(n, 9, generator=g, dtype=torch.float64)]


def _state(features: list[torch.Tensor], batch: int) -> CKAState:
    state = CKAState.empty(len(features))
    for start in range(0, features[0].shape[0], batch):
        state.update([f[start : start + batch] for f in features], seed=f"batch {start}")
    return state


def _np_cka(x: np.ndarray, y: np.ndarray) -> float:
    return _np_hsic1(x, y) / np.sqrt(_np_hsic1(x, x) * _np_hsic1(y, y))


def test_cka_standard_error_covers_the_full_batch_oracle():
    """Over several seeds, the full-batch unbiased CKA of all images (numpy) lies within 3 standard errors of the
    minibatch estimate in at least 95% of cells."""
    inside = total = 0
    for seed in range(6):
        features = _latent_features(seed)
        result = _state(features, batch=16).compute()
        for p in range(len(features)):
            for q in range(p + 1, len(features)):
                oracle = _np_cka(features[p].numpy(), features[q].numpy())
                se = float(result.se[p, q])
                assert se > 0
                inside += abs(float(result.cka[p, q]) - oracle) <= 3 * se
                total += 1
    assert inside / total >= 0.95, (inside, total)


def test_the_linearised_jackknife_is_the_leave_one_batch_out_jackknife():
    """The standard error computed from sums of products equals the jackknife's spread of the leave-one-batch-out
    estimates (numpy, per-batch HSIC kept) to first order: within 10% with 32 batches."""
    from yolo_audit.stats.cka import centred_gram

    features = _latent_features(7, n=256)
    batch = 8
    per_batch = []
    for start in range(0, 256, batch):
        grams = torch.stack([centred_gram(f[start : start + batch]) for f in features])
        per_batch.append(hsic_matrix(grams).numpy())
    h = np.stack(per_batch)
    total, b = h.sum(0), len(h)
    rest = total[None] - h
    diag = np.einsum("bii->bi", rest)
    loo = rest / np.sqrt(diag[:, :, None] * diag[:, None, :])
    exact = np.sqrt((b - 1) / b * ((loo - loo.mean(0)) ** 2).sum(0))
    got = _state(features, batch).compute().se.numpy()
    off = ~np.eye(len(features), dtype=bool)
    np.testing.assert_allclose(got[off], exact[off], rtol=0.1)


def test_unrelated_features_read_zero_within_two_standard_errors_and_the_chance_baseline_is_zero():
    g = torch.Generator().manual_seed(11)
    features = [torch.randn(192, d, generator=g, dtype=torch.float64) for d in (5, 8, 13, 21)]
    result = _state(features, batch=16).compute()
    cells = [(p, q) for p in range(4) for q in range(p + 1, 4)]
    near = sum(abs(float(result.cka[p, q])) <= 2 * float(result.se[p, q]) for p, q in cells)
    assert near >= len(cells) - 1, [(float(result.cka[p, q]), float(result.se[p, q])) for p, q in cells]
    related = _state(_latent_features(3), batch=16).compute()
    assert float(related.cka[0, 3]) > 0.5  # strongly related representations ...
    assert abs(float(related.chance[0, 3])) < 2 * float(related.se[0, 3]) + 0.05  # ... read ~0 once images shuffled
    assert abs(float(related.chance[0, 0])) < 0.2  # even a representation against itself


def test_procrustes_matches_a_full_batch_numpy_oracle_for_any_batching():
    from yolo_audit.stats.procrustes import ProcrustesState

    g = torch.Generator().manual_seed(5)
    z = torch.randn(70, 4, generator=g, dtype=torch.float64)
    x = z @ torch.randn(4, 6, generator=g, dtype=torch.float64) + 1e6  # a large offset: centring must not lose it
    x[:, 0] = 3e5 + 1e-3 * torch.randn(70, generator=g, dtype=torch.float64)  # a near-constant feature
    y = z @ torch.randn(4, 9, generator=g, dtype=torch.float64) + 0.5 * torch.randn(70, 9, generator=g,
                                                                                     dtype=torch.float64)  # fmt: skip
    xs, ys = x.numpy() - x.numpy().mean(0), y.numpy() - y.numpy().mean(0)
    xs, ys = xs / np.linalg.norm(xs), ys / np.linalg.norm(ys)
    oracle = np.arccos(np.linalg.svd(xs.T @ ys, compute_uv=False).sum())
    assert 0.1 < oracle < 1.4
    for batches in ((70,), (8,) * 8 + (6,), (3, 30, 1, 36)):
        states, start = [], 0
        for size in batches:
            state = ProcrustesState.empty([(0, 1)])
            state.update([x[start : start + size], y[start : start + size]])
            states.append(state)
            start += size
        merged = states[0]
        for other in states[1:]:  # shards merged in order ...
            merged = merged.merge(other)
        assert merged.compute()[(0, 1)] == pytest.approx(oracle, abs=1e-6)
        tree = states[-1]
        for other in reversed(states[:-1]):  # ... or the other way round
            tree = other.merge(tree)
        assert tree.compute()[(0, 1)] == pytest.approx(oracle, abs=1e-6)
    same = ProcrustesState.empty([(0, 1)])
    same.update([x, x @ torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0] * 3])
    assert same.compute()[(0, 1)] == pytest.approx(0.0, abs=1e-6)  # a rotation and a scale: distance 0


def test_the_command_prints_cka_with_its_standard_error_against_the_reference_and_warns_on_few_images(trained):
    from typer.testing import CliRunner

    from yolo_audit.cli import app

    tmp, ckpts, images = trained
    result = CliRunner().invoke(app, ["similarity", *map(str, ckpts), "--data", str(images), "--imgsz", "64",
                                      "--batch", "4", "--out", str(tmp / "printed")])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = result.stdout.split("CKA is lowest:")[1].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("│ base")]
    assert len(rows) == 2 and all(" ± " in row for row in rows)  # base vs each fine-tune, not fine-tune vs fine-tune
    assert "warning: CKA from 16 images (fewer than 64)" in result.stderr
    from yolo_audit.report import write_report

    page = write_report(tmp / "printed", tmp / "printed.html").read_text()
    section = page.split('<section id="similarity">', 1)[1].split("</section>", 1)[0]
    assert 'alt="CKA heatmap"' in section and 'alt="Procrustes heatmap"' in section
    assert "each run against the base, over 16 images" in section
