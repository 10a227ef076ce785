"""The versions written in .env, pyproject.toml and the running services agree."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import pyspark

from bp_spark.config import load_config
from bp_spark.versions import (connector_conf, connector_jars, elasticsearch_version, package_conf, read_env_file,
                               spark_submit_args, submit_args)

ROOT = Path(__file__).resolve().parent.parent


def test_python_client_shares_the_server_major_minor() -> None:
    client = version("elasticsearch").split(".")[:2]
    assert client == elasticsearch_version().split(".")[:2]


def test_pyspark_matches_env_and_connectors_follow() -> None:
    env = read_env_file()
    assert pyspark.__version__ == env["SPARK_VERSION"]
    packages = package_conf()["spark.jars.packages"].split(",")
    assert packages == [
        f"org.apache.spark:spark-sql-kafka-0-10_2.12:{env['SPARK_VERSION']}",
        f"org.elasticsearch:elasticsearch-spark-30_2.12:{env['ES_VERSION']}",
    ]
    assert env["KAFKA_VERSION"].startswith("4.")


def test_running_server_is_the_pinned_version(es) -> None:
    assert es.info()["version"]["number"] == elasticsearch_version()


def test_spark_submit_args_carry_what_the_job_sets_itself() -> None:
    """spark-submit starts the driver's JVM before the job runs: the printed flags give it what
    `python jobs/stream.py` gives its own session (bp_spark/session.py)."""
    args = spark_submit_args().split()
    pairs = dict(zip(args[0::2], args[1::2]))
    confs = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--conf")
    # The connectors make install fetched, resolved by nothing at start; and the project's own jar.
    jars = pairs["--jars"].split(",")
    assert jars == connector_jars() + [str(ROOT / "build" / "bp-monitor-jvm.jar")]
    assert {Path(jar).name.rsplit("-", 1)[0] for jar in jars} >= {
        "spark-sql-kafka-0-10_2.12", "elasticsearch-spark-30_2.12", "kafka-clients"}
    assert not any(k.startswith("spark.jars.") for k in confs)  # no packages to resolve
    assert connector_conf() == {"spark.jars": ",".join(connector_jars())}
    assert pairs["--driver-memory"] == load_config().stream.driver_memory  # not Spark's 1 GB
    assert pairs["--driver-java-options"] == f"-Dlog4j2.configurationFile=file://{ROOT}/conf/spark-log4j2.properties"
    assert pairs["--driver-class-path"] == str(ROOT / "build" / "bp-monitor-jvm.jar")
    assert confs["spark.hadoop.fs.file.impl"] == "bpmonitor.NoForkLocalFileSystem"


def test_spark_submit_args_give_the_tasks_this_python_unless_told(monkeypatch) -> None:
    """The tasks read Elasticsearch with the project's client: spark-submit is told this
    interpreter, not whichever python3 the PATH finds; PYSPARK_PYTHON, when set, decides."""
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    args = submit_args()
    assert args[args.index(f"spark.pyspark.python={sys.executable}") - 1] == "--conf"
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/python/bin/python3")
    assert not any(arg.startswith("spark.pyspark.python=") for arg in submit_args())
