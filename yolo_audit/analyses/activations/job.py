"""One task of `yolo-audit activations`: one checkpoint over one shard of whole batches -> partial per-channel states.

Partial states are small (a few vectors per hooked module) and merge exactly, so shards of the data reduce in a tree.
`tables_for` turns a fully merged result into the rows of `channel_stats`, `activation_hist`, `feature_maps` and
`activation_passes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from yolo_audit.analyses.images import batches, prefetched
from yolo_audit.model.build import build_module, for_passes
from yolo_audit.model.checkpoint import checkpoint_table, load_checkpoint
from yolo_audit.model.hooks import Recorder
from yolo_audit.model.keys import layer_of
from yolo_audit.results.errors import ErrorRecord, record
from yolo_audit.runtime.devices import exact_float32, keep_freed_memory, resolve_device
from yolo_audit.stats.channels import ChannelState, dead_units, octave_bin_edges
from yolo_audit.stats.weights import Columns


@dataclass(frozen=True)
class ActivationOptions:
    imgsz: int = 640
    batch: int = 8
    depth: str = "modules"
    maps: int = 0  # feature maps of this many images, of the channels that changed most
    tau: float = 0.025
    device: str = "auto"  # auto: CUDA when the task sees a GPU
    cfg: str | None = None
    trust_pickle: bool = False


@dataclass
class ShardResult:
    path: str
    checkpoint_id: str | None = None
    arch_hash: str | None = None
    states: dict[str, ChannelState] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # module -> unit_kind
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    map_channels: dict[str, list[int]] = field(default_factory=dict)  # module -> the channel of each map
    images: int = 0
    failed_images: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"  # what the passes ran in (exact_float32)
    errors: list[ErrorRecord] = field(default_factory=list)
    checkpoint_row: Columns | None = None  # the `checkpoints` row, from the first shard

    def merge(self, other: ShardResult) -> ShardResult:
        """Exact merge of two shards of the same checkpoint (maps: the first shard's; errors: both)."""
        a, b = self, other
        names = list(dict.fromkeys([*a.states, *b.states]))
        states = {
            n: a.states[n].merge(b.states[n]) if n in a.states and n in b.states else (a.states.get(n) or b.states[n])
            for n in names
        }
        return ShardResult(
            path=a.path, checkpoint_id=a.checkpoint_id or b.checkpoint_id, arch_hash=a.arch_hash or b.arch_hash,
            states=states, kinds={**b.kinds, **a.kinds}, maps=a.maps or b.maps,
            map_channels=a.map_channels or b.map_channels, images=a.images + b.images,
            failed_images=a.failed_images + b.failed_images, seconds=a.seconds + b.seconds, device=a.device,
            precision=a.precision,
            errors=a.errors + b.errors, checkpoint_row=a.checkpoint_row or b.checkpoint_row,
        )  # fmt: skip


def activations_shard(
    paths: list[str], images: list[str], opts: ActivationOptions, *, first: bool = False
) -> list[ShardResult]:
    """Every batch of the shard through each of the checkpoints with hooks, each image decoded once for all of them
    (`prefetched`, ahead of the passes); one result per checkpoint, states on the CPU. The first shard also returns
    each checkpoint's `checkpoints` row. A checkpoint that fails (to load, or in a pass) is an error of its own; the
    others go on. (Feature maps are a second wave: `feature_maps_task`.)"""
    results = [ShardResult(path=p) for p in paths]
    device = resolve_device(opts.device)
    keep_freed_memory()  # forward passes reuse their activations' memory
    running: list[tuple[ShardResult, torch.nn.Module, Recorder]] = []
    for result in results:
        started = time.monotonic()
        try:
            ckpt = load_checkpoint(result.path, trust_pickle=opts.trust_pickle)
            result.checkpoint_id, result.arch_hash = ckpt.checkpoint_id, ckpt.arch_hash
            result.checkpoint_row = checkpoint_table(ckpt) if first else None
            model = for_passes(build_module(ckpt, cfg=opts.cfg), device)
            running.append((result, model, Recorder(model, depth=opts.depth).__enter__()))
        except Exception as exc:  # noqa: BLE001 - an errors row; other checkpoints and shards go on
            result.errors.append(record(result.path, "activations", exc))
        result.seconds += time.monotonic() - started
    with torch.inference_mode(), exact_float32() as precision:
        for _, batch, failed in prefetched(batches(images, opts.batch), opts.imgsz, device) if running else ():
            for result, model, recorder in list(running):
                started = time.monotonic()
                result.failed_images += failed
                try:
                    if len(batch):
                        recorder.begin_batch(len(batch))
                        model(batch)
                        result.images += len(batch)
                except Exception as exc:  # noqa: BLE001
                    result.errors.append(record(result.path, "activations", exc))
                    running.remove((result, model, recorder))
                result.seconds += time.monotonic() - started
    for result, _, recorder in running:
        recorder.__exit__(None, None, None)
        result.states = {k: v.to("cpu") for k, v in recorder.states.items()}
        result.kinds = {k: v for k, v in recorder.kinds.items() if k in result.states}
        result.device, result.precision = str(device), precision
    return results


def feature_maps_task(
    path: str, images: list[str], channels: dict[str, list[int]], opts: ActivationOptions
) -> ShardResult:
    """Feature maps of `images` (pooled to at most 32 x 32) for the chosen channels of each module."""
    result = ShardResult(path=path)
    try:
        ckpt = load_checkpoint(path, trust_pickle=opts.trust_pickle)
        device = resolve_device(opts.device)
        model = for_passes(build_module(ckpt, cfg=opts.cfg), device)
        recorder = Recorder(model, depth=opts.depth, maps=len(images), map_channels=channels)
        with torch.inference_mode(), exact_float32(), recorder:
            for _, batch, _ in prefetched([images], opts.imgsz, device, workers=0):
                recorder.begin_batch(len(batch))
                model(batch)
        result.maps, result.map_channels = recorder.feature_maps, recorder.map_index
    except Exception as exc:  # noqa: BLE001
        result.errors.append(record(path, "feature_maps", exc))
    return result


def changed_channels(results: list[ShardResult], reference: ShardResult | None, k: int = 8) -> dict[str, list[int]]:
    """Per unit module, the `k` channels whose mean activation moved most from the reference's, in units of the
    reference's spread (|mean - mean_ref| / std_ref, the largest over the checkpoints); without a reference the `k`
    most varying channels. What the report's feature maps show."""
    out: dict[str, list[int]] = {}
    first = reference or results[0]
    for name, state in first.states.items():
        if first.kinds.get(name) != "unit":
            continue
        base = state.compute()
        if reference is None:
            score = base["std"]
        else:
            moved = [(r.states[name].compute()["mean"] - base["mean"]).abs() for r in results if name in r.states]
            score = torch.stack(moved).amax(0) / base["std"].clamp_min(1e-12) if moved else base["std"]
        out[name] = sorted(torch.argsort(score, descending=True)[:k].tolist())
    return out


def dead_flags(result: ShardResult, tau: float) -> dict[tuple[str, int], bool]:
    """(module, channel) -> dead: what newly_dead and revived compare against in the reference."""
    flags: dict[tuple[str, int], bool] = {}
    for name, state in result.states.items():
        dead = dead_units(state.compute(), tau=tau)["dead"]
        flags.update({(name, c): bool(v) for c, v in enumerate(dead.tolist())})
    return flags


def tables_for(
    result: ShardResult,
    dataset_id: str,
    opts: ActivationOptions,
    images: list[str],
    reference_id: str | None,
    reference: dict | None,
) -> dict[str, Columns]:
    """The rows of one checkpoint's pass; `reference`: the --reference's dead flags on the same images (None without
    one), `reference_id` its id (None for the reference itself, whose newly_dead and revived are all false)."""
    ids = {"checkpoint_id": result.checkpoint_id, "dataset_id": dataset_id}
    stats: Columns = {}
    hist: Columns = {}
    for name, state in result.states.items():
        values = state.compute()
        dead = dead_units(values, tau=opts.tau)
        n = int(values["mean"].numel())
        flags = dead["dead"].tolist()
        before = [None] * n if reference is None else [reference.get((name, c)) for c in range(n)]
        _extend(stats, {**ids, "layer": layer_of(name), "module": name, "unit_kind": result.kinds[name]}, n, {
            "channel": list(range(n)), "count": [int(v) for v in values["count"].tolist()],
            **{k: values[k].tolist() for k in ("mean", "std", "min", "max", "mean_abs", "frac_positive")},
            **{k: dead[k].tolist() for k in ("dormant_score", "dormant", "constant", "never_positive", "dead")},
            "newly_dead": [None if was is None else bool(d and not was) for d, was in zip(flags, before, strict=True)],
            "revived": [None if was is None else bool(was and not d) for d, was in zip(flags, before, strict=True)],
            "tau": [opts.tau] * n,
        })  # fmt: skip
        nonzero = [(b, int(c)) for b, c in enumerate(state.hist.tolist()) if c]
        edges = [octave_bin_edges(b) for b, _ in nonzero]
        _extend(hist, {**ids, "layer": layer_of(name), "module": name}, len(nonzero), {
            "bin": [b for b, _ in nonzero], "lo": [e[0] for e in edges], "hi": [e[1] for e in edges],
            "count": [c for _, c in nonzero],
        })  # fmt: skip
    return {
        "channel_stats": stats,
        "activation_hist": hist,
        "feature_maps": _maps_table(result, ids, images),
        "activation_passes": {k: [v] for k, v in {
            **ids, "reference_id": reference_id, "images": result.images, "failed_images": result.failed_images,
            "imgsz": opts.imgsz, "depth": opts.depth, "device": result.device, "precision": result.precision,
            "seconds": result.seconds,
        }.items()},
    }  # fmt: skip


def _maps_table(result: ShardResult, ids: dict, images: list[str]) -> Columns:
    out: Columns = {}
    for name, maps in result.maps.items():
        n_img, n_ch, h, w = maps.shape
        index = result.map_channels.get(name, list(range(n_ch)))
        rows = [(i, c) for i in range(n_img) for c in range(n_ch)]
        _extend(out, {**ids, "layer": layer_of(name), "module": name}, len(rows), {
            "image": [i for i, _ in rows], "image_path": [images[i] for i, _ in rows],
            "channel": [index[c] for _, c in rows],
            "height": [h] * len(rows), "width": [w] * len(rows),
            "values": [maps[i, c].float().reshape(-1).tolist() for i, c in rows],
        })  # fmt: skip
    return out


def _extend(cols: Columns, constants: dict, n: int, values: dict[str, list]) -> None:
    for key, value in constants.items():
        cols.setdefault(key, []).extend([value] * n)
    for key, value in values.items():
        cols.setdefault(key, []).extend(value)
