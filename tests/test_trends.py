"""Tests of bp_spark/trends.py on static frames with explicit timestamps."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.classify import with_classification
from bp_spark.config import Config, TrendsConfig, load_config
from bp_spark.routing import readings_stream
from bp_spark.streaming import keep_rows
from bp_spark.trend_query import trends_stream
from bp_spark.trends import all_trends, sustained_onsets
from test_parse import BASE

TRENDS = TrendsConfig(enabled=True, trigger="", windows="hourly=1 hour, daily=1 day", watermark="1 day",
                      patient_windows="hourly=1 hour, daily=1 day",
                      sustained_window="7 days", sustained_slide="1 day", sustained_systolic=135.0,
                      sustained_diastolic=85.0, sustained_min_readings=1)


def trends(df: DataFrame, scope: str, period: str | None = None, config: TrendsConfig = TRENDS) -> DataFrame:
    out = all_trends(df, config).where(F.col("scope") == scope)
    return out.where(F.col("period") == period) if period else out

READINGS = T.StructType([
    T.StructField("observation_id", T.StringType()),
    T.StructField("patient_id", T.StringType()),
    T.StructField("effective_time", T.TimestampType()),
    T.StructField("systolic", T.DoubleType()),
    T.StructField("diastolic", T.DoubleType()),
])


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute)  # the session's zone is UTC


def readings(spark: SparkSession, config: Config, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, READINGS).transform(lambda df: with_classification(df, config.thresholds))


@pytest.fixture
def sample_df(spark: SparkSession, config: Config) -> DataFrame:
    return readings(spark, config, [
        ("o1", "p1", at(1, 8, 5), 150.0, 95.0),    # systolic_high, diastolic_high
        ("o2", "p1", at(1, 8, 40), 165.0, 85.0),   # systolic_high: the 08:00 peak
        ("o3", "p1", at(1, 9, 10), 118.0, 76.0),
        ("o4", "p2", at(1, 8, 30), 85.0, 55.0),    # systolic_low, diastolic_low
        ("o5", "p2", at(2, 8, 30), 120.0, 80.0),
    ])


def test_patient_hourly_aggregates_and_peak(spark: SparkSession, sample_df: DataFrame) -> None:
    out = {(r.patient_id, r.window_start): r for r in trends(sample_df, "patient", "hourly").collect()}
    assert len(out) == 4
    p1 = out[("p1", at(1, 8))]
    assert p1.trend_id == "patient|hourly|p1|2026-01-01 08:00:00"
    assert p1.window_end == at(1, 9)
    assert (p1.readings, p1.systolic_mean, p1.systolic_max, p1.systolic_min) == (2, 157.5, 165.0, 150.0)
    assert (p1.diastolic_mean, p1.diastolic_max, p1.diastolic_min) == (90.0, 95.0, 85.0)
    assert p1.peak.asDict() == {"observation_id": "o2", "effective_time": at(1, 8, 40), "systolic": 165.0, "diastolic": 85.0}
    assert p1.anomalies.asDict() == {"systolic_high": 2, "systolic_low": 0, "diastolic_high": 1, "diastolic_low": 0}
    p2 = out[("p2", at(1, 8))]
    assert p2.anomalies.asDict() == {"systolic_high": 0, "systolic_low": 1, "diastolic_high": 0, "diastolic_low": 1}


def test_patient_daily_windows(sample_df: DataFrame) -> None:
    out = {(r.patient_id, r.window_start): r for r in trends(sample_df, "patient", "daily").collect()}
    assert set(out) == {("p1", at(1, 0)), ("p2", at(1, 0)), ("p2", at(2, 0))}
    assert out[("p1", at(1, 0))].readings == 3
    assert out[("p1", at(1, 0))].systolic_min == 118.0


def test_cohort_daily_counts_distinct_abnormal_patients(spark: SparkSession, sample_df: DataFrame) -> None:
    out = trends(sample_df, "cohort", "daily").select(
        "trend_id", "window_start", "readings", "abnormal_readings", "abnormal_patients", "systolic_max", "diastolic_max")
    expected = spark.createDataFrame([
        ("cohort|daily|2026-01-01 00:00:00", at(1, 0), 4, 3, 2, 165.0, 95.0),
        ("cohort|daily|2026-01-02 00:00:00", at(2, 0), 1, 0, 0, 120.0, 80.0),
    ], "trend_id string, window_start timestamp, readings long, abnormal_readings long, abnormal_patients int, "
       "systolic_max double, diastolic_max double")
    assert_df_equality(out, expected, ignore_row_order=True, ignore_nullable=True)


def _week(spark: SparkSession, config: Config, systolic: float, diastolic: float) -> DataFrame:
    rows = [(f"o{d}", "p1", at(d, 7), systolic, diastolic) for d in range(1, 8)]
    return readings(spark, config, rows)


@pytest.mark.parametrize(("systolic", "diastolic", "expected"), [
    (134.9, 80.0, False),   # just below on systolic
    (135.0, 80.0, True),    # at the systolic threshold
    (120.0, 84.9, False),   # just below on diastolic
    (120.0, 85.0, True),    # at the diastolic threshold
])
def test_sustained_hypertension_at_and_below_threshold(spark, config, systolic, diastolic, expected) -> None:
    df = trends(_week(spark, config, systolic, diastolic), "sustained")
    # The 7-day window that holds all seven daily readings starts on the first day.
    full = df.where((F.col("window_start") == at(1, 0)) & (F.col("readings") == 7)).collect()
    assert len(full) == 1
    row = full[0]
    assert row.systolic_mean == pytest.approx(systolic) and row.diastolic_mean == pytest.approx(diastolic)
    assert row.is_sustained is expected
    assert row.trend_id == "sustained|7 days/1 day|p1|2026-01-01 00:00:00"
    assert (row.window_end, row.last_reading_time) == (at(8, 0), at(7, 7))


def test_sustained_windows_slide_by_a_day(spark, config) -> None:
    df = trends(_week(spark, config, 140.0, 90.0), "sustained")
    starts = sorted(r.window_start for r in df.collect())
    # every 7-day window, sliding daily, that holds a reading of Jan 1-7: Dec 26 to Jan 7
    assert (starts[0], starts[-1], len(starts)) == (datetime(2025, 12, 26), at(7, 0), 13)
    assert all(r.is_sustained for r in df.collect())


def test_sustained_needs_enough_readings(spark, config) -> None:
    twelve = dataclasses.replace(TRENDS, sustained_min_readings=12)
    rows = [(f"o{d}-{h}", "p1", at(d, h), 150.0, 95.0) for d in range(1, 8) for h in (7, 19)]  # 14 readings
    out = {r.window_start: r for r in trends(readings(spark, config, rows), "sustained", config=twelve).collect()}
    assert (out[at(1, 0)].readings, out[at(1, 0)].is_sustained) == (14, True)
    assert (out[at(2, 0)].readings, out[at(2, 0)].is_sustained) == (12, True)
    assert (out[at(3, 0)].readings, out[at(3, 0)].is_sustained) == (10, False)


def test_every_scope_and_window_has_one_row_per_key(spark, config, sample_df) -> None:
    counts = {(r.scope, r.period): r["count"] for r in all_trends(sample_df, TRENDS).groupBy("scope", "period").count().collect()}
    # p1: 2 hours on day 1; p2: one hour on day 1 and one on day 2; sustained: 7 windows per reading day
    assert counts == {("patient", "hourly"): 4, ("patient", "daily"): 3, ("cohort", "hourly"): 3,
                      ("cohort", "daily"): 2, ("sustained", "7 days/1 day"): 7 + 8}
    ids = [r.trend_id for r in all_trends(sample_df, TRENDS).collect()]
    assert len(ids) == len(set(ids))
    cohort = trends(sample_df, "cohort", "hourly").where(F.col("window_start") == at(1, 8)).first()
    assert cohort.trend_id == "cohort|hourly|2026-01-01 08:00:00" and cohort.patient_id is None


def test_onset_is_the_first_sustained_window_of_a_run() -> None:
    windows = [("w2", "w1", True), ("w3", "w2", True), ("w5", "w4", True), ("w4", "w3", False), ("w9", "w8", True)]
    # w2: w1 unknown -> onset; w3 follows w2; w5 follows a non-sustained w4; w9: w8 sustained in the index
    assert sustained_onsets(windows, {"w8": True}) == ["w2", "w5"]
    assert sustained_onsets(windows, {}) == ["w2", "w5", "w9"]


def test_the_queries_parse_each_message_once(spark: SparkSession) -> None:
    """A filter after the parser is pushed down into it, and Spark copies from_json into the
    condition once per field the parser derives (133 times, 15x slower: bench/parse_bench.py).
    Neither query may hold more than the parser's own four (the message; a Bundle's entries,
    evaluated for Bundles only; the JSON check of a record without resourceType; the value of a
    systolic or diastolic sent alone, read for such a half only)."""
    source_df = (spark.readStream.format("rate").load()
                 # an id per row: a constant payload would be parsed once by the optimizer itself
                 .select(F.format_string(json.dumps(BASE).replace('"bp-1"', '"bp-%d"'), "value").cast("binary")
                         .alias("value"), F.lit("t").alias("topic"),
                         F.lit(0).alias("partition"), F.col("value").alias("offset"), "timestamp"))
    config = dataclasses.replace(load_config(), trends=TRENDS)
    for query_df in (readings_stream(source_df, config), trends_stream(source_df, config)):
        # The optimizer's plan (a streaming plan's own optimizedPlan() insists on start()).
        analyzed = query_df._jdf.queryExecution().analyzed()
        plan = spark._jsparkSession.sessionState().optimizer().execute(analyzed).toString()
        assert plan.count("from_json(") == 4, plan[:3000]


def test_keep_rows_is_a_filter_spark_cannot_push_down(spark: SparkSession, sample_df: DataFrame) -> None:
    kept = keep_rows(sample_df, F.col("patient_id") != "p1")
    assert_df_equality(kept, sample_df.where(F.col("patient_id") != "p1"), ignore_row_order=True)
    assert "Filter" not in kept._jdf.queryExecution().optimizedPlan().toString()
