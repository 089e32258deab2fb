"""Tables of the weights analysis: one line per column (name, Arrow type, meaning, as the README shows it)."""

from __future__ import annotations

from yolo_audit.results.columns import CKPT, F64, I32, I64, LAYER, MODULE, PARAM, REF, ROLE, B, Column, S

TABLES: dict[str, list[Column]] = {
    "weight_stats": [
        CKPT,
        PARAM,
        LAYER,
        MODULE,
        ("module_type", S, "type of the top-level module: Conv, C2f, SPPF, Detect, ..."),
        ROLE,
        ("numel", I64, "number of elements"),
        ("mean", F64, "mean"),
        ("std", F64, "population standard deviation (ddof=0)"),
        ("min", F64, "minimum"),
        ("max", F64, "maximum"),
        ("abs_mean", F64, "mean of |w|"),
        ("l2", F64, "L2 (Frobenius) norm"),
        ("frac_near_zero", F64, "fraction of elements with |w| < near_zero (default 1e-3)"),
        ("kurtosis", F64, "excess kurtosis m4/m2^2 - 3 (null for a constant tensor)"),
        ("spectral_norm", F64, "largest singular value of the (out, in*k*k) matrix; conv/linear weights only"),
        ("stable_rank", F64, "||W||_F^2 / spectral_norm^2; conv/linear weights only"),
        (
            "alpha",
            F64,
            "with --alpha: WeightWatcher 0.7's power-law exponent of the ESD (k x k slices scaled by "
            "sqrt(k*k/2), pooled; Clauset fit); null without --alpha or under 50 eigenvalues",
        ),
        ("alpha_weighted", F64, "with --alpha: alpha * log10(largest ESD eigenvalue), as WeightWatcher reports it"),
    ],  # fmt: skip
    "weight_hist": [
        CKPT,
        ("bins_id", S, "which shared bin edges: `ref-<reference_id>` or `pooled-<hash of the checkpoint set>`"),
        PARAM,
        LAYER,
        ("bin", I32, "bin index 0..bins-1; -1 is the underflow (< lo of bin 0), bins is the overflow"),
        ("lo", F64, "lower edge (inclusive; -inf for the underflow)"),
        ("hi", F64, "upper edge (exclusive; +inf for the overflow)"),
        ("count", I64, "elements in [lo, hi)"),
    ],  # fmt: skip
    "channel_weights": [
        CKPT,
        LAYER,
        ("module", S, "Conv block path (its .conv and .bn children), e.g. model.2.cv1"),
        ("channel", I32, "output channel"),
        ("filter_l2", F64, "L2 norm of the channel's conv filter"),
        ("bn_gamma", F64, "BatchNorm weight"),
        ("bn_beta", F64, "BatchNorm bias"),
        ("bn_mean", F64, "BatchNorm running_mean"),
        ("bn_var", F64, "BatchNorm running_var"),
        ("fused_l2", F64, "L2 norm of the BN-folded filter W * gamma / sqrt(var + eps), eps from the module"),
        ("dead_constant", B, "|gamma| < gamma_eps (default 1e-3): the channel outputs the constant SiLU(beta)"),
        ("dead_negative", B, "beta + 3|gamma| < neg_margin (default -4): pre-activation essentially always negative"),
        ("dead_by_weights", B, "dead_constant or dead_negative"),
    ],  # fmt: skip
    "weight_divergence": [
        CKPT,
        REF,
        PARAM,
        LAYER,
        ("group", S, "backbone, neck or head, from the model's own yaml (null where unknown: a bare state dict)"),
        ROLE,
        ("l2_diff", F64, "||a - b||"),
        (
            "rel_diff",
            F64,
            "||a - b|| / ||b||; null where the reference is near zero (its RMS below --near-zero): see `reason`",
        ),
        ("rms_diff", F64, "||a - b|| / sqrt(numel)"),
        ("cosine", F64, "cosine similarity of a and b (null where either is all zeros)"),
        ("max_abs_diff", F64, "max |a - b|"),
        (
            "max_abs_steps",
            F64,
            "max |a - b| in steps of the stored precision (the coarser file's: fp16, bf16 or fp32) "
            "at max |b|: 1 is one rounding step",
        ),
        (
            "identical",
            B,
            "bitwise identical; when one file is fp16/bf16 and the other fp32, compared after rounding "
            "both to the coarser type (differences are then reported as 0)",
        ),
        ("reason", S, "why rel_diff is null (a near-zero reference); null otherwise"),
    ],  # fmt: skip
    "channel_divergence": [
        CKPT,
        REF,
        PARAM,
        LAYER,
        MODULE,
        ("channel", I32, "output channel of a conv/linear weight"),
        ("l2_diff", F64, "||a_c - b_c||"),
        ("rel_diff", F64, "||a_c - b_c|| / ||b_c|| (null where the reference filter's RMS is below --near-zero)"),
    ],  # fmt: skip
    "layer_freeze": [
        CKPT,
        REF,
        LAYER,
        (
            "verdict",
            S,
            "frozen_exact (parameters and BN statistics bit-identical), frozen_bn_drift (parameters "
            "identical, BN running statistics changed) or trained",
        ),
        ("declared_frozen", B, "the checkpoint's train_args freeze this layer (null when unknown)"),
        ("n_tensors", I32, "parameters and BN buffers compared (num_batches_tracked excluded)"),
        ("n_changed", I32, "of those, how many are not bitwise identical"),
        ("max_rel_diff", F64, "largest rel_diff among the layer's tensors"),
    ],  # fmt: skip
}
