"""Trends as a step of the routing batch: partial windows kept, then merged into the trends index.

The routing query has parsed, classified and de-duplicated every reading; trends read those
rows, not Kafka a second time. Each batch aggregates its new readings into partial windows
(one per patient and day, a few for the cohort) and keeps them: in ``<checkpoint-dir>/trends-pending``
for the stream job, so that what a batch committed is never lost. Every ``trends.trigger`` (and
when the job stops) the kept partials are merged into the documents of the trends index
(:mod:`bp_spark.trends.merge`: exactly once, by the tag and batch each document records), the
sustained windows that hold a changed day are summed again, and onsets of sustained
hypertension become alerts. Then the kept partials are forgotten.

A merge that fails (a trends index that refuses its documents, a bug) is logged, and its
partials wait for the next one: routing and critical alerts go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from bp_spark import documents
from bp_spark.config import Config, TrendsConfig
from bp_spark.config import duration_seconds as seconds
from bp_spark.elastic import epoch_ms, index_time
from bp_spark.files import files_at
from bp_spark.trends.merge import (daily_neighbours, finish, is_daily, merged_windows, partials_of, stored_window,
                                   sustained, sustained_onsets)
from bp_spark.trends.windows import TREND_READING_COLUMNS, collect_partials, collect_readings, partial_windows

log = logging.getLogger("bp_spark.pipeline")

# The folder of the checkpoint directory that keeps the partials not merged yet.
PENDING_FOLDER = "trends-pending"
# Documents per bulk request.
WRITE_CHUNK = 5_000
# A batch of up to this many readings makes its partial windows on the driver (one narrow Spark
# job brings the readings); a bigger one in a Spark aggregation (bench/trends_bench.py).
DRIVER_READINGS = 20_000

# The columns of a sustained window that its onset's alert reads (bp_spark.documents.sustained_alert_docs).
ONSET_SCHEMA = T.StructType([
    T.StructField("trend_id", T.StringType()), T.StructField("patient_id", T.StringType()),
    T.StructField("last_reading_time", T.TimestampType()), T.StructField("window_start", T.TimestampType()),
    T.StructField("window_end", T.TimestampType()), T.StructField("readings", T.LongType()),
    T.StructField("systolic_mean", T.DoubleType()), T.StructField("diastolic_mean", T.DoubleType()),
    T.StructField("reason", T.StringType()),
])


@dataclass
class Merged:
    """What one merge wrote."""

    batches: int = 0  # batches whose partials it merged
    windows: int = 0  # tumbling windows written
    sustained: int = 0  # sustained windows written
    onsets: int = 0  # sustained-hypertension alerts raised


class TrendStep:
    """Partial windows of each batch, kept, then merged into the trends index when due."""

    def __init__(self, spark: SparkSession, config: Config, sinks, tag: Callable[[], str],
                 pending_uri: str | None) -> None:
        """``sinks``: the job's :class:`~bp_spark.sinks.Sinks`; ``tag``: the job's name for its batches
        (one per checkpoint); ``pending_uri``: the folder that keeps partials until they are
        merged, or None to keep them in memory (the backfill, which merges after each chunk)."""
        self.spark = spark
        self.config = config
        self.sinks = sinks
        self._tag = tag
        self.files = files_at(spark, pending_uri, config.paths.archive_umask_bits) if pending_uri else None
        self.held: dict[int, list[dict]] = {}
        self.interval_s = seconds(config.trends.trigger) if config.trends.trigger else 0
        self.last_merge = time.monotonic()

    # ------------------------------------------------------------------ each batch

    def add(self, readings_df: DataFrame, batch_id: int, at_most: int) -> int:
        """Keep the partial windows of a batch's readings (rows counted in trends, each reading
        once); return how many windows they touch. ``at_most``: how many readings the batch can
        hold (its rows): a small batch's windows are made on the driver."""
        if at_most <= DRIVER_READINGS:
            partials = partials_of(collect_readings(readings_df), self.config.trends)
        else:
            partials = collect_partials(partial_windows(readings_df.select(*TREND_READING_COLUMNS),
                                                        self.config.trends))
        if partials:
            if self.files is None:
                self.held[batch_id] = partials
            else:
                self.files.write(f"{batch_id}.json", [orjson.dumps(partials)])
        return len(partials)

    def due(self) -> bool:
        """Whether ``trends.trigger`` has passed since the last merge (empty: every batch)."""
        return time.monotonic() - self.last_merge >= self.interval_s

    def pending(self) -> list[tuple[int, list[dict]]]:
        """The kept partials, ``(batch_id, partials)`` in batch order."""
        if self.files is None:
            return sorted(self.held.items())
        batches = sorted(int(name[:-5]) for name in self.files.names("")
                         if name.endswith(".json") and name[:-5].isdigit())
        return [(batch_id, orjson.loads(self.files.read(f"{batch_id}.json") or b"[]")) for batch_id in batches]

    def _forget(self, batch_ids: list[int]) -> None:
        for batch_id in batch_ids:
            if self.files is None:
                self.held.pop(batch_id, None)
            else:
                self.files.delete(f"{batch_id}.json")

    # ------------------------------------------------------------------ the merge

    def merge(self) -> Merged | None:
        """Merge every kept partial into the trends index; None when nothing was kept."""
        self.last_merge = time.monotonic()
        batches = self.pending()
        if not batches:
            return None
        last = batches[-1][0]
        what = f"batch {last}: trends"
        es, t = self.sinks.elasticsearch, self.config.trends
        index = self.config.elasticsearch.trends_index
        touched = {partial["trend_id"] for _, partials in batches for partial in partials}
        stored = es.documents(index, touched, f"{what}: reading {len(touched)} windows")
        windows = merged_windows(stored, batches, self._tag())
        # Every day the partials touch, merged now or by an earlier attempt that stopped before
        # its sustained windows: those are summed again from the days as they stand.
        days = {trend_id: windows.get(trend_id) or stored_window(stored[trend_id])
                for trend_id in touched if trend_id in windows or trend_id in stored}
        days = {trend_id: day for trend_id, day in days.items() if is_daily(day, t)}
        around = daily_neighbours(days.values(), t) - days.keys()
        daily = {**{trend_id: stored_window(doc) for trend_id, doc in
                    es.documents(index, around, f"{what}: reading {len(around)} days around them").items()}, **days}
        sustained_windows = sustained(daily, days.values(), t)
        merged = Merged(len(batches), len(windows), len(sustained_windows))
        now_ms = int(time.time() * 1000)
        docs = {trend_id: {**{k: v for k, v in finish(window, t).items() if v is not None}, "processed_at": now_ms}
                for trend_id, window in windows.items()}
        docs |= {w["trend_id"]: {k: v for k, v in w.items() if k != "previous_trend_id"} | {
            "batch_id": last, "processed_at": now_ms} for w in sustained_windows}
        items = list(docs.items())
        for start in range(0, len(items), WRITE_CHUNK):
            es.put(index, dict(items[start:start + WRITE_CHUNK]), f"{what}: writing {len(docs)} windows", refresh=False)
        merged.onsets = self._alert_onsets(sustained_windows, last)
        self._forget([batch_id for batch_id, _ in batches])
        return merged

    def _alert_onsets(self, sustained_windows: list[dict], batch_id: int) -> int:
        """Alert the sustained windows that start a run (once: not those alerted before)."""
        es = self.sinks.elasticsearch
        runs = [(w["trend_id"], w["previous_trend_id"], w["is_sustained"]) for w in sustained_windows]
        in_merge = {trend_id for trend_id, _, _ in runs}
        unknown = {previous for _, previous, is_on in runs if is_on and previous not in in_merge}
        onsets = sustained_onsets(runs, es.sustained_states(unknown, batch_id))
        # A window stays an onset while the one before it is not sustained (a live feed's week
        # before its first day has no readings): alert it once, not at every merge.
        raised = es.alerted_before(onsets, batch_id)
        onsets = set(onsets) - raised
        if not onsets:
            return 0
        t = self.config.trends
        onset_windows = [{**w, "reason": documents.sustained_reason(
            w["systolic_mean"], w["diastolic_mean"], w["readings"], t.sustained_window, t.sustained_systolic,
            t.sustained_diastolic)} for w in sustained_windows if w["trend_id"] in onsets]
        rows = [(w["trend_id"], w["patient_id"], index_time(w["last_reading_time"]), index_time(w["window_start"]),
                 index_time(w["window_end"]), w["readings"], w["systolic_mean"], w["diastolic_mean"], w["reason"])
                for w in onset_windows]
        alerts_df = documents.sustained_alert_docs(self.spark.createDataFrame(rows, ONSET_SCHEMA),
                                                   self.config.elasticsearch.alerts_index, batch_id)
        es.write({"alerts": alerts_df}, batch_id)
        if self.sinks.episodes is not None:  # each onset opens (or joins) the patient's alert episode
            self.sinks.episodes.onsets([{
                "trend_id": w["trend_id"], "patient_id": w["patient_id"], "readings": w["readings"],
                "window_end_ms": epoch_ms(index_time(w["window_end"])), "systolic_mean": w["systolic_mean"],
                "diastolic_mean": w["diastolic_mean"], "reason": w["reason"]} for w in onset_windows], batch_id)
        return len(rows)


def all_trends(readings_df: DataFrame, config: TrendsConfig) -> list[dict]:
    """Every trend window of ``readings_df`` at once, finished (sustained ones with
    ``previous_trend_id``): what the merges of its batches come to, for static frames."""
    partials = collect_partials(partial_windows(readings_df.select(*TREND_READING_COLUMNS), config))
    days = [window for window in partials if is_daily(window, config)]
    return [finish(window, config) for window in partials] + sustained(
        {day["trend_id"]: day for day in days}, days, config)
