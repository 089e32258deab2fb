"""Streaming per-channel activation statistics against numpy; exact merges of random shard splits; dead criteria."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_audit.stats.channels import ChannelState, dead_units, octave_bin_edges, octave_histogram


def _numpy(x: np.ndarray) -> dict[str, np.ndarray]:
    a = np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)
    return {
        "count": np.full(a.shape[0], a.shape[1]),
        "mean": a.mean(1),
        "std": a.std(1),
        "min": a.min(1),
        "max": a.max(1),
        "mean_abs": np.abs(a).mean(1),
        "frac_positive": (a > 0).mean(1),
    }


def _batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (3, 1, 4, 2):
        x = torch.randn(n, 6, 5, 7, generator=g) * torch.tensor([1, 2, 0.1, 5, 1, 1]).view(1, 6, 1, 1)
        x[:, 1] += 100.0  # large mean, small relative spread: naive sum-of-squares loses it
        x[:, 4] = 0.5  # a constant channel
        x[:, 5] = -torch.rand(n, 5, 7, generator=g)  # never positive
        out.append(x)
    return out


@pytest.fixture(params=["fused", "torch"])
def path(request, monkeypatch):
    """Both implementations: the one-pass numba kernel (CPU) and the torch reductions (used on GPUs)."""
    from yolo_audit.stats import fused

    if request.param == "torch":
        monkeypatch.setattr(fused, "available", lambda: False)
    else:
        assert fused.available(), "numba is a dependency: the fused CPU path must be importable"
    return request.param


def test_streaming_state_matches_numpy(path):
    batches = _batches()
    state = ChannelState.empty(6)
    for b in batches:
        state.update(b)
    got = state.compute()
    ref = _numpy(torch.cat(batches).numpy())
    for key, expected in ref.items():
        np.testing.assert_allclose(got[key].numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=key)
    assert got["std"][4] == 0.0


def test_two_dimensional_activations(path):
    x = torch.randn(10, 4)
    state = ChannelState.empty(4)
    state.update(x)
    np.testing.assert_allclose(state.compute()["std"].numpy(), x.double().numpy().std(0), rtol=1e-5)


def test_channels_last_batches_give_what_the_default_layout_gives(path):
    """Forward passes on the CPU run channels-last (`model.build.for_passes`), so hooks see (N, C, H, W) tensors laid
    out (N, H, W, C): the fused kernel reads them in place and visits each channel's values in the same order, so the
    state is the same bits as for the same values laid out NCHW; both match numpy. 37 channels (not a multiple of the
    kernel's 16-channel blocks) at 19 x 23 positions (not a multiple of its 256-position spans), two batches."""
    from dataclasses import fields

    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 37, 19, 23, generator=g) * 3 for n in (3, 2)]
    for b in batches:
        b[:, 2] += 100.0  # large mean, small relative spread
        b[:, 5] = 0.25  # constant
    default, last = ChannelState.empty(37), ChannelState.empty(37)
    for b in batches:
        laid_out = b.contiguous(memory_format=torch.channels_last)
        assert not laid_out.is_contiguous() and torch.equal(laid_out, b)
        default.update(b)
        last.update(laid_out)
    if path == "fused":
        for f in fields(ChannelState):
            assert torch.equal(getattr(default, f.name), getattr(last, f.name)), f.name
    got = last.compute()
    for key, expected in _numpy(torch.cat(batches).numpy()).items():
        np.testing.assert_allclose(got[key].numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=key)
    assert got["std"][5] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_shard_splits_merge_to_one_pass(seed, path):
    batches = _batches(seed)
    one = ChannelState.empty(6)
    for b in batches:
        one.update(b)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(batches))
    cut = int(rng.integers(1, len(batches)))
    left, right = ChannelState.empty(6), ChannelState.empty(6)
    for i in order[:cut]:
        left.update(batches[i])
    for i in order[cut:]:
        right.update(batches[i])
    merged = left.merge(right)
    assert torch.equal(merged.count, one.count) and torch.equal(merged.hist, one.hist)
    for key, value in one.compute().items():
        np.testing.assert_allclose(merged.compute()[key].numpy(), value.numpy(), rtol=1e-9, atol=1e-12, err_msg=key)
    empty = ChannelState.empty(6).merge(one)  # merging with an empty state changes nothing
    np.testing.assert_allclose(empty.compute()["std"].numpy(), one.compute()["std"].numpy(), rtol=1e-12)


def test_octave_histogram_bins_hold_their_values():
    x = torch.tensor([0.0, -0.0, 1e-3, 0.75, 1.0, 1.5, 3.0, -3.0, -0.2, 1e30])
    hist = octave_histogram(x)
    assert int(hist.sum()) == x.numel()
    for value in x.tolist():
        index = (np.float32(value).view(np.int32) >> 23) & 0x1FF
        lo, hi = octave_bin_edges(int(index))
        assert lo <= value < hi or (value == 0 and lo <= 0 <= hi), (value, lo, hi)
        assert hist[int(index)] >= 1


def test_octave_histogram_without_host_sync_counts_what_bincount_counts():
    """The GPU path (index_add into fixed bins, no read-back of the input's maximum) gives bincount's counts."""
    x = torch.randn(4, 7, 9, 9, generator=torch.Generator().manual_seed(3)) * 1e3
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, float("inf")])
    assert torch.equal(octave_histogram(x, sync_free=True), octave_histogram(x, sync_free=False))


def test_dead_criteria():
    stats = {
        "mean_abs": torch.tensor([1.0, 1.0, 0.01, 1.0]),
        "std": torch.tensor([1.0, 0.001, 1.0, 1.0]),
        "max": torch.tensor([2.0, 2.0, 2.0, -0.1]),
    }
    dead = dead_units(stats, tau=0.025)
    assert dead["dormant"].tolist() == [False, False, True, False]
    assert dead["constant"].tolist() == [False, True, False, False]
    assert dead["never_positive"].tolist() == [False, False, False, True]
    assert dead["dormant_score"][2] == pytest.approx(0.01 / 0.7525)


def test_streaming_states_share_one_protocol():
    from yolo_audit.stats.cka import CKAState
    from yolo_audit.stats.mergeable import Mergeable

    assert isinstance(ChannelState.empty(3), Mergeable) and isinstance(CKAState.empty(2), Mergeable)
