"""Forward hooks that fold activations into streaming per-channel states. Hooks return None: outputs never change.

`modules` depth hooks every top-level module (`model.N`); the Detect head, whose output is a tuple, is summarised per
output channel of its feature branches instead (`model.22.cv2.i` box and `model.22.cv3.i` class branches).
`leaves` depth hooks every Conv2d and BatchNorm2d, and each Ultralytics Conv block's output as `<block>.act` (the
SiLU module is one shared instance, so it cannot be hooked per block).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from yolo_audit.stats.channels import ChannelState

DEPTHS = ("modules", "leaves")
_LAYER = re.compile(r"^model\.(\d+)")


def layer_of(name: str) -> int | None:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


def select_modules(model: nn.Module, depth: str = "modules") -> dict[str, nn.Module]:
    """Which modules to hook, by the name their rows get (`module` column)."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}")
    layers = model.model
    out: dict[str, nn.Module] = {}
    if depth == "modules":
        for i, m in enumerate(layers):
            if hasattr(m, "cv2") and hasattr(m, "cv3") and isinstance(m.cv2, nn.ModuleList):  # Detect
                for branch in ("cv2", "cv3"):
                    for j, seq in enumerate(getattr(m, branch)):
                        out[f"model.{i}.{branch}.{j}"] = seq
            else:
                out[f"model.{i}"] = m
        return out
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            out[name] = m
        elif type(m).__name__ == "Conv" and hasattr(m, "bn"):
            out[f"{name}.act"] = m
    return out


@dataclass
class Recorder:
    """Collects per-channel states for the selected modules while it is active (a context manager)."""

    model: nn.Module
    depth: str = "modules"
    maps: int = 0  # feature maps of the first `maps` images seen
    map_channels: int = 16
    map_size: int = 32
    states: dict[str, ChannelState] = field(default_factory=dict)
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (images, channels, h, w) fp16
    _take: int = 0
    _handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> Recorder:
        for name, module in select_modules(self.model, self.depth).items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin_batch(self, images: int) -> None:
        """Call before each forward: how many of this batch's first images still go into the feature maps."""
        seen = next(iter(self.feature_maps.values())).shape[0] if self.feature_maps else 0
        self._take = max(0, min(images, self.maps - seen))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                self._record(name, output)

        return hook

    def _record(self, name: str, output: torch.Tensor) -> None:
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = ChannelState.empty(output.shape[1], output.device)
        state.update(output)
        if self._take and output.dim() == 4:
            small = nn.functional.adaptive_avg_pool2d(
                output[: self._take, : self.map_channels].detach().float(),
                (min(output.shape[2], self.map_size), min(output.shape[3], self.map_size)),
            ).to("cpu", torch.float16)
            old = self.feature_maps.get(name)
            self.feature_maps[name] = small if old is None else torch.cat([old, small])
