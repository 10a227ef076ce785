"""Tests of bp_spark/trends/ on static frames with explicit timestamps: the windows a batch's
readings make, their merge across batches (exactly once), and the sustained windows."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.clinical.classify import rules_for, with_classification
from bp_spark.config import Config, TrendsConfig, load_config
from bp_spark.routing.query import readings_stream
from bp_spark.trends.merge import finish, is_daily, merge, merged_windows, partials_of, sustained, sustained_onsets
from bp_spark.trends.step import all_trends
from bp_spark.trends.windows import TREND_READING_COLUMNS, collect_partials, collect_readings, partial_windows
from test_parse import BASE

TRENDS = TrendsConfig(enabled=True, trigger="", windows="hourly=1 hour, daily=1 day",
                      patient_windows="hourly=1 hour, daily=1 day",
                      sustained_window="7 days", sustained_slide="1 day", sustained_systolic=135.0,
                      sustained_diastolic=85.0, sustained_min_readings=1)
TIMES = ("window_start", "window_end", "last_reading_time")


def _utc(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).replace(tzinfo=None)


def as_row(window: dict) -> SimpleNamespace:
    """A window with its times as the (naive UTC) datetimes the tests write."""
    peak = {**window["peak"], "effective_time": _utc(window["peak"]["effective_time"])}
    return SimpleNamespace(**{**window, **{name: _utc(window[name]) for name in TIMES}, "peak": peak})


def trends(df: DataFrame, scope: str, period: str | None = None, config: TrendsConfig = TRENDS) -> list:
    return [as_row(w) for w in all_trends(df, config)
            if w["scope"] == scope and (period is None or w["period"] == period)]

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
    return spark.createDataFrame(rows, READINGS).transform(lambda df: with_classification(df, rules_for(config)))


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
    out = {(r.patient_id, r.window_start): r for r in trends(sample_df, "patient", "hourly")}
    assert len(out) == 4
    p1 = out[("p1", at(1, 8))]
    assert p1.trend_id == "patient|hourly|p1|2026-01-01 08:00:00"
    assert p1.window_end == at(1, 9)
    assert (p1.readings, p1.systolic_mean, p1.systolic_max, p1.systolic_min) == (2, 157.5, 165.0, 150.0)
    assert (p1.diastolic_mean, p1.diastolic_max, p1.diastolic_min) == (90.0, 95.0, 85.0)
    assert p1.peak == {"observation_id": "o2", "effective_time": at(1, 8, 40), "systolic": 165.0, "diastolic": 85.0}
    assert p1.anomalies == {"systolic_high": 2, "systolic_low": 0, "diastolic_high": 1, "diastolic_low": 0}
    p2 = out[("p2", at(1, 8))]
    assert p2.anomalies == {"systolic_high": 0, "systolic_low": 1, "diastolic_high": 0, "diastolic_low": 1}


def test_patient_daily_windows(sample_df: DataFrame) -> None:
    out = {(r.patient_id, r.window_start): r for r in trends(sample_df, "patient", "daily")}
    assert set(out) == {("p1", at(1, 0)), ("p2", at(1, 0)), ("p2", at(2, 0))}
    assert out[("p1", at(1, 0))].readings == 3
    assert out[("p1", at(1, 0))].systolic_min == 118.0


def test_cohort_daily_counts_distinct_abnormal_patients(spark: SparkSession, sample_df: DataFrame) -> None:
    out = sorted((r.trend_id, r.window_start, r.readings, r.abnormal_readings, r.abnormal_patients, r.systolic_max,
                  r.diastolic_max) for r in trends(sample_df, "cohort", "daily"))
    assert out == [
        ("cohort|daily|2026-01-01 00:00:00", at(1, 0), 4, 3, 2, 165.0, 95.0),
        ("cohort|daily|2026-01-02 00:00:00", at(2, 0), 1, 0, 0, 120.0, 80.0),
    ]


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
    full = [r for r in df if r.window_start == at(1, 0) and r.readings == 7]
    assert len(full) == 1
    row = full[0]
    assert row.systolic_mean == pytest.approx(systolic) and row.diastolic_mean == pytest.approx(diastolic)
    assert row.is_sustained is expected
    assert row.trend_id == "sustained|7 days/1 day|p1|2026-01-01 00:00:00"
    assert (row.window_end, row.last_reading_time) == (at(8, 0), at(7, 7))


def test_sustained_windows_slide_by_a_day(spark, config) -> None:
    df = trends(_week(spark, config, 140.0, 90.0), "sustained")
    starts = sorted(r.window_start for r in df)
    # every 7-day window, sliding daily, that holds a reading of Jan 1-7: Dec 26 to Jan 7
    assert (starts[0], starts[-1], len(starts)) == (datetime(2025, 12, 26), at(7, 0), 13)
    assert all(r.is_sustained for r in df)


def test_sustained_needs_enough_readings(spark, config) -> None:
    twelve = dataclasses.replace(TRENDS, sustained_min_readings=12)
    rows = [(f"o{d}-{h}", "p1", at(d, h), 150.0, 95.0) for d in range(1, 8) for h in (7, 19)]  # 14 readings
    out = {r.window_start: r for r in trends(readings(spark, config, rows), "sustained", config=twelve)}
    assert (out[at(1, 0)].readings, out[at(1, 0)].is_sustained) == (14, True)
    assert (out[at(2, 0)].readings, out[at(2, 0)].is_sustained) == (12, True)
    assert (out[at(3, 0)].readings, out[at(3, 0)].is_sustained) == (10, False)


def test_every_scope_and_window_has_one_row_per_key(spark, config, sample_df) -> None:
    windows = all_trends(sample_df, TRENDS)
    counts = {}
    for w in windows:
        counts[(w["scope"], w["period"])] = counts.get((w["scope"], w["period"]), 0) + 1
    # p1: 2 hours on day 1; p2: one hour on day 1 and one on day 2; sustained: 7 windows per reading day
    assert counts == {("patient", "hourly"): 4, ("patient", "daily"): 3, ("cohort", "hourly"): 3,
                      ("cohort", "daily"): 2, ("sustained", "7 days/1 day"): 7 + 8}
    ids = [w["trend_id"] for w in windows]
    assert len(ids) == len(set(ids))
    cohort = next(r for r in trends(sample_df, "cohort", "hourly") if r.window_start == at(1, 8))
    assert cohort.trend_id == "cohort|hourly|2026-01-01 08:00:00" and cohort.patient_id is None


def test_onset_is_the_first_sustained_window_of_a_run() -> None:
    windows = [("w2", "w1", True), ("w3", "w2", True), ("w5", "w4", True), ("w4", "w3", False), ("w9", "w8", True)]
    # w2: w1 unknown -> onset; w3 follows w2; w5 follows a non-sustained w4; w9: w8 sustained in the index
    assert sustained_onsets(windows, {"w8": True}) == ["w2", "w5"]
    assert sustained_onsets(windows, {}) == ["w2", "w5", "w9"]


def test_the_query_parses_each_message_once(spark: SparkSession) -> None:
    """A filter pushed down into the parser would have Spark copy from_json into the condition
    once per field the parser derives (133 times, 15x slower: bench/parse_bench.py); none is (the
    parser reads the clock, so Spark pushes no filter through it). The query, and a filter on its
    rows, may hold no more than the parser's own four (the message; a Bundle's entries, evaluated
    for Bundles only; the JSON check of a record without resourceType; the value of a systolic
    or diastolic sent alone, read for such a half only)."""
    source_df = (spark.readStream.format("rate").load()
                 # an id per row: a constant payload would be parsed once by the optimizer itself
                 .select(F.format_string(json.dumps(BASE).replace('"bp-1"', '"bp-%d"'), "value").cast("binary")
                         .alias("value"), F.lit("t").alias("topic"),
                         F.lit(0).alias("partition"), F.col("value").alias("offset"), "timestamp"))
    config = dataclasses.replace(load_config(), trends=TRENDS)
    # The optimizer's plan (a streaming plan's own optimizedPlan() insists on start()).
    optimizer = spark._jsparkSession.sessionState().optimizer()
    readings_df = readings_stream(source_df, config)
    for query in (readings_df, readings_df.where(F.col("error").isNull() & (F.col("systolic") > 140))):
        plan = optimizer.execute(query._jdf.queryExecution().analyzed()).toString()
        assert plan.count("from_json(") == 4, plan[:3000]


def _month(spark: SparkSession, config: Config) -> DataFrame:
    """Three patients over 12 days, several readings a day, some abnormal, ties for the peak."""
    rng = random.Random(7)
    rows = []
    for patient in ("p1", "p2", "p3"):
        for day in range(1, 13):
            for hour in rng.sample(range(24), 4):
                rows.append((f"{patient}-{day}-{hour}", patient, at(day, hour, rng.randrange(60)),
                             float(rng.choice((85, 118, 135, 142, 142, 165))), float(rng.choice((55, 78, 86, 92)))))
    return readings(spark, config, rows)


def _index(merged: dict[str, dict], store: dict[str, dict], config: TrendsConfig) -> None:
    """What a merge writes: each window finished, its sustained windows summed from the days as they stand."""
    store.update({trend_id: finish(window, config) for trend_id, window in merged.items()})
    days = [w for w in merged.values() if is_daily(w, config)]
    daily = {trend_id: doc for trend_id, doc in store.items() if is_daily(doc, config)}
    store.update({w["trend_id"]: w for w in sustained(daily, days, config)})


def _same(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys()
    for trend_id, doc in want.items():
        for name, value in doc.items():
            if name in ("tag", "batch_id"):
                continue
            if isinstance(value, float):
                assert got[trend_id][name] == pytest.approx(value), (trend_id, name)
            elif name == "abnormal_patient_ids":
                assert sorted(got[trend_id][name]) == sorted(value)
            else:
                assert got[trend_id][name] == value, (trend_id, name)


def test_windows_merged_batch_by_batch_equal_the_windows_of_all_readings_at_once(spark, config) -> None:
    """The routing query merges each batch's partial windows into the index: in any order of
    batches, the documents are those of all the readings aggregated at once (the trend query's
    windows before: same ids, peaks, sums, means, sustained flags), and a batch merged again
    (a replay, a merge retried after a crash) changes nothing."""
    month_df = _month(spark, config)
    want = {w["trend_id"]: w for w in all_trends(month_df, TRENDS)}
    ids = [r.observation_id for r in month_df.select("observation_id").collect()]
    random.Random(3).shuffle(ids)  # batches hold readings of any day, in any order
    batches = [ids[i::5] for i in range(5)]
    store: dict[str, dict] = {}
    for batch_id, batch_ids in enumerate(batches):
        partials = collect_partials(partial_windows(month_df.where(F.col("observation_id").isin(batch_ids)), TRENDS))
        _index(merged_windows(store, [(batch_id, partials)], "job-a"), store, TRENDS)
        if batch_id == 2:  # replayed, and merged with the next one in one go
            again = merged_windows(store, [(batch_id, partials)], "job-a")
            assert again == {}
    _same({k: {n: v for n, v in d.items() if n != "previous_trend_id"} for k, d in store.items()},
          {k: {n: v for n, v in d.items() if n != "previous_trend_id"} for k, d in want.items()})


def test_a_small_batchs_windows_made_on_the_driver_are_sparks_value_for_value(spark, config) -> None:
    """A live batch makes its partial windows on the driver (no Spark aggregation): the same
    windows as Spark's, every measure equal, peaks chosen alike where only the microsecond or
    the id tells two readings apart, and a reading without an id losing a tie as Spark has it."""
    month_df = _month(spark, config).unionByName(readings(spark, config, [
        ("t-b", "p9", datetime(2026, 1, 3, 10, 0, 0, 500), 170.0, 100.0),  # the same millisecond:
        ("t-a", "p9", datetime(2026, 1, 3, 10, 0, 0, 900), 170.0, 100.0),  # the later microsecond peaks
        (None, "p8", at(4, 9), 180.0, 110.0),  # no id: below the one with an id, all else equal
        ("x", "p8", at(4, 9), 180.0, 110.0),
        (None, "p8", at(4, 23, 59), 90.0, 58.0),
    ]))
    want = sorted(collect_partials(partial_windows(month_df.select(*TREND_READING_COLUMNS), TRENDS)),
                  key=lambda w: w["trend_id"])
    got = sorted(partials_of(collect_readings(month_df), TRENDS), key=lambda w: w["trend_id"])
    assert len(got) == len(want) > 100
    assert got == want
    peaks = {w["trend_id"]: w["peak"]["observation_id"] for w in got}
    assert peaks["patient|hourly|p9|2026-01-03 10:00:00"] == "t-a"
    assert peaks["patient|hourly|p8|2026-01-04 09:00:00"] == "x"


def test_sustained_windows_match_sparks_own_sliding_windows(spark, config) -> None:
    """The sustained windows, summed from daily ones, against Spark's window() over the readings."""
    month_df = _month(spark, config)
    ours = {(r.patient_id, r.window_start): r for r in trends(month_df, "sustained")}
    sliding = (month_df.groupBy("patient_id", F.window("effective_time", "7 days", "1 day"))
               .agg(F.count(F.lit(1)).alias("n"), F.avg("systolic").alias("s"), F.avg("diastolic").alias("d"),
                    F.max("systolic").alias("smax"), F.min("diastolic").alias("dmin")).collect())
    assert len(sliding) == len(ours)
    for r in sliding:
        mine = ours[(r.patient_id, r.window.start)]
        assert (mine.readings, mine.systolic_max, mine.diastolic_min) == (r.n, r.smax, r.dmin)
        assert (mine.systolic_mean, mine.diastolic_mean) == (pytest.approx(r.s), pytest.approx(r.d))
        assert mine.window_end == r.window.end


def _partial(trend_id: str, batch: int, systolic: float, observation_id: str | None, ids=()) -> dict:
    return {"trend_id": trend_id, "scope": "cohort", "period": "daily", "patient_id": None, "window_start": 0,
            "window_end": 86_400_000, "readings": 1, "systolic_sum": systolic, "diastolic_sum": 80.0,
            "abnormal_readings": len(ids), "systolic_max": systolic, "diastolic_max": 80.0, "last_reading_time": batch,
            "systolic_min": systolic, "diastolic_min": 80.0, "anomalies": {"systolic_high": len(ids)},
            "peak": {"observation_id": observation_id, "effective_time": batch, "systolic": systolic, "diastolic": 80.0},
            "abnormal_patient_ids": list(ids)}


def test_a_merge_adds_each_batch_once_and_keeps_the_peak_and_the_patients_exact() -> None:
    first = merged_windows({}, [(0, [_partial("w", 0, 150.0, "a", ["p1"])]), (1, [_partial("w", 1, 150.0, "b", ["p1", "p2"])])],
                           "job-a")["w"]
    assert (first["readings"], first["batch_id"], first["tag"]) == (2, 1, "job-a")
    assert first["peak"]["observation_id"] == "b"  # a tie on the values: the later reading, then the id
    assert finish(first, TRENDS)["abnormal_patients"] == 2
    stored = {"w": finish(first, TRENDS)}
    # Batch 0 and 1 again (a replay) and batch 2: only batch 2 is added.
    again = merged_windows(stored, [(0, [_partial("w", 0, 150.0, "a", ["p1"])]),
                                    (1, [_partial("w", 1, 150.0, "b")]), (2, [_partial("w", 2, 90.0, None, ["p3"])])],
                           "job-a")["w"]
    assert (again["readings"], again["systolic_min"], again["batch_id"]) == (3, 90.0, 2)
    assert again["abnormal_patient_ids"] == ["p1", "p2", "p3"]
    # Another job (a new checkpoint) numbers its batches from 0 again: its batch 0 is new.
    other = merged_windows({"w": finish(again, TRENDS)}, [(0, [_partial("w", 0, 120.0, None)])], "job-b")["w"]
    assert (other["readings"], other["tag"], other["batch_id"]) == (4, "job-b", 0)
    assert merge(None, _partial("w", 0, 1.0, None))["peak"] is not _partial("w", 0, 1.0, None)["peak"]


def test_an_onsets_reason_rounds_its_means_half_up_for_its_alerting_reading_and_its_episode_alike() -> None:
    from bp_spark.documents import sustained_reason
    assert sustained_reason(150.5, 94.5, 12, "7 days", 135.0, 85.0) == (
        "sustained hypertension: mean 151/95 mmHg over 12 readings in 7 days (limit 135/85)")
    assert sustained_reason(149.49, 95.0, 3, "7 days", 130.0, 80.0).startswith("sustained hypertension: mean 149/95 ")
