"""Freezing, in one place: what a study's `freeze` spec means for a model family, what Ultralytics' `freeze` training
argument means (the layers a checkpoint declares frozen), what to pass when training, and what a checkpoint's
tensors say about whether a layer really stayed frozen (verdicts), and where the declaration and the tensors disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from yolo_audit.errors import AuditError

if TYPE_CHECKING:
    import polars as pl

    from yolo_audit.model.keys import TensorInfo
    from yolo_audit.model.profile import Profile

STRATEGIES = ("ultralytics", "callback")
FROZEN_EXACT = "frozen_exact"
FROZEN_BN_DRIFT = "frozen_bn_drift"
TRAINED = "trained"
BUFFER_ROLES = ("bn_running_mean", "bn_running_var")


def declared_layers(freeze: Any) -> list[int]:
    """Ultralytics' meaning of the `freeze` training argument: an int N freezes layers 0..N-1, a list those layers."""
    if freeze is None or isinstance(freeze, bool):
        return []
    if isinstance(freeze, int):
        return list(range(freeze))
    if isinstance(freeze, (list, tuple)):
        return sorted({int(x) for x in freeze})
    return []


def freeze_text(freeze: Any) -> str:
    """A study's freeze spec as the `runs` table and the progress lines write it: `backbone`, `all`, `10`, or a layer
    list as `0,1,2` (plain values: `where freeze = 'backbone'` matches)."""
    if isinstance(freeze, list | tuple):
        return ",".join(str(x) for x in freeze)
    return str(freeze)


def resolve_freeze(freeze: Any, key: str, profile: Profile) -> tuple[int, ...]:
    """A study's freeze spec as layers of this model family: int N: layers 0..N-1 (Ultralytics' meaning);
    `backbone`: the family's backbone (its yaml's `backbone` list); `all`: every module but the output head
    (Ultralytics refuses to freeze everything); a list: those layers."""
    head = profile.head
    if isinstance(freeze, bool):
        raise AuditError(f"{key}: freeze must be an int, 'backbone', 'all' or a list of layers, not {freeze!r}")
    if freeze == "backbone":
        return profile.backbone
    if freeze == "all":
        return profile.all_but_head
    if isinstance(freeze, int):
        if not 0 <= freeze <= head:
            raise AuditError(
                f"{key}: freeze={freeze} is impossible; use 0..{head} ({head + 1} would freeze the "
                f"{profile.head_type} head too)"
            )
        return tuple(range(freeze))
    if isinstance(freeze, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in freeze):
        bad = [x for x in freeze if not 0 <= x < profile.n_layers]
        if bad or len(set(freeze)) == profile.n_layers:
            raise AuditError(
                f"{key}: freeze lists layers {bad or f'all {profile.n_layers}'}; use indices 0..{head}, not every one"
            )
        return tuple(sorted(set(freeze)))
    raise AuditError(f"{key}: freeze must be an int, 'backbone', 'all' or a list of layer indices, not {freeze!r}")


def freeze_argument(strategy: str, layers: Sequence[int]) -> list[int] | None:
    """What to pass as Ultralytics' `freeze` when training (the callback strategy freezes by itself)."""
    return list(layers) if strategy == "ultralytics" and layers else None


def freeze_by_callback(layers: Sequence[int]) -> Any:
    """The original question's on_train_start callback: parameters of `layers` stop requiring gradients; BatchNorm
    stays in train mode. (Unlike the question's code it leaves every other flag alone, so Ultralytics'
    always-frozen DFL stays so.)"""
    prefixes = tuple(f"model.{i}." for i in layers)

    def freeze_layer(trainer: Any) -> None:
        for name, param in trainer.model.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad = False

    return freeze_layer


def layer_verdict(params_identical: Iterable[bool], buffers_identical: Iterable[bool]) -> str:
    """frozen_exact: every parameter and BN buffer bit-identical; frozen_bn_drift: parameters identical but running
    statistics moved (freezing by requires_grad leaves BN in train mode); trained: any parameter moved."""
    if not all(params_identical):
        return TRAINED
    return FROZEN_EXACT if all(buffers_identical) else FROZEN_BN_DRIFT


def layer_freeze_columns(
    infos: Sequence[TensorInfo],
    identical: Sequence[bool],
    rel_diff: Sequence[float | None],
    declared: frozenset[int] | None,
) -> dict[str, list]:
    """Rows of `layer_freeze` (without ids): per layer, the verdict from its tensors' comparison with the reference,
    whether the training arguments declare it frozen, and how much changed (num_batches_tracked is ignored)."""
    per_layer: dict[int, list[tuple[str, bool, float | None]]] = {}
    for info, same, rel in zip(infos, identical, rel_diff, strict=True):
        if info.layer is None or info.name.endswith("num_batches_tracked"):
            continue
        per_layer.setdefault(info.layer, []).append((info.role, same, rel))
    out: dict[str, list] = {
        k: [] for k in ("layer", "verdict", "declared_frozen", "n_tensors", "n_changed", "max_rel_diff")
    }
    for layer in sorted(per_layer):
        items = per_layer[layer]
        rels = [rel for _, _, rel in items if rel is not None]
        out["layer"].append(layer)
        out["verdict"].append(
            layer_verdict(
                (s for r, s, _ in items if r not in BUFFER_ROLES), (s for r, s, _ in items if r in BUFFER_ROLES)
            )
        )
        out["declared_frozen"].append(None if declared is None else layer in declared)
        out["n_tensors"].append(len(items))
        out["n_changed"].append(sum(1 for _, same, _ in items if not same))
        out["max_rel_diff"].append(max(rels) if rels else None)
    return out


def declared_mismatch() -> pl.Expr:
    """Over `layer_freeze` rows: the training arguments and the tensors disagree about this layer (null if unknown)."""
    import polars as pl

    return (
        pl.when(pl.col("declared_frozen").is_null())
        .then(None)
        .otherwise(pl.col("declared_frozen") != (pl.col("verdict") != TRAINED))
    )
