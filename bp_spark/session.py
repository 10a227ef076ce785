"""The SparkSession of the jobs: an app name and the connector packages, nothing more.

``--master`` and every other setting come from ``spark-submit``, so the same job runs on
``local[*]`` or on a cluster unchanged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping

from py4j.protocol import Py4JError
from pyspark.sql import SparkSession

from bp_spark.versions import JVM_JAR, LOG_JAVA_OPTION, NO_FORK_FILE_SYSTEM, ROOT, connector_conf


# Spark's own monitoring, on: each streaming query's metrics (input rate, processing rate,
# latency, watermark, state rows) in the metrics system, and the metrics system and executor
# metrics in Prometheus format on the UI port: /metrics/prometheus (driver) and
# /metrics/executors/prometheus.
METRICS_CONF = {
    "spark.sql.streaming.metricsEnabled": "true",
    "spark.ui.prometheus.enabled": "true",
    "spark.metrics.conf.*.sink.prometheusServlet.class": "org.apache.spark.metrics.sink.PrometheusServlet",
    "spark.metrics.conf.*.sink.prometheusServlet.path": "/metrics/prometheus",
}


# A job that runs for months keeps bounded history: the UI's live store of jobs, stages, tasks
# and SQL executions (each micro-batch adds several; Spark's defaults keep 1,000 jobs and stages,
# 100,000 tasks and 1,000 executions on the driver's heap), and the checkpoints' offset and
# commit logs and state versions (minBatchesToRetain, Spark's default, said here on purpose).
RETENTION_CONF = {
    "spark.ui.retainedJobs": "200",
    "spark.ui.retainedStages": "200",
    "spark.ui.retainedTasks": "20000",
    "spark.sql.ui.retainedExecutions": "100",
    "spark.sql.streaming.ui.retainedProgressUpdates": "100",
    "spark.sql.streaming.minBatchesToRetain": "100",
}


# Secrets kept out of the Spark UI, its event logs and the plans it shows. Spark's default
# redaction pattern, (?i)secret|password|token|access[.]key, misses the connectors' keys:
# es.net.http.auth.pass, es.net.ssl.truststore.pass, kafka.sasl.jaas.config. Options of reads and
# writes are redacted with both patterns. And no one who can open the UI may kill a job from it.
REDACTION_CONF = {
    "spark.redaction.regex": r"(?i)secret|password|token|access[.]key|[.]pass$|auth|jaas|sasl|api[._]?key|credential",
    "spark.sql.redaction.options.regex": r"(?i)url|[.]pass$|auth|jaas|sasl|api[._]?key|truststore|keystore",
    "spark.ui.killEnabled": "false",
}


log = logging.getLogger("bp_spark.session")


def log_conf() -> dict[str, str]:
    """The driver JVM's log configuration (conf/spark-log4j2.properties), where this process starts
    the JVM itself; under spark-submit the JVM is running already (``python -m bp_spark.versions``
    passes it there)."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        return {}
    return {"spark.driver.extraJavaOptions": LOG_JAVA_OPTION}


def local_files_conf() -> dict[str, str]:
    """Hadoop's local file system (file://) with permissions set through java.nio, not a chmod
    process per file and folder created (jvm/bpmonitor/NoForkLocalFileSystem.java): the archive
    creates a file per patient and batch. Only where this process starts the JVM (python
    jobs/stream.py, the tests): a class path given after the JVM started would not be read, so
    under spark-submit ``python -m bp_spark.versions`` passes the jar and this setting. Empty when
    the jar is missing (Hadoop's own file system then; correct, slower)."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # started by spark-submit: the JVM is already running
        return {}
    if not JVM_JAR.exists():
        log.warning("%s is missing (`make install` builds it): local files are written through Hadoop's "
                    "own file system, which runs a chmod process for every file it creates", JVM_JAR)
        return {}
    return {"spark.driver.extraClassPath": str(JVM_JAR), **NO_FORK_FILE_SYSTEM}


def python_workers() -> None:
    """Spark's Python workers (the tasks that read Elasticsearch with their own client) run this
    interpreter, with the project's packages, where this process starts the JVM and nothing says
    otherwise (``PYSPARK_PYTHON``); PySpark's default is whichever ``python3`` the PATH finds
    first. Under spark-submit, ``python -m bp_spark.versions`` passes ``spark.pyspark.python``."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def private_files_conf(umask: str) -> dict[str, str]:
    """Files and folders Hadoop creates (archive, checkpoints) masked with ``umask`` (``paths.archive_umask``).

    Hadoop sets each new file's permission itself (0666 masked with this key, 022 by default),
    so the process's umask is not enough; and its file systems are cached with the configuration
    they were first made with, so the key must be in the session's configuration from the start.
    """
    return {"spark.hadoop.fs.permissions.umask-mode": umask}


def job_session(config, app_name: str) -> SparkSession:
    """The session a job (``config``: its :class:`~bp_spark.config.Config`) runs in: its driver
    heap, and every file it or Hadoop creates (archive, checkpoints, logs) its owner's alone
    (``paths.archive_umask``), as they hold patient data."""
    os.umask(config.paths.archive_umask_bits)
    return build_session(app_name, {"spark.driver.memory": config.stream.driver_memory,
                                    **private_files_conf(config.paths.archive_umask)})


def connectors_problem(spark: SparkSession, job: str) -> str | None:
    """What to do, in one line, when ``jobs/<job>.py`` was started by spark-submit without the
    connector packages; None when they are there."""
    missing = missing_connectors(spark)
    if not missing:
        return None
    return (f"{job}: Spark has no {' and no '.join(missing)}: start the job with "
            f"`spark-submit $(python -m bp_spark.versions) jobs/{job}.py` (those flags add them), "
            f"or with `python jobs/{job}.py`.")


# Two scheduler pools (conf/fairscheduler.xml): the routing query's tasks go first when both
# queries wait for the cores (bp_spark.streaming.start_in_pool).
SCHEDULER_CONF = {
    "spark.scheduler.mode": "FAIR",
    "spark.scheduler.allocation.file": str(ROOT / "conf" / "fairscheduler.xml"),
}


def build_session(app_name: str, extra_conf: Mapping[str, str] | None = None) -> SparkSession:
    """Get or create the session with the Kafka and Elasticsearch connectors on its classpath."""
    python_workers()
    builder = SparkSession.builder.appName(app_name)
    for key, value in connector_conf().items():
        builder = builder.config(key, value)
    # Event times are read with their offsets and stored as instants; UTC keeps what Spark
    # prints and writes independent of the machine's zone.
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    # Progress bars on stderr would interleave with the job's one log line per batch.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for key, value in SCHEDULER_CONF.items():
        builder = builder.config(key, value)
    for key, value in {**METRICS_CONF, **REDACTION_CONF, **RETENTION_CONF}.items():
        builder = builder.config(key, value)
    for key, value in {**local_files_conf(), **log_conf(), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


# The class each connector registers its data source with, and the package that brings it.
CONNECTOR_CLASSES = {
    "org.apache.spark.sql.kafka010.KafkaSourceProvider": "spark-sql-kafka-0-10 (the Kafka source)",
    "org.elasticsearch.spark.sql.DefaultSource": "elasticsearch-spark-30 (the Elasticsearch connector)",
}


def missing_connectors(spark: SparkSession) -> list[str]:
    """The connectors the session's JVM cannot load: started by spark-submit without the packages."""
    loader = spark._jvm.Thread.currentThread().getContextClassLoader()
    missing = []
    for name, what in CONNECTOR_CLASSES.items():
        try:
            spark._jvm.java.lang.Class.forName(name, False, loader)
        except Py4JError:
            missing.append(what)
    return missing


def _not_about_the_ended_jvm(record: logging.LogRecord) -> bool:
    # py4j logs on the root logger, with a traceback, each command a finalizer sends to a JVM that is gone.
    return record.getMessage() != "Exception while sending command."


def stop_session(spark: SparkSession, timeout_s: float = 15.0) -> None:
    """Stop the session and, when this process started its JVM, make sure that JVM ends.

    The JVM pyspark starts exits when its standard input closes, through its shutdown hooks. Now
    and then it does not (seen here: one job end in four, on a stream job with both queries, the
    JVM still there 30 s later; once a 4 GB driver stayed for 18 minutes after its Python parent
    had gone). So: stop, close its input, wait ``timeout_s``, then kill it: its checkpoints are
    committed by then, and a kill is what they are built to survive.
    """
    proc = getattr(spark.sparkContext._gateway, "proc", None)  # None under spark-submit
    try:
        spark.stop()
    except Py4JError:  # the JVM has gone already (it was signalled too)
        pass
    finally:
        if proc is not None and proc.poll() is None:
            logging.getLogger().addFilter(_not_about_the_ended_jvm)  # from here on the JVM is going away
            try:
                proc.stdin.close()
                proc.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                log.warning("the Spark JVM (pid %d) did not exit %.0f s after the session stopped; killing it",
                            proc.pid, timeout_s)
                proc.kill()
                proc.wait()
