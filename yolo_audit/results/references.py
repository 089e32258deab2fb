"""One reference per answer: which reference each checkpoint was analysed against (`analysed_against`), and which
rows of a comparison an answer shows (`--against`).

- `reference` (the default): each checkpoint against the reference it was analysed against: the `--reference` of
  `weights`, `activations` or `rewind`, a study's base, the first checkpoint of `similarity`. Rows against other
  runs or epochs (`--pairwise`, `--trajectory`) stay in the tables and are left out of the answer.
- `all`: every comparison in the tables.
- a checkpoint: its id (or the id's start), its label (`ft_free@3`, or a run's name for its last checkpoint), or a
  file (a path, a URI, or a file name such as `yolov8s.pt`): the rows against it.

Where nothing was recorded (stores written before 2026-12-04, or checkpoints compared only pairwise), the answer's
reference is the one most comparisons were made against: one reference for the whole answer.
"""

from __future__ import annotations

import polars as pl

from yolo_audit.errors import AuditError
from yolo_audit.results.labels import checkpoint_labels, file_name
from yolo_audit.results.location import Where
from yolo_audit.results.store import scan, tables

TABLE = "analysed_against"


def own_pairs(out: Where, analysis: str = "weights") -> pl.LazyFrame | None:
    """(checkpoint_id, reference_id) pairs `analysis` recorded; None where it recorded none (a store written before
    the table existed, or checkpoints analysed without a --reference)."""
    if TABLE not in tables(out):
        return None
    recorded = scan(out, TABLE).filter(pl.col("analysis") == analysis).select("checkpoint_id", "reference_id")
    return recorded.unique() if recorded.head(1).collect().height else None


def main_reference(out: Where) -> str | None:
    """The reference most checkpoints were analysed against (by `weights`; in an older store, the one most freeze
    verdicts compare against): the base of a study, the report's `base`."""
    pairs = own_pairs(out)
    if pairs is not None:
        counts = pairs.group_by("reference_id").len().sort("len", "reference_id", descending=[True, False]).collect()
        if counts.height:
            return counts["reference_id"][0]
    if "layer_freeze" not in tables(out):
        return None
    counts = (
        scan(out, "layer_freeze").group_by("reference_id").len()
        .sort("len", "reference_id", descending=[True, False]).collect()
    )  # fmt: skip
    return counts["reference_id"][0] if counts.height else None


def select(frame: pl.LazyFrame, out: Where, against: str = "reference", analysis: str = "weights") -> pl.LazyFrame:
    """The rows of `frame` (with checkpoint_id and reference_id) that answer against `against`."""
    if against == "all":
        return frame
    if against != "reference":
        return frame.filter(pl.col("reference_id") == resolve(out, against))
    pairs = own_pairs(out, analysis)
    if pairs is None:
        reference = main_reference(out)
        return frame if reference is None else frame.filter(pl.col("reference_id") == reference)
    return frame.join(pairs, on=["checkpoint_id", "reference_id"], how="semi")


def select_passes(frame: pl.LazyFrame, out: Where, against: str = "reference") -> pl.LazyFrame:
    """Rows over images (channel_stats) of the checkpoints whose newly_dead and revived compare against `against`:
    each checkpoint's own --reference by default (one per pass: nothing to leave out), with a checkpoint, those
    measured against it and the checkpoint itself."""
    if against in ("reference", "all"):
        return frame
    reference = resolve(out, against)
    passes = scan(out, "activation_passes")
    if "reference_id" not in passes.collect_schema().names():
        raise AuditError("this store records no activation references (written before 2026-12-04); rerun "
                         "`yolo-audit activations` or use --against reference", path=str(out))  # fmt: skip
    measured = passes.filter((pl.col("reference_id") == reference) | (pl.col("checkpoint_id") == reference))
    return frame.join(measured.select("checkpoint_id", "dataset_id").unique(), on=["checkpoint_id", "dataset_id"],
                      how="semi")  # fmt: skip


def describe(out: Where, against: str = "reference", analysis: str = "weights") -> str:
    """What the answer compares against, in a line the rankings print above their table."""
    names = _labels(out)
    if against == "all":
        return "Against: every comparison in the tables (each row's reference_id)."
    if against != "reference":
        cid = resolve(out, against)
        return f"Against: {names.get(cid, cid[:8])} ({cid[:8]}), as asked (--against)."
    if analysis == "activations" and "activation_passes" in tables(out):
        passes = scan(out, "activation_passes")
        if "reference_id" in passes.collect_schema().names():
            pairs = passes.select("checkpoint_id", "reference_id").drop_nulls().unique()
        else:
            pairs = None
    else:
        pairs = own_pairs(out, analysis)
    if pairs is None:
        reference = main_reference(out)
        if reference is None:
            return "Against: no reference recorded in these results."
        return f"Against: {names.get(reference, reference[:8])} ({reference[:8]}), the reference most comparisons use."
    counts = pairs.group_by("reference_id").agg(pl.len()).sort("len", descending=True).collect()
    parts = [f"{names.get(r, r[:8])} ({r[:8]}) for {n} checkpoint{'s' * (n > 1)}" for r, n in counts.iter_rows()]
    return "Against: each checkpoint's own reference: " + ", ".join(parts) + "."


def resolve(out: Where, text: str) -> str:
    """The checkpoint id `--against` names (see the module's docstring); one line naming the choices otherwise."""
    rows = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch", "path", "aliases").collect()
    ids = rows["checkpoint_id"].to_list()
    labels = _labels(out, rows)
    last = rows.sort("epoch", nulls_last=False).group_by("run", maintain_order=True).last().drop_nulls("run")
    files = {cid: {p for p in [path, *(aliases or [])] if p} for cid, path, aliases in
             rows.select("checkpoint_id", "path", "aliases").iter_rows()}  # fmt: skip
    for matches in (
        [c for c in ids if c == text],
        [c for c, label in labels.items() if label == text],
        [c for c, run in last.select("checkpoint_id", "run").iter_rows() if run == text],
        [c for c, paths in files.items() if text in paths or any(p.endswith(f"/{text}") for p in paths)],
        [c for c in ids if len(text) >= 4 and c.startswith(text)],
        [c for c, paths in files.items() if any(file_name(p) == text for p in paths)],
    ):
        found = sorted(set(matches))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            shown = ", ".join(labels.get(c, c[:8]) for c in found[:4])
            raise AuditError(f"--against {text!r} matches {len(found)} checkpoints ({shown}); give one id or label",
                             path=str(out))  # fmt: skip
    raise AuditError(f"--against {text!r} matches no checkpoint; use reference, all, a checkpoint id (or its start), "
                     "a label such as ft_free@3, a run name, or a file", path=str(out))  # fmt: skip


def _labels(out: Where, rows: pl.DataFrame | None = None) -> dict[str, str]:
    if rows is None:
        if "checkpoints" not in tables(out):
            return {}
        rows = scan(out, "checkpoints").select("checkpoint_id", "run", "epoch", "path").collect()
    return checkpoint_labels(rows.select("checkpoint_id", "run", "epoch", "path").iter_rows(named=True))
