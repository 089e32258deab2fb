"""Weight analysis of loaded checkpoints as table columns: statistics joined with where each tensor sits.

No IO and no Ray: functions take `Checkpoint` objects and return `{table: {column: values}}` ready for `files.write`.
`analyze` lists one checkpoint's work as steps, each naming its stage and file key, computed in turn.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from yolo_audit.model.checkpoint import Checkpoint, check_aligned
from yolo_audit.model.freeze import layer_freeze_columns
from yolo_audit.results import files
from yolo_audit.results.keys import checkpoint_key, comparison_key, hist_key
from yolo_audit.stats.divergence import bitwise_equal, channel_divergence, divergence, filter_norms
from yolo_audit.stats.weights import TENSOR_STATS, Columns, bin_range, channel_weights, histograms, tensor_stats

Table = dict[str, Any]  # column -> list, numpy array or pyarrow array (what `files.write` takes)
Tables = dict[str, Table]


@dataclass(frozen=True)
class WeightOptions:
    """Thresholds of the weight analysis (recorded in the README; defaults suit YOLOv8)."""

    near_zero: float = 1e-3  # |w| below this counts in frac_near_zero
    gamma_eps: float = 1e-3  # |BN gamma| below this: constant channel
    neg_margin: float = -4.0  # beta + 3|gamma| below this: SiLU input essentially always negative
    bins: int = 64  # histogram bins per parameter
    alpha: bool = False  # WeightWatcher's alpha and alpha_weighted per conv weight (~1 s per yolov8s on 2 cores)


def weight_tables(
    ckpt: Checkpoint,
    opts: WeightOptions,
    *,
    known: dict[str, dict] | None = None,
    blocks: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Tables:
    """`weight_stats` (one row per tensor) and `channel_weights` (one row per output channel of each Conv+BN block).

    `known` maps tensor names to statistics already computed for bit-identical tensors (a frozen layer's, from the
    reference), `blocks` Conv+BN blocks to their channel values likewise: those rows are copied, not recomputed, so
    frozen layers cost nothing.
    """
    return _weight_tables(ckpt, opts, known or {}, blocks or {})[0]


def _weight_tables(
    ckpt: Checkpoint, opts: WeightOptions, known: dict[str, dict], blocks: dict[str, dict[str, torch.Tensor]]
) -> tuple[Tables, dict[str, torch.Tensor], list[tuple[str, int, dict[str, torch.Tensor]]]]:
    """`weight_tables`, the per-filter sums of squares its moments' pass found (conv weight -> float64), and each
    Conv+BN block's channel values (see `_block_channels`)."""
    names = list(ckpt.tensors)
    keys = ckpt.keys
    todo = [n for n in names if n not in known]
    row_sq: dict[int, torch.Tensor] = {}  # filters' squared norms, from the moments' pass
    fresh = tensor_stats(
        [ckpt.tensors[n] for n in todo], near_zero=opts.near_zero, matrix=[keys[n].role == "conv_weight" for n in todo],
        alpha=opts.alpha, row_sq=row_sq,
    )  # fmt: skip
    position = {n: i for i, n in enumerate(todo)}
    stats = {k: [known[n][k] if n in known else fresh[k][position[n]] for n in names] for k in fresh}
    where = {
        "checkpoint_id": [ckpt.checkpoint_id] * len(names), "param": names,
        "layer": [keys[n].layer for n in names], "module": [keys[n].module for n in names],
        "module_type": [keys[n].module_type for n in names], "role": [keys[n].role for n in names],
    }  # fmt: skip
    filters = {todo[i]: rows for i, rows in row_sq.items()}
    found = _block_channels(ckpt, opts, blocks, filters)
    return {"weight_stats": {**where, **stats}, "channel_weights": _channel_table(ckpt, found)}, filters, found


@dataclass
class ReferenceCache:
    """What every checkpoint compared with one reference can reuse for its bit-identical tensors."""

    stats: dict[str, dict]  # param -> weight_stats values of the reference's tensor
    hist: dict[str, np.ndarray]  # param -> the reference tensor's counts on the command's shared bins
    blocks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # Conv+BN block -> channel_weights
    filter_l2: dict[str, torch.Tensor] = field(default_factory=dict)  # conv weight -> float64 L2 of each filter

    def same_blocks(self, ckpt: Checkpoint, ref: Checkpoint, same: set[str]) -> dict[str, dict[str, torch.Tensor]]:
        """The reference's channel values of the blocks whose tensors (and BatchNorm eps) `ckpt` shares with it."""
        return {
            block: cols for block, cols in self.blocks.items()
            if all(f"{block}{part}" in same for part in _BLOCK_PARTS)
            and ckpt.eps_for(f"{block}.bn") == ref.eps_for(f"{block}.bn")
        }  # fmt: skip


_BLOCK_PARTS = (".conv.weight", ".bn.weight", ".bn.bias", ".bn.running_mean", ".bn.running_var")


def reference_cache(
    ref: Checkpoint, opts: WeightOptions, edges: dict[str, tuple[float, float]] | None
) -> ReferenceCache:
    tables, filters, found = _weight_tables(ref, opts, {}, {})
    stats = tables["weight_stats"]
    blocks = {block: cols for block, _, cols in found}
    rows = {p: {k: stats[k][i] for k in TENSOR_STATS} for i, p in enumerate(stats["param"])}
    filter_l2 = {
        n: filters[n].sqrt() if n in filters else filter_norms(t)
        for n, t in ref.tensors.items() if ref.keys[n].role == "conv_weight"
    }  # fmt: skip
    hist: dict[str, np.ndarray] = {}
    if edges is not None:
        names = [n for n in ref.tensors if n in edges]
        counts = histograms([ref.tensors[n] for n in names], [edges[n] for n in names], opts.bins).numpy()
        hist = {n: counts[i] for i, n in enumerate(names)}
    return ReferenceCache(rows, hist, blocks, filter_l2)


def identical_names(ckpt: Checkpoint, ref: Checkpoint) -> set[str]:
    """Tensors whose float32 bits equal the reference's (what a frozen layer keeps)."""
    return {n for n, t in ckpt.tensors.items() if n in ref.tensors and bitwise_equal(t, ref.tensors[n])}


def conv_bn_blocks(ckpt: Checkpoint) -> list[str]:
    """Module paths X with a conv X.conv.weight and a BatchNorm X.bn (Ultralytics' Conv block)."""
    t = ckpt.tensors
    return [
        name[: -len(".bn.running_mean")]
        for name in t
        if name.endswith(".bn.running_mean") and f"{name[: -len('.bn.running_mean')]}.conv.weight" in t
    ]


def _block_channels(
    ckpt: Checkpoint,
    opts: WeightOptions,
    known: dict[str, dict[str, torch.Tensor]],
    filters: dict[str, torch.Tensor],
) -> list[tuple[str, int, dict[str, torch.Tensor]]]:
    """(block, layer, channel_weights values) of every Conv+BN block; blocks in `known` are copied; `filters`: conv
    weights' per-filter sums of squares already computed."""
    out = []
    t = ckpt.tensors
    for block in conv_bn_blocks(ckpt):
        bn = f"{block}.bn"
        cols = known.get(block) or channel_weights(
            t[f"{block}.conv.weight"], t[f"{bn}.weight"], t[f"{bn}.bias"], t[f"{bn}.running_mean"],
            t[f"{bn}.running_var"], eps=ckpt.eps_for(bn), gamma_eps=opts.gamma_eps, neg_margin=opts.neg_margin,
            row_sq=filters.get(f"{block}.conv.weight"),
        )  # fmt: skip
        out.append((block, ckpt.keys[f"{block}.conv.weight"].layer, cols))
    return out


def _channel_table(ckpt: Checkpoint, found: list[tuple[str, int, dict[str, torch.Tensor]]]) -> Table:
    if not found:
        return _empty_channels()
    sizes = [int(cols["filter_l2"].numel()) for _, _, cols in found]
    where = {
        "checkpoint_id": files.repeat([ckpt.checkpoint_id], sum(sizes)),
        "layer": np.repeat([layer for _, layer, _ in found], sizes),
        "module": files.repeat([block for block, _, _ in found], sizes), "channel": _channels(sizes),
    }  # fmt: skip
    names = found[0][2].keys()
    return {**where, **{name: torch.cat([cols[name] for _, _, cols in found]).numpy() for name in names}}


def _channels(sizes: Sequence[int]) -> np.ndarray:
    """0..n-1 for each n in sizes, one after another."""
    return np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, dtype=np.int64)


def _empty_channels() -> Table:
    names = ("filter_l2", "bn_gamma", "bn_beta", "bn_mean", "bn_var", "fused_l2", "dead_constant", "dead_negative")
    where: Table = {"checkpoint_id": [], "layer": [], "module": [], "channel": []}
    return {**where, **{n: [] for n in names}, "dead_by_weights": []}


def hist_table(
    ckpt: Checkpoint,
    edges: dict[str, tuple[float, float]],
    bins_id: str,
    bins: int,
    *,
    known: dict[str, np.ndarray] | None = None,
) -> Table:
    """Histogram of every tensor on shared bins: `edges[param] = (lo, hi)` fixed for the whole study. `known` holds
    counts of bit-identical tensors on the same bins (reused)."""
    known = known or {}
    names = [n for n in ckpt.tensors if n in edges]
    todo = [n for n in names if n not in known]
    fresh = histograms([ckpt.tensors[n] for n in todo], [edges[n] for n in todo], bins).numpy()
    position = {n: i for i, n in enumerate(todo)}
    per = bins + 2  # underflow, the bins, overflow
    counts = np.stack([known[n] if n in known else fresh[position[n]] for n in names]) if names else fresh
    bounds = [bin_edges(*edges[n], bins) for n in names]
    n = len(names) * per
    return {
        "checkpoint_id": files.repeat([ckpt.checkpoint_id], n), "bins_id": files.repeat([bins_id], n),
        "param": files.repeat(names, per), "layer": np.repeat([ckpt.keys[p].layer for p in names], per),
        "bin": np.tile(np.arange(-1, bins + 1), len(names)),
        "lo": np.concatenate([b[0] for b in bounds]) if bounds else np.zeros(0),
        "hi": np.concatenate([b[1] for b in bounds]) if bounds else np.zeros(0), "count": counts.reshape(-1),
    }  # fmt: skip


@lru_cache(maxsize=4096)
def bin_edges(lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges of the underflow bin, the `bins` equal bins over [lo, hi), and the overflow bin (the same
    for every checkpoint of a command, so computed once per parameter)."""
    width = (hi - lo) / bins
    lows = [-math.inf] + [lo + i * width for i in range(bins)] + [hi]
    highs = [lo] + [lo + (i + 1) * width for i in range(bins - 1)] + [hi, math.inf]
    return np.array(lows), np.array(highs)


def shared_edges(ranges: Sequence[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Pool per-checkpoint (min, max) of each parameter into one bin range per parameter."""
    pooled: dict[str, tuple[float, float]] = {}
    for one in ranges:
        for name, (lo, hi) in one.items():
            old = pooled.get(name)
            pooled[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return {name: bin_range(lo, hi) for name, (lo, hi) in pooled.items() if math.isfinite(lo) and math.isfinite(hi)}


def ranges_of(stats: Columns) -> dict[str, tuple[float, float]]:
    return {p: (lo, hi) for p, lo, hi in zip(stats["param"], stats["min"], stats["max"], strict=True)}


def pooled_bins_id(checkpoint_ids: Sequence[str]) -> str:
    return "pooled-" + hashlib.sha256(",".join(sorted(set(checkpoint_ids))).encode()).hexdigest()[:12]


def divergence_tables(
    ckpt: Checkpoint,
    ref: Checkpoint,
    *,
    identical: set[str] | None = None,
    l2: tuple[dict[str, float], dict[str, float]] | None = None,
    near_zero: float = WeightOptions.near_zero,
    filter_l2: dict[str, torch.Tensor] | None = None,
) -> Tables:
    """`weight_divergence`, `channel_divergence` and `layer_freeze` of `ckpt` against the reference `ref`
    (`identical`: names already known to be bit-identical, from `identical_names`; `l2`: the two checkpoints' known
    tensor norms, from weight_stats; `near_zero`: below this reference RMS a relative change is null; `filter_l2`: the
    reference's filter norms of conv weights, from the reference cache)."""
    check_aligned(ref, ckpt)
    keys = ref.keys
    names = list(ref.tensors)
    compare = coarser_dtype(ckpt, ref)
    row_diff: dict[int, torch.Tensor] = {}  # moved filters' squared differences, from the divergence pass
    cols = divergence(
        [ckpt.tensors[n] for n in names], [ref.tensors[n] for n in names], compare_dtype=compare,
        identical=[n in identical for n in names] if identical is not None and compare is None else None,
        norms=([l2[0][n] for n in names], [l2[1][n] for n in names]) if l2 is not None else None,
        near_zero=near_zero, storage=storage_dtype(ckpt, ref), row_diff=row_diff,
    )  # fmt: skip
    ids = {"checkpoint_id": [ckpt.checkpoint_id] * len(names), "reference_id": [ref.checkpoint_id] * len(names)}
    weight_div = {
        **ids, "param": names, "layer": [keys[n].layer for n in names],
        "group": [ref.profile.group(keys[n].layer) for n in names], "role": [keys[n].role for n in names], **cols,
    }  # fmt: skip
    layers = layer_freeze_columns([keys[n] for n in names], cols["identical"], cols["rel_diff"], ckpt.declared_frozen)
    n = len(layers["layer"])
    return {
        "weight_divergence": weight_div,
        "channel_divergence": _channel_divergence(
            ckpt, ref, names, cols["identical"], near_zero, filter_l2 or {}, {names[i]: d for i, d in row_diff.items()}
        ),
        "layer_freeze": {"checkpoint_id": [ckpt.checkpoint_id] * n, "reference_id": [ref.checkpoint_id] * n, **layers},
    }


_HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def storage_dtype(a: Checkpoint, b: Checkpoint) -> torch.dtype:
    """The coarser of the two files' stored precisions: what a difference's steps are counted in."""
    return coarser_dtype(a, b) or _HALF.get(a.precision) or _HALF.get(b.precision) or torch.float32


def coarser_dtype(a: Checkpoint, b: Checkpoint) -> torch.dtype | None:
    """When one file stores fp16/bf16 and the other fp32, identity is judged at the coarser precision."""
    if a.precision == b.precision:
        return None
    halves = {_HALF[p] for p in (a.precision, b.precision) if p in _HALF}
    return halves.pop() if len(halves) == 1 else None


def _channel_divergence(
    ckpt: Checkpoint,
    ref: Checkpoint,
    names: list[str],
    identical: list[bool],
    near_zero: float,
    filter_l2: dict[str, torch.Tensor],
    diff_sq: dict[str, torch.Tensor],
) -> Table:
    params, layers, modules, sizes, diffs, rels = [], [], [], [], [], []
    for name, same in zip(names, identical, strict=True):
        info = ref.keys[name]
        if info.role != "conv_weight":
            continue
        a, b = ckpt.tensors[name], ref.tensors[name]
        diff, rel = channel_divergence(
            a, b, near_zero=near_zero, identical=same, ref_norms=filter_l2.get(name), diff_sq=diff_sq.get(name)
        )
        params.append(name)
        layers.append(info.layer)
        modules.append(info.module)
        sizes.append(a.shape[0])
        diffs.append(diff)
        rels.append(rel)
    n = sum(sizes)
    return {
        "checkpoint_id": files.repeat([ckpt.checkpoint_id], n), "reference_id": files.repeat([ref.checkpoint_id], n),
        "param": files.repeat(params, sizes), "layer": np.repeat(layers, sizes).astype(np.int64),
        "module": files.repeat(modules, sizes), "channel": _channels(sizes),
        "l2_diff": torch.cat(diffs).numpy() if diffs else np.zeros(0),
        "rel_diff": torch.cat(rels).numpy() if rels else np.zeros(0),  # NaN (reference filter near zero): null
    }  # fmt: skip


def tensor_stats_ranges(ckpt: Checkpoint) -> dict[str, tuple[float, float]]:
    """(min, max) of every tensor: the reference's ranges fix the study's histogram bins."""
    out: dict[str, tuple[float, float]] = {}
    for name, t in ckpt.tensors.items():
        if t.numel():
            lo, hi = torch.aminmax(t)
            out[name] = (float(lo), float(hi))
    return out


@dataclass(frozen=True)
class Step:
    """One group of tables a checkpoint's analysis writes to one file key, and the stage it is (for error rows)."""

    stage: str
    key: str
    compute: Callable[[], Tables]


def analyze(
    ckpt: Checkpoint,
    opts: WeightOptions,
    *,
    reference: Checkpoint | None = None,
    cache: ReferenceCache | None = None,
    edges: dict[str, tuple[float, float]] | None = None,
    bins_id: str | None = None,
) -> Iterator[Step]:
    """Everything the weights analysis computes for one checkpoint, as steps computed in turn, so each group can be
    written before the next is computed: its own tables (stage `weights`), its histogram on the shared bins
    (`histogram`), and its comparison with the reference (`divergence`; `align` for another architecture). Tensors
    bit-identical to the reference (all of them, for the reference itself) reuse its statistics and histograms from
    `cache`."""
    compared = reference is not None and reference.checkpoint_id != ckpt.checkpoint_id
    same = identical_names(ckpt, reference) if compared and reference.arch_hash == ckpt.arch_hash else set()
    if reference is not None and not compared:
        same = set(ckpt.tensors)  # the reference itself: the cache holds its own statistics already
    reuse = cache if same and cache is not None else ReferenceCache({}, {})
    own: Tables = {}

    def own_tables() -> Tables:
        known = {n: reuse.stats[n] for n in same if n in reuse.stats}
        blocks = reuse.same_blocks(ckpt, reference, same) if reference is not None else {}
        own.update(weight_tables(ckpt, opts, known=known, blocks=blocks))
        return own

    yield Step("weights", checkpoint_key(ckpt.checkpoint_id), own_tables)
    if edges is not None and bins_id is not None:
        known = {n: reuse.hist[n] for n in same if n in reuse.hist}
        yield Step(
            "histogram",
            hist_key(ckpt.checkpoint_id, bins_id),
            lambda: {"weight_hist": hist_table(ckpt, edges, bins_id, opts.bins, known=known)},
        )
    if compared:

        def compare() -> Tables:
            mine = dict(zip(own["weight_stats"]["param"], own["weight_stats"]["l2"], strict=True))
            theirs = {n: row["l2"] for n, row in (cache.stats if cache is not None else {}).items()}
            l2 = (mine, theirs) if set(theirs) == set(mine) else None
            return divergence_tables(ckpt, reference, identical=same, l2=l2, near_zero=opts.near_zero,
                                     filter_l2=reuse.filter_l2)  # fmt: skip

        yield Step("divergence", comparison_key(ckpt.checkpoint_id, reference.checkpoint_id), compare)
