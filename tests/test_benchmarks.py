"""Every benchmark script runs end to end in its `--quick` mode and ends with its JSON line, so none can rot again
(benchmarks/rank.py once broke when columns were added and nobody noticed). The figures of a quick run mean nothing;
the goals are met by the full runs (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HELPERS = {"common.py", "handwritten_weights.py"}  # imported or run by the benchmarks, not benchmarks themselves
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)


def test_every_benchmark_is_run_here():
    assert {"activations.py", "fanout.py", "rank.py", "similarity.py", "small_jobs.py", "store.py",
            "weights.py"} <= set(SCRIPTS)  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_prints_its_json_line(script):
    run = subprocess.run([sys.executable, script, "--quick"], cwd=BENCHMARKS, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == script.removesuffix(".py"), result
