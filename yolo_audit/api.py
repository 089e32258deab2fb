"""The Python API (notebooks, scripts): one function per command, with the command's options as keywords (the same
names and defaults), the same one-line errors (`AuditError`), returning the command's summary or a Polars frame.
The CLI calls these functions, so the two cannot drift apart (`COMMANDS`; tests/test_cli.py checks every command).

    from yolo_audit import analyze_weights, open_results, rank_divergence
    summary = analyze_weights(["runs/detect"], "results", reference="yolov8s.pt")
    rank_divergence("results", by="layer", top=10)      # a polars DataFrame
    frames = open_results("results")                    # {table: polars.LazyFrame}

Drivers are imported inside each function: `import yolo_audit.api` stays light, as a command's start-up does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from yolo_audit.model.checkpoint import load_checkpoint
from yolo_audit.results.store import open_results

if TYPE_CHECKING:
    import polars as pl

    from yolo_audit.analyses.activations.job import ActivationOptions
    from yolo_audit.analyses.activations.plan import ActivationsSummary
    from yolo_audit.analyses.interpolate.plan import InterpolationSummary
    from yolo_audit.analyses.rewind.plan import RewindSummary
    from yolo_audit.analyses.similarity.plan import SimilarityOptions, SimilaritySummary
    from yolo_audit.analyses.weights.columns import WeightOptions
    from yolo_audit.analyses.weights.plan import WeightsSummary
    from yolo_audit.results.location import Where
    from yolo_audit.study.driver import StudySummary

# every CLI command (as typed after `yolo-audit`) and the function that does its work
COMMANDS = {
    "weights": "analyze_weights", "activations": "analyze_activations", "similarity": "analyze_similarity",
    "rewind": "analyze_rewind", "interpolate": "analyze_interpolation", "rank dead-units": "rank_dead_units",
    "rank divergence": "rank_divergence", "rank drift": "rank_drift", "rank rewind": "rank_rewind",
    "rank gradient-flow": "rank_gradient_flow", "query": "query", "report": "write_report", "compact": "compact",
    "cache clear": "clear_cache", "schema": "schema", "study": "run_study", "demo": "run_demo",
    "make-data": "make_data", "convert": "convert",
}  # fmt: skip
__all__ = [*sorted(set(COMMANDS.values())), "load_checkpoint", "open_results"]


def analyze_weights(
    checkpoints: list[Where],
    out: Where,
    *,
    reference: Where | None = None,
    pairwise: bool = False,
    trajectory: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    trust_pickle: bool = False,
    bins: int = 64,
    near_zero: float = 1e-3,
    gamma_eps: float = 1e-3,
    alpha: bool = False,
    force: bool = False,
    opts: WeightOptions | None = None,
    stream: TextIO | None = None,
) -> WeightsSummary:
    """`yolo-audit weights`: statistics, divergence and freeze verdicts of checkpoints (files or folders) written
    under `out`. `opts` (a WeightOptions, as scripts before 2026-12-04 passed it) replaces bins .. alpha."""
    from yolo_audit.analyses.weights.columns import WeightOptions
    from yolo_audit.analyses.weights.plan import analyze_weights as run

    opts = opts or WeightOptions(near_zero=near_zero, gamma_eps=gamma_eps, bins=bins, alpha=alpha)
    return run(list(checkpoints), out, reference=reference, pairwise=pairwise, trajectory=trajectory,
               address=address, num_cpus=num_cpus, engine=engine, opts=opts, trust_pickle=trust_pickle, force=force,
               stream=stream)  # fmt: skip


def analyze_activations(
    checkpoints: list[Where],
    data: str | Path,
    out: Where,
    *,
    reference: Where | None = None,
    tau: float = 0.025,
    max_images: int | None = None,
    imgsz: int = 640,
    batch: int = 8,
    depth: str = "modules",
    maps: int = 4,
    split: str = "val",
    cfg: str | None = None,
    device: str = "auto",
    shards: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    trust_pickle: bool = False,
    force: bool = False,
    opts: ActivationOptions | None = None,
    stream: TextIO | None = None,
) -> ActivationsSummary:
    """`yolo-audit activations`: per-channel activation statistics and dead units over the images of `data`.
    `opts` (an ActivationOptions) replaces tau, imgsz, batch, depth, maps, cfg, device and trust_pickle."""
    from yolo_audit.analyses.activations.job import ActivationOptions
    from yolo_audit.analyses.activations.plan import analyze_activations as run

    opts = opts or ActivationOptions(imgsz=imgsz, batch=batch, depth=depth, maps=maps, tau=tau, device=device,
                                     cfg=cfg, trust_pickle=trust_pickle)  # fmt: skip
    return run(list(checkpoints), data, out, reference=reference, opts=opts, max_images=max_images, split=split,
               shards_per_checkpoint=shards, address=address, num_cpus=num_cpus, engine=engine, force=force,
               stream=stream)  # fmt: skip


def analyze_similarity(
    checkpoints: list[Where],
    data: str | Path,
    out: Where,
    *,
    cross_layer: bool = False,
    pool: str = "avg",
    max_images: int | None = None,
    imgsz: int = 640,
    batch: int = 8,
    split: str = "val",
    cfg: str | None = None,
    device: str = "auto",
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    trust_pickle: bool = False,
    opts: SimilarityOptions | None = None,
    stream: TextIO | None = None,
) -> SimilaritySummary:
    """`yolo-audit similarity`: linear CKA between checkpoints (the first is the reference), layer by layer.
    `opts` (a SimilarityOptions) replaces cross_layer, pool, imgsz, batch, cfg, device and trust_pickle."""
    from yolo_audit.analyses.similarity.plan import SimilarityOptions
    from yolo_audit.analyses.similarity.plan import analyze_similarity as run

    opts = opts or SimilarityOptions(imgsz=imgsz, batch=batch, pool=pool, cross_layer=cross_layer, device=device,
                                     cfg=cfg, trust_pickle=trust_pickle)  # fmt: skip
    return run(list(checkpoints), data, out, opts=opts, max_images=max_images, split=split, address=address,
               num_cpus=num_cpus, engine=engine, force=force, stream=stream)  # fmt: skip


def analyze_rewind(
    checkpoints: list[Where],
    reference: Where,
    data: str,
    out: Where,
    *,
    layers: str = "all",
    groups: bool = False,
    into_reference: bool = False,
    imgsz: int = 640,
    batch: int = 16,
    split: str = "val",
    device: str = "auto",
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    trust_pickle: bool = False,
    stream: TextIO | None = None,
) -> RewindSummary:
    """`yolo-audit rewind`: mAP of each checkpoint with one layer (or group) reset to the reference's."""
    from yolo_audit.analyses.rewind.job import RewindOptions
    from yolo_audit.analyses.rewind.plan import analyze_rewind as run

    opts = RewindOptions(imgsz=imgsz, batch=batch, split=split, device=device, trust_pickle=trust_pickle)
    return run(list(checkpoints), reference, data, out, layers=layers, groups=groups, into_reference=into_reference,
               opts=opts, address=address, num_cpus=num_cpus, engine=engine, force=force, stream=stream)  # fmt: skip


def analyze_interpolation(
    checkpoints: list[Where],
    reference: Where,
    data: str,
    out: Where,
    *,
    steps: int = 11,
    recalibrate_bn: int = 0,
    imgsz: int = 640,
    batch: int = 16,
    split: str = "val",
    device: str = "auto",
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    trust_pickle: bool = False,
    stream: TextIO | None = None,
) -> InterpolationSummary:
    """`yolo-audit interpolate`: mAP at `steps` points on the line from the reference to each checkpoint (BatchNorm
    statistics re-estimated on `recalibrate_bn` training images at each point); the barrier per checkpoint."""
    from yolo_audit.analyses.interpolate.job import InterpolateOptions
    from yolo_audit.analyses.interpolate.plan import analyze_interpolation as run

    opts = InterpolateOptions(imgsz=imgsz, batch=batch, split=split, device=device, recalibrate_bn=recalibrate_bn,
                              trust_pickle=trust_pickle)  # fmt: skip
    return run(list(checkpoints), reference, data, out, steps=steps, opts=opts, address=address, num_cpus=num_cpus,
               engine=engine, force=force, stream=stream)  # fmt: skip


def rank_dead_units(
    results: Where, *, top: int = 20, by: str = "layer", criterion: str = "any", against: str = "reference"
) -> pl.DataFrame:
    """`yolo-audit rank dead-units`: dead units across every checkpoint, newly dead first. `against`: `reference`
    (each checkpoint's own), `all`, or a checkpoint (those measured against it); see `results.references`."""
    from yolo_audit.results import rank

    return rank.rank_dead_units(results, by=by, criterion=criterion, top=top, against=against).collect()


def rank_divergence(results: Where, *, top: int = 20, by: str = "layer", against: str = "reference") -> pl.DataFrame:
    """`yolo-audit rank divergence`: weight divergence per tensor, layer or checkpoint, largest first; each
    checkpoint against its own reference unless `against` is `all` or a checkpoint."""
    from yolo_audit.results import rank

    return rank.rank_divergence(results, by=by, top=top, against=against).collect()


def rank_drift(results: Where, *, top: int = 20, against: str = "reference") -> pl.DataFrame:
    """`yolo-audit rank drift`: layers whose BatchNorm statistics moved while their weights did not."""
    from yolo_audit.results import rank

    return rank.rank_drift(results, top=top, against=against).collect()


def rank_rewind(results: Where, *, top: int = 5, against: str = "reference") -> pl.DataFrame:
    """`yolo-audit rank rewind`: per run, the layers whose reset to the reference costs most mAP50-95."""
    from yolo_audit.results import rank

    return rank.rank_rewind(results, top=top, against=against).collect()


def rank_gradient_flow(results: Where, *, run: str | None = None, top: int = 1000) -> pl.DataFrame:
    """`yolo-audit rank gradient-flow`: per run, layer and epoch, how much gradient reached the layer and how far it
    moved (from `train_dynamics`, recorded live by `attach`): the gradient flow, layer x epoch."""
    from yolo_audit.results import rank

    return rank.rank_gradient_flow(results, run=run, top=top).collect()


def query(sql: str, results: Where) -> pl.DataFrame:
    """`yolo-audit query`: Polars SQL over every table of `results`."""
    from yolo_audit.results import rank

    return rank.query(results, sql)


def write_report(results: Where, out: str | Path = "report.html") -> Path:
    """`yolo-audit report`: the self-contained HTML report of whatever tables exist; returns its path."""
    from yolo_audit.report import write_report as write

    return write(results, out)


def compact(results: Where) -> dict[str, int]:
    """`yolo-audit compact`: each table's per-task files merged into one; returns files merged per table."""
    from yolo_audit.results.compact import compact as merge
    from yolo_audit.results.location import locate

    return merge(locate(results))


def clear_cache() -> int:
    """`yolo-audit cache clear`: empty the fetch cache; returns the bytes removed."""
    from yolo_audit.results.location import trim_cache

    return trim_cache(0)


def schema() -> str:
    """`yolo-audit schema`: every results table and column, as Markdown (docs/schema.md is this text)."""
    from yolo_audit.results.schema import markdown

    return markdown()


def run_study(
    file: str | Path,
    *,
    out: str | None = None,
    address: str | None = None,
    dry_run: bool = False,
    cpu_only: bool = False,
    schedule_timeout: float = 600,
    stream: TextIO | None = None,
) -> StudySummary:
    """`yolo-audit study`: train the study file's freeze variants, then run its analyses."""
    from yolo_audit.study.driver import run_study as run
    from yolo_audit.study.spec import load_study

    return run(load_study(file, out=out), address=address, dry_run=dry_run, cpu_only=cpu_only,
               schedule_timeout=schedule_timeout, stream=stream)  # fmt: skip


def run_demo(*, out: str = "demo-results", address: str | None = None, stream: TextIO | None = None) -> StudySummary:
    """`yolo-audit demo`: workflows/demo.yaml into `out`, and its report (`summary.report`)."""
    from yolo_audit.errors import AuditError
    from yolo_audit.study.driver import WORKFLOWS

    if not (WORKFLOWS / "demo.yaml").exists():
        raise AuditError("workflows/demo.yaml is not beside the package; install from a checkout (pip install -e .)")
    summary = run_study(WORKFLOWS / "demo.yaml", out=out, address=address, stream=stream)
    if not summary.out.is_remote:
        summary.report = write_report(summary.out, Path(summary.out.path) / "report.html")
    return summary


def make_data(
    out: str | Path,
    *,
    images: int = 32,
    imgsz: int = 64,
    classes: int = 3,
    domain: str = "A",
    seed: int = 0,
    task: str = "detect",
) -> Path:
    """`yolo-audit make-data`: a deterministic synthetic YOLO dataset; returns its data.yaml."""
    from yolo_audit.study.synth import make_dataset

    return make_dataset(Path(out), images=images, imgsz=imgsz, classes=classes, domain=domain, seed=seed, task=task)


def convert(source: str | Path, target: str | Path, *, trust_pickle: bool = False) -> Path:
    """`yolo-audit convert`: a checkpoint as .safetensors (fp32, metadata kept; loading it never runs code)."""
    from yolo_audit.errors import AuditError
    from yolo_audit.model.checkpoint import save_safetensors

    if not str(target).endswith(".safetensors"):
        raise AuditError("the target must end in .safetensors", path=str(target))
    return save_safetensors(load_checkpoint(source, trust_pickle=trust_pickle), Path(target))
