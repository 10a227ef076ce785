"""Versions of the services and Spark connectors, read from the project's ``.env``.

``.env`` is the one place where the Elasticsearch and Kafka versions are written: docker
compose reads it, the local stack reads it, and this module turns it into the connectors' Maven
coordinates. ``make install`` resolves them once into ``build/connectors/`` (:func:`fetch_connectors`,
with Maven), and the jobs put those jars on Spark's class path (``spark.jars``, ``--jars``):
a start resolves nothing. Without them (a checkout where ``make install`` did not run, the
Docker image), Spark resolves the coordinates itself at every start (``spark.jars.packages``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
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


CONNECTORS_DIR = ROOT / "build" / "connectors"
CONNECTORS_POM = ROOT / "jvm" / "connectors" / "pom.xml"
MAVEN_REPOSITORY = ROOT / ".stack" / "downloads" / "m2"


def _manifest() -> Path:
    """The list of the connector jars resolved for this pyspark and this Elasticsearch version."""
    return CONNECTORS_DIR / f"spark-{pyspark.__version__}-es-{elasticsearch_version()}.jars"


def connector_jars() -> list[str] | None:
    """The jars :func:`fetch_connectors` resolved for these versions, or None (not fetched, or gone)."""
    manifest = _manifest()
    if not manifest.is_file():
        return None
    jars = manifest.read_text().split()
    return jars if jars and all(Path(jar).is_file() for jar in jars) else None


def _artifact(jar_name: str) -> str:
    """``kafka-clients`` of ``kafka-clients-3.4.1.jar``: the name before its version (the last
    part that starts with a digit and holds a dot: ``zstd-jni-1.5.5-4``, ``spark-sql-kafka-0-10_2.12-3.5.7``)."""
    parts = jar_name.removesuffix(".jar").split("-")
    versions = [i for i, part in enumerate(parts) if i and part[:1].isdigit() and "." in part]
    return "-".join(parts[:versions[-1]]) if versions else "-".join(parts)


def fetch_connectors() -> list[str]:
    """Resolve the connectors and what they need at run time with Maven (jvm/connectors/pom.xml),
    leave out what pyspark's own jars already hold (by artifact), and record the list; return it."""
    folder = CONNECTORS_DIR / f"spark-{pyspark.__version__}-es-{elasticsearch_version()}"
    result = subprocess.run(
        ["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(CONNECTORS_POM), f"-Dmaven.repo.local={MAVEN_REPOSITORY}",
         f"-Dspark.version={pyspark.__version__}", f"-Des.version={elasticsearch_version()}",
         "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={folder}"],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Maven could not resolve the Spark connectors (is Maven Central reachable?):\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    carried = {_artifact(jar.name) for jar in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    jars = sorted(str(jar) for jar in folder.glob("*.jar") if _artifact(jar.name) not in carried)
    _manifest().write_text("\n".join(jars) + "\n")
    return jars


def package_conf() -> dict[str, str]:
    """Spark settings that make Spark resolve the connectors from Maven Central at start."""
    return {
        "spark.jars.packages": ",".join(spark_packages()),
        "spark.jars.excludes": ",".join(CONNECTOR_EXCLUDES),
    }


def connector_conf() -> dict[str, str]:
    """Spark settings that put the Kafka source and the Elasticsearch connector on the class path:
    the jars ``make install`` fetched, else the packages to resolve."""
    jars = connector_jars()
    return {"spark.jars": ",".join(jars)} if jars else package_conf()


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
    # The driver's and the tasks' Python: this one, with the project's packages (the tasks read
    # Elasticsearch with its client), unless PYSPARK_PYTHON says otherwise; on a cluster, pass
    # the workers' own after these flags (a later --conf wins).
    if not os.environ.get("PYSPARK_PYTHON"):
        args += ["--conf", f"spark.pyspark.python={sys.executable}"]
    jars = connector_jars()
    if jars is None:
        for key, value in package_conf().items():
            args += ["--conf", f"{key}={value}"]
    args += ["--driver-java-options", LOG_JAVA_OPTION]
    jars = (jars or []) + ([str(JVM_JAR)] if JVM_JAR.exists() else [])
    if jars:
        args += ["--jars", ",".join(jars)]
    if JVM_JAR.exists():
        args += ["--driver-class-path", str(JVM_JAR)]
        for key, value in NO_FORK_FILE_SYSTEM.items():
            args += ["--conf", f"{key}={value}"]
    return args


def spark_submit_args() -> str:
    """:func:`submit_args` as one line for the shell: ``spark-submit $(python -m bp_spark.versions) ...``."""
    return " ".join(submit_args())


if __name__ == "__main__":
    if sys.argv[1:] == ["--fetch"]:  # make install
        print(f"[deps] connectors resolved into {CONNECTORS_DIR}: {len(fetch_connectors())} jars", file=sys.stderr)
    else:  # spark-submit $(python -m bp_spark.versions) jobs/stream.py
        print(spark_submit_args())
