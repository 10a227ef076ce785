"""The Elasticsearch documents of each index, built from a micro-batch's rows (pure: DataFrame -> DataFrame).

Each frame names its index (``_target``) and document id (``_doc_id``). Documents that come
from one Kafka message also carry that message (``_raw``) and the id its dead letter would
have (``_dead_id``, topic-partition-offset[-entry-N]): if Elasticsearch refuses the document for what it
holds, the message goes to the dead letter instead (:mod:`bp_spark.sinks.es`). Alerts are
written once (``_op`` = ``create``): a replayed batch leaves an existing alert as it is, with
its first ``processed_at``, so a rule on that field never notifies twice for one alert.
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.archive.layout import period_of
from bp_spark.clinical.classify import Rules, limits
from bp_spark.clinical.profiles import HOME, OFFICE
from bp_spark.parse import QUOTE_LIMIT, quoted

# Columns that steer the write and are not part of any document.
ROUTING_COLUMNS = ("_target", "_doc_id", "_raw", "_dead_id", "_op")
CREATE = "create"


def dead_letter_id() -> Column:
    """A message's dead-letter id: its Kafka topic, partition and offset, and for an entry of a
    Bundle ``-entry-<index>`` (each entry's problem is a dead letter of its own)."""
    entry = F.when(F.col("bundle_entry").isNotNull(), F.concat(F.lit("entry-"), F.col("bundle_entry")))
    return F.concat_ws("-", "kafka_topic", "kafka_partition", "kafka_offset", entry)


def _provenance(batch_id: int) -> list[Column]:
    """Where a document came from: its Kafka record, the batch, and when it was written."""
    kafka = F.struct(F.col("kafka_topic").alias("topic"), F.col("kafka_partition").alias("partition"),
                     F.col("kafka_offset").alias("offset"), F.col("kafka_timestamp").alias("timestamp"),
                     F.col("bundle_entry").alias("entry"))
    return [kafka.alias("kafka"), *written(batch_id)]


def written(batch_id: int) -> list[Column]:
    """The batch that wrote a document, and when."""
    return [F.lit(batch_id).cast("long").alias("batch_id"), F.current_timestamp().alias("processed_at")]


def _from_message(index: str, doc_id: Column) -> list[Column]:
    return [F.lit(index).alias("_target"), doc_id.alias("_doc_id"), F.col("raw").alias("_raw"),
            dead_letter_id().alias("_dead_id")]


def _paired(df: DataFrame) -> list[Column]:
    """The diastolic's id of a reading paired from two Observations (bp_spark/pairing.py), when the batch has pairs."""
    return [F.col("paired_observation_id")] if "paired_observation_id" in df.columns else []


def _thresholds(rules: Rules) -> Column:
    def struct(setting: str) -> Column:
        return F.struct(*[F.lit(float(value)).alias(name) for name, value in limits(rules, setting).items()])
    home, office = struct(HOME), struct(OFFICE)
    if limits(rules, HOME) == limits(rules, OFFICE):
        return home
    return F.when(F.col("setting") == OFFICE, office).otherwise(home)


def anomaly_docs(abnormal_df: DataFrame, index: str, rules: Rules, batch_id: int) -> DataFrame:
    """Abnormal readings with what was detected, under which profile and setting, and by which
    limits (``rules``'), ``_id`` = Observation.id, for ``index``."""
    return abnormal_df.select(
        *_from_message(index, F.col("observation_id")),
        "observation_id", *_paired(abnormal_df), "patient_id", "status", "effective_time", "systolic", "diastolic",
        "anomaly_types", "category", "profile", "setting", "severity", "interpretation",
        _thresholds(rules).alias("thresholds"), *_target(abnormal_df), *_provenance(batch_id),
    )


def _target(df: DataFrame) -> list[str]:
    """The patient's target and where the reading stands against it, when the batch was held to
    targets (bp_spark/clinical/goals.py)."""
    return [name for name in ("goal_id", "target_status") if name in df.columns]


def alert_docs(critical_df: DataFrame, index: str, batch_id: int) -> DataFrame:
    """Critical readings as alerts, ``_id`` = Observation.id (a replay never alerts twice)."""
    reason = F.format_string("%s: %s/%s mmHg", F.regexp_replace("category", "_", " "),
                             F.col("systolic").cast("int").cast("string"), F.col("diastolic").cast("int").cast("string"))
    return critical_df.select(
        *_from_message(index, F.col("observation_id")), F.lit(CREATE).alias("_op"),
        F.lit("critical_reading").alias("alert_type"), F.col("observation_id").alias("alert_id"),
        reason.alias("reason"),
        "observation_id", *_paired(critical_df), "patient_id", "effective_time", "systolic", "diastolic", "category",
        "profile", "setting", "severity", *_provenance(batch_id),
    )


def deadletter_docs(dead_df: DataFrame, index: str, batch_id: int) -> DataFrame:
    """Unusable messages with the raw payload and the reason, ``_id`` = topic-partition-offset.
    The raw payload is stored, not indexed, and every indexed field is bounded, so that no
    payload can make its own dead letter unstorable."""
    return dead_df.select(
        *_from_message(index, dead_letter_id()),
        F.col("error").alias("reason"), "raw", quoted(F.col("observation_id"), QUOTE_LIMIT).alias("observation_id"),
        *_provenance(batch_id),
    )


def archive_docs(archived_df: DataFrame, index: str, period: str, tag: str, batch_id: int) -> DataFrame:
    """Where each newly archived reading lies (patient and ``period``: ``archive.period``) and its content hash, ``_id`` =
    Observation.id, with the job's tag and batch that staged it (:mod:`bp_spark.sinks.archive`)."""
    return archived_df.select(
        F.lit(index).alias("_target"), F.col("observation_id").alias("_doc_id"),
        "patient_id", period_of(period).alias("period"), "content_hash", F.lit(tag).alias("tag"),
        F.lit(batch_id).cast("long").alias("batch_id"))


def sustained_reason(systolic_mean: float, diastolic_mean: float, readings: int, window: str, systolic: float,
                     diastolic: float) -> str:
    """Why an onset of sustained hypertension alerts, for its alerting reading and its alert episode
    alike: the means rounded half up; ``window``, ``systolic``, ``diastolic``: the rule's
    (``trends.sustained_*``)."""
    def half_up(value: float) -> int:
        return math.floor(value + 0.5)
    return (f"sustained hypertension: mean {half_up(systolic_mean)}/{half_up(diastolic_mean)} mmHg over {readings} "
            f"readings in {window} (limit {systolic:g}/{diastolic:g})")


def sustained_alert_docs(onset_df: DataFrame, index: str, batch_id: int) -> DataFrame:
    """Onsets of sustained hypertension (with their ``reason``: :func:`sustained_reason`) as
    alerts, ``_id`` = the window's ``trend_id``."""
    return onset_df.select(
        F.lit(index).alias("_target"), F.col("trend_id").alias("_doc_id"),
        F.lit(CREATE).alias("_op"), F.lit("sustained_hypertension").alias("alert_type"), F.col("trend_id").alias("alert_id"),
        "reason", "patient_id", F.col("last_reading_time").alias("effective_time"),
        "window_start", "window_end", "readings", "systolic_mean", "diastolic_mean",
        F.lit("warning").alias("severity"), *written(batch_id))
