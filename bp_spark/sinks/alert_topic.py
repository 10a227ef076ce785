"""The alert topic (``kafka.alerts_topic``): every alert event as a FHIR DetectedIssue, keyed by
patient, for downstream systems (:mod:`bp_spark.alerts`)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.connections import kafka_settings, spark_kafka_options
from bp_spark.documents import ROUTING_COLUMNS
from bp_spark.outages import SinkFailure, with_retries


class AlertTopic:
    """Publishes alerts to ``kafka.alerts_topic`` when it is set."""

    def __init__(self, config: Config, waits: dict[str, float]) -> None:
        self.config = config
        self.waits = waits
        self._producer = None

    def send(self, records: list[tuple[bytes, bytes]], what: str) -> None:
        """(key, value) records from the driver (the alert events of a batch or a sweep), each
        acknowledged by every in-sync replica before this returns; an outage is waited out.
        At-least-once: a record may be sent again after a failure, with the same event id."""
        topic = self.config.kafka.alerts_topic
        if not topic or not records:
            return
        from confluent_kafka import Producer  # the driver's client; the executors never send alerts

        def attempt() -> None:
            if self._producer is None:
                self._producer = Producer({**kafka_settings(self.config), "acks": "all", "enable.idempotence": True,
                                           "linger.ms": 5})
            failed: list = []
            for key, value in records:
                self._producer.produce(topic, value, key, on_delivery=lambda err, msg: err and failed.append(err))
            left = self._producer.flush(30)
            if failed or left:
                self._producer = None  # a fresh client for the next attempt
                reason = failed[0].str() if failed else "no answer within 30 s"
                raise SinkFailure(f"{len(failed) or left} of {len(records)} records not delivered to Kafka topic "
                                  f"{topic} ({reason})")
        with_retries(attempt, f"{what} to Kafka topic {topic}", "alert_topic", self.config.outages, self.waits)

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
