"""The alert topic (``kafka.alerts_topic``): every alert event as a FHIR DetectedIssue, keyed by
patient, for downstream systems (:mod:`bp_spark.alerts`)."""

from __future__ import annotations

from bp_spark.config import Config
from bp_spark.connections import kafka_settings
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
