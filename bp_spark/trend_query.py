"""The trend query: Kafka source -> readings -> windowed aggregations on event time -> the trends
index, and onsets of sustained hypertension -> the alert index (and the alert topic).

A second query on the same topic, not a branch of the routing query: the routing query appends
each reading once, while aggregations emit updated windows (update mode), and one query has
one output mode. Its own checkpoint also lets trends be rebuilt from Kafka alone, and a failure
of this query never stops routing and critical alerts (:mod:`bp_spark.pipeline` restarts it).
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from bp_spark import documents
from bp_spark.classify import with_classification
from bp_spark.config import Config
from bp_spark.config import duration_seconds as seconds
from bp_spark.elastic import index_time
from bp_spark.monitoring import TRENDS_QUERY
from bp_spark.parse import RETRACTED_STATUS
from bp_spark.sinks import Sinks, SinkUnavailable
from bp_spark.streaming import (checkpointed, configure_state, kafka_source, keep_rows, parsed, per_step,
                                remember, start_in_pool, timed)
from bp_spark.trends import (ANOMALY_TYPES, PATIENT, SUSTAINED, aggregate_windows, slide_period, sustained_onsets,
                             sustained_windows, trend_id, with_windows)

log = logging.getLogger("bp_spark.pipeline")

# The trend query's checkpoint folder. Its state changed shape three times (one de-duplication
# entry per reading, not per window; then no sliding windows in the state, they are summed from
# the daily ones; then a peak's ties broken by the reading's id), which Spark cannot read from
# the earlier folders.
TRENDS_CHECKPOINT = "trends-v4"
EARLIER_TRENDS_CHECKPOINTS = ("trends", "trends-v2", "trends-v3")


# What the trend windows read of a reading.
TREND_READING_COLUMNS = ("observation_id", "patient_id", "effective_time", "systolic", "diastolic", "is_anomaly",
                         "anomaly_types")


def counts_in_trends() -> Column:
    """A reading the trend windows count: usable, not a retraction, and a panel (the halves of a
    reading sent as two Observations are paired by the routing query, after the trend query's state)."""
    return F.col("error").isNull() & (F.col("status") != RETRACTED_STATUS) & F.col("half").isNull()


def trends_stream(source_df: DataFrame, config: Config) -> DataFrame:
    """Parse and classify the Kafka stream, then aggregate it into trend windows on event time.

    The watermark sits ``trends.watermark`` behind the latest effective time; no effective time
    can be more than ``stream.max_future_skew`` ahead of its arrival (the parser refuses it), so
    no reading can carry the watermark past the readings that follow. A reading older than the
    watermark is left out of trends (Spark counts it; the routing query still stores it), and a
    window is final, its state dropped, once the watermark passes its end. Each observation
    counts once (its first version; a correction is not subtracted): it is de-duplicated once
    per reading, before it is placed in its tumbling windows (3 by default); the sliding windows
    of sustained hypertension are summed from the daily ones in each batch (:class:`TrendRouter`).
    """
    t = config.trends
    return (
        source_df.transform(lambda df: parsed(df, config))
        .transform(lambda df: keep_rows(df, counts_in_trends()))
        .transform(lambda df: with_classification(df, config.thresholds))
        .select(*TREND_READING_COLUMNS)
        .withWatermark("effective_time", f"{seconds(t.watermark)} seconds")
        .dropDuplicatesWithinWatermark(["observation_id"])
        .transform(lambda df: with_windows(df, t))
        .transform(lambda df: on_event_time(df, "window_end", seconds(t.watermark)))
        .transform(lambda df: aggregate_windows(df, t))
    )


# Spark's mark of an event-time column (EventTimeWatermark.delayKey): a watermarked column
# carries it, and so does the window that window() derives from one.
EVENT_TIME_MARK = "spark.watermarkDelayMs"


def on_event_time(df: DataFrame, column: str, delay_s: int) -> DataFrame:
    """``df`` with ``column`` marked as event time, as ``window()`` marks the windows it derives.

    The windows of a reading are made by an explode, which Spark does not follow: without the
    mark, the aggregation would never see a window end as event time, and would keep every
    window in its state forever. Marked, a window is dropped from the state once the watermark
    passes its end. (A second ``withWatermark`` on the window end would do the same, but Spark
    refuses to redefine a watermark, and the de-duplication before it needs one.)
    """
    marked = F.col(column).alias(column, metadata={EVENT_TIME_MARK: delay_s * 1000})
    return df.select(*[marked if name == column else F.col(name) for name in df.columns])


class TrendRouter:
    """The trend query's foreachBatch function: trend windows to the trends index, onsets of
    sustained hypertension to the alert index (and the alert topic)."""

    def __init__(self, config: Config, sinks: Sinks) -> None:
        self.config = config
        self.sinks = sinks
        self.counts: dict[int, dict] = {}
        self.fatal: SinkUnavailable | None = None

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        steps: dict[str, float] = {}
        batch_df = batch_df.persist()
        try:
            counts = self._route(batch_df, batch_id, steps)
        except SinkUnavailable as exc:  # outages.give_up_after passed: the job is told to stop
            self.fatal = exc
            raise
        finally:
            batch_df.unpersist()
        onsets = counts.pop("onsets", 0)
        windows = sum(counts.values())
        self.counts = remember(self.counts, batch_id, {"trend_windows": windows, "alerts": onsets})
        by_scope = ", ".join(f"{scope} {n}" for scope, n in sorted(counts.items()))
        log.info("trends batch %d: %d windows updated (%s); sustained-hypertension onsets %d; %.2f s%s",
                 batch_id, windows, by_scope or "none", onsets, time.monotonic() - started, per_step(steps))

    def _route(self, batch_df: DataFrame, batch_id: int, steps: dict[str, float]) -> dict[str, int]:
        """Write the batch's windows and onsets; return the windows per scope and ``onsets``."""
        with timed(steps, "aggregate"):
            counts = {r.scope: r["count"] for r in batch_df.groupBy("scope").count().collect()}
        if not counts:
            return counts
        with timed(steps, "sustained"):
            sustained_df = self._sustained_windows(batch_df, batch_id).persist()
        try:
            return self._write(batch_df, sustained_df, batch_id, steps, counts)
        finally:
            sustained_df.unpersist()

    def _write(self, batch_df: DataFrame, sustained_df: DataFrame, batch_id: int, steps: dict[str, float],
               counts: dict[str, int]) -> dict[str, int]:
        with timed(steps, "onsets"):
            windows = [(r.trend_id, r.previous_trend_id, r.is_sustained) for r in
                       sustained_df.select("trend_id", "previous_trend_id", "is_sustained").collect()]
            counts[SUSTAINED] = len(windows)
            in_batch = {window_id for window_id, _, _ in windows}
            unknown = {previous for _, previous, is_sustained in windows if is_sustained and previous not in in_batch}
            onsets = sustained_onsets(windows, self.sinks.elasticsearch.sustained_states(unknown, batch_id))
            # A window stays an onset while the one before it is not sustained (a live feed's
            # week before its first day has no readings): alert it once, not at every batch.
            raised = self.sinks.elasticsearch.alerted_before(onsets, batch_id)
            onsets = [window_id for window_id in onsets if window_id not in raised]
        counts["onsets"] = len(onsets)
        windows_df = batch_df.unionByName(sustained_df.drop("previous_trend_id"))
        docs = {"trends": documents.trend_docs(windows_df, self.config, batch_id)}
        if onsets:
            docs["alerts"] = documents.sustained_alert_docs(sustained_df.where(F.col("trend_id").isin(onsets)),
                                                            self.config, batch_id)
        with timed(steps, "elasticsearch"):
            self.sinks.elasticsearch.write(docs, batch_id)
        if onsets:
            self.sinks.alert_topic.publish(docs["alerts"], batch_id)
        return counts

    def _sustained_windows(self, batch_df: DataFrame, batch_id: int) -> DataFrame:
        """The sustained windows that hold a daily window of this batch, summed from the batch's
        daily windows and, for the days around them that the batch did not update, the daily
        windows the index holds (what earlier batches wrote)."""
        t = self.config.trends
        period = slide_period(t)
        daily = batch_df.where((F.col("scope") == PATIENT) & (F.col("period") == period)).select(*SLIDE_COLUMNS)
        slides = daily.withColumn("updated", F.lit(True))
        length, slide = seconds(t.sustained_window), seconds(t.sustained_slide)
        around = [i * slide for i in range(1 - length // slide, length // slide) if i]
        neighbours = (daily.select("patient_id", F.explode(F.array(
                          *[F.unix_seconds("window_start") + offset for offset in around])).alias("_start"))
                      .select(trend_id(F.lit(PATIENT), F.lit(period), "patient_id",
                                       F.timestamp_seconds("_start")).alias("trend_id"))
                      .distinct())
        wanted = [r.trend_id for r in neighbours.join(batch_df.select("trend_id"), "trend_id", "left_anti").collect()]
        stored = self.sinks.elasticsearch.trend_windows(wanted, batch_id)
        earlier = batch_df.sparkSession.createDataFrame([slide_row(doc) for doc in stored], daily.schema)
        return sustained_windows(slides.unionByName(earlier.withColumn("updated", F.lit(False))), t)


# The columns of a daily window that the sustained windows are summed from.
SLIDE_COLUMNS = ("patient_id", "window_start", "readings", "systolic_sum", "systolic_max", "systolic_min",
                 "diastolic_sum", "diastolic_max", "diastolic_min", "peak", "anomalies", "abnormal_readings",
                 "last_reading_time")


def slide_row(doc: dict) -> tuple:
    """A daily window's document as a row of :data:`SLIDE_COLUMNS`. A document of a version before
    the sums were stored gives them from its means."""
    peak, anomalies = doc.get("peak") or {}, doc.get("anomalies") or {}
    readings = doc["readings"]
    return (
        doc["patient_id"], index_time(doc["window_start"]), readings,
        doc.get("systolic_sum", doc["systolic_mean"] * readings), doc["systolic_max"], doc["systolic_min"],
        doc.get("diastolic_sum", doc["diastolic_mean"] * readings), doc["diastolic_max"], doc["diastolic_min"],
        (peak.get("observation_id"), index_time(peak.get("effective_time")), peak.get("systolic"), peak.get("diastolic")),
        tuple(anomalies.get(kind, 0) for kind in ANOMALY_TYPES), doc["abnormal_readings"],
        index_time(doc["last_reading_time"]),
    )


def start_trends_query(spark: SparkSession, config: Config, router: TrendRouter) -> StreamingQuery:
    """Start the trend query: Kafka -> readings -> windowed aggregations (update mode) -> ``router``."""
    configure_state(spark, config)
    writer = (trends_stream(kafka_source(spark, config), config)
              .writeStream.queryName(TRENDS_QUERY).outputMode("update").foreachBatch(router))
    return start_in_pool(checkpointed(writer, config, TRENDS_CHECKPOINT, config.trends.trigger), spark, "trends")
