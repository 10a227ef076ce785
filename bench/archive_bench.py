"""Benchmark of the normal-reading archive: where a batch's archive time goes.

    .venv/bin/python bench/archive_bench.py [--observations 200000] [--patients 200] [--repeats 3] [--hadoop-file-system]

No stack needed: N generator observations of P patients are cached in Spark as (patient_id, raw)
in 4 partitions, as a micro-batch is after de-duplication, then each variant is timed, median
of the repeats:

- ``ArchiveSink.write``: the job's archive step for a backfill's batch (shuffle by patient, one
  staging file per patient, moved to ``patient_id=<id>/batch-<batch>-<part>.jsonl``);
- the same files written by the driver, as a live batch's are (at most 20,000 rows; try
  ``--observations 3000 --patients 1000``, a live batch of 1,000 patients);
- the same partitioned write without the shuffle by patient (a file per patient and task);
- the same lines written as one file per task (the floor: the bytes, without a file per patient);
- the shuffle by patient alone.

Local files go through the job's file system (jvm/bpmonitor/NoForkLocalFileSystem.java), or with
--hadoop-file-system through Hadoop's own, which runs a chmod process for every file and folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F

from bench.workload import generator_observations, median_seconds
from bp_spark.config import load_config
from bp_spark.session import build_session, stop_session
from bp_spark.sinks import Sinks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hadoop-file-system", action="store_true", help="Hadoop's own local file system")
    args = parser.parse_args()
    pairs = generator_observations(args.observations, args.patients)
    hadoop_fs = {"spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.LocalFileSystem"} if args.hadoop_file_system else {}
    spark = build_session("bp-monitor-archive-bench", hadoop_fs)
    spark.sparkContext.setLogLevel("WARN")
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    spark.conf.set("spark.sql.adaptive.enabled", "false")  # as in a streaming micro-batch
    with tempfile.TemporaryDirectory(prefix="bp-archive-bench-") as folder:
        source = Path(folder) / "observations.tsv"
        source.write_bytes(b"".join(key + b"\t" + value + b"\n" for key, value in pairs))
        batch_df = (spark.read.option("sep", "\t").option("quote", "").csv(str(source))
                    .toDF("patient_id", "raw").repartition(4).cache())
        print(f"{batch_df.count():,} observations of {len({k for k, _ in pairs})} patients cached", flush=True)
        config = load_config(env={}, overrides={"paths.archive_dir": f"{folder}/archive"})
        sinks = Sinks(spark, config, es=None)  # the archive needs no Elasticsearch
        lines_df = batch_df.select("patient_id", F.col("raw").alias("value"))
        noop = lines_df.repartition("patient_id").write.format("noop").mode("overwrite")
        figures = {
            "ArchiveSink.write (shuffle, a file per patient)":
                median_seconds(lambda i: sinks.archive.write(batch_df, i), args.repeats),
            "ArchiveSink.write, by the driver (a live batch's way)":
                median_seconds(lambda i: sinks.archive._write_from_driver(batch_df, 100 + i, Path(folder, "archive")), args.repeats),
            "partitioned write, no shuffle (a file per patient and task)":
                median_seconds(lambda _: lines_df.write.mode("overwrite").partitionBy("patient_id")
                               .text(f"{folder}/noshuffle"), args.repeats),
            "the same lines as one file per task":
                median_seconds(lambda _: lines_df.select("value").write.mode("overwrite").text(f"{folder}/plain"),
                               args.repeats),
            "the shuffle by patient alone": median_seconds(lambda _: noop.save(), args.repeats),
        }
        archived = sum(1 for f in Path(folder, "archive").glob("patient_id=*/*.jsonl") for _ in f.open("rb"))
        assert archived == 2 * args.observations * args.repeats, f"the archive holds {archived} lines"
    n = args.observations
    fs = spark._jvm.org.apache.hadoop.fs.FileSystem.getLocal(spark._jsc.hadoopConfiguration()).getClass().getName()
    print(f"\narchive benchmark: {n:,} observations, {args.patients} patients, medians of {args.repeats} runs, "
          f"{spark.sparkContext.defaultParallelism} cores, local files through {fs}")
    for label, took in figures.items():
        print(f"  {label:60s} {took:6.2f} s   {n / took:>9,.0f} obs/s")
    stop_session(spark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
