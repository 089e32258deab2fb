"""What every state-dict key means: its top-level layer, owning module, the layer's module type, and its role.

Works from names and shapes alone, so bare state dicts and safetensors get the same mapping as pickled models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_LAYER = re.compile(r"^model\.(\d+)(?=\.|$)")


def layer_of(name: str) -> int | None:
    """N of `model.N` or `model.N.<anything>` (a tensor or module name); None outside the layer list."""
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor sits in the network."""

    name: str
    layer: int | None  # N of `model.N.`; None outside the layer list
    module: str  # owning module path, e.g. model.2.m.0.cv1.conv
    module_type: str  # type of the top-level module: Conv, C2f, SPPF, Upsample, Concat, Detect, ...
    role: str  # conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var, other


def infer_module_types(tensors: dict[str, torch.Tensor]) -> dict[int, str]:
    """Top-level module types from tensor names alone (state dicts carry no classes): YOLOv8 naming patterns."""
    children: dict[int, set[str]] = {}
    for name in tensors:
        layer = layer_of(name)
        if layer is not None:
            children.setdefault(layer, set()).add(name.split(".")[2])
    types: dict[int, str] = {}
    for layer, kids in children.items():
        if "dfl" in kids or {"cv2", "cv3"} <= kids and "cv1" not in kids:
            types[layer] = "Detect"
        elif "m" in kids and "cv1" in kids:
            types[layer] = "C2f"
        elif {"cv1", "cv2"} <= kids:
            types[layer] = "SPPF"
        elif {"conv", "bn"} <= kids:
            types[layer] = "Conv"
        else:
            types[layer] = "unknown"
    return types


def describe_keys(tensors: dict[str, torch.Tensor], module_types: dict[int, str]) -> dict[str, TensorInfo]:
    """Map every tensor name to its layer, owning module, top-level module type and role."""
    out: dict[str, TensorInfo] = {}
    for name, value in tensors.items():
        module, _, leaf = name.rpartition(".")
        layer = layer_of(name)
        out[name] = TensorInfo(
            name=name,
            layer=layer,
            module=module,
            module_type=module_types.get(layer, "unknown") if layer is not None else "other",
            role=_role(leaf, module, value, tensors),
        )
    return out


def _role(leaf: str, module: str, value: torch.Tensor, tensors: dict[str, torch.Tensor]) -> str:
    if leaf in ("running_mean", "running_var"):
        return f"bn_{leaf}"
    if leaf == "num_batches_tracked":
        return "other"
    if f"{module}.running_mean" in tensors and leaf in ("weight", "bias"):
        return f"bn_{leaf}"
    if leaf == "weight" and value.dim() >= 2:
        return "conv_weight"
    sibling = tensors.get(f"{module}.weight")
    if leaf == "bias" and sibling is not None and sibling.dim() >= 2:
        return "conv_bias"
    return "other"
