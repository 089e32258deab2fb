"""Small jobs in process, incremental reruns (the ledger) and compaction: the same numbers every way, nothing
recomputed that is already written, and a compacted store that reads the same (even when compaction is interrupted)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import moved, save

from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.errors import AuditError
from yolo_audit.results import compact as compact_module
from yolo_audit.results import files
from yolo_audit.results.compact import compact, view
from yolo_audit.results.location import locate
from yolo_audit.results.store import open_results, scan
from yolo_audit.runtime.tasks import choose_engine

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, base_model):
    root = tmp_path_factory.mktemp("incremental")
    base = save(base_model, root / "base.pt", name="base")
    runs = [save(moved(base_model, s), root / "runs" / f"r{s}" / "weights" / "last.pt", name=f"r{s}") for s in (1, 2)]
    return root, base, runs


def _frames(out) -> dict[str, pl.DataFrame]:
    return {t: f.collect() for t, f in open_results(out).items() if t != "ledger"}


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    keys = [c for c, t in frame.schema.items() if not isinstance(t, pl.List)]
    return frame.sort(keys, nulls_last=True)


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.parquet") if "ledger" not in p.parts}


def _run(root, base, out, *, force=False, engine="local", num_cpus=None):
    stream = io.StringIO()
    summary = analyze_weights([root / "runs"], out, reference=base, trajectory=True, pairwise=True, engine=engine,
                              force=force, stream=stream, num_cpus=num_cpus)  # fmt: skip
    assert summary.ok, summary.errors
    return summary, stream.getvalue()


def test_in_process_equals_ray(ckpts, tmp_path, ray_local):
    """The same bits on Ray (a task per worker, one thread each), in process with tasks side by side in two forked
    worker processes (one thread each), and in process one after another."""
    root, base, _ = ckpts
    _run(root, base, tmp_path / "local", engine="local", num_cpus=2)
    _run(root, base, tmp_path / "sequential", engine="local", num_cpus=1)
    _run(root, base, tmp_path / "ray", engine="ray")
    local, on_ray = _frames(tmp_path / "local"), _frames(tmp_path / "ray")
    sequential = _frames(tmp_path / "sequential")
    assert local.keys() == on_ray.keys() == sequential.keys() and "weight_divergence" in local
    for table in local:
        assert _sorted(local[table]).equals(_sorted(on_ray[table])), table
        assert _sorted(local[table]).equals(_sorted(sequential[table])), table


def test_rerun_skips_what_is_written_and_force_recomputes(ckpts, tmp_path, base_model):
    root, base, runs = ckpts
    out = tmp_path / "out"
    _run(root, base, out)
    first, before = _frames(out), _mtimes(out)
    summary, log = _run(root, base, out)
    assert "3 of 3 already done" in log and "[compare]" in log
    assert _mtimes(out) == before  # nothing recomputed, not even rewritten
    assert summary.reference_id == first["checkpoints"].filter(pl.col("run") == "base")["checkpoint_id"][0]
    # one checkpoint changes: only its own tasks run again
    save(moved(base_model, 9), runs[0], name="r1")
    _, log = _run(root, base, out)
    assert "2 of 3 already done" in log
    after = _mtimes(out)
    assert len(after) > len(before)  # the new content's rows, beside the old content's (never rewritten)
    assert all(after[k] == before[k] for k in before)
    _, log = _run(root, base, out, force=True)
    assert "already done" not in log
    forced = _mtimes(out)
    gone = first["checkpoints"].filter(pl.col("run") == "r1")["checkpoint_id"][0]  # r1's earlier content
    records = ("checkpoints/", "analysed_against/")  # merged or written once: not results that --force recomputes
    assert all(forced[k] != after[k] for k in after if not k.startswith(records) and gone not in k)
    final = _frames(out)
    stats = final["weight_stats"].join(final["checkpoints"].select("checkpoint_id", "run"), on="checkpoint_id")
    assert stats.group_by("checkpoint_id").len()["len"].n_unique() == 1  # no checkpoint has its rows twice


def test_cli_small_job_runs_without_ray(ckpts, tmp_path):
    root, base, _ = ckpts
    code = (
        "import sys, io\n"
        "from yolo_audit.analyses.weights.plan import analyze_weights\n"
        f"s = analyze_weights([{str(root / 'runs')!r}], {str(tmp_path / 'o')!r}, reference={str(base)!r},"
        " stream=io.StringIO())\n"
        "assert s.ok, s.errors\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"  # auto: no --address, no Ray running: in process, Ray never imported


def test_engine_choice_errors():
    assert choose_engine(None) in ("local", "ray")
    assert choose_engine("auto") == "ray"
    with pytest.raises(AuditError, match="--engine local runs in this process"):
        choose_engine("auto", "local")
    with pytest.raises(AuditError, match="unknown engine"):
        choose_engine(None, "dask")


def _query(out) -> dict[str, pl.DataFrame]:
    return {t: _sorted(f) for t, f in _frames(out).items()}


def test_compaction_reads_the_same_and_survives_interruption(ckpts, tmp_path, monkeypatch):
    root, base, runs = ckpts
    out = tmp_path / "out"
    _run(root, base, out)
    before = _query(out)
    loc = locate(out)
    n_files = len(view(loc.child("weight_stats")).plain)
    assert n_files == 3

    # interrupted after the compacted file is written, before anything it covers is deleted
    def killed(folder, sources):
        raise OSError("kill")

    monkeypatch.setattr(compact_module, "_delete_covered", killed)
    with pytest.raises(OSError, match="kill"):
        compact(loc)
    monkeypatch.undo()
    v = view(loc.child("checkpoints"))
    assert v.compacted and not v.plain  # leftovers are recognised as covered: no row twice
    partial = _query(out)
    for table, frame in before.items():
        assert partial[table].equals(frame), table
    merged = compact(loc)  # finishes: every table one file
    assert merged
    for table in before:
        names = [p.name for p in (out / table).glob("*.parquet")]
        assert len(names) == 1 and names[0].startswith("compact-"), (table, names)
    after = _query(out)
    for table, frame in before.items():
        assert after[table].equals(frame), table
    # a rerun after compaction skips (the ledger finds the rows inside compacted files) ...
    _, log = _run(root, base, out)
    assert "3 of 3 already done" in log
    # ... and a forced rerun replaces rows without doubling them
    _run(root, base, out, force=True)
    forced = _query(out)
    for table, frame in before.items():
        assert forced[table].equals(frame), table
    # removing a key's rows works inside a compacted file too (an empty file of that key overrides them)
    compact(loc)
    cid = before["checkpoints"]["checkpoint_id"][0]
    files.remove(loc, "weight_stats", cid)
    left = scan(out, "weight_stats").collect()
    assert (
        cid not in set(left["checkpoint_id"])
        and left.height == before["weight_stats"].height - (before["weight_stats"]["checkpoint_id"] == cid).sum()
    )
    assert files.purge(loc, {before["checkpoints"]["checkpoint_id"][1]}) > 0
    purged = _query(out)
    assert before["checkpoints"]["checkpoint_id"][1] not in set(purged["weight_stats"]["checkpoint_id"])
    assert purged["checkpoints"].height == before["checkpoints"].height - 1


def test_compact_command(ckpts, tmp_path):
    from typer.testing import CliRunner

    from yolo_audit.cli import app

    root, base, _ = ckpts
    out = tmp_path / "out"
    _run(root, base, out)
    result = CliRunner().invoke(app, ["compact", "--results", str(out)])
    assert result.exit_code == 0, result.output
    assert "weight_stats (3 files)" in result.output
    again = CliRunner().invoke(app, ["compact", "--results", str(out)])
    assert "nothing to merge" in again.output
    missing = CliRunner().invoke(app, ["compact", "--results", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no results here" in missing.output
    assert not (tmp_path / "nowhere").exists()  # nothing created


def test_activations_rerun_skips_per_checkpoint_and_force_recomputes(ckpts, tmp_path):
    from yolo_audit.analyses.activations.job import ActivationOptions
    from yolo_audit.analyses.activations.plan import analyze_activations
    from yolo_audit.study.synth import make_dataset

    root, base, runs = ckpts
    data = make_dataset(tmp_path / "data", images=4, imgsz=64, seed=3)
    opts = ActivationOptions(imgsz=64, batch=2, maps=1)
    out = tmp_path / "out"

    def run(paths, force=False):
        stream = io.StringIO()
        summary = analyze_activations(paths, data, out, reference=base, opts=opts, engine="local", force=force,
                                      stream=stream)  # fmt: skip
        assert summary.ok, summary.errors
        return summary, stream.getvalue()

    first, _ = run([runs[1]])
    before = _mtimes(out)
    again, log = run([runs[1]])
    assert "2 of 2 already done" in log and _mtimes(out) == before  # nothing measured, nothing written
    assert again.checkpoint_ids == first.checkpoint_ids and sorted(again.analysed) == sorted(first.analysed)
    # a new checkpoint: only it (and the reference, whose statistics give newly_dead) is measured
    more, log = run([runs[0], runs[1]])
    assert "2 of 3 already done" in log and len(more.checkpoint_ids) == 3
    after = _mtimes(out)
    ids = {str(Path(p)): cid for p, cid in zip([runs[0], runs[1]], _ids(out, [runs[0], runs[1]]), strict=True)}
    old = [k for k in before if ids[str(runs[1])] in k]
    assert old and all(after[k] == before[k] for k in old)  # the skipped checkpoint's files are untouched
    maps = scan(out, "feature_maps").collect()
    channels = maps.group_by("checkpoint_id").agg(pl.col("channel").unique().sort()).sort("checkpoint_id")
    assert channels["channel"].to_list()[0] == channels["channel"].to_list()[-1]  # the same channels for every map
    _, log = run([runs[0], runs[1]], force=True)
    assert "already done" not in log
    assert all(v != after[k] for k, v in _mtimes(out).items() if k.startswith("channel_stats/"))


def _ids(out, paths) -> list[str]:
    rows = scan(out, "checkpoints").select("checkpoint_id", "aliases").collect()
    where = {alias: cid for cid, aliases in rows.iter_rows() for alias in aliases}
    return [where[str(p)] for p in paths]


def test_similarity_rerun_skips_and_force_recomputes(ckpts, tmp_path):
    from yolo_audit.analyses.similarity.plan import SimilarityOptions, analyze_similarity
    from yolo_audit.study.synth import make_dataset

    root, base, runs = ckpts
    data = make_dataset(tmp_path / "data", images=8, imgsz=64, seed=4)
    opts = SimilarityOptions(imgsz=64, batch=4)
    out = tmp_path / "out"

    def run(force=False):
        stream = io.StringIO()
        summary = analyze_similarity([base, *runs], data, out, opts=opts, split="train", engine="local", force=force,
                                     stream=stream)  # fmt: skip
        assert summary.ok, summary.errors
        return summary, stream.getvalue()

    first, _ = run()
    before = _mtimes(out)
    again, log = run()
    assert "already done" in log and _mtimes(out) == before
    assert again.pairs == first.pairs and again.by_group.equals(first.by_group)
    _, log = run(force=True)
    assert "already done" not in log
    assert all(v != before[k] for k, v in _mtimes(out).items() if k.startswith("similarity/"))
