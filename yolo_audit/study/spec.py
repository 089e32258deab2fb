"""Study files (`workflows/*.yaml`): parsed into dataclasses and validated completely before any work starts.

Every problem names its key (`variants[2].freeze`) and what to do, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from yolo_audit.analyses import ANALYSES
from yolo_audit.analyses.images import packaged_dataset
from yolo_audit.errors import AuditError
from yolo_audit.model.freeze import STRATEGIES, resolve_freeze
from yolo_audit.model.profile import Profile, profile_for_model
from yolo_audit.study.training import TrainCfg


@dataclass(frozen=True)
class Synthetic:
    domain: str = "A"
    images: int = 32
    imgsz: int = 64
    classes: int = 3
    seed: int = 0
    task: str = "detect"  # detect (boxes) or segment (polygons)


@dataclass(frozen=True)
class Variant:
    name: str
    freeze: Any = 0  # int N, "backbone", "all", or a list of layer indices
    strategy: str = "ultralytics"
    frozen_layers: tuple[int, ...] = ()  # the spec resolved against the model family's profile


@dataclass(frozen=True)
class Resources:
    cpus_per_task: float = 1
    gpus_per_task: float | None = None  # None: 1 where the cluster has GPUs when the study starts; a number: always


@dataclass(frozen=True)
class InterpolateCfg:
    """The `interpolate` analysis in a study: points on each line, and training images to re-estimate BatchNorm
    statistics on at each point (0: none)."""

    steps: int = 11
    recalibrate_bn: int = 0


@dataclass(frozen=True)
class Study:
    name: str
    model: str  # base weights, an official name such as yolov8s.pt, or a model yaml
    data: str | Synthetic  # dataset yaml (path or Ultralytics name) or a synthetic dataset
    variants: tuple[Variant, ...]
    train: TrainCfg = TrainCfg()
    pretrain: TrainCfg | None = None  # train the base first (on pretrain_data), e.g. from a yaml, offline
    pretrain_data: str | Synthetic | None = None
    seeds: tuple[int, ...] = (0,)
    analyses: tuple[str, ...] = ("weights",)
    out: str = "results"
    resources: Resources = field(default_factory=Resources)
    source: str = ""
    backbone: tuple[int, ...] = ()  # the model's backbone layers, from its own yaml
    interpolate: InterpolateCfg = InterpolateCfg()


def load_study(path: str | Path, *, out: str | None = None) -> Study:
    path = Path(path)
    if not path.is_file():
        raise AuditError("no such study file; see workflows/ for examples", path=str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AuditError(f"not valid YAML ({str(exc).splitlines()[0]})", path=str(path)) from exc
    try:
        study = parse_study(raw, base=path.parent, source=str(path))
    except AuditError as exc:
        raise AuditError(str(exc), path=str(path)) from exc
    return study if out is None else _replace(study, out=out)


def _replace(study: Study, **changes: Any) -> Study:
    return replace(study, **changes)


_TOP = {"name", "model", "data", "variants", "sweep", "train", "pretrain", "seeds", "analyses", "out", "resources",
        "interpolate"}  # fmt: skip


def parse_study(raw: Any, *, base: Path, source: str = "") -> Study:
    top = _mapping(raw, "study file", _TOP)
    for key in ("name", "model", "data"):
        if key not in top:
            raise AuditError(f"missing key `{key}`")
    if "variants" not in top and "sweep" not in top:
        raise AuditError("missing key `variants` (or a `sweep` that expands into variants)")
    pretrain = _mapping(top.get("pretrain"), "pretrain", {"data", *_names(TrainCfg)}) if "pretrain" in top else None
    model = _model(top["model"], base)
    profile = _profile(model)
    listed = _list(top.get("variants", []), "variants")
    variants = tuple(_variant(v, i, profile) for i, v in enumerate(listed))
    variants += sweep_variants(top.get("sweep"), profile, start=len(listed))
    if not variants:
        raise AuditError("`variants` is empty; list at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise AuditError(f"`variants`: names must be unique ({names})")
    seeds = tuple(_typed(s, int, f"seeds[{i}]") for i, s in enumerate(_list(top.get("seeds", [0]), "seeds")))
    analyses = tuple(_list(top.get("analyses", ["weights"]), "analyses"))
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown:
        raise AuditError(f"`analyses`: unknown {unknown}; available: {list(ANALYSES)}")
    return Study(
        name=_typed(top["name"], str, "name"),
        model=model,
        data=_data(top["data"], base, "data"),
        variants=variants,
        train=_dataclass(TrainCfg, top.get("train", {}), "train"),
        pretrain=_dataclass(TrainCfg, {k: v for k, v in pretrain.items() if k != "data"}, "pretrain")
        if pretrain
        else None,
        pretrain_data=_data(pretrain["data"], base, "pretrain.data") if pretrain and "data" in pretrain else None,
        seeds=seeds or (0,),
        analyses=analyses,
        out=_typed(top.get("out", "results"), str, "out"),
        resources=_dataclass(Resources, top.get("resources", {}), "resources"),
        source=source,
        backbone=profile.backbone if profile.n_backbone is not None else (),
        interpolate=_dataclass(InterpolateCfg, top.get("interpolate", {}), "interpolate"),
    )


def sweep_variants(raw: Any, profile: Profile, *, start: int = 0) -> tuple[Variant, ...]:
    """`sweep: {freeze: [0, 2, 4, ...], strategy: [ultralytics, callback]}` as named variants, every freeze depth with
    every strategy (default: ultralytics only): `freeze-4-callback`, `freeze-backbone-ultralytics`, ..."""
    if raw is None:
        return ()
    sweep = _mapping(raw, "sweep", {"freeze", "strategy"})
    if "freeze" not in sweep:
        raise AuditError("sweep: missing key `freeze` (a list of freeze specs, e.g. [0, 2, 4, backbone, all])")
    depths = _list(sweep["freeze"], "sweep.freeze")
    strategies = _list(sweep.get("strategy", ["ultralytics"]), "sweep.strategy")
    out = []
    for d in depths:
        label = "_".join(map(str, d)) if isinstance(d, list) else str(d)
        for strategy in strategies:
            item = {"name": f"freeze-{label}-{strategy}", "freeze": d, "strategy": strategy}
            out.append(_variant(item, start + len(out), profile, key=f"sweep[freeze={label}, strategy={strategy}]"))
    return tuple(out)


def _profile(model: str) -> Profile:
    try:
        return profile_for_model(model)
    except AuditError as exc:
        raise AuditError(f"model: {exc}") from exc


def _variant(raw: Any, i: int, profile: Profile, *, key: str | None = None) -> Variant:
    key = key or f"variants[{i}]"
    item = _mapping(raw, key, {"name", "freeze", "strategy"})
    if "name" not in item:
        raise AuditError(f"{key}: missing key `name`")
    variant = Variant(
        name=_typed(item["name"], str, f"{key}.name"),
        freeze=item.get("freeze", 0),
        strategy=_typed(item.get("strategy", "ultralytics"), str, f"{key}.strategy"),
    )
    if variant.strategy not in STRATEGIES:
        raise AuditError(f"{key}.strategy: {variant.strategy!r} is unknown; use one of {list(STRATEGIES)}")
    if not variant.name.replace("-", "").replace("_", "").isalnum():
        raise AuditError(f"{key}.name: {variant.name!r} must be letters, digits, - and _ only")
    return replace(variant, frozen_layers=resolve_freeze(variant.freeze, f"{key}.freeze", profile))


def _model(raw: Any, base: Path) -> str:
    value = _typed(raw, str, "model")
    path = (base / value) if not Path(value).is_absolute() else Path(value)
    if path.exists():
        return str(path.resolve())
    if value.endswith((".yaml", ".yml")) or _official(value):
        return value  # Ultralytics' packaged model yaml, or an official weight name it downloads
    raise AuditError(f"model: {value!r} not found; give a path, a model yaml, or an official name like yolov8s.pt")


def _official(name: str) -> bool:
    return (
        "/" not in name
        and name.startswith(("yolov8", "yolo11", "yolov5", "yolov9", "yolov10"))
        and name.endswith(".pt")
    )


def _data(raw: Any, base: Path, key: str) -> str | Synthetic:
    if isinstance(raw, dict):
        inner = _mapping(raw, key, {"synthetic"})
        if "synthetic" not in inner:
            raise AuditError(f"{key}: expected a dataset yaml or {{synthetic: {{...}}}}")
        synthetic = _dataclass(Synthetic, inner["synthetic"] or {}, f"{key}.synthetic")
        if synthetic.domain not in ("A", "B"):
            raise AuditError(f"{key}.synthetic.domain: use A or B, not {synthetic.domain!r}")
        if synthetic.task not in ("detect", "segment"):
            raise AuditError(f"{key}.synthetic.task: use detect or segment, not {synthetic.task!r}")
        return synthetic
    value = _typed(raw, str, key)
    path = (base / value) if not Path(value).is_absolute() else Path(value)
    if path.exists():
        return str(path.resolve())
    if packaged_dataset(value) is not None:
        return value
    raise AuditError(f"{key}: dataset yaml {value!r} not found; give a path or an Ultralytics dataset name")


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _dataclass(cls: type, raw: Any, key: str) -> Any:
    values = _mapping(raw, key, _names(cls))
    typed = {}
    for f in fields(cls):
        if f.name in values:
            kind = {"int": int, "int | None": int, "float": (int, float), "float | None": (int, float), "str": str}[
                f.type if isinstance(f.type, str) else f.type.__name__
            ]
            typed[f.name] = _typed(values[f.name], kind, f"{key}.{f.name}")
    return cls(**typed)


def _mapping(raw: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AuditError(f"{key}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise AuditError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return raw


def _list(raw: Any, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise AuditError(f"`{key}`: expected a list, got {type(raw).__name__}")
    return raw


def _typed(value: Any, kind: Any, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "number"
        raise AuditError(f"{key}: expected {expected}, got {value!r}")
    return value
