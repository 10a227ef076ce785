"""Pipeline health: a StreamingQueryListener that turns each micro-batch's progress into one
structured record, logs it as a JSON line and indexes it into ``fhir_observations_metrics``.

A record holds: input rows, input and processed rows per second, the batch duration, the rows
each sink received and the seconds it waited for each (from the query's foreachBatch router),
the offsets Kafka removed before they were read, the watermark, the rows dropped as
later than the watermark, each state operator's rows and the time its eviction and commit
took, and the Kafka lag (latest offsets minus processed offsets, per
partition and in total). Monitoring never stops the pipeline: a record that cannot be indexed
is logged and dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql.streaming import StreamingQueryListener

from bp_spark.outages import summarise

log = logging.getLogger("bp_spark.monitoring")
metrics_log = logging.getLogger("bp_spark.metrics")

ROUTING_QUERY = "bp_monitor"
# The routing query's observed metric: Kafka records read per partition in a batch (bp_spark/routing/query.py).
RECORDS_READ = "kafka_records_read"
EPOCH = "1970-01-01T00:00:00.000Z"

SinkCounts = Callable[[str, int], dict[str, int] | None]


def late_rows(progress: dict[str, Any]) -> int:
    """Rows of this batch left out as later than the watermark: the most any stateful operator
    dropped (the first one drops them; those after it never see them)."""
    return max((op.get("numRowsDroppedByWatermark", 0) for op in progress.get("stateOperators", [])), default=0)


def _offsets(value: Any) -> dict[str, dict[str, int]]:
    """A Kafka source's offsets as ``{topic: {partition: offset}}`` (progress gives JSON text)."""
    if not value:
        return {}
    return json.loads(value) if isinstance(value, str) else value


def kafka_lag(progress: dict[str, Any]) -> list[dict[str, Any]]:
    """Per Kafka partition: the offset processed up to, the latest offset the source saw, and the lag.

    The first batch of a restarted query replays the batch its checkpoint planned, and Spark gives
    it no latest offsets: its partitions are still listed (with the offset processed up to as the
    latest known), so that what the batch lost can be told per partition."""
    lag = []
    for source in progress.get("sources", []):
        if not str(source.get("description", "")).startswith("KafkaV2"):
            continue
        processed, latest = _offsets(source.get("endOffset")), _offsets(source.get("latestOffset"))
        known = {topic: {**processed.get(topic, {}), **latest.get(topic, {})} for topic in {*processed, *latest}}
        for topic, partitions in sorted(known.items()):
            for partition, latest_offset in sorted(partitions.items(), key=lambda item: int(item[0])):
                end = processed.get(topic, {}).get(partition, 0)
                lag.append({"topic": topic, "partition": int(partition), "processed_offset": end,
                            "latest_offset": latest_offset, "lag": max(latest_offset - end, 0)})
    return lag


def lost_offsets(progress: dict[str, Any]) -> dict[tuple[str, int], tuple[int, int, int]]:
    """Per (topic, partition): ``(first, last, count)`` of the batch's offsets that had no record to
    read: Kafka removed them (retention, a recreated topic) before the job read them. From the
    batch's offset range and the records the routing query counted (its observed metric)."""
    read = progress.get("observedMetrics", {}).get(RECORDS_READ)
    if not read:
        return {}
    lost = {}
    for source in progress.get("sources", []):
        if not str(source.get("description", "")).startswith("KafkaV2"):
            continue
        start, end = _offsets(source.get("startOffset")), _offsets(source.get("endOffset"))
        for topic, partitions in end.items():
            for partition, end_offset in partitions.items():
                start_offset = start.get(topic, {}).get(partition)
                if start_offset is None or start_offset < 0 or partition not in read:
                    continue
                missing = end_offset - start_offset - int(read[partition])
                if missing > 0:
                    lost[(topic, int(partition))] = (start_offset, end_offset - 1, missing)
    return lost


def state_operators(progress: dict[str, Any]) -> list[dict[str, Any]]:
    """Each state operator's own figures of the batch: rows held, updated and removed, the
    milliseconds its updates, removals (eviction) and commit took, and its memory."""
    return [{"operator": op.get("operatorName", ""), "rows": op.get("numRowsTotal", 0),
             "rows_updated": op.get("numRowsUpdated", 0), "rows_removed": op.get("numRowsRemoved", 0),
             "updates_ms": op.get("allUpdatesTimeMs", 0), "removals_ms": op.get("allRemovalsTimeMs", 0),
             "commit_ms": op.get("commitTimeMs", 0), "memory_bytes": op.get("memoryUsedBytes", 0)}
            for op in progress.get("stateOperators", [])]


def progress_record(progress: dict[str, Any], sinks: dict[str, int] | None) -> dict[str, Any]:
    """The health record of one micro-batch, from Spark's progress and the router's counts."""
    watermark = progress.get("eventTime", {}).get("watermark")
    partitions = kafka_lag(progress)
    lost = lost_offsets(progress)
    for entry in partitions:
        entry["lost_offsets"] = lost.get((entry["topic"], entry["partition"]), (0, 0, 0))[2]
    return {
        "timestamp": progress["timestamp"],
        "query": progress.get("name"),
        "query_id": progress["id"],
        "run_id": progress["runId"],
        "batch_id": progress["batchId"],
        "input_rows": progress.get("numInputRows", 0),
        "input_rows_per_second": round(progress.get("inputRowsPerSecond") or 0.0, 1),
        "processed_rows_per_second": round(progress.get("processedRowsPerSecond") or 0.0, 1),
        "batch_duration_ms": progress.get("durationMs", {}).get("triggerExecution", 0),
        "sinks": sinks or {},
        "watermark": None if watermark in (None, EPOCH) else watermark,
        "late_rows": late_rows(progress),
        "state_rows": sum(op.get("numRowsTotal", 0) for op in progress.get("stateOperators", [])),
        "state_operators": state_operators(progress),
        "kafka_lag": sum(p["lag"] for p in partitions),
        "kafka_partitions": partitions,
        "lost_offsets": sum(missing for _, _, missing in lost.values()),
    }


class ProgressLog(StreamingQueryListener):
    """One JSON line per micro-batch of every query (logger ``bp_spark.metrics``), the same
    record kept by ``store(record_id, record)`` when given (the job: the health-record index,
    through the Elasticsearch sink), and an error for offsets Kafka removed unread."""

    def __init__(self, sink_counts: SinkCounts | None = None,
                 store: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.sink_counts = sink_counts or (lambda query, batch_id: None)
        self.store = store
        self.records: list[dict[str, Any]] = []  # this run's records, newest last (bounded)

    def onQueryStarted(self, event: Any) -> None:
        log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

    def onQueryProgress(self, event: Any) -> None:
        progress = json.loads(event.progress.json)
        record = progress_record(progress, self.sink_counts(progress.get("name"), progress["batchId"]))
        self.records = self.records[-999:] + [record]
        metrics_log.info(json.dumps(record, separators=(",", ":")))
        for (topic, partition), (first, last, missing) in sorted(lost_offsets(progress).items()):
            log.error("%s batch %s: %d offsets of Kafka topic %s partition %d between %d and %d had no record to "
                      "read: Kafka removed them (retention, or the topic was deleted and recreated) before they "
                      "were processed, and those messages were lost", record["query"], record["batch_id"], missing,
                      topic, partition, first, last)
        if self.store is not None:
            try:
                self.store(f"{record['run_id']}|{record['batch_id']}|{record['timestamp']}", record)
            except Exception as exc:  # monitoring must never stop the pipeline
                log.warning("could not keep the health record of %s batch %s: %s", record["query"],
                            record["batch_id"], summarise(exc))

    def wait_for(self, progresses: list[dict[str, Any]], timeout_s: float = 10.0) -> bool:
        """Wait until these progress reports have reached the listener (Spark delivers them
        asynchronously); return whether they all did in time."""
        wanted = {(p["runId"], p["batchId"], p["timestamp"]) for p in progresses if p}
        deadline = time.monotonic() + timeout_s
        while not wanted <= {(r["run_id"], r["batch_id"], r["timestamp"]) for r in self.records}:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        if event.exception:
            log.error("query %s stopped with an error: %s", event.id, event.exception.splitlines()[0])
        else:
            log.info("query %s stopped", event.id)
