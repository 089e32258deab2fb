"""One task of `yolo-audit rewind`: a checkpoint with some layers' parameters *and* BatchNorm statistics taken from
another checkpoint (the reference, or the other way round), validated with Ultralytics' own validator.

Layer rewinding (Zhang, Bengio & Singer 2019, "Are all layers created equal?"): resetting a layer that fine-tuning
changed to its earlier value, and measuring what the accuracy loses, says which changes the accuracy depends on.
Validation on the CPU is deterministic, so a swap that changes no bit gives exactly the baseline's metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from yolo_audit.env import prepare
from yolo_audit.errors import AuditError
from yolo_audit.model.build import build_module
from yolo_audit.model.checkpoint import Checkpoint, check_aligned, checkpoint_table, load_checkpoint
from yolo_audit.results.errors import ErrorRecord, record
from yolo_audit.runtime.devices import exact_float32, keep_freed_memory, resolve_device

VALIDATORS = {
    "detect": "ultralytics.models.yolo.detect:DetectionValidator",
    "segment": "ultralytics.models.yolo.segment:SegmentationValidator",
    "pose": "ultralytics.models.yolo.pose:PoseValidator",
    "obb": "ultralytics.models.yolo.obb:OBBValidator",
    "rtdetr": "ultralytics.models.rtdetr:RTDETRValidator",
}
BASELINE = "baseline"


@dataclass(frozen=True)
class RewindOptions:
    imgsz: int = 640
    batch: int = 16
    split: str = "val"
    device: str = "auto"
    trust_pickle: bool = False


@dataclass(frozen=True)
class Target:
    """What to swap: `layers` (one layer, or a whole group), in which direction; `baseline` swaps nothing."""

    direction: str  # rewind | into_reference | baseline
    layers: tuple[int, ...] = ()
    layer: int | None = None  # the single layer, or None for a group (and the baselines)
    group: str | None = None

    @property
    def label(self) -> str:
        what = f"L{self.layer:03d}" if self.layer is not None else (self.group or "none")
        return f"{self.direction}-{what}"


@dataclass
class RewindResult:
    path: str
    target: Target
    checkpoint_id: str | None = None
    reference_id: str | None = None
    map50_95: float | None = None
    map50: float | None = None
    seconds: float = 0.0
    errors: list[ErrorRecord] = field(default_factory=list)
    checkpoint_row: dict[str, list] | None = None  # from the baseline task: the driver writes `checkpoints`


def swapped(into: Checkpoint, source: Checkpoint, layers: tuple[int, ...]) -> Checkpoint:
    """`into` with every tensor of `layers` (parameters and BatchNorm buffers) replaced by `source`'s."""
    check_aligned(into, source)
    chosen = set(layers)
    tensors = {n: source.tensors[n] if into.keys[n].layer in chosen else t for n, t in into.tensors.items()}
    return replace(into, tensors=tensors)


def validate(ckpt: Checkpoint, data: str, opts: RewindOptions) -> tuple[float, float]:
    """(mAP50-95, mAP50) of the boxes, with the validator of the checkpoint's task, in true float32 and with cuDNN's
    deterministic algorithms (`exact_float32`): on a GPU, TF32 and nondeterministic convolutions would move mAP between
    two validations of the same weights, and a rewound layer's delta must be exactly 0 when nothing changed."""
    prepare()
    import importlib

    from ultralytics.cfg import get_cfg

    profile = ckpt.profile
    kind = "rtdetr" if profile.head_type == "RTDETRDecoder" else profile.task
    if kind not in VALIDATORS:
        raise AuditError(f"rewind measures box mAP; a {profile.task} model has none", path=ckpt.path, stage="rewind")
    module, _, name = VALIDATORS[kind].partition(":")
    validator_cls = getattr(importlib.import_module(module), name)
    device = resolve_device(opts.device)
    keep_freed_memory()  # forward passes reuse their activations' memory
    args = get_cfg(overrides={
        "mode": "val", "data": data, "imgsz": opts.imgsz, "batch": opts.batch, "split": opts.split,
        "device": "cpu" if device.type == "cpu" else device.index or 0, "plots": False, "verbose": False,
        "save_json": False, "half": False, "workers": 0,
    })  # fmt: skip
    with exact_float32():
        stats = validator_cls(args=args)(model=build_module(ckpt))
    return float(stats["metrics/mAP50-95(B)"]), float(stats["metrics/mAP50(B)"])


def rewind_task(path: str, reference: str, data: str, target: Target, opts: RewindOptions) -> RewindResult:
    """Validate one swap: the checkpoint with `target.layers` from the reference (rewind), the reference with them
    from the checkpoint (into_reference), or an unmodified model (baseline: of the checkpoint, or of the reference
    for into_reference)."""
    result = RewindResult(path=path, target=target)
    started = time.monotonic()
    try:
        ckpt = load_checkpoint(path, trust_pickle=opts.trust_pickle)
        ref = load_checkpoint(reference, trust_pickle=opts.trust_pickle)
        result.checkpoint_id, result.reference_id = ckpt.checkpoint_id, ref.checkpoint_id
        if target.direction == "rewind":
            model = swapped(ckpt, ref, target.layers)
        elif target.direction == "into_reference":
            model = swapped(ref, ckpt, target.layers)
        else:
            check_aligned(ref, ckpt)
            model = ref if target.group == "reference" else ckpt
            result.checkpoint_row = checkpoint_table(model)
        result.map50_95, result.map50 = validate(model, data, opts)
    except Exception as exc:  # noqa: BLE001 - an errors row; the other swaps go on
        result.errors.append(record(path, "rewind", exc))
    result.seconds = time.monotonic() - started
    return result
