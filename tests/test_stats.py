"""Every statistic against an independent numpy computation on the same (materialised) tensors."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from yolo_audit.model.freeze import FROZEN_BN_DRIFT, FROZEN_EXACT, TRAINED, layer_verdict
from yolo_audit.stats.divergence import bitwise_equal, channel_divergence, divergence
from yolo_audit.stats.spectral import spectral_norms
from yolo_audit.stats.weights import SMALL, bin_range, channel_weights, histograms, tensor_stats


def _np_stats(x: np.ndarray, eps: float) -> dict[str, float]:
    x = x.astype(np.float64).ravel()
    m, s = x.mean(), x.std()
    return {
        "numel": x.size,
        "mean": m,
        "std": s,
        "min": x.min(),
        "max": x.max(),
        "abs_mean": np.abs(x).mean(),
        "l2": np.sqrt((x * x).sum()),
        "frac_near_zero": (np.abs(x) < eps).mean(),
        "kurtosis": ((x - m) ** 4).mean() / s**4 - 3.0,
    }


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(16, 3, 3, 3, generator=g) * 0.1,  # small conv, packed path
        torch.randn(64, generator=g) + 1.0,  # BN-like vector with a non-zero mean
        torch.randn(128, 64, 3, 3, generator=g) * 0.02,  # large conv, scratch path
        torch.rand(SMALL + 7, generator=g) * 3e-3,  # just over the packing threshold, many near zero
        torch.randn(5, generator=g).abs() + 100.0,  # running_var-like: large mean, small spread
    ]


def test_tensor_stats_match_numpy():
    ts = _tensors()
    cols = tensor_stats(ts, near_zero=1e-3, matrix=[t.dim() >= 2 for t in ts])
    for i, t in enumerate(ts):
        ref = _np_stats(t.numpy(), 1e-3)
        for name, expected in ref.items():
            assert cols[name][i] == pytest.approx(expected, rel=2e-4, abs=1e-6), (i, name)


def test_spectral_norm_and_stable_rank_match_numpy_svd():
    ts = _tensors()
    cols = tensor_stats(ts, matrix=[True] * len(ts))
    for i, t in enumerate(ts):
        if t.dim() < 2:
            assert cols["spectral_norm"][i] is None and cols["stable_rank"][i] is None
            continue
        w = t.reshape(t.shape[0], -1).double().numpy()
        s = np.linalg.svd(w, compute_uv=False)
        assert cols["spectral_norm"][i] == pytest.approx(s[0], rel=1e-4)
        assert cols["stable_rank"][i] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-3)


def test_spectral_norms_on_many_shapes_including_tall_and_tied_spectra():
    g = torch.Generator().manual_seed(2)
    mats = [torch.randn(r, c, generator=g) for r, c in [(64, 600), (600, 64), (256, 2304), (3, 27), (1, 5)]]
    mats.append(torch.eye(100) * 2.0)  # all singular values tied
    mats.append(torch.zeros(70, 90))
    got = spectral_norms(mats)
    for w, s in zip(mats, got, strict=True):
        expected = np.linalg.svd(w.double().numpy(), compute_uv=False)[0]
        assert s == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_blocked_gram_matrices_equal_numpy_products():
    from yolo_audit.stats.spectral import BLOCK, _gram

    g = torch.Generator().manual_seed(5)
    for r, c in [(BLOCK, 300), (BLOCK + 1, 300), (3 * BLOCK + 7, 2000), (900, 2 * BLOCK + 3), (5, 9)]:
        w = torch.randn(r, c, generator=g)
        got = _gram(w)
        x = w.double().numpy()
        expected = x @ x.T if r <= c else x.T @ x
        assert tuple(got.shape) == expected.shape
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_constant_and_empty_tensors_give_none_not_nan():
    cols = tensor_stats([torch.zeros(10), torch.zeros(0), torch.full((SMALL * 2,), 3.0)])
    assert cols["kurtosis"] == [None, None, None]
    assert cols["std"][0] == 0.0 and cols["numel"][1] == 0 and cols["mean"][1] is None
    assert cols["frac_near_zero"][0] == 1.0 and cols["mean"][2] == pytest.approx(3.0)


def test_histograms_match_numpy_with_under_and_overflow():
    ts = _tensors()
    ranges = [bin_range(float(t.min()) * 0.5, float(t.max()) * 0.5) for t in ts]  # force values out of range
    counts = histograms(ts, ranges, 16)
    for t, (lo, hi), row in zip(ts, ranges, counts, strict=True):
        x = t.double().numpy().ravel()
        edges = np.linspace(lo, hi, 17)
        inner = np.array([((x >= a) & (x < b)).sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
        assert row[0] == (x < lo).sum() and row[-1] == (x >= hi).sum()
        # a value sitting on an edge may land one bin over (positions are computed, not compared); totals are exact
        assert np.abs(row[1:-1].numpy() - inner).sum() <= 2
        assert int(row.sum()) == x.size


def test_bin_range_keeps_the_maximum_inside_and_widens_constants():
    lo, hi = bin_range(-1.0, 2.0)
    assert lo == -1.0 and hi > 2.0
    counts = histograms([torch.tensor([-1.0, 2.0])], [(lo, hi)], 4)[0]
    assert counts[0] == 0 and counts[-1] == 0 and counts.sum() == 2
    lo, hi = bin_range(0.0, 0.0)
    assert lo < 0.0 < hi
    with pytest.raises(ValueError):
        bin_range(0.0, math.inf)


def test_channel_weights_match_numpy():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 4, 3, 3, generator=g)
    gamma = torch.randn(8, generator=g)
    gamma[1] = 0.0
    beta = torch.randn(8, generator=g)
    beta[2], gamma[2] = -10.0, 0.5
    mean, var = torch.randn(8, generator=g), torch.rand(8, generator=g) + 0.1
    out = channel_weights(w, gamma, beta, mean, var, eps=1e-3)
    wn, gn, vn = w.double().numpy(), gamma.double().numpy(), var.double().numpy()
    filt = np.sqrt((wn.reshape(8, -1) ** 2).sum(1))
    fused = np.sqrt(((wn * (gn / np.sqrt(vn + 1e-3))[:, None, None, None]).reshape(8, -1) ** 2).sum(1))
    np.testing.assert_allclose(out["filter_l2"].numpy(), filt, rtol=1e-5)
    np.testing.assert_allclose(out["fused_l2"].numpy(), fused, rtol=1e-5)
    expected_dead = (np.abs(gn) < 1e-3) | (beta.double().numpy() + 3 * np.abs(gn) < -4)
    assert out["dead_by_weights"].numpy().tolist() == expected_dead.tolist()
    assert out["dead_constant"][1] and out["dead_negative"][2] and not out["dead_constant"][2]


def test_divergence_matches_numpy_and_nulls_relative_measures_on_zero_reference():
    g = torch.Generator().manual_seed(4)
    b = [torch.randn(32, 16, 3, 3, generator=g), torch.randn(40, generator=g), torch.zeros(16), torch.zeros(16)]
    a = [b[0] + 0.01 * torch.randn(b[0].shape, generator=g), b[1].clone(), torch.ones(16), torch.zeros(16)]
    a[1][3] += 0.5
    cols = divergence(a, b)
    for i in range(2):
        x, y = a[i].double().numpy().ravel(), b[i].double().numpy().ravel()
        d = np.linalg.norm(x - y)
        assert cols["l2_diff"][i] == pytest.approx(d, rel=1e-5)
        assert cols["rel_diff"][i] == pytest.approx(d / np.linalg.norm(y), rel=1e-5)
        assert cols["rms_diff"][i] == pytest.approx(d / math.sqrt(x.size), rel=1e-5)
        assert cols["cosine"][i] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-6)
        assert cols["max_abs_diff"][i] == pytest.approx(np.abs(x - y).max(), rel=1e-5)
    assert cols["rel_diff"][2] is None and cols["cosine"][2] is None and cols["l2_diff"][2] == pytest.approx(4.0)
    assert cols["identical"] == [False, False, False, True]
    assert cols["rel_diff"][3] is None and cols["cosine"][3] is None and cols["l2_diff"][3] == 0.0


def test_divergence_on_large_tensors_uses_the_same_definitions():
    g = torch.Generator().manual_seed(5)
    b = torch.randn(SMALL * 3, generator=g)
    a = b * 1.5
    cols = divergence([a], [b])
    assert cols["rel_diff"][0] == pytest.approx(0.5, rel=1e-5) and cols["cosine"][0] == pytest.approx(1.0, abs=1e-6)


def test_filter_sums_from_the_moments_and_divergence_passes_equal_separate_passes_and_numpy():
    """tensor_stats and divergence hand out each large conv's per-filter sums from their one pass: the bits the
    separate per-channel functions compute, and numpy's values; with known norms (polarisation) the columns agree."""
    g = torch.Generator().manual_seed(6)
    b = torch.randn(96, 64, 3, 3, generator=g) * 0.05 + 0.01
    a = b + 0.002 * torch.randn(b.shape, generator=g)
    row_sq: dict[int, torch.Tensor] = {}
    cols = tensor_stats([b, torch.randn(SMALL * 2, generator=g), a], row_sq=row_sq)
    assert sorted(row_sq) == [0, 2]
    ref = channel_weights(b, torch.ones(96), torch.zeros(96), torch.zeros(96), torch.ones(96), eps=1e-3)
    fed = channel_weights(b, torch.ones(96), torch.zeros(96), torch.zeros(96), torch.ones(96), eps=1e-3,
                          row_sq=row_sq[0])  # fmt: skip
    assert torch.equal(ref["filter_l2"], fed["filter_l2"])
    x, y = a.double().numpy().reshape(96, -1), b.double().numpy().reshape(96, -1)
    np.testing.assert_allclose(row_sq[2].numpy(), (x * x).sum(1), rtol=1e-12)
    row_diff: dict[int, torch.Tensor] = {}
    plain = divergence([a], [b])
    known = divergence([a], [b], norms=([cols["l2"][2]], [cols["l2"][0]]), row_diff=row_diff)
    np.testing.assert_allclose(row_diff[0].numpy(), ((x - y) ** 2).sum(1), rtol=1e-12)
    diff, rel = channel_divergence(a, b)
    fed_diff, fed_rel = channel_divergence(a, b, ref_norms=torch.from_numpy(np.sqrt((y * y).sum(1))),
                                           diff_sq=row_diff[0])  # fmt: skip
    assert torch.equal(diff, fed_diff)
    np.testing.assert_allclose(fed_rel.numpy(), rel.numpy(), rtol=1e-12)
    for name in ("l2_diff", "rel_diff", "max_abs_diff"):
        assert known[name] == plain[name], name
    assert known["cosine"][0] == pytest.approx(plain["cosine"][0], abs=1e-12)


def test_serial_kernels_give_the_parallel_kernels_bits_and_run_side_by_side_in_threads():
    """A task in a thread of the in-process engine runs numba's kernels serially: the same bits as the parallel ones
    (whatever numba's thread count), and two threads may run them at once."""
    from concurrent.futures import ThreadPoolExecutor

    from yolo_audit.runtime.devices import one_cpu, set_threads
    from yolo_audit.stats import exact

    g = torch.Generator().manual_seed(9)
    tensors = [torch.randn(n, generator=g) * 3 + 1 for n in (SMALL * 3 + 7, 1_000_003, 64 * 4801)]
    rows = torch.randn(96, 1153, generator=g)

    def measure() -> list:
        out = [exact.moments(t.numpy(), 1e-3) + exact.pair_sums(t.numpy(), (t * 0.9).numpy())
               + exact.histogram(t.numpy(), -2.0, 3.0, 64).tolist() for t in tensors]  # fmt: skip
        return [*out, exact.row_sums(rows.numpy(), (rows * 1.1).numpy()).tolist()]

    before = torch.get_num_threads()
    try:
        set_threads(2)
        parallel = measure()
        set_threads(1)
        assert measure() == parallel

        def alone(_: int) -> list:
            with one_cpu():
                return measure()

        with ThreadPoolExecutor(2) as pool:
            assert all(r == parallel for r in pool.map(alone, range(6)))
    finally:
        set_threads(before)
    x = tensors[1].double().numpy()
    assert parallel[1][0] == pytest.approx(x.mean(), rel=1e-12) and parallel[1][1] == pytest.approx(x.var(), rel=1e-12)


def test_channel_divergence_matches_numpy_and_marks_zero_filters():
    g = torch.Generator().manual_seed(6)
    b = torch.randn(6, 3, 3, 3, generator=g)
    b[4] = 0.0
    a = b + torch.randn(b.shape, generator=g) * 0.1
    diff, rel = channel_divergence(a, b)
    d = np.sqrt(((a - b).double().numpy().reshape(6, -1) ** 2).sum(1))
    np.testing.assert_allclose(diff.numpy(), d, rtol=1e-5)
    ref = np.sqrt((b.double().numpy().reshape(6, -1) ** 2).sum(1))
    np.testing.assert_allclose(np.delete(rel.numpy(), 4), np.delete(d / np.where(ref > 0, ref, 1), 4), rtol=1e-5)
    assert math.isnan(float(rel[4]))


def test_bitwise_equal_tells_signed_zeros_apart():
    assert bitwise_equal(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert not bitwise_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not bitwise_equal(torch.tensor([1.0]), torch.tensor([1.0 + 1e-7]))


def test_layer_verdicts():
    assert layer_verdict([True, True], [True]) == FROZEN_EXACT
    assert layer_verdict([True], [False, True]) == FROZEN_BN_DRIFT
    assert layer_verdict([False, True], [True]) == TRAINED
    assert layer_verdict([], []) == FROZEN_EXACT


def _np_powerlaw(x: np.ndarray) -> tuple[float, float]:
    """Clauset et al.'s continuous fit written out: every distinct value but the largest as xmin, MLE alpha, the
    smallest KS distance (empirical CDF i/n at the i-th smallest tail value) wins."""
    x = np.sort(x[x > 0])
    best = (np.inf, np.nan)
    for xmin in np.unique(x)[:-1]:
        tail = x[x >= xmin]
        alpha = 1 + tail.size / np.log(tail / xmin).sum()
        d = np.abs(1 - (tail / xmin) ** (1 - alpha) - np.arange(tail.size) / tail.size).max()
        best = min(best, (d, alpha))
    return best[1], best[0]


def test_weightwatcher_alpha_from_an_independent_esd():
    """WeightWatcher 0.7's conv handling: every 3x3 slice W[:, :, i, j] (N x M, N >= M) scaled by sqrt(9/2), squared
    singular values of all slices pooled, then the power-law fit; alpha_weighted = alpha * log10(lambda_max)."""
    from yolo_audit.stats.spectral import alphas

    g = torch.Generator().manual_seed(11)
    conv = torch.distributions.StudentT(3.0).sample((48, 24, 3, 3)) * 0.05  # heavy-tailed, like trained weights
    linear = torch.randn(80, 60, generator=g)
    w = conv.double().numpy()
    evals = np.concatenate([np.linalg.svd(w[:, :, i, j] * np.sqrt(9 / 2), compute_uv=False) ** 2
                            for i in range(3) for j in range(3)])  # fmt: skip
    alpha, _ = _np_powerlaw(evals)
    (got, weighted), (lin_alpha, _), (tiny, _) = alphas([conv, linear, torch.randn(8, 4)])
    assert got == pytest.approx(alpha, rel=1e-9)
    assert weighted == pytest.approx(alpha * np.log10(evals.max()), rel=1e-9)
    lin_ref, _ = _np_powerlaw(np.linalg.svd(linear.double().numpy(), compute_uv=False) ** 2)  # 2-D: one matrix
    assert lin_alpha == pytest.approx(lin_ref, rel=1e-9)
    assert tiny is None  # 4 eigenvalues: too few for a fit (WeightWatcher's minimum is 50)


KERNELS = r"""
import json, sys
import numpy as np
from yolo_audit.stats import exact
x = np.random.default_rng(3).standard_normal(100_003).astype(np.float32)
values = exact.moments(x, 1e-3)
print(json.dumps({"values": [float(v).hex() for v in values],
                  "registries": "numba.np.random.legacy" in sys.modules}))
"""


def test_cached_kernels_load_without_numbas_registries_and_give_the_bits_just_compiled(tmp_path):
    """A cache miss compiles as numba always does (every registry loaded); the next process loads the machine code
    with the runtime alone (no registries: the ~0.16 s `stats/jit.py` saves) and computes the same bits."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", KERNELS], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    compiled, loaded = run(), run()
    assert compiled["registries"] and not loaded["registries"]
    assert any(tmp_path.rglob("*.nbi")), "numba wrote no cache index where NUMBA_CACHE_DIR points"
    assert loaded["values"] == compiled["values"]
    x = np.random.default_rng(3).standard_normal(100_003).astype(np.float32).astype(np.float64)
    mean, m2 = float.fromhex(loaded["values"][0]), float.fromhex(loaded["values"][1])
    assert mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-15) and m2 == pytest.approx(x.var(), rel=1e-12)
