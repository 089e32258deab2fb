"""Restricted unpickling of `.pt` files: objects are built only from allow-listed globals, never from code in the file.

One allow-list, two unpicklers:
- the allow-list is torch's own `weights_only` list (tensors, storages, dtypes, OrderedDict, ...) plus what was
  registered with `torch.serialization.add_safe_globals` (Ultralytics registers a checkpoint's model classes on its
  first restricted load of that kind of checkpoint);
- first, Python's C unpickler with a `find_class` that returns only allow-listed objects (the "Restricting Globals"
  recipe of the `pickle` documentation): every callable a pickle can reach comes from `find_class`, so nothing
  outside the list can run. Module classes (`ultralytics.*`, `torch.nn.modules.*`) become stand-ins: a plain class
  of the same name whose instances hold the pickled attributes and run nothing, not even the real class's
  `__setstate__`; Ultralytics is not imported for them (~70 ms of the first load). `state_dict` and `named_modules`
  read them as torch's methods of the same names would. It is ~3x faster than torch's pure-Python `weights_only`
  unpickler on a YOLOv8s file;
- when that fails, or the file fails in any other way, it goes through torch's `weights_only` unpickler via
  Ultralytics' `torch_safe_load`, exactly as before: that loads it or refuses it with the foreign globals named.
Sparse tensors stay on torch's path (it validates them after loading).
"""

from __future__ import annotations

import pickle
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path
from typing import Any

import torch

from yolo_audit.env import prepare
from yolo_audit.errors import AuditError

TRUST_HINT = "if you trust its author, pass --trust-pickle (runs code from the file), or convert it to .safetensors"


class NotAllowed(pickle.UnpicklingError):
    """A global outside the allow-list: the fast path stops before anything is built from it."""


def allowed_globals() -> dict[str, Any]:
    """Everything torch's `weights_only=True` would let a pickle name, by dotted name (sparse rebuilds excluded)."""
    from torch import _weights_only_unpickler as wo  # the list torch itself enforces; no public accessor

    found = {**wo._get_allowed_globals(), **wo._get_user_allowed_globals()}
    return {name: obj for name, obj in found.items() if "sparse" not in name.lower()}


STAND_IN_MODULES = ("ultralytics.", "torch.nn.modules.")
_STAND_INS: dict[str, type] = {}


class StandIn:
    """A pickled module as data: its class's name, and the attributes the pickle sets (`_parameters`, `_buffers`,
    `_modules`, `yaml`, ...). Built by `object.__new__` and a plain update of its `__dict__`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # a pickle that calls the class: keep the arguments only
        self.__dict__["_args"] = (args, kwargs)


def stand_in(module: str, name: str) -> type:
    """The stand-in class for `module.name` (one per name, so `type(m).__name__` reads as the real one's)."""
    key = f"{module}.{name}"
    found = _STAND_INS.get(key)
    if found is None:
        found = _STAND_INS[key] = type(name, (StandIn,), {"__module__": module, "__qualname__": name})
    return found


def is_module(obj: Any) -> bool:
    """A torch module, or a stand-in of one."""
    return isinstance(obj, torch.nn.Module) or (isinstance(obj, StandIn) and "_modules" in obj.__dict__)


def named_modules(module: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """`Module.named_modules()` of a module or stand-in: itself first, then its children depth first, each once."""
    if isinstance(module, torch.nn.Module):
        return list(module.named_modules(prefix=prefix))
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(m: Any, name: str) -> None:
        if id(m) in seen:
            return
        seen.add(id(m))
        out.append((name, m))
        for key, child in m.__dict__.get("_modules", {}).items():
            if child is not None:
                walk(child, f"{name}.{key}" if name else key)

    walk(module, prefix)
    return out


def state_dict(module: Any) -> dict[str, Any]:
    """`Module.state_dict()` of a module or stand-in: parameters, then persistent buffers, then each child's, by name
    (stand-ins carry no state-dict hooks: `unpickle` sends files that have any through torch's path)."""
    if isinstance(module, torch.nn.Module):
        return module.state_dict()
    out: dict[str, Any] = {}

    def walk(m: Any, prefix: str) -> None:
        attrs = m.__dict__
        for key, value in attrs.get("_parameters", {}).items():
            if value is not None:
                out[prefix + key] = value.detach()
        skip = attrs.get("_non_persistent_buffers_set", set())
        for key, value in attrs.get("_buffers", {}).items():
            if value is not None and key not in skip:
                out[prefix + key] = value.detach()
        for key, child in attrs.get("_modules", {}).items():
            if child is not None:
                walk(child, f"{prefix}{key}.")

    walk(module, "")
    return out


def _plain(obj: Any) -> bool:
    """No stand-in in `obj` has state-dict hooks (which only the real class could honour)."""
    for value in obj.values() if isinstance(obj, dict) else []:
        if isinstance(value, StandIn) and is_module(value):
            for _, m in named_modules(value):
                if m.__dict__.get("_state_dict_hooks") or m.__dict__.get("_state_dict_pre_hooks"):
                    return False
    return True


class _Storage:
    """A storage of the archive as our tensors need it: its dtype and where it starts in the file's one memory map,
    counted in elements of that dtype (torch aligns records to 64 bytes)."""

    __slots__ = ("dtype", "start", "whole")

    def __init__(self, dtype: torch.dtype, start: int, whole: torch.UntypedStorage) -> None:
        self.dtype, self.start, self.whole = dtype, start, whole


def _rebuild_tensor(
    storage: _Storage, offset: int, size: Any, stride: Any, requires_grad: bool, hooks: Any, metadata: Any = None
) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 on our storages, without its fake-tensor check (no tracing here), which costs a
    third of a YOLOv8s load through torch.load."""
    tensor = torch.empty((0,), dtype=storage.dtype).set_(storage.whole, storage.start + offset, size, stride)
    tensor.requires_grad = requires_grad
    if metadata:
        torch._utils.set_tensor_metadata(tensor, metadata)
    tensor._backward_hooks = hooks
    return tensor


class _Restricted(pickle.Unpickler):
    """The C unpickler over one torch zip archive: only allow-listed globals; every tensor views one memory map of
    the file (read when a tensor is first used, not while the unpickler holds the GIL)."""

    def __init__(self, data: bytes, reader: Any, whole: torch.UntypedStorage) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.allowed = {**allowed_globals(), "torch._utils._rebuild_tensor_v2": _rebuild_tensor}
        self.reader, self.whole = reader, whole
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NAME_MAPPING:  # torch.save writes protocol 2: Python 2 names (as torch maps them)
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        if module == "torch" and name.endswith("Storage"):  # a dtype marker, as torch.load reads it
            return torch.serialization.StorageType(name)
        if module.startswith(STAND_IN_MODULES):
            return stand_in(module, name)
        found = self.allowed.get(f"{module}.{name}")
        if found is None:
            raise NotAllowed(f"{module}.{name}")
        return found

    def persistent_load(self, saved_id: Any) -> _Storage:
        kind, storage_type, key, _location, numel = saved_id  # the location is ignored: everything lands on the CPU
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        found = self.storages.get(key)
        if found is None:
            dtype = storage_type.dtype
            size = torch._utils._element_size(dtype)
            start = self.reader.get_record_offset(f"data/{key}")
            if start % size or start + numel * size > self.whole.nbytes():
                raise pickle.UnpicklingError(f"storage {key} is not where this reader expects it")
            found = self.storages[key] = _Storage(dtype, start // size, self.whole)
        return found


def fast_load(path: Path) -> Any:
    """The fast path alone: a torch zip archive, little-endian (raises `NotAllowed` on a global outside the
    allow-list, another error on anything else it does not read)."""
    reader = torch._C.PyTorchFileReader(str(path))  # torch.load's own archive reader
    if reader.has_record("byteorder") and reader.get_record("byteorder") != b"little":
        raise pickle.UnpicklingError("big-endian archive")
    whole = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    return _Restricted(reader.get_record("data.pkl"), reader, whole).load()


def fast_only(path: Path) -> Any | None:
    """What the fast path alone reads from the file (no code runs, nothing is imported); None where it cannot (a
    foreign or damaged file: torch's own path decides and explains)."""
    try:
        found = fast_load(path)
    except Exception:  # noqa: BLE001
        return None
    return found if _plain(found) else None


def _check_archive(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise AuditError(
            "not a loadable checkpoint: the file is truncated or corrupted (not a torch zip archive); "
            "re-export or re-download it",
            path=str(path),
            stage="load",
        ) from exc


def unpickle(path: Path, *, trust_pickle: bool) -> Any:
    """The object a torch `.pt` file holds, restricted to the allow-list unless `trust_pickle`; AuditError otherwise."""
    prepare()
    if not trust_pickle:
        found = fast_only(path)
        if found is not None:
            return found
    _check_archive(path)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # torch raises a variety of errors on damaged archives
        raise AuditError(f"not a loadable checkpoint ({type(exc).__name__}); re-export it", path=str(path)) from exc
    try:
        if not unsafe:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        from ultralytics.nn.tasks import torch_safe_load

        obj, _ = torch_safe_load(str(path), safe_only=not trust_pickle)
        return obj
    except TypeError as exc:
        outside = [g for g in unsafe if not g.startswith(("ultralytics.", "torch.", "collections.", "builtins."))]
        names = ", ".join(outside[:3]) or ", ".join(unsafe[:3])
        raise AuditError(
            f"refused: unpickling needs code outside the Ultralytics/torch allow-list ({names}); {TRUST_HINT}",
            path=str(path),
            stage="load",
        ) from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError, ModuleNotFoundError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise AuditError(
            f"not a loadable checkpoint ({type(exc).__name__}: {reason})", path=str(path), stage="load"
        ) from exc
