"""Versions of the services and Spark connectors, read from the project's ``.env``.

``.env`` is the one place where the Elasticsearch and Kafka versions are written: docker
compose reads it, the local stack reads it, and this module turns it into the Maven
coordinates Spark fetches through ``spark.jars.packages``.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path

import pyspark

from bp_spark import config

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / ".env"
# What the jobs set themselves when Python starts Spark (bp_spark/session.py), and what
# submit_args passes to spark-submit: the local file system without a chmod process per file
# (jvm/, built by `make install`), and Spark's log without the documents Elasticsearch refused.
JVM_JAR = ROOT / "build" / "bp-monitor-jvm.jar"
NO_FORK_FILE_SYSTEM = {"spark.hadoop.fs.file.impl": "bpmonitor.NoForkLocalFileSystem"}
LOG_CONFIG = ROOT / "conf" / "spark-log4j2.properties"
LOG_JAVA_OPTION = f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}"


@functools.cache
def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of ``.env``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it holds the service versions; restore it from git")
    return config.read_env_file(path)


def elasticsearch_version() -> str:
    """The Elasticsearch version of the server, the Spark connector and Kibana."""
    return read_env_file()["ES_VERSION"]


# The connector's POM names two runtime artifacts that are not published (their classes are
# inside the connector jar) and Scala/logging jars the Spark distribution already carries;
# resolving them would fail or put a second Scala library on the classpath.
CONNECTOR_EXCLUDES = (
    "org.elasticsearch:elasticsearch-hadoop-mr",
    "org.elasticsearch:elasticsearch-spark_2.12",
    "org.scala-lang:scala-library",
    "org.scala-lang:scala-reflect",
    "org.slf4j:slf4j-api",
    "commons-logging:commons-logging",
    "javax.xml.bind:jaxb-api",
)


def connector_conf() -> dict[str, str]:
    """Spark settings that put the Kafka source and the Elasticsearch connector on the classpath."""
    return {
        "spark.jars.packages": ",".join(spark_packages()),
        "spark.jars.excludes": ",".join(CONNECTOR_EXCLUDES),
    }


def spark_packages() -> list[str]:
    """Maven coordinates of the Kafka source and the Elasticsearch connector, for ``spark.jars.packages``.

    The Kafka source must match the running Spark exactly, so it follows ``pyspark.__version__``.
    """
    return [
        f"org.apache.spark:spark-sql-kafka-0-10_2.12:{pyspark.__version__}",
        f"org.elasticsearch:elasticsearch-spark-30_2.12:{elasticsearch_version()}",
    ]


def driver_memory() -> str:
    """``stream.driver_memory`` (``BP_STREAM_DRIVER_MEMORY``, else conf/pipeline.toml), read without
    the rest of the configuration: it must be known before the driver's JVM starts."""
    if os.environ.get("BP_STREAM_DRIVER_MEMORY"):
        return os.environ["BP_STREAM_DRIVER_MEMORY"]
    return tomllib.loads((ROOT / "conf" / "pipeline.toml").read_text())["stream"]["driver_memory"]


def submit_args() -> list[str]:
    """Every ``spark-submit`` argument the stream job needs that must be known before its JVM starts,
    so that the documented way to start it is as fast and as quiet about patients as
    ``python jobs/stream.py``: the connectors, the driver's heap (``stream.driver_memory``; Spark's
    default is 1 GB), Spark's log without the documents Elasticsearch refused, and local files
    written without a chmod process each (``build/bp-monitor-jvm.jar``, when built: on the driver's
    class path and, through ``--jars``, the executors')."""
    args = ["--driver-memory", driver_memory()]
    for key, value in connector_conf().items():
        args += ["--conf", f"{key}={value}"]
    args += ["--driver-java-options", LOG_JAVA_OPTION]
    if JVM_JAR.exists():
        args += ["--driver-class-path", str(JVM_JAR), "--jars", str(JVM_JAR)]
        for key, value in NO_FORK_FILE_SYSTEM.items():
            args += ["--conf", f"{key}={value}"]
    return args


def spark_submit_args() -> str:
    """:func:`submit_args` as one line for the shell: ``spark-submit $(python -m bp_spark.versions) ...``."""
    return " ".join(submit_args())


if __name__ == "__main__":
    # spark-submit $(python -m bp_spark.versions) jobs/stream.py
    print(spark_submit_args())
