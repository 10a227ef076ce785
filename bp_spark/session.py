"""The SparkSession of the jobs: an app name and the connector packages, nothing more.

``--master`` and every other setting come from ``spark-submit``, so the same job runs on
``local[*]`` or on a cluster unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import SparkSession

from bp_spark.versions import connector_conf


def build_session(app_name: str, extra_conf: Mapping[str, str] | None = None) -> SparkSession:
    """Get or create the session with the Kafka and Elasticsearch connectors on its classpath."""
    builder = SparkSession.builder.appName(app_name)
    for key, value in connector_conf().items():
        builder = builder.config(key, value)
    # Event times are read with their offsets and stored as instants; UTC keeps what Spark
    # prints and writes independent of the machine's zone.
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    # Progress bars on stderr would interleave with the job's one log line per batch.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    for key, value in (extra_conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
