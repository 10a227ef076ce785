"""The alert topic: every alert also as JSON on a Kafka topic, keyed by patient, for downstream systems."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.connections import spark_kafka_options
from bp_spark.documents import ROUTING_COLUMNS
from bp_spark.outages import with_retries


class AlertTopic:
    """Publishes alerts to ``kafka.alerts_topic`` when it is set."""

    def __init__(self, config: Config, waits: dict[str, float]) -> None:
        self.config = config
        self.waits = waits

    def publish(self, alert_docs_df: DataFrame, batch_id: int) -> None:
        """Alerts as JSON keyed by patient. At-least-once: a replayed batch sends its alerts again,
        with the same ``alert_id``, by which consumers drop repeats."""
        topic = self.config.kafka.alerts_topic
        if not topic:
            return
        fields = [c for c in alert_docs_df.columns if c not in ROUTING_COLUMNS]
        records_df = alert_docs_df.select(F.col("patient_id").alias("key"), F.to_json(F.struct(*fields)).alias("value"))
        writer = (records_df.write.format("kafka")
                  .options(**spark_kafka_options(self.config)).option("topic", topic))
        with_retries(writer.save, f"batch {batch_id}: publishing alerts to Kafka topic {topic}", "alert_topic",
                     self.config.outages, self.waits)
