"""One freeze variant trained with Ultralytics: the only module that calls `train()`.

Two freeze strategies: `ultralytics` passes the layer list as Ultralytics' `freeze` argument (frozen layers' BatchNorm
goes to eval mode, so they stay bit-identical); `callback` sets `requires_grad=False` in an `on_train_start` callback,
as in the original question, which leaves BatchNorm in train mode and its running statistics drifting. Every epoch an
fp32 safetensors snapshot of the EMA weights is written (Ultralytics' own checkpoints are fp16).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yolo_audit.env import prepare
from yolo_audit.model.checkpoint import Checkpoint, save_safetensors
from yolo_audit.model.freeze import freeze_argument, freeze_by_callback
from yolo_audit.results.location import fetch_file, is_uri, local_dataset, locate, upload_dir
from yolo_audit.results.train_metrics import read_results
from yolo_audit.runtime.devices import task_threads_in_ultralytics

SNAPSHOTS = "snapshots"


@dataclass(frozen=True)
class TrainCfg:
    """The training settings a study file gives (the same for every variant, so they compare)."""

    epochs: int = 1
    imgsz: int = 640
    batch: int = 16
    optimizer: str = "SGD"
    lr0: float = 0.01
    close_mosaic: int = 0
    save_period: int = -1
    workers: int = 0
    # Ultralytics' nominal batch size: it accumulates gradients over nbs / batch batches per optimizer step (64 by
    # default). On a tiny dataset that is a handful of steps in a whole fine-tune: the demo and tests set nbs = batch
    nbs: int | None = None


@dataclass(frozen=True, kw_only=True)
class TrainSpec(TrainCfg):
    """Everything one training run needs; plain data so it travels to a Ray worker."""

    run: str
    variant: str
    model: str  # weights (.pt) or a model yaml
    data: str  # dataset yaml
    project: str  # absolute local folder; the run writes project/run
    upload_to: str | None = None  # a URI the run folder is copied to afterwards (results on an object store)
    dynamics_to: str | None = None  # the results location the run's train_dynamics rows go to (None: not recorded)
    frozen_layers: tuple[int, ...] = ()
    backbone: tuple[int, ...] = ()  # the model's backbone layers (recorded in `runs`)
    freeze: str = "0"  # the freeze spec as written in the study file, plain (`freeze_text`): backbone, all, 10, 0,1,2
    strategy: str = "ultralytics"
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.project) / self.run


@dataclass
class TrainResult:
    spec: TrainSpec
    status: str  # done | failed
    seconds: float
    best_map50_95: float | None = None
    metrics: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    snapshots: list[str] = field(default_factory=list)


def train_variant(spec: TrainSpec) -> TrainResult:
    """Train one variant from scratch (an interrupted earlier attempt's folder is removed first)."""
    prepare()
    from ultralytics import YOLO, settings

    settings.update({"sync": False})
    if spec.folder.exists():
        shutil.rmtree(spec.folder)
    if spec.upload_to:  # an earlier, interrupted try may have uploaded part of this run
        target = locate(spec.upload_to)
        target.fs.delete_dir_contents(target.path, missing_dir_ok=True)
    started = time.monotonic()
    model = YOLO(str(fetch_file(spec.model)) if is_uri(spec.model) else spec.model)
    if spec.strategy == "callback":
        model.add_callback("on_train_start", freeze_by_callback(spec.frozen_layers))
    model.add_callback("on_fit_epoch_end", _snapshot(spec))
    if spec.dynamics_to:
        from yolo_audit.integrations.ultralytics import attach

        attach(model, out=spec.dynamics_to, run=spec.run)  # gradients and updates per epoch, live
    try:
        with task_threads_in_ultralytics():
            model.train(**train_arguments(spec))
    except Exception as exc:  # noqa: BLE001 - a failed run is a row, the study goes on
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return TrainResult(spec, "failed", time.monotonic() - started, error=message)
    metrics = read_results(spec.folder / "results.csv")
    maps = [m["metrics/mAP50-95(B)"] for m in metrics if _finite(m.get("metrics/mAP50-95(B)"))]
    snaps = sorted(str(p) for p in (spec.folder / SNAPSHOTS).glob("*.safetensors"))
    if spec.upload_to:  # the results live under the URI now: the staged copy only filled the node's disk
        upload_dir(spec.folder, spec.upload_to)
        shutil.rmtree(spec.folder, ignore_errors=True)
        snaps = [f"{spec.upload_to}/{SNAPSHOTS}/{Path(p).name}" for p in snaps]
    return TrainResult(spec, "done", time.monotonic() - started, max(maps) if maps else None, metrics, None, snaps)


def train_arguments(spec: TrainSpec) -> dict[str, Any]:
    """Ultralytics' `train()` arguments of a run: the study's settings, its freeze, and Ultralytics' AMP on a GPU
    (`device` is the GPU Ray gave the task, `0` under its own CUDA_VISIBLE_DEVICES), full float32 on the CPU."""
    return dict(
        data=local_dataset(spec.data), epochs=spec.epochs, imgsz=spec.imgsz, batch=spec.batch, optimizer=spec.optimizer,
        lr0=spec.lr0, close_mosaic=spec.close_mosaic, save_period=spec.save_period, workers=spec.workers,
        **({"nbs": spec.nbs} if spec.nbs else {}),
        seed=spec.seed, deterministic=True, amp=spec.device != "cpu", device=spec.device, project=spec.project,
        name=spec.run, exist_ok=True, plots=False, verbose=False,
        freeze=freeze_argument(spec.strategy, spec.frozen_layers),
        **spec.extra,
    )  # fmt: skip


def _snapshot(spec: TrainSpec) -> Any:
    """on_fit_epoch_end: write the EMA weights as fp32 safetensors, epoch numbered from 1."""

    def save(trainer: Any) -> None:
        if int(trainer.epoch) >= int(trainer.epochs):  # Ultralytics' final validation of best.pt, not an epoch
            return
        ema = trainer.ema.ema if getattr(trainer, "ema", None) else trainer.model
        tensors = {k: v.detach().float().cpu() for k, v in ema.state_dict().items()}
        layers = getattr(ema, "model", [])
        meta = Checkpoint(
            path="", sha256="", source_format="safetensors", precision="float32", tensors=tensors,
            run=spec.run, epoch=int(trainer.epoch) + 1, train_args=_train_args(spec),
            module_types={i: type(m).__name__ for i, m in enumerate(layers)},
            bn_eps={n: float(m.eps) for n, m in ema.named_modules() if hasattr(m, "running_var")},
            model_yaml=_jsonable_yaml(ema),
        )  # fmt: skip
        save_safetensors(meta, spec.folder / SNAPSHOTS / f"epoch{int(trainer.epoch) + 1:04d}.safetensors")

    return save


def _jsonable_yaml(model: Any) -> dict[str, Any] | None:
    arch = getattr(model, "yaml", None)
    return json.loads(json.dumps(arch, default=str)) if isinstance(arch, dict) else None


def _train_args(spec: TrainSpec) -> dict[str, Any]:
    """What the snapshot records as train_args: Ultralytics' `freeze` as it was passed, plus the study's own keys."""
    info = asdict(spec)
    info.pop("extra")
    info.pop("dynamics_to")  # where rows go, not how the run trained
    info["frozen_layers"] = list(spec.frozen_layers)
    return {**info, "name": spec.run, "freeze": freeze_argument(spec.strategy, spec.frozen_layers),
            "freeze_spec": spec.freeze}  # fmt: skip


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def describe(result: TrainResult) -> str:
    spec = result.spec
    tail = f"mAP50-95 {result.best_map50_95:.3f}" if result.best_map50_95 is not None else (result.error or "")
    return f"{spec.run}: {result.status} in {result.seconds:.1f}s, freeze {spec.freeze} ({spec.strategy}) {tail}"
