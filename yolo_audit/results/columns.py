"""Column declarations shared by every table's schema: Arrow types and the columns many tables repeat."""

from __future__ import annotations

import pyarrow as pa

Column = tuple[str, pa.DataType, str]

S, I64, I32, F64, B = pa.string(), pa.int64(), pa.int32(), pa.float64(), pa.bool_()

CKPT: Column = (
    "checkpoint_id", S, "16 hex digits of a sha256 of the tensors (names, dtypes, shapes, values): files holding "
    "identical tensors share one id",
)  # fmt: skip
REF: Column = ("reference_id", S, "checkpoint_id of the reference the row compares against")
PARAM: Column = ("param", S, "tensor name in the state dict, e.g. model.2.m.0.cv1.conv.weight")
LAYER: Column = ("layer", I32, "top-level layer index N of `model.N.` (null outside the layer list)")
MODULE: Column = ("module", S, "module path owning the tensor(s), e.g. model.2.cv1")
ROLE: Column = ("role", S, "conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var or other")
DATASET: Column = ("dataset_id", S, "see channel_stats")
