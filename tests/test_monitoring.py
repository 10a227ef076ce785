"""Tests of bp_spark/monitoring.py's record on a progress report as Spark writes it."""

from __future__ import annotations

import json

from bp_spark.monitoring import RECORDS_READ, ProgressLog, kafka_lag, late_rows, lost_offsets, progress_record

PROGRESS = {
    "id": "q-1", "runId": "r-1", "name": "bp_monitor_trends", "timestamp": "2026-11-28T10:00:00.000Z",
    "batchId": 7, "numInputRows": 1500, "inputRowsPerSecond": 150.04, "processedRowsPerSecond": 1234.56,
    "durationMs": {"addBatch": 1100, "triggerExecution": 1215},
    "eventTime": {"watermark": "2026-01-04T00:00:00.000Z"},
    "stateOperators": [
        {"operatorName": "dedupeWithinWatermark", "numRowsTotal": 900, "numRowsDroppedByWatermark": 11,
         "numRowsUpdated": 40, "numRowsRemoved": 35, "allUpdatesTimeMs": 12, "allRemovalsTimeMs": 230,
         "commitTimeMs": 18, "memoryUsedBytes": 524288},
        {"operatorName": "stateStoreSave", "numRowsTotal": 100, "numRowsDroppedByWatermark": 0},
    ],
    "sources": [{
        "description": "KafkaV2[Subscribe[vitals]]",
        "startOffset": json.dumps({"vitals": {"0": 0, "1": 0}}),
        "endOffset": json.dumps({"vitals": {"0": 700, "1": 800}}),
        "latestOffset": json.dumps({"vitals": {"0": 1000, "1": 800}}),
    }],
}


def test_kafka_lag_per_partition() -> None:
    assert kafka_lag(PROGRESS) == [
        {"topic": "vitals", "partition": 0, "processed_offset": 700, "latest_offset": 1000, "lag": 300},
        {"topic": "vitals", "partition": 1, "processed_offset": 800, "latest_offset": 800, "lag": 0},
    ]


def test_a_replayed_batch_without_latest_offsets_still_lists_its_partitions() -> None:
    """The first batch after a restart replays the checkpoint's plan; Spark reports no latest offsets."""
    source = {**PROGRESS["sources"][0], "latestOffset": None}
    replayed = {**PROGRESS, "sources": [source], "observedMetrics": {RECORDS_READ: {"0": 697, "1": 800}}}
    assert kafka_lag(replayed) == [
        {"topic": "vitals", "partition": 0, "processed_offset": 700, "latest_offset": 700, "lag": 0},
        {"topic": "vitals", "partition": 1, "processed_offset": 800, "latest_offset": 800, "lag": 0},
    ]
    assert [p["lost_offsets"] for p in progress_record(replayed, {})["kafka_partitions"]] == [3, 0]


def test_record_of_a_batch() -> None:
    record = progress_record(PROGRESS, {"trend_windows": 40, "alerts": 1})
    assert record == {
        "timestamp": "2026-11-28T10:00:00.000Z", "query": "bp_monitor_trends", "query_id": "q-1", "run_id": "r-1",
        "batch_id": 7, "input_rows": 1500, "input_rows_per_second": 150.0, "processed_rows_per_second": 1234.6,
        "batch_duration_ms": 1215, "sinks": {"trend_windows": 40, "alerts": 1},
        "watermark": "2026-01-04T00:00:00.000Z", "late_rows": 11, "state_rows": 1000, "kafka_lag": 300,
        "kafka_partitions": [{**p, "lost_offsets": 0} for p in kafka_lag(PROGRESS)], "lost_offsets": 0,
        # each operator's own figures: its eviction (removals) is what grows with a state's size
        "state_operators": [
            {"operator": "dedupeWithinWatermark", "rows": 900, "rows_updated": 40, "rows_removed": 35,
             "updates_ms": 12, "removals_ms": 230, "commit_ms": 18, "memory_bytes": 524288},
            {"operator": "stateStoreSave", "rows": 100, "rows_updated": 0, "rows_removed": 0, "updates_ms": 0,
             "removals_ms": 0, "commit_ms": 0, "memory_bytes": 0}],
    }


def test_no_watermark_and_no_state() -> None:
    bare = {**PROGRESS, "eventTime": {"watermark": "1970-01-01T00:00:00.000Z"}, "stateOperators": [], "sources": []}
    record = progress_record(bare, None)
    assert (record["watermark"], record["late_rows"], record["kafka_lag"], record["sinks"]) == (None, 0, 0, {})
    assert late_rows({}) == 0


def test_offsets_without_a_record_are_lost_offsets() -> None:
    # Partition 0's batch spans offsets 0-699 but only 690 records were read: Kafka had removed 10.
    progress = {**PROGRESS, "observedMetrics": {RECORDS_READ: {"all": 1490, "0": 690, "1": 800}}}
    assert lost_offsets(progress) == {("vitals", 0): (0, 699, 10)}
    record = progress_record(progress, None)
    assert record["lost_offsets"] == 10
    assert [p["lost_offsets"] for p in record["kafka_partitions"]] == [10, 0]
    first_batch = {**progress, "sources": [{**PROGRESS["sources"][0], "startOffset": None}]}
    assert lost_offsets(first_batch) == {}  # no start to compare with


class _Event:
    """What Spark hands the listener: the progress as JSON."""

    def __init__(self, progress: dict) -> None:
        self.progress = type("Progress", (), {"json": json.dumps(progress)})()


def test_the_listener_keeps_each_record_through_its_store_and_a_failing_store_stops_nothing(caplog) -> None:
    kept: list[tuple[str, dict]] = []
    listener = ProgressLog(lambda query, batch_id: {"anomalies": 3}, lambda record_id, record: kept.append((record_id, record)))
    listener.onQueryProgress(_Event(PROGRESS))
    (record_id, record), = kept
    assert record_id == "r-1|7|2026-11-28T10:00:00.000Z" and record["sinks"] == {"anomalies": 3}
    assert listener.records == [record]

    def refusing(record_id: str, record: dict) -> None:
        raise ConnectionError("Elasticsearch down")
    down = ProgressLog(None, refusing)
    down.onQueryProgress(_Event({**PROGRESS, "batchId": 8}))  # logged, not raised
    assert [r["batch_id"] for r in down.records] == [8]
    assert "could not keep the health record of bp_monitor_trends batch 8" in caplog.text
