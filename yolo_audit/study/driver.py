"""Driver of `yolo-audit study`: data, (pre)training tasks on Ray, then the configured analyses on every snapshot.

Layout under OUT (a folder, or a filesystem URI such as s3://bucket/study): `data/` (synthetic datasets), `train/<run>/`
(Ultralytics' run folders, with `snapshots/` of fp32 EMA weights per epoch), and the Parquet tables (`runs`,
`train_metrics`, and the analyses' tables) beside them. With a URI, data and runs are made in a local staging folder
and uploaded; workers fetch what Ultralytics must read locally.
Resume: a run whose `runs` row says `done` (and whose snapshots exist) is skipped; anything else is trained again
from scratch, its old folder removed, so an interrupted study leaves neither duplicate nor partial rows.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TextIO

import polars as pl

from yolo_audit.analyses import ANALYSES, StudyInputs, Summary
from yolo_audit.env import cache_dir
from yolo_audit.errors import AuditError
from yolo_audit.model.freeze import freeze_text
from yolo_audit.results import files
from yolo_audit.results.compact import compact, view
from yolo_audit.results.keys import run_key
from yolo_audit.results.location import Location, exclusive, locate, upload_dir
from yolo_audit.results.store import scan, tables
from yolo_audit.results.train_metrics import write_train_metrics
from yolo_audit.runtime.resources import require_resources
from yolo_audit.runtime.tasks import Task, cluster_gpus, ray_session, run_tasks
from yolo_audit.study.spec import Resources, Study, Synthetic
from yolo_audit.study.training import SNAPSHOTS, TrainCfg, TrainResult, TrainSpec, describe, train_variant

WORKFLOWS = Path(__file__).resolve().parent.parent.parent / "workflows"  # demo.yaml and the example studies


@dataclass
class StudySummary:
    out: Location
    trained: list[TrainResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    analyses: dict[str, Summary] = field(default_factory=dict)  # analysis name -> its driver's summary
    report: Path | None = None  # the HTML report, where one was written (the demo writes one)

    @property
    def ok(self) -> bool:
        runs_ok = all(r.status == "done" for r in self.trained)
        return runs_ok and all(a.ok for a in self.analyses.values())

    def __repr__(self) -> str:
        runs = ", ".join(f"{r.spec.run}: {r.status}" for r in self.trained)
        return (
            f"StudySummary(out={self.out.uri!r}, trained=[{runs}], skipped={self.skipped}, "
            f"analyses={ {k: v for k, v in self.analyses.items()} })"
        )


@dataclass(frozen=True)
class Layout:
    """Where a study's files go: `out` (a location) and, for URIs, the local staging folder training writes to."""

    out: Location
    stage: Path

    @classmethod
    def for_out(cls, out: Location) -> Layout:
        if not out.is_remote:
            return cls(out, Path(out.path))
        return cls(out, cache_dir() / "stage" / hashlib.sha256(out.uri.encode()).hexdigest()[:12])

    @property
    def remote(self) -> bool:
        return self.out.is_remote

    def run(self, run: str, *parts: str) -> str:
        return "/".join([self.out.uri, "train", run, *parts])


def dataset_path(data: str | Synthetic, layout: Layout) -> str:
    """A dataset yaml for `data`, generating a synthetic one the first time (deterministic) and, for a URI out,
    uploading it under OUT/data/."""
    if not isinstance(data, Synthetic):
        return data
    fields = {k: v for k, v in asdict(data).items() if not (k == "task" and v == "detect")}  # older folders' keys
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    name = f"synthetic-{data.domain}-{key}"
    folder = layout.stage / "data" / name
    if not (folder / "data.yaml").exists():
        from yolo_audit.study.synth import make_dataset

        tmp = folder.with_name(folder.name + ".partial")
        make_dataset(
            tmp, images=data.images, imgsz=data.imgsz, classes=data.classes, domain=data.domain, seed=data.seed,
            task=data.task,
        )  # fmt: skip
        (tmp / "data.yaml").write_text(
            (tmp / "data.yaml").read_text().replace(str(tmp.resolve()), str(folder.resolve()))
        )
        tmp.rename(folder)
    if not layout.remote:
        return str(folder / "data.yaml")
    upload_dir(folder, f"{layout.out.uri}/data/{name}")
    return f"{layout.out.uri}/data/{name}/data.yaml"


def _spec(run: str, variant: str, model: str, data: str, layout: Layout, cfg: TrainCfg, **kw: object) -> TrainSpec:
    return TrainSpec(
        run=run, variant=variant, model=model, data=data, project=str(layout.stage / "train"),
        upload_to=layout.run(run) if layout.remote else None, dynamics_to=layout.out.uri, **asdict(cfg), **kw,
    )  # fmt: skip


def plan(
    study: Study, layout: Layout, *, data: str = "", pretrain_data: str = ""
) -> tuple[TrainSpec | None, list[TrainSpec]]:
    """The pretraining spec (if any) and one spec per (variant x seed)."""
    base_spec = None
    model = study.model
    if study.pretrain is not None:
        base_spec = _spec(
            "base",
            "base",
            study.model,
            pretrain_data,
            layout,
            study.pretrain,
            seed=study.seeds[0],
            backbone=study.backbone,
        )
        model = layout.run("base", "weights", "last.pt")
    specs = [
        _spec(
            f"{v.name}-s{seed}",
            v.name,
            model,
            data,
            layout,
            study.train,
            frozen_layers=v.frozen_layers,
            backbone=study.backbone,
            freeze=freeze_text(v.freeze),
            strategy=v.strategy,
            seed=seed,
        )  # fmt: skip
        for v in study.variants
        for seed in study.seeds
    ]
    return base_spec, specs


def run_study(
    study: Study,
    *,
    address: str | None = None,
    dry_run: bool = False,
    cpu_only: bool = False,
    schedule_timeout: float = 600.0,
    stream: TextIO | None = None,
) -> StudySummary:
    """Train the study's runs as Ray tasks, then run its analyses. Training tasks ask for `resources.gpus_per_task`
    GPUs whenever the file sets it (an autoscaler launches GPU nodes for them), where the cluster has GPUs when it is
    not set, and none with `cpu_only`; a request no node takes within `schedule_timeout` seconds fails in one line."""
    stream = stream or sys.stderr
    if dry_run:
        print_plan(study, Layout.for_out(locate(study.out)), stream)
        return StudySummary(out=locate(study.out))
    layout = Layout.for_out(files.check_writable(locate(study.out)))
    data = dataset_path(study.data, layout)
    pre_data = dataset_path(study.pretrain_data, layout) if study.pretrain_data is not None else data
    base_spec, specs = plan(study, layout, data=data, pretrain_data=pre_data)
    summary = StudySummary(out=layout.out)
    with exclusive(layout.out), ray_session(address, engine="ray", stream=stream):
        gpus = gpus_to_ask(study.resources, cpu_only=cpu_only)
        done = finished_runs(layout)
        if gpus and any(s.run not in done for s in ([base_spec] if base_spec else []) + specs):  # only if it trains
            require_resources(study.resources.cpus_per_task, gpus, timeout=schedule_timeout, embedded=address is None)
        if base_spec is not None:
            _train_all([base_spec], study, layout, gpus, summary, stream, schedule_timeout)
            if not all(r.status == "done" for r in summary.trained) and base_spec.run not in summary.skipped:
                raise AuditError("pretraining the base failed; see the runs table", path=layout.out.uri)
        _train_all(specs, study, layout, gpus, summary, stream, schedule_timeout)
        if study.analyses:
            inputs = _inputs(study, layout, specs, base_spec, data, stream)
            for name in study.analyses:
                summary.analyses[name] = ANALYSES[name].run_in_study(inputs)
        merged = compact(layout.out)  # thousands of per-task files become a few per table
        print(f"[study] compacted {sum(merged.values())} result files into {len(merged)}", file=stream)
    return summary


def _inputs(
    study: Study, layout: Layout, specs: list[TrainSpec], base_spec: TrainSpec | None, data: str, stream: TextIO
) -> StudyInputs:
    """What every analysis of the study gets: each finished run's snapshots, the base, the validation data."""
    done = finished_runs(layout)
    snapshots = {
        s.run: [f.uri for f in locate(layout.run(s.run, SNAPSHOTS)).files(".safetensors")]
        for s in specs
        if s.run in done
    }
    if not snapshots:
        raise AuditError("no run finished, nothing to analyse; see the runs table", path=layout.out.uri)
    return StudyInputs(out=layout.out, snapshots=snapshots, reference=_reference(study, layout, base_spec), data=data,
                       imgsz=study.train.imgsz, batch=study.train.batch, stream=stream,
                       options={"interpolate": asdict(study.interpolate)})  # fmt: skip


def _train_all(
    specs: list[TrainSpec],
    study: Study,
    layout: Layout,
    gpus: float,
    summary: StudySummary,
    stream: TextIO,
    schedule_timeout: float | None = None,
) -> None:
    out = layout.out
    done = finished_runs(layout)
    todo = [s for s in specs if s.run not in done]
    summary.skipped += [s.run for s in specs if s.run in done]
    for run in (s.run for s in specs if s.run in done):
        print(f"[train] skip {run}: finished in an earlier run of this study", file=stream)
    _forget(layout, [s.run for s in todo])
    tasks = train_tasks(todo, study.resources, gpus=gpus)
    for result in run_tasks(tasks, stage="train", stream=stream, retries=1, schedule_timeout=schedule_timeout):
        write_run(out, result, study.name)
        summary.trained.append(result)
        print(f"[train] {describe(result)}", file=stream)


def gpus_to_ask(res: Resources, *, cpu_only: bool = False) -> float:
    """GPUs per training task: none with --cpu-only; `gpus_per_task` whenever the study file sets it; else 1 where the
    cluster has GPUs now."""
    if cpu_only:
        return 0
    if res.gpus_per_task is not None:
        return res.gpus_per_task
    return 1 if cluster_gpus() > 0 else 0


def train_tasks(
    specs: list[TrainSpec], res: Resources, *, gpus: float, fn: Callable[[TrainSpec], object] = train_variant
) -> list[Task]:
    """One task per run asking for `gpus` GPUs (device 0 inside the task: Ray sets CUDA_VISIBLE_DEVICES to the GPUs it
    gave) and `cpus_per_task` CPUs; `gpus` 0: CPUs only."""
    return [
        Task(s.run, fn, (replace(s, device="0" if gpus else "cpu"),), None, num_cpus=res.cpus_per_task,
             num_gpus=float(gpus))
        for s in specs
    ]  # fmt: skip


def _forget(layout: Layout, runs: list[str]) -> None:
    """Before (re)training runs, drop the analysis rows of their earlier snapshots (an interrupted or failed try) and
    the training dynamics they recorded."""
    if runs and "train_dynamics" in tables(layout.out):
        names = view(layout.out.child("train_dynamics")).names
        files.remove(layout.out, "train_dynamics", *[n.removesuffix(".parquet") for n in names
                                                     if n.startswith(tuple(f"{r}-epoch" for r in runs))])  # fmt: skip
    if not runs or "checkpoints" not in tables(layout.out):
        return
    folders = tuple(layout.run(r) + "/" for r in runs)
    paths = scan(layout.out, "checkpoints").select("checkpoint_id", "aliases").explode("aliases").collect()
    files.purge(layout.out, {cid for cid, path in paths.iter_rows() if path and path.startswith(folders)})


def finished_runs(layout: Layout) -> set[str]:
    """Runs whose row says done and whose snapshots are still there."""
    if "runs" not in tables(layout.out):
        return set()
    runs = scan(layout.out, "runs").filter(pl.col("status") == "done").collect()
    return {r for r in runs["run"] if locate(layout.run(r, SNAPSHOTS)).files(".safetensors")}


def write_run(out: Location, result: TrainResult, study_name: str) -> None:
    spec = result.spec
    row = {
        "run": spec.run, "study": study_name, "variant": spec.variant, "freeze": spec.freeze,
        "frozen_layers": list(spec.frozen_layers), "backbone": list(spec.backbone), "strategy": spec.strategy,
        "seed": spec.seed,
        "epochs": spec.epochs, "status": result.status, "best_map50_95": result.best_map50_95,
        "seconds": result.seconds, "device": spec.device, "error": result.error,
    }  # fmt: skip
    files.write(out, "runs", run_key(spec.run), {k: [v] for k, v in row.items()})
    write_train_metrics(out, spec.run, result.metrics)


def _reference(study: Study, layout: Layout, base_spec: TrainSpec | None) -> str | None:
    """The weights every variant started from: the pretrained base, or the study's model file."""
    if base_spec is not None:
        return layout.run("base", "weights", "last.pt")
    model = Path(study.model)
    if model.suffix in (".pt", ".safetensors") and ("://" in study.model or model.exists()):
        return study.model
    if model.suffix == ".pt":  # an official name Ultralytics fetched for training: use its local copy
        from ultralytics.utils.downloads import attempt_download_asset

        local = Path(attempt_download_asset(str(model)))
        return str(local) if local.exists() else None
    return None


def print_plan(study: Study, layout: Layout, stream: TextIO) -> None:
    base_spec, specs = plan(study, layout, data=str(study.data), pretrain_data=str(study.pretrain_data))
    res = study.resources
    print(f"study {study.name!r} from {study.source or '-'}; results in {layout.out.uri}", file=stream)
    for spec in ([base_spec] if base_spec else []) + specs:
        layers = ",".join(map(str, spec.frozen_layers)) or "-"
        print(
            f"  train {spec.run:<28} freeze={spec.freeze:<10} layers={layers:<24} strategy={spec.strategy:<11} "
            f"epochs={spec.epochs} imgsz={spec.imgsz} batch={spec.batch} "
            f"resources: {res.cpus_per_task} CPU, "
            f"{f'{res.gpus_per_task:g} GPU' if res.gpus_per_task is not None else '1 GPU where the cluster has GPUs'}",
            file=stream,
        )
    print(
        f"  then analyses {list(study.analyses)}: one task per snapshot, vs the base; trajectory per run", file=stream
    )
