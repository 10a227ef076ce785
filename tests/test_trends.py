"""Tests of bp_spark/trends.py on static frames with explicit timestamps."""

from __future__ import annotations

from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.classify import with_classification
from bp_spark.config import Config
from bp_spark.trends import cohort_trends, patient_trends, sustained_hypertension

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
    out = {(r.patient_id, r.window_start): r for r in patient_trends(sample_df, "1 hour", "hourly").collect()}
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
    out = {(r.patient_id, r.window_start): r for r in patient_trends(sample_df, "1 day", "daily").collect()}
    assert set(out) == {("p1", at(1, 0)), ("p2", at(1, 0)), ("p2", at(2, 0))}
    assert out[("p1", at(1, 0))].readings == 3
    assert out[("p1", at(1, 0))].systolic_min == 118.0


def test_cohort_daily_counts_distinct_abnormal_patients(spark: SparkSession, sample_df: DataFrame) -> None:
    out = cohort_trends(sample_df, "1 day", "daily").select(
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
    df = sustained_hypertension(_week(spark, config, systolic, diastolic), "7 days", "1 day")
    # The 7-day window that holds all seven daily readings starts on the first day.
    full = df.where((F.col("window_start") == at(1, 0)) & (F.col("readings") == 7)).collect()
    assert len(full) == 1
    row = full[0]
    assert row.systolic_mean == pytest.approx(systolic) and row.diastolic_mean == pytest.approx(diastolic)
    assert row.is_sustained is expected
    assert row.trend_id == "sustained|p1|2026-01-01 00:00:00|2026-01-08 00:00:00"


def test_sustained_windows_slide_by_a_day(spark, config) -> None:
    df = sustained_hypertension(_week(spark, config, 140.0, 90.0), "7 days", "1 day")
    starts = sorted(r.window_start for r in df.collect())
    # every 7-day window, sliding daily, that holds a reading of Jan 1-7: Dec 26 to Jan 7
    assert (starts[0], starts[-1], len(starts)) == (datetime(2025, 12, 26), at(7, 0), 13)
    assert all(r.is_sustained for r in df.collect())
