"""Windowed aggregations on event time (the observation's effective time, not its arrival):
trend peaks per patient and for the whole cohort, and sustained hypertension over a sliding window.

Every reading is placed in each tumbling window it belongs to, one row per window: per patient
for each window of ``trends.patient_windows`` (daily by default) and for the cohort for each of
``trends.windows`` (hourly and daily). One aggregation over (scope, period, key, window) then
computes every trend at once: one aggregation, not one per window length, because a streaming
query reads its source once per aggregation branch.

Sustained hypertension is a sliding window (7 days, sliding by a day), and a reading belongs to
7 of them. Those windows are not aggregated from readings but summed from the patient's windows
one slide long (the daily ones, :func:`sustained_windows`). Every measure is mergeable (counts,
sums, extremes, the peak), so the sum is the aggregate of the readings themselves, for a
seventh of the rows and of the state.

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


def slide_period(config: TrendsConfig) -> str:
    """The label of the patient windows one slide long, which the sustained windows are summed
    from (the configuration makes sure there is one)."""
    slide = seconds(config.sustained_slide)
    return next(label for label, duration in config.patient_window_list if seconds(duration) == slide)


def _window(start_s: Column, length_s: int) -> Column:
    return F.struct(F.timestamp_seconds(start_s).alias("window_start"),
                    F.timestamp_seconds(start_s + length_s).alias("window_end"))


def _slot(scope: str, period: str, patient: Column, window: Column) -> Column:
    return F.struct(F.lit(scope).alias("scope"), F.lit(period).alias("period"), patient.alias("key"),
                    window.alias("window"))


def with_windows(readings_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """One row per reading and tumbling window it belongs to: ``scope``, ``period``, ``key`` (the
    patient; null for the cohort), ``window_start``, ``window_end``. Windows are aligned to the
    epoch in UTC, as Spark's ``window()`` aligns them."""
    t = F.unix_seconds("effective_time")
    slots = []
    for scope, key, windows in ((PATIENT, F.col("patient_id"), config.patient_window_list),
                                (COHORT, F.lit(None).cast("string"), config.window_list)):
        for label, duration in windows:
            length = seconds(duration)
            slots.append(_slot(scope, label, key, _window(F.floor(t / length) * length, length)))
    return (readings_df.withColumn("slot", F.explode(F.array(*slots)))
            .select("*", "slot.scope", "slot.period", "slot.key", "slot.window.window_start",
                    "slot.window.window_end")
            .drop("slot"))


def trend_id(*parts: Column | str) -> Column:
    """``part|part|...`` (null parts left out): the same key and window give the same id."""
    return F.concat_ws("|", *[(F.col(p) if isinstance(p, str) else p).cast("string") for p in parts])


# What makes a reading the peak of a window: the highest systolic, then diastolic, then the latest.
# The last key breaks ties, so that a window's peak does not depend on the order its readings came in.
PEAK_ORDER = ("systolic", "diastolic", "effective_time", "observation_id")


def _peak() -> Column:
    """The peak reading of the group (:data:`PEAK_ORDER`)."""
    reading = F.struct(
        F.col("observation_id").alias("observation_id"), F.col("effective_time").alias("effective_time"),
        F.col("systolic").alias("systolic"), F.col("diastolic").alias("diastolic"))
    return F.max_by(reading, F.struct(*PEAK_ORDER))


def _finish(aggregated_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """Aggregates (grouped by scope, period, key, window) as trend rows: ``trend_id``, the means
    and, for sustained windows, ``is_sustained``: either mean at or above its limit over at least
    ``sustained_min_readings`` readings."""
    systolic_mean = F.col("systolic_sum") / F.col("readings")
    diastolic_mean = F.col("diastolic_sum") / F.col("readings")
    high = (systolic_mean >= config.sustained_systolic) | (diastolic_mean >= config.sustained_diastolic)
    return aggregated_df.select(
        trend_id("scope", "period", "key", "window_start").alias("trend_id"),
        "scope", "period", F.col("key").alias("patient_id"), "window_start", "window_end",
        "readings", "systolic_sum", systolic_mean.alias("systolic_mean"), "systolic_max", "systolic_min",
        "diastolic_sum", diastolic_mean.alias("diastolic_mean"), "diastolic_max", "diastolic_min",
        "peak", "anomalies", "abnormal_readings", "abnormal_patients", "last_reading_time",
        F.when(F.col("scope") == SUSTAINED, high & (F.col("readings") >= config.sustained_min_readings))
        .alias("is_sustained"),
    )


def aggregate_windows(windowed_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """The trend of each (scope, period, key, window): readings, sum/mean/max/min systolic and
    diastolic, the peak reading and its time, anomalies per type, abnormal readings; for the
    cohort the distinct abnormal patients (exact: a set, which streaming aggregations allow where
    count-distinct is not)."""
    aggregated_df = windowed_df.groupBy("scope", "period", "key", "window_start", "window_end").agg(
        F.count(F.lit(1)).alias("readings"),
        F.sum("systolic").alias("systolic_sum"), F.max("systolic").alias("systolic_max"),
        F.min("systolic").alias("systolic_min"),
        F.sum("diastolic").alias("diastolic_sum"), F.max("diastolic").alias("diastolic_max"),
        F.min("diastolic").alias("diastolic_min"),
        _peak().alias("peak"),
        F.struct(*[F.count(F.when(F.array_contains("anomaly_types", kind), 1)).alias(kind) for kind in ANOMALY_TYPES])
        .alias("anomalies"),
        F.count(F.when(F.col("is_anomaly"), 1)).alias("abnormal_readings"),
        F.collect_set(F.when(F.col("is_anomaly") & (F.col("scope") == COHORT), F.col("patient_id")))
        .alias("abnormal_patient_set"),
        F.max("effective_time").alias("last_reading_time"),
    )
    return _finish(aggregated_df.withColumn(
        "abnormal_patients", F.when(F.col("scope") == COHORT, F.size("abnormal_patient_set"))), config)


def sustained_windows(slides_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """The sustained windows summed from patient windows one slide long, with ``previous_trend_id``.

    ``slides_df``: rows of :func:`aggregate_windows` (scope patient, period :func:`slide_period`)
    and a boolean ``updated``. Every sliding window that holds an updated row is computed from all
    the rows of ``slides_df`` inside it: beside the updated rows, the caller passes the rows
    around them, up to a window's length away, that it already has (the index's).
    """
    length, slide = seconds(config.sustained_window), seconds(config.sustained_slide)
    starts = [F.col("_slide_start") - i * slide for i in range(length // slide)]
    placed = slides_df.withColumn("_slide_start", F.unix_seconds("window_start")).withColumn(
        "_start", F.explode(F.array(*starts)))
    merged = placed.groupBy(F.col("patient_id").alias("key"), "_start").agg(
        F.max(F.col("updated").cast("int")).alias("_updated"),
        F.sum("readings").alias("readings"),
        F.sum("systolic_sum").alias("systolic_sum"), F.max("systolic_max").alias("systolic_max"),
        F.min("systolic_min").alias("systolic_min"),
        F.sum("diastolic_sum").alias("diastolic_sum"), F.max("diastolic_max").alias("diastolic_max"),
        F.min("diastolic_min").alias("diastolic_min"),
        F.max_by("peak", F.struct(*[F.col(f"peak.{field}") for field in PEAK_ORDER])).alias("peak"),
        F.struct(*[F.sum(f"anomalies.{kind}").alias(kind) for kind in ANOMALY_TYPES]).alias("anomalies"),
        F.sum("abnormal_readings").alias("abnormal_readings"),
        F.max("last_reading_time").alias("last_reading_time"),
    ).where(F.col("_updated") == 1)
    windows_df = merged.select(
        "*", F.lit(SUSTAINED).alias("scope"), F.lit(sustained_period(config)).alias("period"),
        _window(F.col("_start"), length).alias("_window"), F.lit(None).cast("int").alias("abnormal_patients"),
    ).select("*", "_window.window_start", "_window.window_end")
    return _finish(windows_df, config).withColumn("previous_trend_id", previous_window_id(config))


def all_trends(readings_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """Every trend of the configuration, for static frames (the trend query also de-duplicates the
    readings under a watermark before placing them in windows)."""
    tumbling = aggregate_windows(with_windows(readings_df, config), config)
    slides = tumbling.where((F.col("scope") == PATIENT) & (F.col("period") == slide_period(config)))
    sustained = sustained_windows(slides.withColumn("updated", F.lit(True)), config)
    return tumbling.unionByName(sustained.drop("previous_trend_id"))


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
