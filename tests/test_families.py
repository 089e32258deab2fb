"""Every Ultralytics model family the pinned version builds from its packaged yaml: the profile read from the model
itself (backbone and head as the yaml declares them), and weights, activations, similarity and the report on each."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from conftest import save

from yolo_audit.analyses.activations.job import ActivationOptions
from yolo_audit.analyses.activations.plan import analyze_activations
from yolo_audit.analyses.similarity.job import SimilarityOptions, similarity_shard
from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.errors import AuditError
from yolo_audit.model.build import model_class
from yolo_audit.model.profile import load_yaml, profile_for_model
from yolo_audit.report import write_report
from yolo_audit.study.synth import make_dataset

FAMILIES = {  # packaged yaml -> task
    "yolov3-tiny.yaml": "detect", "yolov5n.yaml": "detect", "yolov8n.yaml": "detect", "yolov9t.yaml": "detect",
    "yolov10n.yaml": "detect", "yolo11n.yaml": "detect", "yolo12n.yaml": "detect", "yolo26n.yaml": "detect",
    "yolov8n-seg.yaml": "segment", "yolov8n-pose.yaml": "pose", "yolov8n-obb.yaml": "obb",
    "yolov8n-cls.yaml": "classify", "yolo11n-seg.yaml": "segment", "yolo11n-pose.yaml": "pose",
    "yolo11n-obb.yaml": "obb", "yolo11n-cls.yaml": "classify",
    "rtdetr-l.yaml": "detect",
}  # fmt: skip


def _declared(name: str) -> tuple[int, int]:
    """(backbone length, number of modules) straight from the packaged yaml file, read with pyyaml."""
    import ultralytics

    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    stem = name.removesuffix(".yaml")
    candidates = [stem, stem.replace("n-", "-").replace("n.", ".")]
    for folder in root.iterdir():
        for cand in (
            stem,
            stem.replace("yolov8n", "yolov8")
            .replace("yolo11n", "yolo11")
            .replace("yolov5n", "yolov5")
            .replace("yolov10n", "yolov10n")
            .replace("yolo12n", "yolo12")
            .replace("yolo26n", "yolo26"),
        ):
            path = folder / f"{cand}.yaml"
            if path.exists():
                raw = yaml.safe_load(path.read_text())
                return len(raw["backbone"]), len(raw["backbone"]) + len(raw["head"])
    raise AssertionError(f"{name}: no packaged yaml among {candidates}")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_profile_is_the_yaml_s_own_backbone_and_head(name):
    profile = profile_for_model(name)
    n_backbone, n_layers = _declared(name)
    assert profile.task == FAMILIES[name] and profile.n_layers == n_layers and profile.head == n_layers - 1
    assert profile.backbone == tuple(range(n_backbone)) and profile.all_but_head == tuple(range(n_layers - 1))
    assert profile.group(0) == "backbone" and profile.group(n_layers - 1) == "head"


def test_a_family_the_pinned_version_does_not_know_is_refused():
    with pytest.raises(AuditError, match="unknown model 'yolo99n.yaml'"):
        profile_for_model("yolo99n.yaml")


@pytest.fixture(scope="module")
def families(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("families")
    ckpts = {}
    for name in FAMILIES:
        arch = load_yaml(name)
        torch.manual_seed(0)
        model = model_class(arch)(arch, verbose=False)
        ckpts[name] = save(model, root / name.removesuffix(".yaml") / "weights" / "last.pt", name=name)
    images = make_dataset(root / "data", images=8, imgsz=64, domain="B", seed=3).parent / "images"
    return root, ckpts, images


def test_weights_activations_and_report_on_every_family(families):
    root, ckpts, images = families
    out = root / "out"
    weights = analyze_weights(list(ckpts.values()), out, stream=io.StringIO())
    assert weights.ok and weights.architectures == len(FAMILIES)
    opts = ActivationOptions(imgsz=64, batch=4, maps=1)
    acts = analyze_activations(list(ckpts.values()), images, out, opts=opts, max_images=4, stream=io.StringIO())
    assert acts.ok, [e.message for e in acts.errors]
    stats = pl.read_parquet(out / "channel_stats" / "*.parquet").join(
        pl.read_parquet(out / "checkpoints" / "*.parquet").select("checkpoint_id", "run"), on="checkpoint_id"
    )
    for name in FAMILIES:
        rows = stats.filter(pl.col("run") == name)
        assert rows.filter(pl.col("unit_kind") == "unit").height > 0, name
        assert rows.filter(pl.col("unit_kind") == "head_output").height > 0 or "rtdetr" in name, name
        assert stats.filter(pl.col("run") == name)["module"].is_in(["Upsample", "Concat"]).sum() == 0
    seg = stats.filter((pl.col("run") == "yolov8n-seg.yaml") & (pl.col("unit_kind") == "head_output"))
    assert {"model.22.cv4.0", "model.22.proto"} <= set(seg["module"])  # mask coefficients and prototypes
    report = write_report(out, root / "report.html").read_text()
    assert 'id="dead-units"' in report and 'id="distributions"' in report


@pytest.mark.parametrize("name", ["yolo11n.yaml", "yolov8n-pose.yaml", "yolov8n-cls.yaml", "rtdetr-l.yaml"])
def test_similarity_on_other_families(families, name):
    _, ckpts, images = families
    files = sorted((Path(ckpts[name]).parent).glob("*.pt"))
    result = similarity_shard([str(f) for f in files], [str(p) for p in sorted(images.rglob("*.png"))][:8],
                              SimilarityOptions(imgsz=64, batch=4))  # fmt: skip
    assert not result.errors and result.state is not None and result.modules
    cka = result.state.compute().cka
    assert torch.allclose(cka.diagonal()[~cka.diagonal().isnan()], torch.ones(1, dtype=torch.float64))
