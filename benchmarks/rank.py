"""Benchmark: the dead-unit ranking over 10 million `channel_stats` rows, ours (Polars, lazy) vs DuckDB, same files.

Builds a synthetic store laid out as the project writes it (one Parquet file per checkpoint, 1,000 checkpoints x
10,000 channels, through `results.files.write`), then alternates `rank_dead_units(by="layer")` with the same query
in DuckDB SQL, `--repeats` times; medians compared, results checked equal. Also times two lower bounds for any Polars
formulation of this ranking on the same files (a row count, which only opens the 1,000 files, and the group-by on the
three keys with nothing but a row count per group), so the gap to DuckDB can be read off the output. The rows have
every `channel_stats` column (written through the project's schema, which refuses a missing one), and the SQL counts
units only, `dead` being dormant or constant, as the ranking does.
Last line: {"benchmark": "rank", "seconds": S, "ratio": ours_over_duckdb, "goal": 1.0}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import parse

SQL = """
with per_layer as (
  select checkpoint_id, dataset_id, layer, count(*) as units,
         sum(dead::int) as dead, sum(coalesce(newly_dead, false)::int) as newly_dead,
         sum(dormant::int) as dormant, sum(constant::int) as constant, sum(never_positive::int) as never_positive,
         sum(coalesce(revived, false)::int) as revived
  from read_parquet('{glob}', hive_partitioning=true) where unit_kind = 'unit'
  group by checkpoint_id, dataset_id, layer)
select *, dead / units as frac_dead,
       rank() over (partition by checkpoint_id, dataset_id order by dead desc) as rank_in_checkpoint
from per_layer order by newly_dead desc, dead desc, checkpoint_id, dataset_id, layer limit {top}
"""


def build(root: Path, checkpoints: int, channels: int) -> None:
    from yolo_audit.results import files
    from yolo_audit.results.location import locate

    rng = np.random.default_rng(0)
    layers = np.repeat(np.arange(23, dtype=np.int32), -(-channels // 23))[:channels]
    for i in range(checkpoints):
        score = rng.gamma(2.0, 0.5, channels)
        cols = {
            "checkpoint_id": [f"{i:016x}"] * channels, "dataset_id": ["d" * 16] * channels, "layer": layers,
            "module": [f"model.{x}" for x in layers], "channel": np.arange(channels, dtype=np.int32),
            "count": np.full(channels, 1000), "mean": rng.normal(size=channels), "std": rng.random(channels),
            "min": -rng.random(channels), "max": rng.random(channels), "mean_abs": score,
            "frac_positive": rng.random(channels), "dormant_score": score, "dormant": score < 0.05,
            "constant": rng.random(channels) < 0.002, "never_positive": rng.random(channels) < 0.01,
            "newly_dead": rng.random(channels) < 0.001, "revived": rng.random(channels) < 0.001,
            "tau": np.full(channels, 0.025),
            "unit_kind": np.where(layers == 22, "head_output", "unit"),  # the head's logits are never counted
        }  # fmt: skip
        cols["dead"] = cols["dormant"] | cols["constant"]
        files.write(locate(root), "channel_stats", f"{i:016x}-{'d' * 16}", cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=20)
    args = parse(parser, {"checkpoints": 20, "channels": 460, "repeats": 1})
    import duckdb
    import polars as pl

    from yolo_audit.results.rank import rank_dead_units

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build(root, args.checkpoints, args.channels)
        print(f"built {args.checkpoints * args.channels:,} rows in {time.perf_counter() - start:.1f} s")
        glob = f"{root}/channel_stats/*.parquet"

        def ours() -> object:
            return rank_dead_units(root, by="layer", top=args.top).collect()

        def theirs() -> object:
            return duckdb.sql(SQL.format(glob=glob, top=args.top)).pl()

        a, b = ours(), theirs()  # warm-up, and the two must agree
        for column in ("units", "dead", "newly_dead", "revived", "layer"):
            assert a[column].to_list() == b[column].to_list(), column

        def count() -> object:
            return pl.scan_parquet(glob).select(pl.len()).collect()

        def group_len() -> object:
            return pl.scan_parquet(glob).group_by("checkpoint_id", "dataset_id", "layer").len().collect()

        runs = {"ours": ours, "duckdb": theirs, "polars count": count, "polars group len": group_len}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    o, d = statistics.median(times["ours"]), statistics.median(times["duckdb"])
    floor = {name: statistics.median(times[name]) for name in ("polars count", "polars group len")}
    print("lower bounds for Polars: " + ", ".join(f"{name} {s:.3f} s" for name, s in floor.items()))
    print(f"dead-unit ranking by layer: ours {o:.3f} s, DuckDB {d:.3f} s (medians of {args.repeats})")
    print(json.dumps({"benchmark": "rank", "seconds": round(o, 3), "ratio": round(o / d, 3), "goal": 1.0}))


if __name__ == "__main__":
    main()
