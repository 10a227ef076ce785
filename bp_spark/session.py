"""The SparkSession of the jobs: an app name and the connector packages, nothing more.

``--master`` and every other setting come from ``spark-submit``, so the same job runs on
``local[*]`` or on a cluster unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import SparkSession

from bp_spark.versions import spark_packages


def build_session(
    app_name: str,
    packages: Sequence[str] | None = None,
    extra_conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """Get or create the session with the Kafka and Elasticsearch connectors on its classpath."""
    builder = SparkSession.builder.appName(app_name)
    builder = builder.config("spark.jars.packages", ",".join(packages or spark_packages()))
    # Event times are read with their offsets and stored as instants; UTC keeps what Spark
    # prints and writes independent of the machine's zone.
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    for key, value in (extra_conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
