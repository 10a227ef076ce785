"""Benchmark of a batch's trend step: its partial windows by a Spark aggregation or on the driver.

    .venv/bin/python bench/trends_bench.py [--sizes 90,1000,5000,20000] [--rounds 7]

No stack needed. Generator observations are parsed and classified once and cached, as a routing
batch holds them; then, for each size (the first N readings), the batch's partial windows are
made both ways and timed, in interleaved rounds after a warm-up, medians:

- Spark: ``collect_partials(partial_windows(...))``, an aggregation with a shuffle (what every
  batch did before);
- the driver: ``partials_of(collect_readings(...))``, one narrow Spark job bringing the readings,
  then Python (what a batch up to ``trends.DRIVER_READINGS`` readings does now).

Each size also checks that both give the same windows (ids, counts, extremes, peaks, patients;
sums to a relative 1e-9: float sums depend on the order of addition).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.workload import cached_kafka_records, generator_observations
from bp_spark.clinical.classify import rules_for, with_classification
from bp_spark.config import load_config
from bp_spark.parse import parse_observations
from bp_spark.session import build_session, stop_session
from bp_spark.trends.merge import partials_of
from bp_spark.trends.step import DRIVER_READINGS
from bp_spark.trends.windows import (TREND_READING_COLUMNS, collect_partials, collect_readings, counts_in_trends,
                                     partial_windows)


def same(spark_windows: list[dict], driver_windows: list[dict]) -> bool:
    """Whether both ways gave the same windows (sums to a relative 1e-9)."""
    a, b = ({w["trend_id"]: w for w in windows} for windows in (spark_windows, driver_windows))
    if a.keys() != b.keys():
        return False
    for trend_id, window in a.items():
        for name, value in window.items():
            other = b[trend_id][name]
            if isinstance(value, float):
                if abs(value - other) > 1e-9 * max(1.0, abs(value)):
                    return False
            elif value != other:
                return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="90,1000,5000,20000", help="readings per batch, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    config = load_config(env={"BP_SECURITY_MODE": "plain"}, stack_env=None)  # no service is reached
    spark = build_session("bp-monitor-trends-bench", {"spark.driver.memory": "4g"})
    spark.sparkContext.setLogLevel("WARN")
    values = [value for _, value in generator_observations(max(sizes))]
    kafka_df = cached_kafka_records(spark, values)
    readings_df = (parse_observations(kafka_df).transform(lambda df: with_classification(df, rules_for(config)))
                   .where(counts_in_trends()).select(*TREND_READING_COLUMNS).localCheckpoint(eager=True))
    kafka_df.unpersist()
    cores = spark.sparkContext.defaultParallelism
    # Each batch checkpointed: its plan is its rows alone, as cheap to plan as a routing batch's
    # frames (a cache under the parser's plan costs every action ~0.4 s to find it again).
    batches = {size: readings_df.limit(size).coalesce(cores).localCheckpoint(eager=True) for size in sizes}
    t = config.trends
    ways = {"Spark aggregation": lambda df: collect_partials(partial_windows(df, t)),
            "driver": lambda df: partials_of(collect_readings(df), t)}
    print(f"trend step of a batch: medians of {args.rounds} interleaved rounds after 2 warm-up rounds, {cores} cores; "
          f"the job uses the driver up to {DRIVER_READINGS:,} readings")
    print(f"  {'readings':>9s} {'windows':>8s} {'Spark':>9s} {'driver':>9s} {'ratio':>6s}  same windows")
    for size, df in batches.items():
        runs: dict[str, list[float]] = {label: [] for label in ways}
        out: dict[str, list[dict]] = {}
        for round_ in range(args.rounds + 2):
            for label, way in ways.items():
                started = time.perf_counter()
                out[label] = way(df)
                if round_ >= 2:
                    runs[label].append(time.perf_counter() - started)
        spark_s, driver_s = (statistics.median(runs[label]) for label in ways)
        print(f"  {size:>9,d} {len(out['driver']):>8,d} {spark_s * 1000:>7.0f} ms {driver_s * 1000:>6.0f} ms "
              f"{spark_s / driver_s:>5.1f}x  {'yes' if same(*out.values()) else 'NO'}", flush=True)
    stop_session(spark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
