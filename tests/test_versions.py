"""The versions written in .env, pyproject.toml and the running services agree."""

from __future__ import annotations

from importlib.metadata import version

import pyspark

from bp_spark.versions import connector_conf, elasticsearch_version, read_env_file, spark_submit_args


def test_python_client_shares_the_server_major_minor() -> None:
    client = version("elasticsearch").split(".")[:2]
    assert client == elasticsearch_version().split(".")[:2]


def test_pyspark_matches_env_and_connectors_follow() -> None:
    env = read_env_file()
    assert pyspark.__version__ == env["SPARK_VERSION"]
    packages = connector_conf()["spark.jars.packages"].split(",")
    assert packages == [
        f"org.apache.spark:spark-sql-kafka-0-10_2.12:{env['SPARK_VERSION']}",
        f"org.elasticsearch:elasticsearch-spark-30_2.12:{env['ES_VERSION']}",
    ]
    assert env["KAFKA_VERSION"].startswith("4.")


def test_running_server_is_the_pinned_version(es) -> None:
    assert es.info()["version"]["number"] == elasticsearch_version()


def test_spark_submit_args_carry_both_settings() -> None:
    args = spark_submit_args().split()
    assert args[0::2] == ["--conf", "--conf"]
    assert dict(a.split("=", 1) for a in args[1::2]) == connector_conf()
