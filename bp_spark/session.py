"""The SparkSession of the jobs: an app name and the connector packages, nothing more.

``--master`` and every other setting come from ``spark-submit``, so the same job runs on
``local[*]`` or on a cluster unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import SparkSession

from bp_spark.versions import connector_conf


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
    for key, value in METRICS_CONF.items():
        builder = builder.config(key, value)
    for key, value in (extra_conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
