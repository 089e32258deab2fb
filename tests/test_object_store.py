"""A real S3 API on localhost (moto's server, started and stopped here) used through the CLI as a cluster user does:
checkpoints and the reference read from s3://, --out s3://, then rank, query, report and compact reading
--results s3://; the tables equal those of the same command on local folders."""

from __future__ import annotations

import os

import polars as pl
import pyarrow.fs as pafs
import pytest
from conftest import moved, save
from s3server import start, upload
from typer.testing import CliRunner

from yolo_audit.cli import app
from yolo_audit.results.store import open_results


@pytest.fixture(scope="module")
def s3():
    try:
        server, env, fs = start("audit")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield fs
    server.terminate()
    server.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def test_cli_reads_and_writes_s3(s3, tmp_path, base_model):
    local = tmp_path / "ckpts"
    save(base_model, local / "base.pt", name="base")
    save(moved(base_model, 1, first=15), local / "r1" / "weights" / "last.pt", name="r1")
    upload(s3, local, "audit/ckpts")
    _cli("weights", "s3://audit/ckpts", "--reference", "s3://audit/ckpts/base.pt", "--out", "s3://audit/res",
         "--engine", "local")  # fmt: skip
    _cli("weights", str(local), "--reference", str(local / "base.pt"), "--out", str(tmp_path / "res"),
         "--engine", "local")  # fmt: skip
    remote, here = open_results("s3://audit/res"), open_results(tmp_path / "res")
    for table in ("weight_stats", "weight_divergence", "layer_freeze", "channel_weights"):
        keys = [c for c, t in here[table].collect_schema().items() if not isinstance(t, pl.List)]
        assert remote[table].collect().sort(keys).equals(here[table].collect().sort(keys)), table
    paths = remote["checkpoints"].collect()["path"].to_list()
    assert all(p.startswith("s3://audit/ckpts/") for p in paths)  # rows name the URIs users gave
    assert "layer" in _cli("rank", "divergence", "--results", "s3://audit/res")
    counted = _cli("query", "select count(*) as n from checkpoints", "--results", "s3://audit/res", "--format", "csv")
    assert counted.split() == ["n", "2"]
    report = tmp_path / "report.html"
    _cli("report", "--results", "s3://audit/res", "--out", str(report))
    assert 'id="divergence"' in report.read_text()
    assert "compacted" in _cli("compact", "--results", "s3://audit/res")
    assert s3.get_file_info(pafs.FileSelector("audit/res/weight_stats"))[0].base_name.startswith("compact-")
    again = _cli("query", "select count(*) as n from checkpoints", "--results", "s3://audit/res", "--format", "csv")
    assert again == counted
    rerun = CliRunner().invoke(app, ["weights", "s3://audit/ckpts", "--reference", "s3://audit/ckpts/base.pt",
                                     "--out", "s3://audit/res", "--engine", "local"])  # fmt: skip
    assert rerun.exit_code == 0 and "2 of 2 already done" in rerun.output  # the ledger works on S3 and compacted
