"""Every target the stream job writes, one module each, behind one object.

- :mod:`bp_spark.sinks.es`: the Elasticsearch indices (anomalies, alerts, trends, dead letter);
- :mod:`bp_spark.sinks.archive`: the normal-reading archive, files per patient and period (:mod:`bp_spark.archive`);
- :mod:`bp_spark.sinks.alert_topic`: alert events (FHIR DetectedIssues) on a Kafka topic for downstream systems;
- :mod:`bp_spark.routing.repeats`: the versions of each observation seen, so that repeats are dropped.

Each rides out an outage the same way (:mod:`bp_spark.outages`).

The documents themselves are built in :mod:`bp_spark.documents`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.alerts.step import EpisodeStep
from bp_spark.config import Config
from bp_spark.sinks.alert_topic import AlertTopic
from bp_spark.sinks.archive import ArchiveSink
from bp_spark.sinks.es import ElasticsearchSink
from bp_spark.outages import SinkUnavailable
from bp_spark.sinks.goals import GoalStore
from bp_spark.routing.repeats import VersionLedger

__all__ = ["Sinks", "SinkUnavailable"]


@dataclass
class Sinks:
    """The stream job's targets. ``waits`` adds up, per sink, the seconds the current batch
    waited for it (the routers reset it each batch and put it in the health record)."""

    spark: SparkSession
    config: Config
    es: Elasticsearch | None
    waits: dict[str, float] = field(default_factory=dict)
    archive_tag: str | None = None  # the name of the archive's staged batches, when not the stream job's
    alert_episodes: bool = True  # readings open and join alert episodes (the backfill's history does not page)

    def __post_init__(self) -> None:
        self.elasticsearch = ElasticsearchSink(self.config, self.es, self.waits)
        self.archive = ArchiveSink(self.spark, self.config, self.waits, self.elasticsearch, self.archive_tag)
        self.alert_topic = AlertTopic(self.config, self.waits)
        self.repeats = VersionLedger(self.spark, self.config, self.elasticsearch, lambda: self.archive.tag)
        self.goals = GoalStore(self.spark, self.elasticsearch, self.config.elasticsearch.goals_index)
        self.episodes = (EpisodeStep(self.config, self.elasticsearch, self.alert_topic)
                         if self.alert_episodes and self.es is not None else None)
