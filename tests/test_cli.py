"""CLI wiring: one-line errors and exit codes, the schema documentation, the README kept in sync with the schema."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from conftest import save, save_state_dict
from typer.testing import CliRunner

from yolo_audit.cli import app
from yolo_audit.results import files, schema
from yolo_audit.results.columns import F64, B, S
from yolo_audit.results.location import locate

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_missing_path_is_one_line_and_exit_1(tmp_path):
    result = runner.invoke(app, ["weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "nope.pt" in result.stderr and "Traceback" not in result.output


def test_folder_without_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["weights", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no *.pt or *.safetensors" in result.stderr


def test_bad_reference_is_fatal_with_a_clear_line(tmp_path, model):
    good = save_state_dict(model, tmp_path / "a.pt")
    ref = tmp_path / "ref.pt"
    ref.write_bytes(b"")
    result = runner.invoke(app, ["weights", str(good), "--out", str(tmp_path / "o"), "--reference", str(ref)])
    assert result.exit_code == 1 and "ref.pt" in result.stderr and "empty" in result.stderr


def test_weights_command_with_a_bad_file_completes_the_others_and_exits_1(tmp_path, model, ray_local):
    folder = tmp_path / "c"
    ref = save(model, folder / "base.pt", name="base")
    save_state_dict(model, folder / "copy.pt")
    (folder / "broken.pt").write_bytes(b"PK\x03\x04garbage")
    out = tmp_path / "out"
    result = runner.invoke(app, ["weights", str(folder), "--out", str(out), "--reference", str(ref)])
    assert result.exit_code == 1, result.output
    assert "Freeze verification" in result.stdout and "broken.pt" in result.stderr
    assert pl.read_parquet(out / "checkpoints" / "*.parquet").height == 2
    assert pl.read_parquet(out / "errors" / "*.parquet")["stage"].to_list() == ["load"]


def test_convert_to_safetensors(tmp_path, model):
    src = save(model, tmp_path / "m.pt", freeze=3)
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0 and (tmp_path / "m.safetensors").exists()
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "m.bin")])
    assert result.exit_code == 1 and ".safetensors" in result.stderr


def test_schema_command_prints_the_schema_page():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == (ROOT / "docs" / "schema.md").read_text()


def test_write_validates_columns_and_is_atomic(tmp_path):
    import pytest

    out = locate(tmp_path)
    with pytest.raises(KeyError, match="missing"):
        files.write(out, "errors", "k", {"path": ["x"]})
    files.write(out, "errors", "k", {"path": ["x"], "stage": ["s"], "error_type": ["E"], "message": ["m"]})
    files.write(out, "errors", "k", {"path": ["y"], "stage": ["s"], "error_type": ["E"], "message": ["m"]})
    assert pl.read_parquet(tmp_path / "errors" / "*.parquet")["path"].to_list() == ["y"]
    assert [p.name for p in (tmp_path / "errors").iterdir()] == ["k.parquet"]
    with pytest.raises(ValueError):
        files.write(out, "errors", "../escape", {"path": [], "stage": [], "error_type": [], "message": []})


def test_measured_floats_are_written_without_dictionary_pages(tmp_path):
    import pyarrow.parquet as pq

    names = schema.columns("channel_stats")
    rows = {n: [0.5, 0.25] if t == F64 else [False, True] if t == B else [1, 2] if t != S else
            ["a", "a"] for n, t, _ in schema.TABLES["channel_stats"]}  # fmt: skip
    path = files.write(locate(tmp_path), "channel_stats", "k", rows)
    chunks = pq.ParquetFile(path.removeprefix("file://")).metadata.row_group(0)
    encodings = {chunks.column(i).path_in_schema: chunks.column(i).encodings for i in range(len(names))}
    assert "RLE_DICTIONARY" in encodings["checkpoint_id"] and "RLE_DICTIONARY" in encodings["layer"]
    assert "RLE_DICTIONARY" not in encodings["mean"] and "PLAIN" in encodings["mean"]
    assert pl.read_parquet(path.removeprefix("file://"))["mean"].to_list() == [0.5, 0.25]


def test_purge_removes_every_tables_rows_of_a_retrained_checkpoint(tmp_path):
    """Every table with checkpoint ids: files keyed by the checkpoint (alone, compared, binned on its bins, measured on
    a dataset) and similarity files that hold a row of it go; everything about other checkpoints stays."""
    gone, kept, data = "a" * 16, "b" * 16, "d" * 16

    def rows(table: str, **fixed: str) -> dict[str, list]:
        plain = {S: kept, B: False}
        return {n: [fixed.get(n, None if t not in plain and str(t).startswith("list") else plain.get(t, 1))]
                for n, t, _ in schema.TABLES[table]}  # fmt: skip

    out = locate(tmp_path)
    expected_gone = 0
    for table, fields in schema.TABLES.items():
        names = [n for n, _, _ in fields]
        if "checkpoint_id" in names:
            if table == "analysed_against":
                pattern = "{}-vs-" + kept + "-weights"
            elif "reference_id" in names:
                pattern = "{}-vs-" + kept
            elif table == "weight_hist":
                pattern = "{}-ref-" + kept
            else:
                pattern = "{}-" + data if "dataset_id" in names else "{}"
            for cid in (gone, kept):
                files.write(out, table, pattern.format(cid), rows(table, checkpoint_id=cid))
            expected_gone += 1
    files.write(out, "weight_divergence", f"{kept}-vs-{gone}", rows("weight_divergence"))  # gone as the reference
    files.write(out, "weight_hist", f"{kept}-ref-{gone}", rows("weight_hist"))  # bins from gone
    for key, a, b in ((f"{data}-h1-avg", gone, kept), (f"{data}-h2-avg", kept, kept)):
        files.write(out, "similarity", key, rows("similarity", checkpoint_a=a, checkpoint_b=b))
    files.write(out, "errors", f"load-{gone}", rows("errors"))  # keyed by a path hash: names no checkpoint
    files.write(out, "runs", "none-s0", rows("runs"))
    assert expected_gone == 14  # checkpoints, analysed_against, weights (6), activations (4), rewind, interpolation
    assert files.purge(out, {gone}) == expected_gone + 3
    left = [p for p in tmp_path.glob("*/*.parquet")]
    assert all(gone not in p.name for p in left if p.parent.name != "errors")
    assert sorted(p.name for p in (tmp_path / "similarity").iterdir()) == [f"{data}-h2-avg.parquet"]
    assert (tmp_path / "channel_stats" / f"{kept}-{data}.parquet").exists()
    assert (tmp_path / "runs" / "none-s0.parquet").exists() and (tmp_path / "errors").is_dir()


def test_notebook_api_is_exported():
    import yolo_audit

    assert callable(yolo_audit.analyze_weights) and callable(yolo_audit.open_results)
    assert yolo_audit.AuditError.__name__ == "AuditError"


def test_study_dry_run_and_bad_study_file(tmp_path):
    result = runner.invoke(app, ["study", str(ROOT / "workflows" / "coco128-freeze.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "freeze-backbone-callback-s2" in result.stderr and "1 GPU" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: yolov8n.yaml\ndata: {synthetic: {}}\nvariants: [{name: a, freeze: 99}]\n")
    result = runner.invoke(app, ["study", str(bad)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "variants[0].freeze: freeze=99 is impossible" in result.stderr and str(bad) in result.stderr


def test_make_data_command(tmp_path):
    result = runner.invoke(app, ["make-data", str(tmp_path / "d"), "--images", "4", "--imgsz", "32", "--domain", "B"])
    assert result.exit_code == 0 and (tmp_path / "d" / "data.yaml").exists()
    result = runner.invoke(app, ["make-data", str(tmp_path / "e"), "--domain", "C"])
    assert result.exit_code == 1 and "unknown domain 'C'" in result.stderr


def test_user_errors_are_one_line(tmp_path, model):
    """An Ultralytics dataset name offline, a yaml without the split, a report --out that is a folder, and rank
    dead-units on a store without activations: one line each, exit code 1, no traceback."""
    ckpt = save(model, tmp_path / "a.pt")
    out = runner.invoke(app, ["activations", str(ckpt), "--data", "coco128.yaml", "--out", str(tmp_path / "o")])
    assert out.exit_code == 1 and "looked in" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "noval.yaml").write_text("path: .\ntrain: images\nnames: {0: a}\n")
    out = runner.invoke(app, ["activations", str(ckpt), "--data", str(tmp_path / "noval.yaml"), "--out", str(tmp_path)])
    assert out.exit_code == 1 and "has no `val` split; use --split with one of ['train']" in out.stderr
    files.write(locate(tmp_path / "r"), "errors", "k", {"path": ["x"], "stage": ["s"], "error_type": ["E"],
                                                       "message": ["m"]})  # fmt: skip
    out = runner.invoke(app, ["report", "--results", str(tmp_path / "r"), "--out", str(tmp_path)])
    assert out.exit_code == 1 and "is a folder; pass the report's file name" in out.stderr
    out = runner.invoke(app, ["rank", "dead-units", "--results", str(tmp_path / "r")])
    assert out.exit_code == 1 and "run `yolo-audit activations" in out.stderr
    assert all(len(line.splitlines()) == 1 for line in [out.stderr.strip()])


def _leaves(group, prefix: str = "") -> dict:
    """Every command of a click group, as typed after `yolo-audit` (`rank dead-units`)."""
    out = {}
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        out.update(_leaves(cmd, path + " ") if hasattr(cmd, "commands") else {path: cmd})
    return out


CLI_ONLY = {"query": {"fmt"}}  # how a frame is printed, not what is computed


def test_every_command_has_its_api_function_with_the_same_options():
    """One function per command, exported from `yolo_audit`, taking each of the command's parameters by the same
    name with the same default (the command forwards its parameters to it, so they cannot drift)."""
    import inspect

    import typer

    import yolo_audit
    from yolo_audit import api

    commands = _leaves(typer.main.get_command(app))
    assert set(commands) == set(api.COMMANDS), set(commands) ^ set(api.COMMANDS)
    for path, cmd in commands.items():
        name = api.COMMANDS[path]
        fn = getattr(api, name)
        assert getattr(yolo_audit, name) is fn and name in yolo_audit.__all__, name
        params = inspect.signature(fn).parameters
        for p in cmd.params:
            if p.name in CLI_ONLY.get(path, ()):
                continue
            assert p.name in params, (path, p.name)
            if not p.required:
                default = params[p.name].default
                assert str(default) == str(p.default), (path, p.name, default, p.default)


def test_the_api_gives_the_commands_one_line_errors(tmp_path, model):
    import pytest

    import yolo_audit
    from yolo_audit.errors import AuditError

    ckpt = save(model, tmp_path / "a.pt")
    with pytest.raises(AuditError, match="--depth must be modules or leaves"):
        yolo_audit.analyze_activations([ckpt], tmp_path, tmp_path / "o", depth="deep")
    with pytest.raises(AuditError, match="no results tables here"):
        yolo_audit.write_report(tmp_path / "nothing", tmp_path / "r.html")
    with pytest.raises(AuditError, match="must end in .safetensors"):
        yolo_audit.convert(ckpt, tmp_path / "a.bin")
    written = yolo_audit.convert(ckpt, tmp_path / "a.safetensors")
    assert written.exists() and yolo_audit.load_checkpoint(written).checkpoint_id


def test_one_app_has_every_command_under_python_m():
    """`python -m yolo_audit` and `python -m yolo_audit.cli` list every command (study, demo, make-data and convert
    were once registered on another module object), and cli_study does not import cli back."""
    import subprocess
    import sys

    import typer

    names = set(typer.main.get_command(app).commands)
    assert {"study", "demo", "make-data", "convert", "weights", "rank"} <= names
    for module in ("yolo_audit", "yolo_audit.cli"):
        shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                               env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        listed = {line.split()[1] for line in shown.stdout.splitlines() if line.startswith("│ ") and line.split()[1:]}
        assert names <= listed, (module, names - listed)
    alone = "import sys, yolo_audit.cli_study; assert 'yolo_audit.cli' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", alone], timeout=60).returncode == 0
