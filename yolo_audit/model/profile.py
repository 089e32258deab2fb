"""Model family profiles, read from the model itself (its yaml's `backbone` and `head` lists and the head's class),
never from constants: how many top-level layers, which are the backbone, which module is the output head, which
modules are units (their output channels pass through a nonlinearity) and which only move or copy channels.

Every family Ultralytics builds from a yaml gets the same answers: YOLOv3u/v5u/v8/v9/v10/11/12/26, their seg, pose,
obb and cls variants, and RT-DETR. Freeze resolution, hooks, key inference and rebuilding consult it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolo_audit.errors import AuditError

# modules whose outputs are copies or rearrangements of other layers' channels: never units
COPY_MODULES = frozenset({"Upsample", "nn.Upsample", "Concat", "Silence", "Index", "nn.Identity", "Identity"})
TASK_OF_HEAD = {
    "Detect": "detect", "v10Detect": "detect", "YOLOEDetect": "detect", "Segment": "segment", "YOLOESegment": "segment",
    "Pose": "pose", "OBB": "obb", "Classify": "classify", "RTDETRDecoder": "detect", "WorldDetect": "detect",
}  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """The questions every model family answers the same way."""

    family: str  # yaml name without scale: yolov8, yolo11, yolov8-seg, rtdetr-l, ...
    task: str  # detect, segment, pose, obb, classify
    module_types: tuple[str, ...]  # class name of every top-level module, in order
    n_backbone: int | None  # length of the yaml's backbone list (None when the architecture is unknown)

    @property
    def n_layers(self) -> int:
        return len(self.module_types)

    @property
    def head(self) -> int:
        """Index of the output head: the last top-level module."""
        return self.n_layers - 1

    @property
    def head_type(self) -> str:
        return self.module_types[-1]

    @property
    def backbone(self) -> tuple[int, ...]:
        if self.n_backbone is None:
            raise AuditError(f"the {self.family} architecture is unknown here, so its backbone is; list the layers")
        return tuple(range(self.n_backbone))

    @property
    def all_but_head(self) -> tuple[int, ...]:
        return tuple(range(self.head))

    def group(self, layer: int | None) -> str | None:
        """backbone, neck or head; None outside the layer list, or where the backbone is unknown (a bare state
        dict records no yaml)."""
        if layer is None:
            return None
        if layer == self.head:
            return "head"
        if self.n_backbone is None:
            return None
        return "backbone" if layer < self.n_backbone else "neck"


def _type_name(entry: Any) -> str:
    name = str(entry)
    return name.removeprefix("nn.") if name.startswith("nn.") else name


def profile_from_yaml(arch: dict[str, Any]) -> Profile:
    """A profile from an Ultralytics model yaml (as a dict: the checkpoint's `model.yaml` or a packaged file)."""
    backbone, head = arch.get("backbone") or [], arch.get("head") or []
    types = tuple(_type_name(row[2]) for row in [*backbone, *head])
    if not types:
        raise AuditError("the model yaml lists no modules; pass an Ultralytics model yaml")
    stem = Path(str(arch.get("yaml_file") or "model.yaml")).stem
    scale = arch.get("scale")
    family = _family(stem, scale)
    task = TASK_OF_HEAD.get(types[-1], "detect")
    return Profile(family=family, task=task, module_types=types, n_backbone=len(backbone))


def _family(stem: str, scale: str | None) -> str:
    """yolov8n -> yolov8, yolo11s-seg -> yolo11-seg, rtdetr-l stays (its scale is part of the name)."""
    base, _, suffix = stem.partition("-")
    if scale and base.endswith(scale) and not base.startswith("rtdetr"):
        base = base[: -len(scale)]
    return f"{base}-{suffix}" if suffix else base


def profile_from_types(module_types: dict[int, str]) -> Profile:
    """A profile for a checkpoint that records no yaml (a bare state dict): layers and head from its tensors' names;
    the backbone stays unknown."""
    n = max(module_types) + 1 if module_types else 0
    return Profile("unknown", "detect", tuple(module_types.get(i, "unknown") for i in range(n)), None)


def load_yaml(name: str) -> dict[str, Any]:
    """An Ultralytics model yaml by name (`yolo11n.yaml`, Ultralytics' packaged files) or path, scale applied."""
    from yolo_audit.env import prepare

    prepare()
    from ultralytics.nn.tasks import yaml_model_load

    try:
        return yaml_model_load(name)
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise AuditError(
            f"unknown model {name!r} for ultralytics 8.4.190 ({str(exc).splitlines()[0][:120]}); give a model yaml "
            "this version ships, or a path",
            path=name,
        ) from exc


def profile_for_model(model: str) -> Profile:
    """The profile of what a study names as its model: a yaml, a weights file, or an official weights name (whose
    yaml Ultralytics ships: yolov8s.pt -> yolov8s.yaml)."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        return profile_from_yaml(load_yaml(model))
    if path.exists():
        from yolo_audit.model.checkpoint import load_checkpoint

        return load_checkpoint(path).profile
    return profile_from_yaml(load_yaml(f"{path.stem}.yaml"))
