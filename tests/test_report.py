"""Rankings, SQL and the HTML report on a real (tiny) study; the report opened in headless Chromium."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from copy import deepcopy
from functools import partial

import polars as pl
import pytest
from conftest import run_tiny_study
from typer.testing import CliRunner

from yolo_audit.cli import app
from yolo_audit.errors import AuditError
from yolo_audit.report import write_report
from yolo_audit.results import rank

runner = CliRunner()
SECTIONS = (
    "summary",
    "pairwise",
    "freeze",
    "divergence",
    "distributions",
    "parameter-distributions",
    "trajectories",
    "dead-units",
    "activation-distributions",
    "feature-maps",
    "similarity",
    "training",
    "depth",
    "gradient-flow",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory, ray_local):
    """A two-variant study with every analysis: every table the report can show."""
    tmp = tmp_path_factory.mktemp("report")
    variants = [{"name": "ultra", "freeze": "backbone"}, {"name": "cb", "freeze": "backbone", "strategy": "callback"}]
    summary = run_tiny_study(tmp, tmp / "out", variants=variants, analyses=["weights", "activations", "similarity"])
    assert summary.ok
    return tmp / "out"


def test_rank_dead_units_layer_order_and_criteria(results):
    frame = rank.rank_dead_units(results, by="layer", top=50).collect()
    assert frame.height > 0 and {"run", "rank_in_checkpoint", "frac_dead"} <= set(frame.columns)
    keys = frame.select(
        (-pl.col("newly_dead").cast(pl.Int64)).alias("a"), (-pl.col("dead").cast(pl.Int64)).alias("b")
    ).rows()
    assert keys == sorted(keys)  # newly dead first, then most dead
    channels = rank.rank_dead_units(results, by="channel", criterion="never_positive", top=10).collect()
    assert channels["never_positive"].all()
    with pytest.raises(AuditError, match="unknown criterion"):
        rank.rank_dead_units(results, criterion="sleepy")


def test_rank_divergence_and_drift(results):
    by_layer = rank.rank_divergence(results, by="layer", top=5).collect()
    assert by_layer["rel_l2"].to_list() == sorted(by_layer["rel_l2"].to_list(), reverse=True)
    drift = rank.rank_drift(results).collect()
    assert set(drift["run"]) == {"cb-s0"} and set(drift["layer"]) <= set(range(10)) and drift.height > 0
    assert (drift["max_bn_stat_rel_diff"] > 0).all()
    per_ckpt = rank.rank_divergence(results, by="checkpoint").collect()
    assert {"mean_rel_l2", "most_moved_layer"} <= set(per_ckpt.columns)


def test_rankings_answer_against_each_checkpoints_own_reference(results):
    """The study compares every snapshot with the base, and also the runs' last snapshots pairwise and each epoch
    with the one before: the rankings show only the rows against the base unless asked (--against)."""
    from yolo_audit.results.references import main_reference

    ck = pl.read_parquet(results / "checkpoints" / "*.parquet")
    base = ck.filter(pl.col("run") == "base")["checkpoint_id"][0]
    assert main_reference(results) == base
    ranked = [
        rank.rank_drift(results, top=1000),
        rank.rank_divergence(results, by="param", top=100_000),
        rank.rank_divergence(results, by="layer", top=1000),
        rank.rank_divergence(results, by="checkpoint"),
    ]
    for frame in ranked:
        assert set(frame.collect()["reference_id"]) == {base}
    every = rank.rank_divergence(results, by="layer", top=100_000, against="all").collect()
    assert len(set(every["reference_id"])) > 2  # pairwise and trajectory rows are in the tables all the same
    drift = rank.rank_drift(results, top=1000, against="all").collect()
    assert len(set(drift["reference_id"])) > 1  # cb-s0@2 drifted from cb-s0@1 too: not against the base
    cb = ck.filter(pl.col("run") == "cb-s0").sort("epoch")["checkpoint_id"].to_list()
    for name in ("cb-s0@1", cb[0][:6], "cb-s0/snapshots/epoch0001.safetensors"):
        chosen = rank.rank_divergence(results, by="layer", top=1000, against=name).collect()
        assert set(chosen["reference_id"]) == {cb[0]} and set(chosen["checkpoint_id"]) == {cb[1]}, name
    with pytest.raises(AuditError, match="matches no checkpoint"):
        rank.rank_drift(results, against="nope@9").collect()
    dead = rank.rank_dead_units(results, by="checkpoint", top=100, against="cb-s0").collect()
    assert set(dead["run"]) == {"cb-s0"}  # nothing was measured against cb-s0's last snapshot but itself
    shown = runner.invoke(app, ["rank", "drift", "--results", str(results)])
    assert shown.exit_code == 0 and f"Against: each checkpoint's own reference: base ({base[:8]})" in shown.stdout
    shown = runner.invoke(app, ["rank", "divergence", "--results", str(results), "--against", "all"])
    assert shown.exit_code == 0 and "Against: every comparison" in shown.stdout


def test_freeze_reads_as_plain_values_in_old_and_new_stores(results, tmp_path):
    runs = rank.query(results, "select run from runs where freeze = 'backbone' order by run")
    assert runs["run"].to_list() == ["cb-s0", "ultra-s0"]
    old = tmp_path / "old"
    shutil.copytree(results, old)
    from yolo_audit.results import files
    from yolo_audit.results.location import locate

    runs = rank.query(results, "select * from runs")
    shutil.rmtree(old / "runs")
    for row in runs.iter_rows(named=True):  # as stores before 2026-12-04 wrote it: JSON text
        row["freeze"] = row["freeze"] if row["freeze"].isdigit() else f'"{row["freeze"]}"'
        files.write(locate(old), "runs", row["run"], {k: [v] for k, v in row.items()})
    assert set(pl.read_parquet(old / "runs" / "*.parquet")["freeze"]) >= {'"backbone"'}
    runs = rank.query(old, "select run from runs where freeze = 'backbone' order by run")
    assert runs["run"].to_list() == ["cb-s0", "ultra-s0"]


def test_query_formats_and_errors(results):
    out = runner.invoke(
        app, ["query", "select run, status from runs order by run", "--results", str(results), "--format", "csv"]
    )
    assert out.exit_code == 0 and out.stdout.splitlines() == ["run,status", "base,done", "cb-s0,done", "ultra-s0,done"]
    out = runner.invoke(
        app, ["query", "select count(*) as n from layer_freeze", "--results", str(results), "--format", "json"]
    )
    assert out.exit_code == 0 and '"n"' in out.stdout
    bad = runner.invoke(app, ["query", "select nope from runs", "--results", str(results)])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and "query failed" in bad.stderr
    ranked = runner.invoke(app, ["rank", "drift", "--results", str(results), "--top", "3"])
    assert ranked.exit_code == 0 and "cb-s0" in ranked.stdout


class _Log(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        _Log.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def _render(page, tmp_path) -> tuple[str, list[str]]:
    """The page as headless Chromium lays it out (served from loopback), and every path it requested."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is needed for this test (.ci/run installs it)"
    _Log.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Log, directory=str(page.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{page.name}"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=5000",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,4000"]  # fmt: skip
    try:
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        shot = tmp_path / "shot.png"
        subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    finally:
        server.shutdown()
    assert shot.exists() and shot.stat().st_size > 20_000
    return dom, list(_Log.requests)


def _assert_rendered(page, tmp_path, sections) -> None:
    text = page.read_text()
    for section in sections:
        assert f'<section id="{section}">' in text, section
    assert not re.search(r"(src|href)=.(https?:|//)", text)
    dom, requests = _render(page, tmp_path)
    assert f'data-sections="{len(sections)}"' in dom and 'data-images-loaded="' in dom
    loaded = int(dom.split('data-images-loaded="', 1)[1].split('"', 1)[0])
    assert loaded == text.count("data:image/png;base64,")  # every embedded plot decoded and laid out
    assert set(requests) == {f"/{page.name}"}  # the page itself asked for nothing


def test_report_renders_in_headless_chromium_without_network(results, tmp_path):
    page = write_report(results, tmp_path / "site" / "report.html")
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 7
    assert "BatchNorm statistics drifted" in text  # the callback variant's finding, in words
    assert 'alt="CKA module x module"' in text  # studies measure CKA across layers; one panel per run vs the base
    assert "within 2 standard errors of the chance baseline" in text  # (2 validation images: no CKA value here)
    cells = re.findall(r"<td>([^<]*)</td>", text)
    numbers = [c for c in cells if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", c)]
    assert numbers and all(len(re.sub(r"e.*|[-.]|^0+", "", c).lstrip("0")) <= 4 for c in numbers), numbers[:5]
    _assert_rendered(page, tmp_path, SECTIONS)


def test_report_without_results_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    out = runner.invoke(app, ["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 1 and "no results tables here" in out.stderr


def test_dead_units_are_never_added_across_datasets(results, tmp_path):
    """A checkpoint measured on a second image set: the report shows each dataset apart, the findings name it."""
    from yolo_audit.results import files
    from yolo_audit.results.location import locate

    out = tmp_path / "out"
    shutil.copytree(results, out)
    stats = pl.read_parquet(out / "channel_stats" / "*.parquet")
    other = stats.with_columns(
        dataset_id=pl.lit("e" * 16), newly_dead=pl.lit(True), dormant=pl.lit(True), dead=pl.lit(True)
    )
    for (ckpt,), part in other.group_by("checkpoint_id"):
        files.write(locate(out), "channel_stats", f"{ckpt}-{'e' * 16}", part.to_dict(as_series=False))
    text = write_report(out, tmp_path / "report.html").read_text()
    dead = text.split('<section id="dead-units">', 1)[1].split("</section>", 1)[0]
    first = stats["dataset_id"][0]
    assert f"Dataset {first} (" in dead and f"Dataset {'e' * 16}." in dead  # images known only for the real one
    assert dead.count("data:image/png;base64,") == 2
    assert text.count(f"newly dead vs the base on dataset {'e' * 16}") == 2  # both runs of the fixture, not the base
    assert text.count(f"newly dead vs the base on dataset {first}") <= 2
    per_dataset = rank.rank_dead_units(out, by="checkpoint", top=100).collect()
    assert per_dataset.filter(pl.col("dataset_id") == "e" * 16)["dead"].to_list() == (
        per_dataset.filter(pl.col("dataset_id") == "e" * 16)["units"].to_list()
    )


def test_files_saved_side_by_side_are_each_shown(tmp_path, base_model, ray_local):
    """State dicts in one folder share its name as their run and record no epoch, so each is its run's last
    checkpoint: the report shows every one of them (it had kept one), named apart by their files; the reference
    stays `base`."""
    import io

    from conftest import save_state_dict

    from yolo_audit.analyses.weights.plan import analyze_weights
    from yolo_audit.model.synthetic import perturb
    from yolo_audit.report.findings import Context
    from yolo_audit.results.store import tables

    folder = tmp_path / "same"
    ref = save_state_dict(base_model, folder / "base.pt")
    for i in range(2):
        model = deepcopy(base_model)
        perturb(model, [15 + i], scale=0.05, seed=i)
        save_state_dict(model, folder / f"ft{i}.pt")
    out = tmp_path / "out"
    analyze_weights([folder], out, reference=ref, stream=io.StringIO())
    ctx = Context.load(out, list(tables(out)))
    assert ctx.labels["label"].to_list() == ["base", "same ft0.pt", "same ft1.pt"]
    assert ctx.labels["checkpoint_id"].n_unique() == 3
    assert '<section id="freeze">' in write_report(out, tmp_path / "r.html").read_text()


def test_every_combination_of_tables_renders(tmp_path, base_model, ray_local):
    """A weights-only store (three checkpoints, --pairwise, one broken file), an activations-only store at --depth
    leaves and a similarity-only store each render, with the sections their data allows."""
    import io

    from conftest import save

    from yolo_audit.analyses.activations.job import ActivationOptions
    from yolo_audit.analyses.activations.plan import analyze_activations
    from yolo_audit.analyses.similarity.job import SimilarityOptions
    from yolo_audit.analyses.similarity.plan import analyze_similarity
    from yolo_audit.analyses.weights.plan import analyze_weights
    from yolo_audit.model.synthetic import perturb
    from yolo_audit.study.synth import make_dataset

    ckpts = []
    for i, layers in enumerate(([], [2, 3], [15, 22])):
        model = deepcopy(base_model)
        perturb(model, layers, scale=0.05, seed=i)
        ckpts.append(save(model, tmp_path / f"r{i}" / "weights" / "last.pt", name=f"r{i}"))
    (tmp_path / "r0" / "results.csv").write_text(  # as Ultralytics writes it beside weights/
        "epoch,  metrics/mAP50-95(B),  train/box_loss\n1, 0.10, 2.0\n2, 0.25, 1.5\n"
    )
    broken = tmp_path / "broken" / "weights" / "last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    analyze_weights([*ckpts, broken], tmp_path / "w", pairwise=True, stream=io.StringIO())
    page = write_report(tmp_path / "w", tmp_path / "site" / "w.html")
    text = page.read_text()
    _assert_rendered(page, tmp_path, ["summary", "errors", "pairwise", "freeze", "divergence", "distributions",
                                      "parameter-distributions", "trajectories", "training"])  # fmt: skip
    metrics = pl.read_parquet(tmp_path / "w" / "train_metrics" / "*.parquet")  # recorded, never converted by hand
    assert metrics["run"].to_list() == ["r0", "r0"] and metrics["metrics/mAP50-95(B)"].to_list() == [0.10, 0.25]
    pairwise = text.split('<section id="pairwise">', 1)[1].split("</section>", 1)[0]
    assert "data:image/png;base64," in pairwise and pairwise.count("<tr>") == 1 + 3  # header and three pairs
    assert "broken" in text.split('<section id="errors">', 1)[1].split("</section>", 1)[0]
    images = make_dataset(tmp_path / "data", images=8, imgsz=64, domain="B", seed=4).parent / "images"
    opts = ActivationOptions(imgsz=64, batch=4, depth="leaves", maps=1)
    analyze_activations(ckpts[:2], images, tmp_path / "a", opts=opts, max_images=4, stream=io.StringIO())
    text = write_report(tmp_path / "a", tmp_path / "a.html").read_text()
    assert '<section id="dead-units">' in text and '<section id="feature-maps">' in text
    assert '<section id="activation-distributions">' in text
    analyze_similarity(ckpts[:2], images, tmp_path / "s", opts=SimilarityOptions(imgsz=64, batch=4),
                       stream=io.StringIO())  # fmt: skip
    text = write_report(tmp_path / "s", tmp_path / "s.html").read_text()
    assert '<section id="similarity">' in text and "data:image/png;base64," in text
