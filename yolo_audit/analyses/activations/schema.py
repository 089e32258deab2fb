"""Tables of the activations analysis (see the README's schema section)."""

from __future__ import annotations

import pyarrow as pa

from yolo_audit.results.columns import CKPT, DATASET, F64, I32, I64, LAYER, B, Column, S

MODULE_HOOKED: Column = ("module", S, "hooked module")

TABLES: dict[str, list[Column]] = {
    "channel_stats": [
        CKPT,
        ("dataset_id", S, "hash of the exact image list and imgsz: rows with the same dataset_id are comparable"),
        LAYER,
        ("module", S, "hooked module: model.N, a head branch model.22.cv2.i / cv3.i, or a leaf with --depth leaves"),
        (
            "unit_kind",
            S,
            "unit (output of a nonlinearity: counted), head_output (logits: kept, never counted) or "
            "pre_activation (a Conv2d/BatchNorm2d leaf)",
        ),
        ("channel", I32, "output channel"),
        ("count", I64, "activation values seen for the channel (images x positions)"),
        ("mean", F64, "mean activation"),
        ("std", F64, "population standard deviation (streamed, Chan-merged across batches and shards)"),
        ("min", F64, "minimum"),
        ("max", F64, "maximum"),
        ("mean_abs", F64, "mean |a|"),
        ("frac_positive", F64, "fraction of values > 0"),
        ("dormant_score", F64, "mean|a_c| / mean over the module's channels of mean|a_k| (Sokar et al. 2023)"),
        ("dormant", B, "dormant_score <= tau"),
        ("constant", B, "std_c / mean over the module's channels of std_k <= tau (BN gamma ~ 0: outputs SiLU(beta))"),
        ("never_positive", B, "max <= 0 (descriptive only: a SiLU unit with negative outputs can be alive)"),
        ("dead", B, "dormant or constant: the one definition of a dead unit"),
        ("newly_dead", B, "dead here but alive in the --reference on the same data; null without one"),
        ("revived", B, "alive here but dead in the --reference on the same data; null without one"),
        ("tau", F64, "the threshold used for dormant and constant"),
    ],
    "activation_hist": [
        CKPT,
        DATASET,
        LAYER,
        MODULE_HOOKED,
        ("bin", I32, "octave bin: (sign << 8) | float32 exponent; fixed for every module and checkpoint"),
        ("lo", F64, "lower edge (a power of two, mirrored for negatives)"),
        ("hi", F64, "upper edge"),
        ("count", I64, "activation values in [lo, hi) over all images and channels (empty bins are omitted)"),
    ],  # fmt: skip
    "feature_maps": [
        CKPT,
        DATASET,
        LAYER,
        MODULE_HOOKED,
        ("image", I32, "index of the image in the dataset's list (the first --maps images)"),
        ("image_path", S, "the image file"),
        (
            "channel",
            I32,
            "channel: per unit module the 8 whose mean activation moved most from the --reference's (in "
            "units of its spread), or the 8 most varying without one",
        ),
        ("height", I32, "map height after average pooling to at most 32x32"),
        ("width", I32, "map width"),
        ("values", pa.list_(pa.float32()), "height*width activations, row-major"),
    ],  # fmt: skip
    "activation_passes": [
        CKPT,
        DATASET,
        (
            "reference_id",
            S,
            "the --reference this checkpoint's newly_dead and revived compare against, measured on the same images "
            "(null without one, and for the reference itself)",
        ),
        ("images", I64, "images that went through the network"),
        ("failed_images", I64, "images that could not be read (skipped)"),
        ("imgsz", I32, "letterbox size"),
        ("depth", S, "modules or leaves"),
        ("device", S, "where the forward passes ran"),
        ("precision", S, "what the forward passes ran in: fp32 (TF32 off on GPUs; see docs/numbers.md)"),
        ("seconds", F64, "task time, summed over shards"),
    ],  # fmt: skip
}
