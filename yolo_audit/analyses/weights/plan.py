"""Driver of `yolo-audit weights`: find checkpoints, plan the Ray tasks, fan out, collect errors.

Waves: (1) one task per checkpoint: statistics, and divergence vs the reference when there is one (the reference is
loaded once here and shared through Ray's object store); (2) histograms on pooled bins when no reference fixes them;
(3) one task per pair for `--pairwise` and `--trajectory`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import TextIO

from yolo_audit.analyses import StudyInputs
from yolo_audit.analyses.weights.columns import (
    WeightOptions,
    pooled_bins_id,
    reference_cache,
    shared_edges,
    tensor_stats_ranges,
)
from yolo_audit.analyses.weights.job import TaskResult, analyze_checkpoint, compare_pair, histogram_checkpoint
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import find_checkpoints, load_checkpoint
from yolo_audit.results.errors import ErrorRecord, write_errors
from yolo_audit.results.files import check_writable, write_checkpoints, write_references
from yolo_audit.results.ledger import Ledger, done_key, fingerprint
from yolo_audit.results.location import Location, Where, exclusive, locate
from yolo_audit.results.train_metrics import record_beside
from yolo_audit.runtime.tasks import Task, put, ray_session, run_tasks, short_name


@dataclass
class WeightsSummary:
    out: Location
    analysed: list[TaskResult] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    reference_id: str | None = None
    bins_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def distinct(self) -> int:
        """Distinct checkpoints (by content) among the files analysed."""
        return len({r.checkpoint_id for r in self.analysed})

    @property
    def architectures(self) -> int:
        """Distinct architectures among the analysed checkpoints (rows compare only within one)."""
        return len({r.arch_hash for r in self.analysed if r.arch_hash})

    def __repr__(self) -> str:
        return (
            f"WeightsSummary(out={self.out.uri!r}, files={len(self.analysed)}, checkpoints={self.distinct}, "
            f"errors={len(self.errors)}, "
            f"reference_id={self.reference_id!r}, bins_id={self.bins_id!r})"
        )


def analyze_weights(
    paths: list[Where],
    out: Where,
    *,
    reference: Where | None = None,
    pairwise: bool = False,
    trajectory: bool = False,
    pairwise_among: list[str] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    cpus_per_task: float = 1,
    opts: WeightOptions | None = None,
    trust_pickle: bool = False,
    force: bool = False,
    stream: TextIO | None = None,
) -> WeightsSummary:
    """Analyse every checkpoint under `paths` into Parquet tables under `out` (see the README's schema).
    `pairwise_among`: compare every pair of just these files (a study: each run's last snapshot and the base).
    Tasks already done for the same files and options are skipped (see `results.ledger`) unless `force`."""
    opts = opts or WeightOptions()
    out_dir = check_writable(locate(out))
    files = find_checkpoints(list(paths), reference=reference)
    if len(files) < 2 and (pairwise or trajectory):
        raise AuditError("pairwise and trajectory comparisons need at least two checkpoints", path=str(paths[0]))
    common = {"trust_pickle": trust_pickle}
    prints = {f: fingerprint(f) for f in files}
    ref_print = fingerprint(reference) if reference is not None else None
    ledger = Ledger(out_dir, force=force)
    keys = {f: done_key("weights:analyze", prints[f], ref_print, opts) for f in files}
    # the reference is loaded only when some checkpoint still needs it (a rerun with nothing new costs start-up only)
    needed = reference is not None and any(ledger.lookup(k) is None for k in keys.values())
    ref = load_checkpoint(reference, trust_pickle=trust_pickle) if needed and reference is not None else None
    summary = WeightsSummary(out=out_dir, reference_id=ref.checkpoint_id if ref else None)
    edges = shared_edges([tensor_stats_ranges(ref)]) if ref is not None else None
    summary.bins_id = f"ref-{ref.checkpoint_id}" if ref is not None else None
    with exclusive(out_dir), ray_session(address, num_cpus=num_cpus, engine=engine):
        ref_obj = put(ref) if ref is not None else None
        cache = put(reference_cache(ref, opts, edges)) if ref is not None else None
        first = run_tasks(
            [
                Task(short_name(f), analyze_checkpoint, (f, out_dir), {
                    "reference": ref_obj, "cache": cache, "edges": edges, "bins_id": summary.bins_id, "opts": opts,
                    **common,
                }, num_cpus=cpus_per_task, done_key=keys[f], revive=_revive)
                for f in files
            ],
            stage="weights",
            threads=True,
            stream=stream,
            ledger=ledger,
        )  # fmt: skip
        summary.analysed = [r for r in first if r.checkpoint_id is not None]
        if reference is not None and ref is None:  # every task was done before: the reference's id is recorded
            summary.reference_id = next((r.checkpoint_id for r in first if r.path == locate(reference).uri), None)
            summary.bins_id = f"ref-{summary.reference_id}"
        summary.errors += [e for r in first for e in r.errors]
        write_checkpoints(out_dir, [r.checkpoint_row for r in first if r.checkpoint_row])
        write_references(out_dir, "weights", [(r.checkpoint_id, summary.reference_id) for r in summary.analysed])
        record_beside(out_dir, [(r.run, r.path) for r in first if r.checkpoint_id])  # results.csv of user runs
        loaded = distinct(
            [r for r in first if r.checkpoint_id is not None and not any(e.stage == "load" for e in r.errors)]
        )
        if reference is None and loaded:
            edges = shared_edges([r.ranges for r in loaded])
            summary.bins_id = pooled_bins_id([r.checkpoint_id for r in loaded if r.checkpoint_id])
            second = run_tasks(
                [
                    Task(short_name(r.path), histogram_checkpoint, (r.path, out_dir), {
                        "edges": edges, "bins_id": summary.bins_id, "bins": opts.bins, **common,
                    }, num_cpus=cpus_per_task, revive=_revive,
                         done_key=done_key("weights:histogram", prints[r.path], summary.bins_id, opts.bins))
                    for r in loaded
                ],
                stage="histograms",
            threads=True,
                stream=stream,
                ledger=ledger,
            )  # fmt: skip
            summary.errors += [e for r in second for e in r.errors]
        among = {locate(p).uri for p in pairwise_among} if pairwise_among else None
        # by content: a last snapshot holding the same tensors as an earlier file is analysed under that file's path
        among_ids = {r.checkpoint_id for r in first if r.path in among and r.checkpoint_id} if among else None
        pairs = _pairs(loaded, pairwise=pairwise, trajectory=trajectory, among=among_ids)
        if pairs:
            third = run_tasks(
                [Task(f"{short_name(a)} vs {short_name(b)}", compare_pair, (a, b, out_dir), {**common, "opts": opts},
                      cpus_per_task, revive=_revive,
                      done_key=done_key("weights:compare", prints[a], prints[b], opts.near_zero))
                 for a, b in pairs],
                stage="compare",
            threads=True,
                stream=stream,
                ledger=ledger,
            )  # fmt: skip
            summary.errors += [e for r in third for e in r.errors]
        write_errors(out_dir, summary.errors)
        ledger.save()
    return summary


def _revive(data: dict) -> TaskResult:
    """A task's result as the ledger recorded it (JSON: tuples came back as lists)."""
    return TaskResult(**{**data, "errors": []})


def distinct(results: list[TaskResult]) -> list[TaskResult]:
    """One result per content (files with identical tensors are one checkpoint), with the highest epoch known."""
    by_id: dict[str, TaskResult] = {}
    for r in results:
        kept = by_id.setdefault(r.checkpoint_id or r.path, r)
        epochs = [e for e in (kept.epoch, r.epoch) if e is not None]
        kept.epoch = max(epochs, default=None)
    return list(by_id.values())


def _pairs(
    results: list[TaskResult], *, pairwise: bool, trajectory: bool, among: set[str] | None = None
) -> list[tuple[str, str]]:
    """(a, b) pairs where a is compared against b: all pairs (or all pairs of the checkpoints `among`, by id), and/or
    consecutive epochs within each run."""
    pairs: list[tuple[str, str]] = []
    if pairwise or among:
        chosen = [r for r in results if among is None or r.checkpoint_id in among]
        pairs += [(later.path, earlier.path) for earlier, later in combinations(chosen, 2)]
    if trajectory:
        runs: dict[str, list[TaskResult]] = {}
        for r in results:
            if r.epoch is not None:
                runs.setdefault(r.run or "", []).append(r)
        for members in runs.values():
            ordered = sorted(members, key=lambda r: r.epoch or 0)
            pairs += [(b.path, a.path) for a, b in zip(ordered, ordered[1:], strict=False)]
    return list(dict.fromkeys(pairs))


def in_study(inputs: StudyInputs) -> WeightsSummary:
    """Every snapshot of every finished run against the base, and each run's epoch-to-epoch trajectory (all pairs
    when there is no base)."""
    snapshots = [f for files in inputs.snapshots.values() for f in files]
    print(f"[weights] analysing {len(inputs.snapshots)} runs' snapshots against {inputs.reference or 'each other'}",
          file=inputs.stream)  # fmt: skip
    among = ([inputs.reference] if inputs.reference else []) + inputs.last  # the report's distances between runs
    return analyze_weights(snapshots, inputs.out, reference=inputs.reference, trajectory=True,
                           pairwise=inputs.reference is None, pairwise_among=among, stream=inputs.stream)  # fmt: skip
