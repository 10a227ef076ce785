"""The stream job on a real Spark standalone cluster: a master and one worker started from the
installed pyspark distribution, the job submitted with spark-submit --master spark://...,
--py-files dist/bp_spark.zip and file:// URIs, against the real Kafka and Elasticsearch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import pyspark
import pytest
from elasticsearch import Elasticsearch

from bp_spark.config import Config
from bp_spark.package import build
from bp_spark.versions import submit_args
from test_stream import archive_lines, expectations, generated, ids_in, job_env, publish, stream_config

ROOT = Path(__file__).resolve().parent.parent
SPARK_HOME = Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(log: Path, text: str, process: subprocess.Popen, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"{what} exited:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"{what} did not log {text!r} in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


@pytest.fixture
def standalone_cluster(tmp_path: Path) -> Iterator[str]:
    """A Spark standalone master and one worker (2 cores, 2 GB) on loopback; yields the master URL."""
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    processes = []
    try:
        master_log = tmp_path / "master.log"
        master = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(free_port())],
            env=env, stdout=master_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(master)
        wait_for_line(master_log, "I have been elected leader", master, "the master")
        worker_log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2",
             "--memory", "2g", "--webui-port", str(free_port()), "--work-dir", str(tmp_path / "work")],
            env=env, stdout=worker_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(worker)
        wait_for_line(worker_log, "Successfully registered with master", worker, "the worker")
        yield url
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


def test_stream_job_on_a_standalone_cluster_fills_every_sink(
    standalone_cluster: str, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{
        "paths.archive_dir": (tmp_path / "archive").as_uri(), "paths.checkpoint_dir": (tmp_path / "checkpoint").as_uri()})
    good = generated(patients=20, days=2, seed=11)
    publish(config, good + [(b"x", b"{not json")])
    py_files = build(tmp_path / "dist" / "bp_spark.zip")
    e = config.elasticsearch
    env = {**job_env(config), "SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    # what `spark-submit $(python -m bp_spark.versions)` passes: connectors, driver heap, log
    # configuration, the local file system without a chmod process (driver and executors)
    command = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", standalone_cluster,
               "--py-files", str(py_files), "--executor-memory", "1g",
               "--conf", "spark.driver.host=127.0.0.1", *submit_args(),
               str(ROOT / "jobs" / "stream.py"), "--trigger", "available-now",
               "--archive-dir", config.paths.archive_dir, "--checkpoint-dir", config.paths.checkpoint_dir]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    # spark-submit passes the Python driver's stderr (our log) to its stdout
    assert f"Spark master {standalone_cluster}" in result.stdout, result.stdout[-3000:]

    abnormal, critical, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, e.anomalies_index)) == abnormal
    alerts = ids_in(es, e.alerts_index)
    assert {i for i, doc in alerts.items() if doc["alert_type"] == "critical_reading"} == critical
    assert sorted(archive_lines(config_for_files(config))) == sorted(normal)
    assert len(ids_in(es, e.deadletter_index)) == 1
    cohort_days = ids_in(es, e.trends_index, scope="cohort", period="daily")
    assert sum(doc["readings"] for doc in cohort_days.values()) == len(good)
    # the executors ran on the worker, not in the driver
    assert any((tmp_path / "work").glob("app-*/*/stderr"))


def config_for_files(config: Config) -> Config:
    """The configuration with the archive URI turned back into a path, for reading it here."""
    return replace(config, paths=replace(config.paths, archive_dir=urlparse(config.paths.archive_dir).path))
