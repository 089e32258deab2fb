"""Training dynamics recorded live: callbacks you add to your own Ultralytics `YOLO` model before `.train()`.

    from ultralytics import YOLO
    from yolo_audit.integrations.ultralytics import attach

    model = YOLO("yolov8s.pt")
    attach(model, out="results")                 # a folder or a URI (s3://bucket/results)
    model.train(data="coco128.yaml", epochs=50, freeze=10)

Nothing else changes: your own callbacks (the question's `requires_grad=False` freeze in `on_train_start`), `freeze=N`,
CPU or one GPU (with AMP). At the end of every epoch, per tensor of the model being trained (every parameter, and
BatchNorm's running statistics), one row of `train_dynamics`:
- `grad_norm_mean` / `grad_norm_max`: the L2 norm of its gradient at each optimizer step, as the optimizer sees it
  (after AMP's unscaling and Ultralytics' clipping), averaged / maximal over the epoch's steps (absent counts as 0);
- `frac_zero_grad`: the share of steps whose gradient was absent (requires_grad off, or unused) or exactly zero;
- `update_l2`, `weight_l2`, `update_ratio`: how far it moved over the epoch, ||w_end - w_start||, against ||w_end||
  (running statistics too: the callback freeze's BatchNorm drift, seen as it happens);
- `lr`: the learning rate of its parameter group at the epoch's end.
The gradient norms are taken by a step pre-hook on the optimizer, on the device, with no host synchronisation per
step (a few foreach kernels over the gradients); the rest once per epoch. One process only (DDP is not supported).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from yolo_audit.model.keys import describe_keys, layer_of
from yolo_audit.results import files
from yolo_audit.results.keys import dynamics_key
from yolo_audit.results.location import Where, locate

TABLE = "train_dynamics"
STATISTICS = ("running_mean", "running_var")


def attach(model: Any, *, out: Where, run: str | None = None) -> Dynamics:
    """Add the callbacks to an Ultralytics `YOLO` model (or anything with `add_callback`); rows go to `out` under the
    run's name (default: the name Ultralytics gives the run, its folder under `project`). Returns the recorder."""
    dynamics = Dynamics(out=out, run=run)
    for event in ("on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_train_end"):
        model.add_callback(event, getattr(dynamics, event))
    return dynamics


@dataclass
class Dynamics:
    """The state kept during training: per parameter, gradient-norm sums, maxima and zero counts for the epoch (on
    the parameters' device), and each tensor's value when the epoch started."""

    out: Where
    run: str | None = None
    epochs_written: list[int] = field(default_factory=list)
    seconds: float = 0.0  # time spent in the hooks and the epoch-end rows (the overhead the benchmark reports)
    _names: list[str] = field(default_factory=list)
    _roles: dict[str, str] = field(default_factory=dict)  # as the weights tables name them (conv_weight, bn_bias, ...)
    _params: list[torch.nn.Parameter] = field(default_factory=list)
    _stats: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    _groups: list[int] = field(default_factory=list)
    _start: list[torch.Tensor] = field(default_factory=list)
    _sums: torch.Tensor | None = None
    _maxes: torch.Tensor | None = None
    _zeros: torch.Tensor | None = None
    _absent: list[int] = field(default_factory=list)
    _steps: int = 0
    _hook: Any = None

    def on_train_start(self, trainer: Any) -> None:
        started = time.perf_counter()
        model = _unwrap(trainer.model)
        self.run = self.run or Path(str(trainer.save_dir)).name
        named = list(model.named_parameters())
        self._roles = {n: info.role for n, info in describe_keys(model.state_dict(), {}).items()}
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._stats = [(n, b) for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in STATISTICS]
        group_of = {id(p): g for g, group in enumerate(trainer.optimizer.param_groups) for p in group["params"]}
        self._groups = [group_of.get(id(p), -1) for p in self._params]
        self._hook = trainer.optimizer.register_step_pre_hook(self._step)
        self.seconds += time.perf_counter() - started

    def on_train_epoch_start(self, trainer: Any) -> None:
        started = time.perf_counter()
        device = self._params[0].device if self._params else torch.device("cpu")
        n = len(self._params)
        self._sums, self._maxes = torch.zeros(n, device=device), torch.zeros(n, device=device)
        self._zeros, self._absent, self._steps = torch.zeros(n, device=device), [0] * n, 0
        self._start = [t.detach().clone() for t in (*self._params, *(b for _, b in self._stats))]
        self.seconds += time.perf_counter() - started

    def _step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Before each optimizer step: every gradient's norm, folded into the epoch's sums on the device."""
        started = time.perf_counter()
        present = [i for i, p in enumerate(self._params) if p.grad is not None]
        for i in range(len(self._params)):
            self._absent[i] += 0 if self._params[i].grad is not None else 1
        if present and self._sums is not None and self._maxes is not None and self._zeros is not None:
            grads = [self._params[i].grad for i in present]
            norms = torch.stack(torch._foreach_norm(grads)).float().to(self._sums.device)
            index = torch.tensor(present, device=self._sums.device)
            self._sums.index_add_(0, index, norms)
            self._maxes.index_copy_(0, index, torch.maximum(self._maxes.index_select(0, index), norms))
            self._zeros.index_add_(0, index, (norms == 0).float())
        self._steps += 1
        self.seconds += time.perf_counter() - started

    def on_train_epoch_end(self, trainer: Any) -> None:
        started = time.perf_counter()
        if self._sums is None or not self._start:
            return
        tensors = [*self._params, *(b for _, b in self._stats)]
        names = [*self._names, *(n for n, _ in self._stats)]
        with torch.no_grad():
            now = [t.detach().float() for t in tensors]
            moved = torch.stack(torch._foreach_norm([a - b.float() for a, b in zip(now, self._start, strict=True)]))
            sizes = torch.stack(torch._foreach_norm(now))
        steps = self._steps
        n = len(self._params)
        sums, maxes, zeros = (t.tolist() for t in (self._sums, self._maxes, self._zeros))
        lrs = [group["lr"] for group in trainer.optimizer.param_groups]
        rows: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
        for i, (name, size, step) in enumerate(zip(names, sizes.tolist(), moved.tolist(), strict=True)):
            is_param = i < n
            grads = {
                "grad_norm_mean": sums[i] / steps, "grad_norm_max": maxes[i],
                "frac_zero_grad": (zeros[i] + self._absent[i]) / steps,
            } if is_param and self._steps else {}  # fmt: skip
            if is_param:
                grads["requires_grad"] = bool(self._params[i].requires_grad)
                grads["lr"] = lrs[self._groups[i]] if self._groups[i] >= 0 else None
            values = {
                "run": self.run, "epoch": int(trainer.epoch) + 1, "layer": layer_of(name), "param": name,
                "role": self._roles.get(name, "other"), "steps": self._steps, "update_l2": step, "weight_l2": size,
                "update_ratio": step / size if size > 0 else None, **grads,
            }  # fmt: skip
            for key in _COLUMNS:
                rows[key].append(values.get(key))
        files.write(locate(self.out), TABLE, dynamics_key(str(self.run), int(trainer.epoch) + 1), rows)
        self.epochs_written.append(int(trainer.epoch) + 1)
        self.seconds += time.perf_counter() - started

    def on_train_end(self, trainer: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


_COLUMNS = ("run", "epoch", "layer", "param", "role", "requires_grad", "steps", "grad_norm_mean", "grad_norm_max",
            "frac_zero_grad", "update_l2", "weight_l2", "update_ratio", "lr")  # fmt: skip


def _unwrap(model: Any) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
