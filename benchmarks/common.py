"""What every benchmark shares: `--quick`, a smoke run on tiny inputs (one repeat) that CI runs for every script
(tests/test_benchmarks.py), so none can rot unnoticed. Its figures mean nothing; the goals are met by the full runs."""

from __future__ import annotations

import argparse


def parse(parser: argparse.ArgumentParser, quick: dict[str, object]) -> argparse.Namespace:
    """The script's arguments; with --quick, `quick`'s values replace theirs."""
    shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"smoke run for CI: {shown}")
    args = parser.parse_args()
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    return args
