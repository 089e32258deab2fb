"""Driver of `yolo-audit rewind`: one Ray task per (checkpoint x layer or group), after one baseline per checkpoint
(and one of the reference for --into-reference), all validated on the same data with the same settings."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from yolo_audit.analyses import StudyInputs
from yolo_audit.analyses.images import dataset_id
from yolo_audit.analyses.rewind.job import BASELINE, RewindOptions, RewindResult, Target, rewind_task
from yolo_audit.analyses.validation import labelled_images
from yolo_audit.errors import AuditError
from yolo_audit.model.checkpoint import checkpoint_table, find_checkpoints, load_checkpoint
from yolo_audit.model.profile import Profile
from yolo_audit.results import files
from yolo_audit.results.errors import ErrorRecord, clear_errors, write_errors
from yolo_audit.results.keys import rewind_key
from yolo_audit.results.ledger import Ledger, done_key, fingerprint, recording, skipped_line
from yolo_audit.results.location import Location, Where, exclusive, locate
from yolo_audit.runtime.tasks import Task, cluster_gpus, ray_session, run_tasks, short_name

GROUPS = ("backbone", "neck", "head")


@dataclass
class RewindSummary:
    out: Location
    dataset_id: str = ""
    rows: int = 0
    errors: list[ErrorRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __repr__(self) -> str:
        return f"RewindSummary(out={self.out.uri!r}, rows={self.rows}, errors={len(self.errors)})"


def select_targets(profile: Profile, layers_with_tensors: list[int], layers: str, *, groups: bool,
                   into_reference: bool) -> list[Target]:  # fmt: skip
    """The swaps asked for: each selected layer (`all`, a group name, or `0,1,2`), or with `groups` each of backbone,
    neck and head as one swap; in both directions with `into_reference`."""
    directions = ("rewind", "into_reference") if into_reference else ("rewind",)
    present = sorted(layers_with_tensors)
    if groups:
        members = {g: tuple(x for x in present if profile.group(x) == g) for g in GROUPS}
        return [Target(d, members[g], None, g) for d in directions for g in GROUPS if members[g]]
    if layers == "all":
        chosen = present
    elif layers in GROUPS:
        chosen = [x for x in present if profile.group(x) == layers]
    else:
        try:
            chosen = sorted({int(x) for x in layers.split(",")})
        except ValueError:
            raise AuditError(f"--layers {layers!r}: use all, backbone, neck, head or a list like 0,1,2") from None
        missing = [x for x in chosen if x not in present]
        if missing:
            raise AuditError(f"--layers: {missing} have no parameters in this model; layers with some: {present}")
    return [Target(d, (x,), x, profile.group(x)) for d in directions for x in chosen]


def analyze_rewind(
    paths: list[Where],
    reference: Where,
    data: str,
    out: Where,
    *,
    layers: str = "all",
    groups: bool = False,
    into_reference: bool = False,
    opts: RewindOptions | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    engine: str = "auto",
    force: bool = False,
    stream: TextIO | None = None,
) -> RewindSummary:
    opts = opts or RewindOptions()
    out_loc = files.check_writable(locate(out))
    ref_uri = locate(reference).uri
    checkpoints = [f for f in find_checkpoints(list(paths)) if f != ref_uri]
    local, images = labelled_images(data, opts.split, out_loc, "rewind")
    summary = RewindSummary(out=out_loc, dataset_id=dataset_id(images, opts.imgsz))
    ledger = Ledger(out_loc, force=force)
    prints = [fingerprint(p) for p in [ref_uri, *checkpoints]]
    key = done_key("rewind", prints, summary.dataset_id, layers, groups, into_reference, opts)
    done = ledger.lookup(key)
    if done is not None:
        print(skipped_line("rewind", "files, data and options"), file=stream or sys.stderr)
        summary.rows = done["rows"]
        return summary
    ref = load_checkpoint(ref_uri, trust_pickle=opts.trust_pickle)
    present = sorted({i.layer for i in ref.keys.values() if i.layer is not None})
    targets = select_targets(ref.profile, present, layers, groups=groups, into_reference=into_reference)
    with exclusive(out_loc), ray_session(address, num_cpus=num_cpus, engine=engine), recording() as written:
        gpus = 1 if cluster_gpus() > 0 else 0
        stream = stream or sys.stderr

        def tasks(jobs: list[tuple[str, Target]], stage: str) -> list[RewindResult]:
            specs = [Task(f"{short_name(p)} {t.label}", rewind_task, (p, ref_uri, local, t, opts), num_gpus=gpus)
                     for p, t in jobs]  # fmt: skip
            return run_tasks(specs, stage=stage, stream=stream)

        baselines = tasks(
            [(p, Target(BASELINE)) for p in checkpoints]
            + ([(ref_uri, Target(BASELINE, group="reference"))] if into_reference else []),
            "baseline",
        )
        base = {r.path: r for r in baselines}
        swaps = tasks([(p, t) for p in checkpoints for t in targets if not base[p].errors], "rewind")
        summary.errors += [e for r in baselines + swaps for e in r.errors]
        files.write_checkpoints(
            out_loc, [checkpoint_table(ref)] + [r.checkpoint_row for r in baselines if r.checkpoint_row]
        )
        _write_rows(swaps, base, base.get(ref_uri), summary)
        measured = [r.checkpoint_row["checkpoint_id"][0] for r in baselines if r.checkpoint_row and r.path != ref_uri]
        files.write_references(out_loc, "rewind", [(cid, ref.checkpoint_id) for cid in measured])
        write_errors(out_loc, summary.errors)
        if summary.ok:
            ledger.add(key, "rewind", written, {"rows": summary.rows})
            ledger.save()
    return summary


def _write_rows(
    swaps: list[RewindResult], base: dict[str, RewindResult], ref_base: RewindResult | None, summary: RewindSummary
) -> None:
    """One `rewind` row per successful swap: its mAP against its own baseline's."""
    for result in swaps:
        if result.errors:
            continue
        own = ref_base if result.target.direction == "into_reference" else base[result.path]
        if own is None or own.map50_95 is None:
            continue
        t = result.target
        row = {
            "checkpoint_id": result.checkpoint_id, "reference_id": result.reference_id,
            "dataset_id": summary.dataset_id, "layer": t.layer, "group": t.group, "direction": t.direction,
            "map50_95": result.map50_95, "map50": result.map50, "baseline_map50_95": own.map50_95,
            "delta_map50_95": result.map50_95 - own.map50_95, "seconds": result.seconds,
        }  # fmt: skip
        key = rewind_key(result.checkpoint_id, result.reference_id, summary.dataset_id, t.label)
        files.write(summary.out, "rewind", key, {k: [v] for k, v in row.items()})
        clear_errors(summary.out, result.path, ("rewind",))
        summary.rows += 1


def in_study(inputs: StudyInputs) -> RewindSummary:
    """Each run's last snapshot against the base, every layer with parameters, on the study's validation data."""
    if inputs.reference is None:
        raise AuditError("rewind needs the base the runs started from; the study has none", path=inputs.out.uri)
    opts = RewindOptions(imgsz=inputs.imgsz, batch=inputs.batch)
    print(f"[rewind] {len(inputs.last)} runs' last snapshots, each layer reset to the base", file=inputs.stream)
    return analyze_rewind(inputs.last, inputs.reference, inputs.data, inputs.out, opts=opts, stream=inputs.stream)
