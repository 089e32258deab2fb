"""One task of `yolo-audit rewind`: a checkpoint with some layers' parameters *and* BatchNorm statistics taken from
another checkpoint (the reference, or the other way round), validated with Ultralytics' own validator.

Layer rewinding (Zhang, Bengio & Singer 2019, "Are all layers created equal?"): resetting a layer that fine-tuning
changed to its earlier value, and measuring what the accuracy loses, says which changes the accuracy depends on.
Validation on the CPU is deterministic, so a swap that changes no bit gives exactly the baseline's metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from yolo_audit.analyses.validation import Validated, validate
from yolo_audit.model.checkpoint import Checkpoint, check_aligned, checkpoint_table, load_checkpoint
from yolo_audit.results.errors import record

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


@dataclass(kw_only=True)
class RewindResult(Validated):
    target: Target


def swapped(into: Checkpoint, source: Checkpoint, layers: tuple[int, ...]) -> Checkpoint:
    """`into` with every tensor of `layers` (parameters and BatchNorm buffers) replaced by `source`'s."""
    check_aligned(into, source)
    chosen = set(layers)
    tensors = {n: source.tensors[n] if into.keys[n].layer in chosen else t for n, t in into.tensors.items()}
    return replace(into, tensors=tensors)


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
