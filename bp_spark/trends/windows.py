"""A batch's readings as partial trend windows (Spark column functions; the merge is :mod:`.merge`).

Every reading is placed in each tumbling window it belongs to, one row per window: per patient
for each window of ``trends.patient_windows`` (daily by default) and for the cohort for each of
``trends.windows`` (hourly and daily). One aggregation over (scope, period, key, window) then
gives every window the batch touched, as a *partial*: counts, sums, extremes, the peak reading,
the cohort's abnormal patients as a set. Every measure is mergeable, so a window's document is
the merge of the partials of the batches that held its readings, whatever their order
(:func:`bp_spark.trends.merge.merge`), and the sliding windows of sustained hypertension are
sums of the daily ones (:func:`bp_spark.trends.merge.sustained`).

Pure transformations over classified readings (:data:`TREND_READING_COLUMNS`): the same
functions serve static frames in tests, the routing batch and the backfill. Every row carries
``trend_id``, deterministic per key and window.
"""

from __future__ import annotations

import orjson
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.clinical.classify import DIASTOLIC_HIGH, DIASTOLIC_LOW, SYSTOLIC_HIGH, SYSTOLIC_LOW
from bp_spark.columns import once_per_jvm
from bp_spark.config import TrendsConfig
from bp_spark.config import duration_seconds as seconds
from bp_spark.parse import RETRACTED_STATUS

ANOMALY_TYPES = (SYSTOLIC_HIGH, SYSTOLIC_LOW, DIASTOLIC_HIGH, DIASTOLIC_LOW)
PATIENT, COHORT, SUSTAINED = "patient", "cohort", "sustained"
# What a partial window is one of: its scope, period, key (the patient; null for the cohort) and time.
WINDOW_KEY = ("scope", "period", "key", "window_start", "window_end")

# What the trend windows read of a reading.
TREND_READING_COLUMNS = ("observation_id", "patient_id", "effective_time", "systolic", "diastolic", "is_anomaly",
                         "anomaly_types")


def counts_in_trends() -> Column:
    """A reading the trend windows count: usable, not a retraction, not a half waiting for its
    partner (a pair counts once paired, as the panel it makes)."""
    return F.col("error").isNull() & (F.col("status") != RETRACTED_STATUS) & F.col("half").isNull()


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
    return (readings_df.withColumn("slot", _slots(config))
            .select("*", "slot.scope", "slot.period", "slot.key", "slot.window.window_start",
                    "slot.window.window_end")
            .drop("slot"))


@once_per_jvm
def _slots(config: TrendsConfig) -> Column:
    """Each reading's windows, exploded: one per patient window and cohort window."""
    t = F.unix_seconds("effective_time")
    slots = []
    for scope, key, windows in ((PATIENT, F.col("patient_id"), config.patient_window_list),
                                (COHORT, F.lit(None).cast("string"), config.window_list)):
        for label, duration in windows:
            length = seconds(duration)
            slots.append(_slot(scope, label, key, _window(F.floor(t / length) * length, length)))
    return F.explode(F.array(*slots))


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


def aggregate_windows(windowed_df: DataFrame) -> DataFrame:
    """The partial of each (scope, period, key, window): readings, sum/max/min systolic and
    diastolic, the peak reading and its time, anomalies per type, abnormal readings, the last
    reading's time; for the cohort the set of abnormal patients (``abnormal_patient_set``)."""
    measures, out = _aggregation()
    return windowed_df.groupBy(*WINDOW_KEY).agg(*measures).select(*out)


@once_per_jvm
def _aggregation() -> tuple[tuple[Column, ...], tuple[Column | str, ...]]:
    """(the measures of a window, the partial's columns made from them)."""
    measures = {
        "readings": F.count(F.lit(1)),
        "systolic_sum": F.sum("systolic"), "systolic_max": F.max("systolic"), "systolic_min": F.min("systolic"),
        "diastolic_sum": F.sum("diastolic"), "diastolic_max": F.max("diastolic"), "diastolic_min": F.min("diastolic"),
        "peak": _peak(),
        "anomalies": F.struct(*[F.count(F.when(F.array_contains("anomaly_types", kind), 1)).alias(kind)
                                for kind in ANOMALY_TYPES]),
        "abnormal_readings": F.count(F.when(F.col("is_anomaly"), 1)),
        # the cohort's: a set, merged by union (exact)
        "abnormal_patient_set": F.collect_set(F.when(F.col("is_anomaly") & (F.col("scope") == COHORT),
                                                     F.col("patient_id"))),
        "last_reading_time": F.max("effective_time"),
    }
    return (tuple(measure.alias(name) for name, measure in measures.items()),
            (trend_id("scope", "period", "key", "window_start").alias("trend_id"),
             "scope", "period", F.col("key").alias("patient_id"), "window_start", "window_end", *measures))


def partial_windows(readings_df: DataFrame, config: TrendsConfig) -> DataFrame:
    """The partial window of every (scope, period, key, window) that ``readings_df`` touches."""
    return aggregate_windows(with_windows(readings_df, config))


def collect_readings(readings_df: DataFrame) -> list[tuple]:
    """A small batch's readings on the driver, as :func:`bp_spark.trends.merge.partials_of` takes
    them (:data:`TREND_READING_COLUMNS`, the time in epoch microseconds): one narrow Spark job, no
    shuffle."""
    columns = [F.unix_micros(name).alias(name) if name == "effective_time" else name
               for name in TREND_READING_COLUMNS]
    return [tuple(row) for row in readings_df.select(*columns).collect()]


@once_per_jvm
def _partial_json(names: tuple[str, ...]) -> Column:
    """A partial window as JSON, times in epoch milliseconds (``names``: the partial's columns)."""
    ms = {name: F.unix_millis(name).alias(name) for name in ("window_start", "window_end", "last_reading_time")}
    peak = F.struct(F.col("peak.observation_id").alias("observation_id"),
                    F.unix_millis("peak.effective_time").alias("effective_time"),
                    F.col("peak.systolic").alias("systolic"), F.col("peak.diastolic").alias("diastolic"))
    columns = [ms.get(name, F.col(name)) for name in names if name not in ("peak", "abnormal_patient_set")]
    patients = F.when(F.col("scope") == COHORT, F.array_sort("abnormal_patient_set"))
    row = F.struct(*columns, peak.alias("peak"), patients.alias("abnormal_patient_ids"))
    return F.to_json(row, {"ignoreNullFields": "false"}).alias("json")


def collect_partials(partials_df: DataFrame) -> list[dict]:
    """The rows of :func:`partial_windows` as the plain dicts the merge takes, times in epoch
    milliseconds (as Elasticsearch returns them), the cohort's abnormal patients as a sorted list.
    Spark writes each as JSON: a hundred thousand windows (a backfill-sized batch) come to the
    driver in a second or two, where Row objects took ten."""
    out = []
    for r in partials_df.select(_partial_json(tuple(partials_df.columns))).collect():
        window = orjson.loads(r.json)
        if window["abnormal_patient_ids"] is None:
            del window["abnormal_patient_ids"]
        out.append(window)
    return out
