"""The session: its local file system (Hadoop's, with permissions set without a chmod process),
and the job's one-line answer when spark-submit started it without the connectors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pyspark
from pyspark.sql import SparkSession

from bp_spark.session import JVM_JAR
from bp_spark.files import hadoop_fs


def test_local_files_go_through_the_no_fork_file_system(spark: SparkSession, tmp_path: Path) -> None:
    assert JVM_JAR.exists(), f"{JVM_JAR} is missing: `make install` builds it from jvm/"
    fs, _ = hadoop_fs(spark, tmp_path.as_uri())
    assert fs.getClass().getName() == "bpmonitor.NoForkLocalFileSystem"


def test_files_and_folders_get_the_permissions_asked_for(spark: SparkSession, tmp_path: Path) -> None:
    FsPermission = spark._jvm.org.apache.hadoop.fs.permission.FsPermission
    folder, file = tmp_path / "a" / "b", tmp_path / "a" / "b" / "part-0.jsonl"
    fs, hadoop_folder = hadoop_fs(spark, folder.as_uri())
    assert fs.mkdirs(hadoop_folder, FsPermission.createImmutable(0o750))
    _, hadoop_file = hadoop_fs(spark, file.as_uri())
    stream = fs.create(hadoop_file, FsPermission.createImmutable(0o640), True, 4096, 1, 1 << 20, None)
    stream.write(bytearray(b'{"id": "x"}\n'))
    stream.close()
    assert file.read_bytes() == b'{"id": "x"}\n'
    # the session's umask (private_files_conf("077"), as the job's) keeps group and others out
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    fs.setPermission(hadoop_file, FsPermission.createImmutable(0o604))
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o604



def test_spark_submit_without_the_connectors_says_what_to_add(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    spark_submit = Path(pyspark.__file__).resolve().parent / "bin" / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "BP_PATHS_CHECKPOINT_DIR": str(tmp_path / "checkpoint"),
           "BP_PATHS_ARCHIVE_DIR": str(tmp_path / "archive")}
    result = subprocess.run([str(spark_submit), str(root / "jobs" / "stream.py")], env=env, capture_output=True,
                            text=True, timeout=180, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert ("stream: Spark has no spark-sql-kafka-0-10 (the Kafka source) and no elasticsearch-spark-30 (the "
            "Elasticsearch connector): start the job with `spark-submit $(python -m bp_spark.versions) jobs/stream.py`") in output
    assert "Traceback" not in output


def test_each_query_runs_its_jobs_in_its_scheduler_pool(spark: SparkSession) -> None:
    """The routing query's tasks go first when a trend batch runs beside it (conf/fairscheduler.xml):
    on a live feed of 1,000 obs/s this took p95 from 18.8 s to 8.8 s (bench/latency_bench.py)."""
    from bp_spark.streaming import start_in_pool

    pools = []
    source = spark.readStream.format("rate").option("rowsPerSecond", 10).load()
    writer = source.writeStream.foreachBatch(
        lambda batch_df, _: pools.append(batch_df.sparkSession.sparkContext.getLocalProperty("spark.scheduler.pool")))
    query = start_in_pool(writer, spark, "routing")
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    assert pools and set(pools) == {"routing"}
    assert spark.sparkContext.getLocalProperty("spark.scheduler.pool") is None  # the caller's thread is left as it was
    scheduler = spark.sparkContext._jsc.sc()
    assert scheduler.getSchedulingMode().toString() == "FAIR"
    assert (scheduler.getPoolForName("routing").get().weight(), scheduler.getPoolForName("trends").get().weight()) == (100, 1)


def test_tasks_run_the_jobs_python_with_its_packages(spark: SparkSession) -> None:
    """Spark's Python workers run this interpreter (bp_spark.session.python_workers), so a task can
    import the project and its clients (the repeats' lookup opens an Elasticsearch client in each
    task), whichever python3 the PATH finds first."""

    def where(_):
        import bp_spark.elastic
        import elasticsearch
        yield sys.executable, Path(bp_spark.elastic.__file__).parent.parent.name, elasticsearch.__name__
    assert set(spark.sparkContext.parallelize([0, 1], 2).mapPartitions(where).collect()) == {
        (sys.executable, Path(__file__).resolve().parent.parent.name, "elasticsearch")}
