"""Table of the similarity analysis (see the README's schema section)."""

from __future__ import annotations

from yolo_audit.results.columns import DATASET, F64, I32, I64, Column, S

TABLES: dict[str, list[Column]] = {
    "similarity": [
        ("checkpoint_a", S, "checkpoint_id of the first checkpoint"),
        ("checkpoint_b", S, "checkpoint_id of the second (equal to checkpoint_a for the self-pair, CKA 1)"),
        ("layer_a", I32, "top-level layer of module_a"),
        ("layer_b", I32, "top-level layer of module_b"),
        ("module_a", S, "hooked module of checkpoint_a (model.N, or a Detect branch model.22.cv2.i / cv3.i)"),
        ("module_b", S, "hooked module of checkpoint_b (the same as module_a unless --cross-layer)"),
        ("cka", F64, "linear CKA, minibatch unbiased HSIC (Nguyen et al. 2021); null where undefined"),
        (
            "cka_se",
            F64,
            "standard error of cka: the jackknife over batches (linearised; null under 2 batches); the same for any "
            "sharding",
        ),
        (
            "cka_chance",
            F64,
            "the same estimator with module_b's images shuffled within each batch (a seeded cycle): what cka reads "
            "for unrelated images; a cka within 2 cka_se of it is noise",
        ),
        (
            "procrustes",
            F64,
            "angular Procrustes distance in radians, arccos of the nuclear norm of X'Y for centred, unit-Frobenius "
            "channel means over all images (Williams et al. 2021): 0 the same up to rotation and scale; each "
            "checkpoint against the reference (the first checkpoint), corresponding modules, --pool avg (null "
            "otherwise)",
        ),
        ("reason", S, "why cka is null (e.g. the layer does not vary across images); null otherwise"),
        ("n_images", I64, "images in full batches (batches under 4 images are skipped)"),
        ("n_batches", I64, "batches accumulated"),
        ("pool", S, "avg (per-channel spatial means) or none (every activation)"),
        ("precision", S, "what the forward passes ran in: fp32 (TF32 off on GPUs; see docs/numbers.md)"),
        DATASET,
    ],
}
