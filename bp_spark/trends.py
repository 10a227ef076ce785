"""Windowed aggregations on event time (the observation's effective time, not its arrival):
trend peaks per patient and per cohort, and sustained hypertension over a sliding window.

Pure transformations over classified readings (``patient_id``, ``observation_id``,
``effective_time``, ``systolic``, ``diastolic``, ``is_anomaly``, ``anomaly_types``): the same
functions serve static frames in tests and streaming frames with a watermark. Every output
row carries ``trend_id``, deterministic per key and window, so a re-emitted window overwrites
its earlier version in Elasticsearch.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.classify import DIASTOLIC_HIGH, DIASTOLIC_LOW, SYSTOLIC_HIGH, SYSTOLIC_LOW

ANOMALY_TYPES = (SYSTOLIC_HIGH, SYSTOLIC_LOW, DIASTOLIC_HIGH, DIASTOLIC_LOW)
# Home blood-pressure monitoring threshold for hypertension (ACC/AHA 2017): mean >= 135/85.
SUSTAINED_SYSTOLIC = 135.0
SUSTAINED_DIASTOLIC = 85.0


def trend_id(*parts: Column | str) -> Column:
    """``part|part|...``: the same key and window give the same id."""
    return F.concat_ws("|", *[(F.col(p) if isinstance(p, str) else p).cast("string") for p in parts])


def _window_bounds(window: Column) -> list[Column]:
    return [window["start"].alias("window_start"), window["end"].alias("window_end")]


def _peak() -> Column:
    """The reading with the highest systolic (then diastolic, then the latest) in the group."""
    reading = F.struct(
        F.col("observation_id").alias("observation_id"), F.col("effective_time").alias("effective_time"),
        F.col("systolic").alias("systolic"), F.col("diastolic").alias("diastolic"))
    return F.max_by(reading, F.struct("systolic", "diastolic", "effective_time"))


def patient_trends(readings_df: DataFrame, window_duration: str, label: str) -> DataFrame:
    """Per patient and tumbling event-time window of ``window_duration`` (named ``label``, e.g. "hourly"):
    readings, mean/max/min systolic and diastolic, the peak reading and its time, anomalies per type."""
    window = F.window("effective_time", window_duration)
    aggregated_df = readings_df.groupBy("patient_id", window.alias("window")).agg(
        F.count(F.lit(1)).alias("readings"),
        F.avg("systolic").alias("systolic_mean"), F.max("systolic").alias("systolic_max"),
        F.min("systolic").alias("systolic_min"),
        F.avg("diastolic").alias("diastolic_mean"), F.max("diastolic").alias("diastolic_max"),
        F.min("diastolic").alias("diastolic_min"),
        _peak().alias("peak"),
        *[F.count(F.when(F.array_contains("anomaly_types", kind), 1)).alias(kind) for kind in ANOMALY_TYPES],
    )
    return aggregated_df.select(
        trend_id(F.lit("patient"), F.lit(label), "patient_id", F.col("window.start")).alias("trend_id"),
        F.lit("patient").alias("scope"), F.lit(label).alias("period"), "patient_id",
        *_window_bounds(F.col("window")),
        "readings", "systolic_mean", "systolic_max", "systolic_min", "diastolic_mean", "diastolic_max",
        "diastolic_min", "peak",
        F.struct(*[F.col(kind) for kind in ANOMALY_TYPES]).alias("anomalies"),
    )


def cohort_trends(readings_df: DataFrame, window_duration: str, label: str) -> DataFrame:
    """The whole cohort per event-time window: readings, abnormal readings, distinct abnormal
    patients (exact: a set, which streaming aggregations allow where count-distinct is not) and the peak."""
    window = F.window("effective_time", window_duration)
    aggregated_df = readings_df.groupBy(window.alias("window")).agg(
        F.count(F.lit(1)).alias("readings"),
        F.count(F.when(F.col("is_anomaly"), 1)).alias("abnormal_readings"),
        F.size(F.collect_set(F.when(F.col("is_anomaly"), F.col("patient_id")))).alias("abnormal_patients"),
        F.max("systolic").alias("systolic_max"), F.max("diastolic").alias("diastolic_max"),
        _peak().alias("peak"),
    )
    return aggregated_df.select(
        trend_id(F.lit("cohort"), F.lit(label), F.col("window.start")).alias("trend_id"),
        F.lit("cohort").alias("scope"), F.lit(label).alias("period"),
        *_window_bounds(F.col("window")),
        "readings", "abnormal_readings", "abnormal_patients", "systolic_max", "diastolic_max", "peak",
    )


def sustained_hypertension(
    readings_df: DataFrame,
    window_duration: str = "7 days",
    slide: str = "1 day",
    systolic_mean: float = SUSTAINED_SYSTOLIC,
    diastolic_mean: float = SUSTAINED_DIASTOLIC,
) -> DataFrame:
    """Per patient and sliding event-time window: the means, and ``is_sustained`` when either mean is
    at or above its threshold (135/85 by default, the home-monitoring limit)."""
    window = F.window("effective_time", window_duration, slide)
    aggregated_df = readings_df.groupBy("patient_id", window.alias("window")).agg(
        F.count(F.lit(1)).alias("readings"),
        F.avg("systolic").alias("systolic_mean"), F.avg("diastolic").alias("diastolic_mean"),
    )
    return aggregated_df.select(
        trend_id(F.lit("sustained"), "patient_id", F.col("window.start"), F.col("window.end")).alias("trend_id"),
        "patient_id", *_window_bounds(F.col("window")), "readings", "systolic_mean", "diastolic_mean",
        ((F.col("systolic_mean") >= systolic_mean) | (F.col("diastolic_mean") >= diastolic_mean)).alias("is_sustained"),
    )
