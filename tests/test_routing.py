"""Tests of bp_spark/routing.py on static frames: which version of an observation a batch keeps."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import SparkSession

from bp_spark.routing.query import latest_versions

COLUMNS = "observation_id string, version_time timestamp, version_id string, kafka_timestamp timestamp, " \
          "kafka_partition int, kafka_offset long, bundle_entry int, systolic double"
T0 = datetime(2026, 1, 1, 8, 0)


def test_the_latest_version_wins_by_last_updated_then_version_id_then_arrival_then_entry(spark: SparkSession) -> None:
    rows = [
        # o1: the newest by meta.lastUpdated arrived first
        ("o1", datetime(2026, 1, 1, 9, 0), "3", T0, 0, 1, None, 150.0),
        ("o1", datetime(2026, 1, 1, 8, 30), "2", T0, 0, 2, None, 140.0),
        ("o1", None, None, T0, 0, 3, None, 130.0),
        # o2: no lastUpdated; versionId 10 is newer than 9 (compared as numbers, not text)
        ("o2", None, "10", T0, 1, 1, None, 120.0),
        ("o2", None, "9", T0, 1, 2, None, 110.0),
        # o3: no meta at all: the last to arrive
        ("o3", None, None, T0, 2, 5, None, 100.0),
        ("o3", None, None, T0, 2, 6, None, 101.0),
        # o4: versionIds that are not numbers: compared as text
        ("o4", None, "b", T0, 0, 7, None, 90.0),
        ("o4", None, "a", T0, 0, 8, None, 91.0),
        # o5: two versions in one Bundle, no meta: the later entry
        ("o5", None, None, T0, 0, 9, 3, 80.0),
        ("o5", None, None, T0, 0, 9, 1, 81.0),
    ]
    kept = {r.observation_id: r.systolic for r in latest_versions(spark.createDataFrame(rows, COLUMNS)).collect()}
    assert kept == {"o1": 150.0, "o2": 120.0, "o3": 101.0, "o4": 90.0, "o5": 80.0}
