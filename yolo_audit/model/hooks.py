"""Which modules' outputs are measured, and forward hooks that fold them into streaming per-channel states.
Hooks return None: outputs never change.

Units are output channels of blocks whose output passes through their nonlinearity. `modules` depth hooks every
top-level module except those that only move or copy channels (Upsample, Concat, ...: their channels are other
layers' channels); the output head is summarised per output branch (`model.22.cv2.i` box, `cv3.i` class, `cv4.i`
masks/keypoints/angles, `proto`), marked `head_output` (logits without an activation, never called dead).
`leaves` depth hooks every Conv block's output after its activation as `<block>.act` (units; Ultralytics shares one
SiLU instance across blocks, so the block is hooked instead), and every Conv2d and BatchNorm2d (`pre_activation`,
or `head_output` for the head's final convolutions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from yolo_audit.model.profile import COPY_MODULES

if TYPE_CHECKING:  # numba (behind ChannelState's kernels) is imported by the first recording hook, not here:
    from yolo_audit.stats.channels import ChannelState  # `similarity` selects modules and never needs it (~0.19 s)

DEPTHS = ("modules", "leaves")
UNIT, HEAD_OUTPUT, PRE_ACTIVATION = "unit", "head_output", "pre_activation"
HEAD_BRANCHES = ("cv2", "cv3", "cv4")


class Hooked(NamedTuple):
    module: nn.Module
    kind: str  # unit | head_output | pre_activation


def _head_outputs(index: int, head: nn.Module) -> dict[str, Hooked]:
    out: dict[str, Hooked] = {}
    for branch in HEAD_BRANCHES:
        seqs = getattr(head, branch, None)
        if isinstance(seqs, nn.ModuleList):
            out.update({f"model.{index}.{branch}.{j}": Hooked(seq, HEAD_OUTPUT) for j, seq in enumerate(seqs)})
    if isinstance(getattr(head, "proto", None), nn.Module):
        out[f"model.{index}.proto"] = Hooked(head.proto, HEAD_OUTPUT)
    if isinstance(getattr(head, "linear", None), nn.Linear):  # Classify returns (probabilities, logits): the logits
        out[f"model.{index}.linear"] = Hooked(head.linear, HEAD_OUTPUT)
    # RT-DETR's decoder returns tuples of per-query tensors (channels last): it is hooked, and records nothing
    return out or {f"model.{index}": Hooked(head, HEAD_OUTPUT)}


def select_modules(model: nn.Module, depth: str = "modules") -> dict[str, Hooked]:
    """Which modules to hook, by the name their rows get (`module` column), with what their channels are."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}")
    layers = model.model
    last = len(layers) - 1
    out: dict[str, Hooked] = {}
    if depth == "modules":
        for i, m in enumerate(layers):
            if i == last:
                out.update(_head_outputs(i, m))
            elif type(m).__name__ not in COPY_MODULES:
                out[f"model.{i}"] = Hooked(m, UNIT)
        return out
    head = f"model.{last}."
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            final = name.startswith(head) and isinstance(m, nn.Conv2d) and not name.endswith(".conv")
            out[name] = Hooked(m, HEAD_OUTPUT if final else PRE_ACTIVATION)
        elif type(m).__name__ == "Conv" and hasattr(m, "bn"):
            out[f"{name}.act"] = Hooked(m, UNIT)
    return out


@dataclass
class Recorder:
    """Collects per-channel states for the selected modules while it is active (a context manager)."""

    model: nn.Module
    depth: str = "modules"
    maps: int = 0  # feature maps of the first `maps` images seen
    map_channels: dict[str, list[int]] | None = None  # which channels of which modules (default: the first 16)
    map_size: int = 32
    states: dict[str, ChannelState] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (images, channels, h, w) fp16
    map_index: dict[str, list[int]] = field(default_factory=dict)  # name -> the channel of each map
    _take: int = 0
    _handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> Recorder:
        for name, hooked in select_modules(self.model, self.depth).items():
            self.kinds[name] = hooked.kind
            self._handles.append(hooked.module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin_batch(self, images: int) -> None:
        """Call before each forward: how many of this batch's first images still go into the feature maps."""
        seen = max((m.shape[0] for m in self.feature_maps.values()), default=0)
        self._take = max(0, min(images, self.maps - seen))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                self._record(name, output)

        return hook

    def _record(self, name: str, output: torch.Tensor) -> None:
        state = self.states.get(name)
        if state is None:
            from yolo_audit.stats.channels import ChannelState

            state = self.states[name] = ChannelState.empty(output.shape[1], output.device)
        state.update(output)
        wanted = list(range(min(16, output.shape[1]))) if self.map_channels is None else self.map_channels.get(name)
        wanted = [c for c in wanted or [] if c < output.shape[1]]
        if self._take and output.dim() == 4 and wanted:
            small = nn.functional.adaptive_avg_pool2d(
                output[: self._take, wanted].detach().float(),
                (min(output.shape[2], self.map_size), min(output.shape[3], self.map_size)),
            ).to("cpu", torch.float16)
            old = self.feature_maps.get(name)
            self.feature_maps[name] = small if old is None else torch.cat([old, small])
            self.map_index[name] = wanted
