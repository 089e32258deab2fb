"""Checkpoint loading and name alignment: the only module that opens model files.

`load_checkpoint` reads Ultralytics checkpoints (`last.pt`/`best.pt` hold the model under `model`, `epochN.pt` and
in-training `last.pt` under `ema`), plain state_dict `.pt` files and `.safetensors`, and returns every parameter *and*
buffer as an fp32 tensor, with metadata. Pickles are unpickled restricted to torch's `weights_only` allow-list plus
Ultralytics' model classes (see `unpickle.py`); anything needing other code is refused unless `trust_pickle=True`.
Safetensors never unpickle.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import torch

from yolo_audit.errors import AuditError
from yolo_audit.model.filehash import SUFFIXES, file_key, file_sha256
from yolo_audit.model.freeze import declared_layers
from yolo_audit.model.keys import TensorInfo, describe_keys, infer_module_types
from yolo_audit.model.profile import Profile, profile_from_types, profile_from_yaml
from yolo_audit.model.unpickle import is_module, named_modules, state_dict, unpickle
from yolo_audit.results.location import Where, fetch_file, is_uri, locate

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
DEFAULT_BN_EPS = 1e-3  # Ultralytics' initialize_weights() sets every BatchNorm2d.eps to 1e-3
META_KEY = "yolo_audit"
_EPOCH = re.compile(r"epoch[_-]?(\d+)")


@dataclass
class Checkpoint:
    """One loaded checkpoint: fp32 tensors by name plus what is known about where it came from."""

    path: str
    sha256: str
    source_format: str  # ultralytics | state_dict | safetensors
    precision: str  # float16 | float32 | bfloat16 | mixed
    tensors: dict[str, torch.Tensor] = field(repr=False)
    run: str | None = None
    epoch: int | None = None
    train_args: dict[str, Any] = field(default_factory=dict)
    module_types: dict[int, str] = field(default_factory=dict)
    bn_eps: dict[str, float] = field(default_factory=dict)
    model_yaml: dict[str, Any] | None = field(
        default=None, repr=False
    )  # the architecture (Ultralytics' model.yaml), to rebuild the module
    content: str = ""  # sha256 of the stored tensors (names, dtypes, shapes, bytes), not of the file

    @property
    def checkpoint_id(self) -> str:
        """Derived from the tensors: files that hold identical tensors (Ultralytics' last.pt, best.pt and epochN.pt
        of one epoch) get one id, and are analysed as one checkpoint."""
        return (self.content or self.sha256)[:16]

    @cached_property
    def fingerprint(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Architecture fingerprint: every tensor name with its shape, sorted."""
        return tuple(sorted((k, tuple(v.shape)) for k, v in self.tensors.items()))

    @cached_property
    def arch_hash(self) -> str:
        return hashlib.sha256(repr(self.fingerprint).encode()).hexdigest()[:16]

    @property
    def n_params(self) -> int:
        """Elements in parameters (buffers such as BatchNorm running statistics excluded)."""
        return sum(v.numel() for k, v in self.tensors.items() if not k.endswith(BUFFER_SUFFIXES))

    @property
    def freeze(self) -> str | None:
        """The `freeze` training argument as written, when the checkpoint records it."""
        value = self.train_args.get("freeze")
        return None if value is None else json.dumps(value)

    @cached_property
    def declared_frozen(self) -> frozenset[int] | None:
        """Layers the training arguments say were frozen; None when the checkpoint has no training arguments."""
        if not self.train_args:
            return None
        return frozenset(declared_layers(self.train_args.get("freeze")))

    @cached_property
    def keys(self) -> dict[str, TensorInfo]:
        return describe_keys(self.tensors, self.module_types)

    @cached_property
    def profile(self) -> Profile:
        """The model family's profile: from the recorded yaml, else from the tensors' names."""
        return profile_from_yaml(self.model_yaml) if self.model_yaml else profile_from_types(self.module_types)

    def eps_for(self, module: str) -> float:
        return self.bn_eps.get(module, DEFAULT_BN_EPS)


def find_checkpoints(paths: list[Where], *, reference: Where | None = None) -> list[str]:
    """Expand files and folders (searched recursively; local paths or filesystem URIs) into checkpoint locations;
    a `reference` not among them is put first (it is always analysed too)."""
    found: list[str] = []
    for raw in paths:
        loc = locate(raw)
        if not loc.exists():
            raise AuditError("no such file or directory; check the path", path=str(raw))
        if loc.is_dir():
            inside = [f.uri for f in loc.files(*SUFFIXES, recursive=True)]
            if not inside:
                raise AuditError(
                    "no *.pt or *.safetensors checkpoints in this folder; pass checkpoint files", path=str(raw)
                )
            found.extend(inside)
        else:
            found.append(loc.uri)
    ordered = list(dict.fromkeys(found))
    if reference is not None and locate(reference).uri not in ordered:
        ordered.insert(0, locate(reference).uri)
    return ordered


def load_checkpoint(path: Where, *, trust_pickle: bool = False) -> Checkpoint:
    """Load any supported checkpoint (a local path or a filesystem URI) as fp32 tensors plus metadata; raise
    AuditError naming the file otherwise."""
    origin = locate(path).uri if is_uri(path) else str(path)
    try:
        local = fetch_file(path)
    except OSError as exc:
        raise AuditError(f"cannot read the checkpoint ({exc})", path=origin, stage="load") from exc
    try:
        ckpt = _load_local(local, trust_pickle=trust_pickle)
    except AuditError as exc:
        if origin == str(local):
            raise
        raise AuditError(str(exc).replace(str(local), origin), path=origin, stage=exc.stage) from exc
    ckpt.path = origin
    return _fill_defaults(ckpt, PurePosixPath(locate(origin).path) if is_uri(origin) else local)


def _load_local(path: Path, *, trust_pickle: bool) -> Checkpoint:
    if not path.is_file():
        raise AuditError("no such checkpoint file; check the path", path=str(path), stage="load")
    if path.suffix not in SUFFIXES:
        raise AuditError("not a checkpoint: expected a .pt or .safetensors file", path=str(path), stage="load")
    if path.stat().st_size == 0:
        raise AuditError("the file is empty; re-export or re-download it", path=str(path), stage="load")
    key = file_key(path)
    sha = file_sha256(path)
    ckpt = (
        _load_safetensors(path, sha)
        if path.suffix == ".safetensors"
        else _load_pickle(path, sha, trust_pickle=trust_pickle)
    )
    known = _CONTENT.get(key)
    ckpt.content = known if known else content_hash(ckpt.tensors)
    if len(_CONTENT) >= 4096:
        _CONTENT.clear()
    _CONTENT[key] = ckpt.content
    return ckpt


# The content hashes of files this process has read, keyed as `filehash` keys the files' own hashes (path, size and
# modification time, what the ledger trusts too): a second load of an unchanged file (histograms on pooled bins,
# pairs, trajectories) skips ~70% of its cost.
_CONTENT: dict[tuple[str, int, int], str] = {}


def _load_safetensors(path: Path, sha: str) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            raw = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open is no dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise AuditError(
            f"not a readable safetensors file ({exc}); re-export it", path=str(path), stage="load"
        ) from exc
    info = json.loads(meta.get(META_KEY, "{}") or "{}")
    ckpt = Checkpoint(
        path=str(path),
        sha256=sha,
        source_format="safetensors",
        precision=info.get("precision") or _precision(raw),
        tensors=_to_fp32(raw, path),
        run=info.get("run"),
        epoch=info.get("epoch"),
        train_args=info.get("train_args") or {},
        module_types={int(k): v for k, v in (info.get("module_types") or {}).items()},
        bn_eps={k: float(v) for k, v in (info.get("bn_eps") or {}).items()},
        model_yaml=info.get("model_yaml"),
    )
    return ckpt


def _load_pickle(path: Path, sha: str, *, trust_pickle: bool) -> Checkpoint:
    return _from_object(unpickle(path, trust_pickle=trust_pickle), path, sha)


def _from_object(obj: Any, path: Path, sha: str) -> Checkpoint:
    """Turn what torch.load returned into a Checkpoint: an Ultralytics dict, a module, or a state dict."""
    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        model = obj.get("ema") or obj.get("model")
        if is_module(model):
            args = obj.get("train_args") or {}
            epoch = obj.get("epoch")
            ckpt = _from_module(model, path, sha, train_args=dict(args) if isinstance(args, dict) else {})
            # Ultralytics stores the 0-based index of the epoch just finished: epochs completed is one more (the
            # numbering of results.csv and of our snapshots)
            ckpt.epoch = int(epoch) + 1 if isinstance(epoch, int) and epoch >= 0 else None
            ckpt.run = str(args["name"]) if isinstance(args, dict) and args.get("name") else None
            return ckpt
        if isinstance(model, dict):
            obj = model
    if is_module(obj):
        return _from_module(obj, path, sha, train_args={})
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raw = {str(k): v for k, v in obj.items()}
        tensors = _to_fp32(raw, path)
        return Checkpoint(str(path), sha, "state_dict", _precision(raw), tensors)
    raise AuditError(
        f"holds no model weights (found {type(obj).__name__}); pass an Ultralytics checkpoint, a state_dict or "
        ".safetensors",
        path=str(path),
        stage="load",
    )


def _from_module(model: Any, path: Path, sha: str, *, train_args: dict[str, Any]) -> Checkpoint:
    """A torch module, or the stand-in of one that the restricted unpickler built (see `unpickle.py`)."""
    raw = {k: v for k, v in state_dict(model).items() if isinstance(v, torch.Tensor)}
    layers = (_attr(model, "_modules") or {}).get("model")
    types: dict[int, str] = {}
    if _is(layers, torch.nn.Sequential, "torch.nn.modules.container.Sequential"):
        types = {i: type(m).__name__ for i, m in enumerate(_attr(layers, "_modules").values())}
    eps = {name: float(_attr(m, "eps")) for name, m in named_modules(model) if _is(m, _BatchNorm, _BATCHNORM)}
    tensors = _to_fp32(raw, path)
    yaml = _attr(model, "yaml")
    return Checkpoint(
        str(path), sha, "ultralytics", _precision(raw), tensors,
        train_args=train_args, module_types=types, bn_eps=eps,
        model_yaml=_jsonable(yaml) if isinstance(yaml, dict) else None,
    )  # fmt: skip


_BatchNorm = torch.nn.modules.batchnorm._BatchNorm
_BATCHNORM = "torch.nn.modules.batchnorm."  # where _BatchNorm's subclasses live: BatchNorm1d/2d/3d, SyncBatchNorm


def _is(module: Any, cls: type, name: str) -> bool:
    """isinstance for a module; for a stand-in, its class's dotted name is `name` (or starts with it, ending in .)"""
    if isinstance(module, torch.nn.Module):
        return isinstance(module, cls)
    kind = f"{type(module).__module__}.{type(module).__name__}"
    return is_module(module) and (kind.startswith(name) if name.endswith(".") else kind == name)


def _attr(module: Any, name: str) -> Any:
    """An attribute of a module or stand-in (stand-ins hold only what the pickle set, in their __dict__)."""
    return getattr(module, name, None) if isinstance(module, torch.nn.Module) else module.__dict__.get(name)


def _fill_defaults(ckpt: Checkpoint, path: PurePath) -> Checkpoint:
    if not ckpt.tensors:
        raise AuditError("holds no tensors; pass a trained checkpoint", path=str(path), stage="load")
    if ckpt.run is None:
        ckpt.run = path.parent.parent.name if path.parent.name == "weights" else path.parent.name
    if ckpt.epoch is None:
        match = _EPOCH.search(path.stem)
        ckpt.epoch = int(match.group(1)) if match else None
    if not ckpt.module_types:
        ckpt.module_types = infer_module_types(ckpt.tensors)
    return ckpt


def _precision(raw: dict[str, torch.Tensor]) -> str:
    kinds = {str(v.dtype).removeprefix("torch.") for v in raw.values() if v.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")


def _to_fp32(raw: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, value in raw.items():
        if value.is_complex():
            raise AuditError(f"tensor {name} is complex; not a YOLO checkpoint", path=str(path), stage="load")
        # a copy even of float32 tensors: pickles are memory-mapped (a file rewritten under us must not change them)
        out[name] = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    return out


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' values (as the float32 every statistic reads): every name, shape and value, in name
    order. File layout, metadata, optimizer state and the stored precision do not count: an fp16 file and its exact
    fp32 conversion are one checkpoint."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def checkpoint_table(ckpt: Checkpoint) -> dict[str, list]:
    """The `checkpoints` row of a loaded checkpoint."""
    declared = ckpt.declared_frozen
    row = {
        "checkpoint_id": ckpt.checkpoint_id, "path": ckpt.path, "run": ckpt.run, "epoch": ckpt.epoch,
        "freeze": ckpt.freeze, "declared_frozen": sorted(declared) if declared is not None else None,
        "aliases": [ckpt.path], "arch_hash": ckpt.arch_hash, "n_params": ckpt.n_params,
        "n_tensors": len(ckpt.tensors), "sha256": ckpt.sha256,
        "source_format": ckpt.source_format, "precision": ckpt.precision,
        "train_args": json.dumps(ckpt.train_args, default=str, sort_keys=True) if ckpt.train_args else None,
    }  # fmt: skip
    return {k: [v] for k, v in row.items()}


def check_aligned(reference: Checkpoint, other: Checkpoint, *, show: int = 5) -> None:
    """Refuse to compare different architectures, naming missing, unexpected and shape-mismatched keys."""
    if reference.arch_hash == other.arch_hash:
        return
    ref, oth = reference.tensors, other.tensors
    missing = sorted(set(ref) - set(oth))
    unexpected = sorted(set(oth) - set(ref))
    shapes = sorted(k for k in set(ref) & set(oth) if ref[k].shape != oth[k].shape)
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", shapes)):
        if keys:
            detail = keys[:show] if label != "shape-mismatched" else [
                f"{k} {tuple(oth[k].shape)} vs {tuple(ref[k].shape)}" for k in keys[:show]
            ]  # fmt: skip
            parts.append(f"{len(keys)} {label} ({', '.join(detail)}{', ...' if len(keys) > show else ''})")
    raise AuditError(
        f"architecture differs from {reference.path}: {'; '.join(parts)}; compare checkpoints of the same model",
        path=other.path,
        stage="align",
    )


def save_safetensors(ckpt: Checkpoint, path: str | Path, *, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write tensors (default: the checkpoint's) to .safetensors with the metadata load_checkpoint reads back."""
    from safetensors.torch import save_file

    path = Path(path)
    info = {
        "run": ckpt.run,
        "epoch": ckpt.epoch,
        "precision": ckpt.precision,
        "train_args": _jsonable(ckpt.train_args),
        "module_types": {str(k): v for k, v in ckpt.module_types.items()},
        "bn_eps": ckpt.bn_eps,
        "model_yaml": ckpt.model_yaml,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.contiguous() for k, v in (tensors or ckpt.tensors).items()},
        str(tmp),
        metadata={META_KEY: json.dumps(info)},
    )
    tmp.replace(path)
    return path


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(args, default=str))
