"""Windowed aggregations on event time (the observation's effective time, not its arrival):
trend peaks per patient and for the whole cohort, and sustained hypertension over a sliding window.

Every reading is placed in each window it belongs to, one row per window: per patient and per
cohort for each tumbling window of the configuration (hourly and daily by default), and per
patient for each sliding window of the sustained rule (7 days, sliding by a day). One
aggregation over (scope, period, patient, window) then computes every trend at once. One
aggregation, not one per window length, because a streaming query reads its source once per
aggregation branch; this way the topic is read and parsed once.

Pure transformations over classified readings (``patient_id``, ``observation_id``,
``effective_time``, ``systolic``, ``diastolic``, ``is_anomaly``, ``anomaly_types``): the same
functions serve static frames in tests and the streaming trend query. Every output row carries
``trend_id``, deterministic per key and window, so a re-emitted window overwrites its earlier
version in Elasticsearch.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.classify import DIASTOLIC_HIGH, DIASTOLIC_LOW, SYSTOLIC_HIGH, SYSTOLIC_LOW
from bp_spark.config import TrendsConfig
from bp_spark.config import duration_seconds as seconds

ANOMALY_TYPES = (SYSTOLIC_HIGH, SYSTOLIC_LOW, DIASTOLIC_HIGH, DIASTOLIC_LOW)
PATIENT, COHORT, SUSTAINED = "patient", "cohort", "sustained"

def sustained_period(config: TrendsConfig) -> str:
    """The ``period`` of sustained-hypertension windows, e.g. ``"7 days/1 day"``."""
    return f"{config.sustained_window}/{config.sustained_slide}"


def _window(start_s: Column, length_s: int) -> Column:
    return F.struct(F.timestamp_seconds(start_s).alias("window_start"),
                    F.timestamp_seconds(start_s + length_s).alias("window_end"))


def _slot(scope: str, period: str, patient: Column, window: Column) -> Column:
    return F.struct(F.lit(scope).alias("scope"), F.lit(period).alias("period"), patient.alias("key"),
                    window.alias("window"))


def with_windows(readings_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """One row per reading and window it belongs to: ``scope``, ``period``, ``key`` (the patient;
    null for the cohort), ``window_start``, ``window_end``. Windows are aligned to the epoch in
    UTC, as Spark's ``window()`` aligns them."""
    t = F.unix_seconds("effective_time")
    patient = F.col("patient_id")
    slots = []
    for label, duration in config.window_list:
        length = seconds(duration)
        start = F.floor(t / length) * length
        slots.append(_slot(PATIENT, label, patient, _window(start, length)))
        slots.append(_slot(COHORT, label, F.lit(None).cast("string"), _window(start, length)))
    length, slide = seconds(config.sustained_window), seconds(config.sustained_slide)
    latest_start = F.floor(t / slide) * slide
    period = sustained_period(config)
    for i in range(-(-length // slide)):  # every sliding window that holds the reading
        slots.append(_slot(SUSTAINED, period, patient, _window(latest_start - i * slide, length)))
    return (readings_df.withColumn("slot", F.explode(F.array(*slots)))
            .select("*", "slot.scope", "slot.period", "slot.key", "slot.window.window_start",
                    "slot.window.window_end")
            .drop("slot"))


def trend_id(*parts: Column | str) -> Column:
    """``part|part|...`` (null parts left out): the same key and window give the same id."""
    return F.concat_ws("|", *[(F.col(p) if isinstance(p, str) else p).cast("string") for p in parts])


def _peak() -> Column:
    """The reading with the highest systolic (then diastolic, then the latest) in the group."""
    reading = F.struct(
        F.col("observation_id").alias("observation_id"), F.col("effective_time").alias("effective_time"),
        F.col("systolic").alias("systolic"), F.col("diastolic").alias("diastolic"))
    return F.max_by(reading, F.struct("systolic", "diastolic", "effective_time"))


def aggregate_windows(windowed_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """The trend of each (scope, period, key, window): readings, mean/max/min systolic and
    diastolic, the peak reading and its time, anomalies per type, abnormal readings; for the
    cohort the distinct abnormal patients (exact: a set, which streaming aggregations allow where
    count-distinct is not); for sustained windows ``is_sustained``: either mean at or above its
    limit over at least ``sustained_min_readings`` readings."""
    aggregated_df = windowed_df.groupBy("scope", "period", "key", "window_start", "window_end").agg(
        F.count(F.lit(1)).alias("readings"),
        F.avg("systolic").alias("systolic_mean"), F.max("systolic").alias("systolic_max"),
        F.min("systolic").alias("systolic_min"),
        F.avg("diastolic").alias("diastolic_mean"), F.max("diastolic").alias("diastolic_max"),
        F.min("diastolic").alias("diastolic_min"),
        _peak().alias("peak"),
        F.struct(*[F.count(F.when(F.array_contains("anomaly_types", kind), 1)).alias(kind) for kind in ANOMALY_TYPES])
        .alias("anomalies"),
        F.count(F.when(F.col("is_anomaly"), 1)).alias("abnormal_readings"),
        F.collect_set(F.when(F.col("is_anomaly") & (F.col("scope") == COHORT), F.col("patient_id")))
        .alias("abnormal_patient_set"),
        F.max("effective_time").alias("last_reading_time"),
    )
    scope = F.col("scope")
    high = ((F.col("systolic_mean") >= config.sustained_systolic)
            | (F.col("diastolic_mean") >= config.sustained_diastolic))
    return aggregated_df.select(
        trend_id("scope", "period", "key", "window_start").alias("trend_id"),
        "scope", "period", F.col("key").alias("patient_id"), "window_start", "window_end",
        "readings", "systolic_mean", "systolic_max", "systolic_min", "diastolic_mean", "diastolic_max",
        "diastolic_min", "peak", "anomalies", "abnormal_readings",
        F.when(scope == COHORT, F.size("abnormal_patient_set")).alias("abnormal_patients"),
        "last_reading_time",
        F.when(scope == SUSTAINED, high & (F.col("readings") >= config.sustained_min_readings)).alias("is_sustained"),
    )


def all_trends(readings_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """Every trend of the configuration, for static frames (the trend query also de-duplicates the
    readings under a watermark before placing them in windows)."""
    return aggregate_windows(with_windows(readings_df, config), config)


def previous_window_id(config: TrendsConfig) -> Column:
    """The ``trend_id`` of the sustained window one slide earlier than this row's."""
    shift = F.expr(f"INTERVAL {seconds(config.sustained_slide)} SECONDS")
    return trend_id("scope", "period", "patient_id", F.col("window_start") - shift)


def sustained_onsets(windows: list[tuple[str, str, bool]], earlier: dict[str, bool]) -> list[str]:
    """The sustained windows that start a run: ``windows`` are ``(trend_id, previous_window_id,
    is_sustained)``; a sustained window is an onset when the window one slide earlier is not
    sustained, as this batch has it or else as ``earlier`` (the index) has it; unknown = not."""
    now = {window_id: sustained for window_id, _, sustained in windows}
    return sorted(window_id for window_id, previous_id, sustained in windows
                  if sustained and not now.get(previous_id, earlier.get(previous_id, False)))
