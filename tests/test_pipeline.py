"""What feeds the passes and how they run: images decoded ahead in threads, in order, once per task for every
checkpoint of the task, giving the serial loader's tensors bit for bit; analysis passes in true float32 (TF32 off,
cuDNN deterministic) only while they run, recorded in the tables."""

from __future__ import annotations

import io

import polars as pl
import pytest
import torch
from conftest import moved, save

from yolo_audit.analyses import images as pipeline
from yolo_audit.analyses.activations.job import ActivationOptions
from yolo_audit.analyses.activations.plan import analyze_activations
from yolo_audit.analyses.similarity.plan import SimilarityOptions, analyze_similarity
from yolo_audit.runtime.devices import _precision_knobs
from yolo_audit.study.synth import make_dataset

IMGSZ = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, base_model):
    root = tmp_path_factory.mktemp("pipeline")
    data = make_dataset(root / "data", images=16, imgsz=80, domain="B", seed=4).parent / "images"
    ckpts = [save(base_model, root / "base.pt", name="base")]
    ckpts += [save(moved(base_model, i, first=12), root / f"r{i}" / "last.pt", name=f"r{i}") for i in (1, 2)]
    return root, data, ckpts


def test_prefetched_batches_are_the_serial_loader_s_tensors_in_order(setup, tmp_path):
    _, data, _ = setup
    files = pipeline.list_images(data)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths = files[:5] + [str(broken)] + files[5:12]
    groups = pipeline.batches(paths, 4)
    serial = [pipeline.load_batch(g, IMGSZ) for g in groups]
    for workers in (0, 1, 4):
        got = list(pipeline.prefetched(groups, IMGSZ, torch.device("cpu"), workers=workers, ahead=2))
        assert [g for g, _, _ in got] == groups  # never reordered, never dropped
        for (_, batch, failed), (expected, expected_failed) in zip(got, serial, strict=True):
            assert failed == expected_failed and torch.equal(batch, expected), workers
    assert sum(f for _, f in serial) == 1 and serial[1][0].shape[0] == 3  # the unreadable file skipped, counted


def test_each_image_is_decoded_once_per_task_for_all_its_checkpoints(setup, tmp_path, monkeypatch):
    _, data, ckpts = setup
    decoded: list[str] = []
    original = pipeline._decode_into

    def counting(path, letterbox, slot):
        decoded.append(path)
        return original(path, letterbox, slot)

    monkeypatch.setattr(pipeline, "_decode_into", counting)
    opts = ActivationOptions(imgsz=IMGSZ, batch=4, maps=0)
    summary = analyze_activations(ckpts[1:], data, tmp_path / "out", reference=ckpts[0], opts=opts, engine="local",
                                  stream=io.StringIO())  # fmt: skip
    assert summary.ok and len(summary.checkpoint_ids) == 3
    assert sorted(decoded) == sorted(pipeline.list_images(data))  # 16 images, 3 checkpoints: 16 decodes


def test_statistics_are_the_same_bits_with_any_number_of_decoding_threads(setup, tmp_path, monkeypatch):
    _, data, ckpts = setup
    frames = []
    for workers in (0, 3):
        monkeypatch.setattr(pipeline, "decode_workers", lambda device, n=workers: n)
        out = tmp_path / f"w{workers}"
        opts = ActivationOptions(imgsz=IMGSZ, batch=4, maps=2)
        assert analyze_activations(ckpts, data, out, opts=opts, engine="local", stream=io.StringIO()).ok
        sim = SimilarityOptions(imgsz=IMGSZ, batch=4)
        assert analyze_similarity(ckpts, data, out, opts=sim, engine="local", stream=io.StringIO()).ok
        frames.append({t: pl.read_parquet(out / t / "*.parquet").drop("seconds", strict=False)
                       for t in ("channel_stats", "activation_hist", "feature_maps", "activation_passes",
                                 "similarity")})  # fmt: skip
    for table in frames[0]:
        keys = [c for c, k in frames[0][table].schema.items() if not isinstance(k, pl.List)]
        assert frames[0][table].sort(keys).equals(frames[1][table].sort(keys)), table


def test_passes_run_in_exact_float32_and_the_settings_come_back(setup, tmp_path, monkeypatch):
    """During every analysis pass TF32 is off (cuDNN convolutions and matmuls) and cuDNN deterministic; afterwards the
    settings are what they were; the tables record the precision."""
    _, data, ckpts = setup
    from yolo_audit.analyses.activations import job as activations_job
    from yolo_audit.analyses.similarity import job as similarity_job

    before = [(owner, name, getattr(owner, name)) for owner, name, _ in _precision_knobs()]
    seen: list[list[object]] = []

    def watched(place):
        def wrapper(model, device):
            placed = place(model, device)
            placed.register_forward_pre_hook(lambda m, i: seen.append([getattr(o, n) for o, n, _ in before]))
            return placed

        return wrapper

    for module in (activations_job, similarity_job):
        monkeypatch.setattr(module, "for_passes", watched(module.for_passes))
    opts = ActivationOptions(imgsz=IMGSZ, batch=4, maps=2)
    assert analyze_activations(ckpts[:2], data, tmp_path / "o", opts=opts, engine="local", stream=io.StringIO()).ok
    assert analyze_similarity(ckpts[:2], data, tmp_path / "o", opts=SimilarityOptions(imgsz=IMGSZ, batch=4),
                              engine="local", stream=io.StringIO()).ok  # fmt: skip
    exact = [value for _, _, value in _precision_knobs()]
    assert len(seen) >= 2 * 4 + 2 + 4 and all(values == exact for values in seen)  # every pass, both analyses
    assert [getattr(o, n) for o, n, _ in before] == [v for _, _, v in before]  # restored
    assert "ieee" in exact and True in exact  # fp32_precision ieee, cudnn.deterministic
    for table in ("activation_passes", "similarity"):
        assert set(pl.read_parquet(tmp_path / "o" / table / "*.parquet")["precision"]) == {"fp32"}


def test_decoding_threads_follow_the_device():
    assert pipeline.decode_workers(torch.device("cpu")) == 1
    assert 1 <= pipeline.decode_workers(torch.device("cuda")) <= 8
