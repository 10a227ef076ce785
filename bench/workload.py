"""What the benchmarks without a stack share: the generator's observations, as Kafka records in
Spark, and a median of timed runs."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.generator import encode, make_patients, readings, window


def generator_observations(count: int, patients: int = 200) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs as the generator publishes them: a normotensive cohort of
    ``patients``, 4 readings a day each, over as many days as it takes, up to 2026-03-01."""
    start, end = window("", "2026-03-01T00:00:00+00:00", -(-count // (patients * 4)))
    cohort = make_patients(patients, 42, {"normotensive": 1.0})
    return [encode(r) for _, r in zip(range(count), readings(cohort, start, end, 4, 42, 0.01, 0.02))]


def cached_kafka_records(spark: SparkSession, values: list[bytes], partitions: int | None = None) -> DataFrame:
    """``values`` as the Kafka source's columns (value, topic, partition, offset, timestamp), cached
    in Spark: read from a file by the JVM alone (no Python workers), in ``partitions`` when given."""
    with tempfile.TemporaryDirectory(prefix="bp-bench-") as folder:
        lines = Path(folder) / "observations.jsonl"
        lines.write_bytes(b"\n".join(values) + b"\n")
        kafka_df = spark.read.text(str(lines)).select(
            F.col("value").cast("binary").alias("value"), F.lit("t").alias("topic"), F.lit(0).alias("partition"),
            F.monotonically_increasing_id().alias("offset"), F.current_timestamp().alias("timestamp"))
        kafka_df = (kafka_df if partitions is None else kafka_df.repartition(partitions)).cache()
        kafka_df.count()  # read before the file goes
    return kafka_df


def median_seconds(action: Callable[[int], object], repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``action(run_index)``."""
    runs = []
    for i in range(repeats):
        started = time.perf_counter()
        action(i)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)
