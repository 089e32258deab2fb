"""One task of `yolo-audit interpolate`: the weights at one point of the straight line between a reference (the base)
and a checkpoint, validated with Ultralytics' own validator.

Linear mode connectivity (Frankle et al. 2020; Neyshabur et al. 2020, "What is being transferred in transfer
learning?"; Wortsman et al. 2022, WiSE-FT): θ(α) = (1 - α) θ_ref + α θ_ckpt. A fine-tune that stays in the base's
basin has no barrier along the line: mAP at every α is near the straight line between the two ends. Interpolated
BatchNorm running statistics are not the statistics of the interpolated network (REPAIR, Jordan et al. 2022), so
`recalibrate_bn` re-estimates them on training images at each α before validating.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from yolo_audit.analyses.images import batches, list_images, prefetched
from yolo_audit.analyses.validation import Validated, validate
from yolo_audit.errors import AuditError
from yolo_audit.model.build import build_module, for_passes
from yolo_audit.model.checkpoint import Checkpoint, checkpoint_table, load_checkpoint
from yolo_audit.results import files
from yolo_audit.results.errors import record
from yolo_audit.results.keys import interpolation_key
from yolo_audit.results.location import Where, local_dataset, locate
from yolo_audit.runtime.devices import exact_float32, resolve_device


@dataclass(frozen=True)
class InterpolateOptions:
    imgsz: int = 640
    batch: int = 16
    split: str = "val"
    device: str = "auto"
    recalibrate_bn: int = 0  # training images to re-estimate BatchNorm statistics on at each α (0: none)
    trust_pickle: bool = False


@dataclass(kw_only=True)
class PointResult(Validated):
    """One point on the line (the checkpoint row comes from the α = 1 task)."""

    alpha: float
    mismatched: list[str] = field(default_factory=list)


def blend(ref: Checkpoint, ckpt: Checkpoint, alpha: float) -> tuple[Checkpoint, list[str]]:
    """θ(α) with the checkpoint's architecture, and the tensors whose shape differs from the reference's (taken from
    the checkpoint at every α). The ends are the two checkpoints' own tensors, bit for bit. Refused (an `align`
    error) when tensors differ outside the output head: another architecture, whose line means nothing."""
    mismatched = [n for n, t in ckpt.tensors.items() if n not in ref.tensors or ref.tensors[n].shape != t.shape]
    head = ckpt.profile.head
    foreign = [n for n in mismatched if ckpt.keys[n].layer != head]
    if foreign or len(mismatched) == len(ckpt.tensors):
        raise AuditError(
            f"architecture differs from the reference {ref.path} beyond its output head ({len(foreign)} tensors, e.g. "
            f"{', '.join(foreign[:2])}); interpolate between checkpoints of the same model",
            path=ckpt.path,
            stage="align",
        )
    kept = set(mismatched)
    if alpha == 0.0:
        mixed = {n: t if n in kept else ref.tensors[n] for n, t in ckpt.tensors.items()}
    elif alpha == 1.0:
        mixed = dict(ckpt.tensors)
    else:
        mixed = {
            n: t if n in kept or not t.is_floating_point() else torch.lerp(ref.tensors[n].float(), t.float(), alpha)
            for n, t in ckpt.tensors.items()
        }
    return replace(ckpt, tensors=mixed), mismatched


def recalibrate(point: Checkpoint, images: list[str], opts: InterpolateOptions) -> Checkpoint:
    """`point` with every BatchNorm layer's running statistics re-estimated (a cumulative average, momentum None) on
    `images`, in training mode with no gradient; every other tensor unchanged."""
    device = resolve_device(opts.device)
    model = for_passes(build_module(point), device)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad(), exact_float32():
        for _, batch, _ in prefetched(batches(images, opts.batch), opts.imgsz, device):
            if len(batch) > 1:
                model(batch)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}  # fmt: skip
    return replace(point, tensors={n: state.get(n, t) for n, t in point.tensors.items()})


def interpolate_task(
    path: str, reference: str, data: str, alpha: float, opts: InterpolateOptions, out: Where, dataset_id: str
) -> PointResult:
    """Validate θ(α) (recalibrated where asked) and write its row."""
    result = PointResult(path=path, alpha=alpha)
    started = time.monotonic()
    try:
        ckpt = load_checkpoint(path, trust_pickle=opts.trust_pickle)
        ref = load_checkpoint(reference, trust_pickle=opts.trust_pickle)
        result.checkpoint_id, result.reference_id = ckpt.checkpoint_id, ref.checkpoint_id
        point, result.mismatched = blend(ref, ckpt, alpha)
        if opts.recalibrate_bn:
            images = list_images(local_dataset(data), split="train", max_images=opts.recalibrate_bn)
            point = recalibrate(point, images, opts)
        result.map50_95, result.map50 = validate(point, data, opts)
        if alpha == 1.0:
            result.checkpoint_row = checkpoint_table(ckpt)
        row = {
            "checkpoint_id": ckpt.checkpoint_id, "reference_id": ref.checkpoint_id, "dataset_id": dataset_id,
            "alpha": alpha, "map50_95": result.map50_95, "map50": result.map50,
            "recalibrated": bool(opts.recalibrate_bn), "recalibration_images": opts.recalibrate_bn,
            "mismatched": len(result.mismatched), "mismatched_names": result.mismatched,
            "seconds": time.monotonic() - started,
        }  # fmt: skip
        key = interpolation_key(ckpt.checkpoint_id, ref.checkpoint_id, dataset_id, alpha, opts.recalibrate_bn)
        files.write(locate(out), "interpolation", key, {k: [v] for k, v in row.items()})
    except Exception as exc:  # noqa: BLE001 - an errors row (`align` for another architecture); the others go on
        result.errors.append(record(path, "interpolate", exc))
    result.seconds = time.monotonic() - started
    return result
