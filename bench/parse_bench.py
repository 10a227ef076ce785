"""Benchmark of parsing: the stream job's parser against the ways it chose not to parse.

    .venv/bin/python bench/parse_bench.py [--observations 200000] [--repeats 3]

No stack needed: N generator observations (954 bytes each) are cached in Spark as strings,
then each variant is run to the end (the ``noop`` sink) and timed, median of the repeats:

- the cached strings alone (the floor of any parser);
- ``from_json`` alone with every FHIR field the generator sends declared, and Spark's
  ``_corrupt_record`` column, as the parser once did;
- ``parse_observations``: the pipeline's whole parser (the declared fields only, no corrupt-record column);
- the parser followed by ``where(usable)``: Spark once pushed such a filter down into the
  parser, copying ``from_json`` into the condition once per derived field (3.5x the parser);
  the parser now reads the clock, and Spark pushes no filter through it.

Then a live batch (``--live-batch``, 90 observations, about two seconds of a 50 obs/s feed),
parsed in as many tasks as the Kafka read's ranges (three per core), in one task per core (the
stream job's ``coalesce``) and in one task: the parser's cost is per task more than per
reading. Interleaved rounds after a warm-up, medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bench.workload import cached_kafka_records, generator_observations, median_seconds
from bp_spark.parse import parse_observations
from bp_spark.session import build_session, stop_session

S, A = T.StructType, T.ArrayType


def _strings(*names: str) -> list[T.StructField]:
    return [T.StructField(name, T.StringType()) for name in names]


# Every field of the generator's Observations, with the corrupt-record column.
CODING = S(_strings("system", "code", "display"))
CONCEPT = S([T.StructField("coding", A(CODING)), *_strings("text")])
EVERY_FIELD = S([
    *_strings("resourceType", "id", "status"), T.StructField("category", A(CONCEPT)), T.StructField("code", CONCEPT),
    T.StructField("subject", S(_strings("reference", "display"))), *_strings("effectiveDateTime"),
    T.StructField("effectivePeriod", S(_strings("start", "end"))),
    T.StructField("component", A(S([T.StructField("code", CONCEPT),
                                    T.StructField("valueQuantity", S(_strings("value", "unit", "system", "code")))]))),
    *_strings("_corrupt_record"),
])


def timed(df: DataFrame, repeats: int) -> float:
    """Median seconds to compute every row of ``df`` (the ``noop`` sink writes nothing)."""
    return median_seconds(lambda _: df.write.format("noop").mode("overwrite").save(), repeats)


def live_batch(kafka_df: DataFrame, size: int, cores: int, rounds: int = 12) -> None:
    """The live batch's parse in 3 x cores tasks, cores tasks and 1 task; prints the medians."""
    small = kafka_df.limit(size).repartition(3 * cores).cache()
    small.count()
    variants = {f"{3 * cores} tasks (a range each)": small, f"{cores} tasks (one per core)": small.coalesce(cores),
                "1 task": small.coalesce(1)}
    runs: dict[str, list[float]] = {label: [] for label in variants}
    for round_ in range(rounds + 3):  # the first three rounds warm the JVM up
        for label, df in variants.items():
            took = timed(parse_observations(df), 1)
            if round_ >= 3:
                runs[label].append(took)
    print(f"\na live batch of {size} observations, parsed: medians of {rounds} interleaved rounds")
    for label, took in runs.items():
        print(f"  {label:48s} {statistics.median(took) * 1000:6.0f} ms")
    small.unpersist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--live-batch", type=int, default=90, help="observations of the live batch")
    args = parser.parse_args()
    values = [value for _, value in generator_observations(args.observations)]
    spark = build_session("bp-monitor-parse-bench")
    spark.sparkContext.setLogLevel("WARN")
    kafka_df = cached_kafka_records(spark, values, spark.sparkContext.defaultParallelism * 3)
    print(f"{kafka_df.count():,} observations of {len(values[0])} bytes cached", flush=True)
    raw = F.col("value").cast("string")
    floor = timed(kafka_df.select(raw.alias("raw")).where(F.length("raw") > 0), args.repeats)
    old = timed(kafka_df.select(F.from_json(raw, EVERY_FIELD, {"columnNameOfCorruptRecord": "_corrupt_record"})
                                .alias("o")).where(F.col("o.id").isNotNull()), args.repeats)
    parsed_df = kafka_df.transform(parse_observations)
    ours = timed(parsed_df, args.repeats)
    usable = F.col("error").isNull()
    filtered = timed(parsed_df.where(usable), args.repeats)
    n = args.observations
    print(f"\nparse benchmark: {n:,} observations, medians of {args.repeats} runs, {spark.sparkContext.defaultParallelism} cores")
    for label, took in (("cached strings alone", floor), ("from_json alone, every field + _corrupt_record", old),
                        ("parse_observations (the whole parser)", ours), ("the parser, then where(usable)", filtered)):
        print(f"  {label:48s} {took:6.2f} s   {n / took:>9,.0f} obs/s")
    print(f"  above the floor: from_json with every field {(old - floor) / (ours - floor):.1f}x the whole parser; "
          f"the parser then where() {(filtered - floor) / (ours - floor):.1f}x the parser alone")
    live_batch(kafka_df, args.live_batch, spark.sparkContext.defaultParallelism)
    stop_session(spark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
