"""One task of `yolo-audit similarity`: one shard of whole batches through every checkpoint -> partial CKA and
Procrustes states.

Each task loads every checkpoint and runs each batch through each of them with hooks that keep the batch's features
of every measured module (units and head outputs; modules that only copy channels are left out), pooled in float64,
and folds all pairwise HSIC sums into one `CKAState`, and, with channel means (`--pool avg`), the co-moments of
corresponding modules of each checkpoint and the reference into one `ProcrustesState`. Both merge exactly, so shards
merge in a tree. The passes run in true float32 (`exact_float32`: no TF32 on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from yolo_audit.analyses.images import batches, prefetched
from yolo_audit.errors import AuditError
from yolo_audit.model.build import build_module, for_passes
from yolo_audit.model.checkpoint import checkpoint_table, load_checkpoint
from yolo_audit.model.hooks import select_modules
from yolo_audit.model.keys import layer_of
from yolo_audit.results.errors import ErrorRecord, record
from yolo_audit.runtime.devices import exact_float32, keep_freed_memory, resolve_device
from yolo_audit.stats.cka import MIN_BATCH, CKAState
from yolo_audit.stats.layout import by_position
from yolo_audit.stats.procrustes import ProcrustesState


@dataclass(frozen=True)
class SimilarityOptions:
    imgsz: int = 640
    batch: int = 8
    pool: str = "avg"  # avg: per-channel spatial means; none: every activation
    cross_layer: bool = False
    device: str = "auto"
    cfg: str | None = None
    trust_pickle: bool = False


@dataclass
class SimilarityResult:
    ids: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    state: CKAState | None = None
    skipped_images: int = 0
    rows: list[dict[str, list]] = field(default_factory=list)  # checkpoints rows (first shard)
    errors: list[ErrorRecord] = field(default_factory=list)
    groups: dict[str, str | None] = field(default_factory=dict)  # module -> backbone / neck / head (the profile's)
    procrustes: ProcrustesState | None = None  # corresponding modules of checkpoint pairs (channel means only)
    precision: str = "fp32"  # what the passes ran in

    def merge(self, other: SimilarityResult) -> SimilarityResult:
        a, b = self, other
        state = a.state.merge(b.state) if a.state is not None and b.state is not None else (a.state or b.state)
        modules = a.modules if a.state is not None or b.state is None else b.modules  # the measured side's
        shapes = a.procrustes.merge(b.procrustes) if a.procrustes and b.procrustes else a.procrustes or b.procrustes
        return SimilarityResult(
            a.ids or b.ids, modules or a.modules or b.modules, state, a.skipped_images + b.skipped_images,
            a.rows or b.rows, a.errors + [e for e in b.errors if e not in a.errors], a.groups or b.groups, shapes,
            a.precision if a.state is not None else b.precision,
        )  # fmt: skip


# Channel means are taken a chunk of about this many activations at a time: each chunk's float64 copy stays in the
# CPU's cache, where a float64 copy of a whole output (up to ~200 MB at 640 px) would go through memory
_POOL_CHUNK = 1 << 18


def _features(output: torch.Tensor, pool: str) -> torch.Tensor:
    """Per-image features in float64: channel means (`avg`; float32 pooling loses variation of ~1e-13 of a layer's
    size) or every activation (`none`). On the CPU the float64 sums are taken chunk by chunk (~2-3x faster than
    converting the whole output first), in the output's memory layout (channels-last on the CPU, see `for_passes`);
    on a GPU in one reduction that converts as it reads."""
    out = output.detach()
    if pool != "avg" or out.dim() <= 2:
        return out.double().reshape(out.shape[0], -1)
    n, c = out.shape[0], out.shape[1]
    if out.device.type != "cpu":
        return out.reshape(n, c, -1).mean(dim=2, dtype=torch.float64)
    by_place = by_position(out)  # (image, position, channel) of a channels-last output
    if by_place is not None:
        step = max(1, _POOL_CHUNK // (n * c))
        sums = sum(by_place[:, i : i + step].double().sum(dim=1) for i in range(0, by_place.shape[1], step))
        return sums / by_place.shape[1]
    rows = out.reshape(n * c, -1)  # (image, channel) rows
    step = max(1, _POOL_CHUNK // rows.shape[1])
    return torch.cat([rows[i : i + step].double().mean(dim=1) for i in range(0, rows.shape[0], step)]).view(n, c)


def similarity_shard(
    paths: list[str], images: list[str], opts: SimilarityOptions, *, first: bool = False
) -> SimilarityResult:
    """Every batch of the shard through every checkpoint; checkpoints of another architecture than the first (the
    reference) are left out with an `align` error row."""
    result = SimilarityResult()
    device = resolve_device(opts.device)
    keep_freed_memory()  # forward passes reuse their activations' memory
    models = []
    arch: tuple[str, str] | None = None  # (hash, path) of the first checkpoint that loaded
    for path in paths:
        try:
            ckpt = load_checkpoint(path, trust_pickle=opts.trust_pickle)
            if arch is not None and ckpt.arch_hash != arch[0]:
                raise AuditError(
                    f"architecture differs from {arch[1]}, the first checkpoint (the reference); its modules do not "
                    "correspond, so it was left out. Compare checkpoints of the same model",
                    path=path,
                    stage="align",
                )
            if arch is None:
                arch = (ckpt.arch_hash, path)
                profile = ckpt.profile
            if first:
                result.rows.append(checkpoint_table(ckpt))
            if ckpt.checkpoint_id in result.ids:  # the same tensors under another name: one checkpoint
                continue
            models.append(for_passes(build_module(ckpt, cfg=opts.cfg), device))
            result.ids.append(ckpt.checkpoint_id)
        except Exception as exc:  # noqa: BLE001 - that checkpoint is left out, with an errors row
            result.errors.append(record(path, "similarity", exc))
    if not models:
        return result
    names = list(select_modules(models[0], "modules"))
    result.groups = {n: profile.group(layer_of(n)) for n in names}
    with torch.inference_mode(), exact_float32() as result.precision:
        for group, batch, failed in prefetched(batches(images, opts.batch), opts.imgsz, device):
            result.skipped_images += failed
            if len(batch) < MIN_BATCH:
                result.skipped_images += len(batch)
                continue
            captured = [_run(model, batch, names, opts.pool) for model in models]
            if result.state is None:  # modules whose output is a tensor (tuple outputs are no representation)
                result.modules = [n for n in names if n in captured[0]]
                result.state = CKAState.empty(len(models) * len(result.modules), device)
                if opts.pool == "avg":
                    result.procrustes = ProcrustesState.empty(procrustes_pairs(len(models), len(result.modules)))
            features = [one[n] for one in captured for n in result.modules]
            result.state.update(features, seed="\n".join(group))
            if result.procrustes is not None:
                result.procrustes.update(features)
    if result.state is None:  # no full batch here: other shards' states stand for this one
        result.modules = names
    else:  # once per task: the sums stayed on the device until here
        result.state = result.state.to("cpu")
        result.procrustes = result.procrustes.to("cpu") if result.procrustes is not None else None
    return result


def procrustes_pairs(checkpoints: int, modules: int) -> list[tuple[int, int]]:
    """(p, q) representation indices (checkpoint x module, module fastest) of corresponding modules of each checkpoint
    and the reference (checkpoint 0): the pairs an answer compares (a co-moment is channels x channels, and its
    nuclear norm an SVD: ~12 MB and ~0.2 s per yolov8s checkpoint on 2 cores)."""
    return [(i, b * modules + i) for b in range(1, checkpoints) for i in range(modules)]


def _run(model: torch.nn.Module, batch: torch.Tensor, names: list[str], pool: str) -> dict[str, torch.Tensor]:
    """The batch's pooled features of every named module whose output is a tensor."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str, output: object) -> None:
        if isinstance(output, torch.Tensor):
            captured[name] = _features(output, pool)

    modules = select_modules(model, "modules")
    handles = [modules[n].module.register_forward_hook(lambda m, i, o, n=n: keep(n, o)) for n in names]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured
