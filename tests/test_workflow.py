"""Study files: complete validation with one clear message naming the key; freeze semantics; the shipped files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from yolo_audit.errors import AuditError
from yolo_audit.model.freeze import resolve_freeze
from yolo_audit.model.profile import profile_for_model
from yolo_audit.results.location import locate
from yolo_audit.study.driver import Layout, print_plan
from yolo_audit.study.spec import load_study, parse_study

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "name": "t",
    "model": "yolov8n.yaml",
    "data": {"synthetic": {"domain": "B"}},
    "variants": [{"name": "a", "freeze": 0}],
}


def _parse(**changes):
    return parse_study({k: v for k, v in {**BASE, **changes}.items() if v is not None}, base=ROOT)


def test_freeze_specs():
    v8 = profile_for_model("yolov8n.yaml")
    assert resolve_freeze(0, "k", v8) == () and resolve_freeze(10, "k", v8) == tuple(range(10))
    assert resolve_freeze("backbone", "k", v8) == tuple(range(10))
    assert resolve_freeze("all", "k", v8) == tuple(range(22))  # every module but the Detect head
    assert resolve_freeze([3, 1, 3], "k", v8) == (1, 3)


def test_freeze_specs_follow_the_model_family():
    v11 = profile_for_model("yolo11n.yaml")  # backbone ends with C2PSA at 10; Detect is 23
    assert resolve_freeze("backbone", "k", v11) == tuple(range(11))
    assert resolve_freeze("all", "k", v11) == tuple(range(23)) and resolve_freeze(23, "k", v11) == tuple(range(23))
    with pytest.raises(AuditError, match="freeze=24 is impossible"):
        resolve_freeze(24, "k", v11)
    assert profile_for_model("yolov8s.pt").backbone == tuple(range(10))  # an official name: its packaged yaml


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variants": [{"name": "a", "freeze": 23}]}, r"variants\[0\]\.freeze: freeze=23 is impossible"),
        ({"variants": [{"name": "a", "freeze": list(range(23))}]}, r"variants\[0\]\.freeze: .*all 23"),
        ({"variants": [{"name": "a", "freeze": [0, 40]}]}, r"variants\[0\]\.freeze: .*\[40\]"),
        ({"variants": [{"name": "a", "freeze": "everything"}]}, r"variants\[0\]\.freeze: freeze must be"),
        ({"variants": [{"name": "a", "freeze": True}]}, r"variants\[0\]\.freeze"),
        ({"variants": [{"name": "a", "strategy": "magic"}]}, r"variants\[0\]\.strategy: 'magic' is unknown"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
        ({"variants": [{"name": "a", "lr": 1}]}, r"variants\[0\]: unknown key\(s\) \['lr'\]"),
        ({"variants": []}, "`variants` is empty"),
        ({"epochs": 3}, r"study file: unknown key\(s\) \['epochs'\]"),
        ({"train": {"epochs": "3"}}, r"train\.epochs: expected int, got '3'"),
        ({"train": {"lr0": True}}, r"train\.lr0: expected number"),
        ({"data": "missing/data.yaml"}, r"data: dataset yaml 'missing/data.yaml' not found"),
        ({"data": {"synthetic": {"domain": "C"}}}, r"data\.synthetic\.domain: use A or B"),
        ({"model": "nowhere/model.pt"}, r"model: 'nowhere/model.pt' not found"),
        ({"seeds": ["x"]}, r"seeds\[0\]: expected int"),
        ({"analyses": ["weights", "magic"]}, r"`analyses`: unknown \['magic'\]"),
        ({"pretrain": {"epochs": 1, "bogus": 2}}, r"pretrain: unknown key\(s\) \['bogus'\]"),
    ],
)
def test_invalid_studies_name_the_key(changes, message):
    with pytest.raises(AuditError, match=message):
        _parse(**changes)


def test_missing_required_key():
    raw = dict(BASE)
    raw.pop("variants")
    with pytest.raises(AuditError, match="missing key `variants`"):
        parse_study(raw, base=ROOT)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(AuditError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(AuditError, match=f"{bad}: not valid YAML"):
        load_study(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({**BASE, "train": {"batch": "big"}}))
    with pytest.raises(AuditError, match=f"{wrong}: train.batch: expected int"):
        load_study(wrong)


def test_shipped_workflows_validate_and_plan():
    demo = load_study(ROOT / "workflows" / "demo.yaml")
    assert [v.strategy for v in demo.variants] == ["ultralytics", "ultralytics", "ultralytics", "callback"]
    assert demo.pretrain is not None and demo.pretrain_data is not None
    coco = load_study(ROOT / "workflows" / "coco128-freeze.yaml", out="/tmp/x")
    assert coco.model == "yolov8s.pt" and coco.data == "coco128.yaml" and coco.train.epochs == 300
    assert coco.out == "/tmp/x" and coco.seeds == (0, 1, 2)
    stream = io.StringIO()
    print_plan(coco, Layout.for_out(locate(coco.out)), stream)
    text = stream.getvalue()
    assert text.count("  train ") == 12 and "freeze-backbone-callback-s2" in text and "1 GPU" in text
    assert "layers=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21 " in text
    assert "freeze=backbone " in text and '"' not in text  # plain values, as the runs table holds them


def test_freeze_specs_are_written_plain_and_progress_prints_them_unquoted():
    from yolo_audit.model.freeze import freeze_text
    from yolo_audit.study.driver import plan
    from yolo_audit.study.training import TrainResult, describe

    assert [freeze_text(f) for f in ("backbone", "all", 0, 10, [0, 1, 5])] == ["backbone", "all", "0", "10", "0,1,5"]
    study = _parse(variants=[{"name": "b", "freeze": "backbone"}, {"name": "l", "freeze": [0, 1, 5]}])
    _, specs = plan(study, Layout.for_out(locate("/tmp/x")))
    assert [s.freeze for s in specs] == ["backbone", "0,1,5"]
    line = describe(TrainResult(specs[0], "done", 1.0, 0.5))
    assert "freeze backbone (ultralytics)" in line and '"' not in line


def test_a_sweep_expands_into_named_variants_of_the_model_s_own_depths():
    study = _parse(variants=[{"name": "mine", "freeze": 3}],
                   sweep={"freeze": [0, 4, "backbone", "all"], "strategy": ["ultralytics", "callback"]})  # fmt: skip
    names = [v.name for v in study.variants]
    assert names[0] == "mine" and len(names) == 9 and "freeze-4-callback" in names
    byname = {v.name: v for v in study.variants}
    assert byname["freeze-backbone-ultralytics"].frozen_layers == tuple(range(10))
    assert (
        byname["freeze-all-callback"].frozen_layers == tuple(range(22))
        and byname["freeze-0-callback"].frozen_layers == ()
    )
    v11 = _parse(model="yolo11n.yaml", variants=None, sweep={"freeze": ["backbone", "all"]})
    assert [(v.name, v.frozen_layers[-1]) for v in v11.variants] == [
        ("freeze-backbone-ultralytics", 10),
        ("freeze-all-ultralytics", 22),
    ]
    with pytest.raises(AuditError, match=r"sweep\[freeze=40, strategy=ultralytics\]\.freeze"):
        _parse(sweep={"freeze": [40]})
    stream = io.StringIO()
    print_plan(v11, Layout.for_out(locate("/tmp/x")), stream)
    assert "train freeze-all-ultralytics-s0" in stream.getvalue() and "layers=0,1,2," in stream.getvalue()


def test_shipped_sweeps_validate():
    for name in ("demo-sweep.yaml", "coco128-freeze-sweep.yaml", "coco128-freeze-sweep-yolo11.yaml"):
        study = load_study(ROOT / "workflows" / name)
        assert len(study.variants) >= 10 and len({v.name for v in study.variants}) == len(study.variants)
    v11 = load_study(ROOT / "workflows" / "coco128-freeze-sweep-yolo11.yaml")
    assert v11.backbone == tuple(range(11)) and max(len(v.frozen_layers) for v in v11.variants) == 23
