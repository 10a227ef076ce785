"""The stream job's wiring: Kafka source -> parse -> classify -> de-duplicate -> route each micro-batch.

Every consumed message ends in exactly one of: the anomaly index, the archive, the dead-letter
index. Corrections (``amended``/``corrected``) replace the earlier version under the same id
wherever it now belongs; ``entered-in-error`` removes it. The same message delivered twice
(same id, same bytes) is dropped by a de-duplication state kept in the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from bp_spark.classify import CRITICAL, with_classification
from bp_spark.config import Config
from bp_spark.config import duration_seconds as seconds
from bp_spark.monitoring import ROUTING_QUERY, TRENDS_QUERY, ProgressLog
from bp_spark.parse import RETRACTED_STATUS, is_update, parse_observations
from bp_spark.sinks import Sinks, hadoop_fs
from bp_spark.trends import SUSTAINED, aggregate_windows, previous_window_id, sustained_onsets, with_windows

log = logging.getLogger("bp_spark.pipeline")


def kafka_source(spark: SparkSession, config: Config) -> DataFrame:
    """The topic as a stream of Kafka records."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", config.kafka.bootstrap_servers)
        .option("subscribe", config.kafka.topic)
        .option("startingOffsets", config.kafka.starting_offsets)
        # A topic recreated or trimmed by retention must not stop a monitor; lost offsets are logged by Spark.
        .option("failOnDataLoss", "false")
    )
    if config.kafka.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", config.kafka.max_offsets_per_trigger)
    return reader.option("minPartitions", read_tasks(spark, config)).load()


def read_tasks(spark: SparkSession, config: Config) -> int:
    """How many tasks at least read a micro-batch: ``kafka.min_partitions``, or three per core."""
    return config.kafka.min_partitions or 3 * spark.sparkContext.defaultParallelism


def with_dedup_key(df: DataFrame) -> DataFrame:
    """A key equal for the same message delivered twice: the Observation id and a hash of its bytes
    (a correction has other bytes, so it is kept); Kafka coordinates where there is no id."""
    identity = F.coalesce(
        F.col("observation_id"),
        F.concat_ws(":", F.lit("kafka"), "kafka_topic", "kafka_partition", "kafka_offset"),
    )
    return df.withColumn("dedup_key", F.concat_ws("|", identity, F.xxhash64("raw").cast("string")))


def readings_stream(source_df: DataFrame, config: Config) -> DataFrame:
    """Parse, classify and de-duplicate the Kafka stream (pure: the same plan serves tests on static data)."""
    return (
        source_df.transform(parse_observations)
        .transform(lambda df: with_classification(df, config.thresholds))
        .transform(with_dedup_key)
        # The horizon is on Kafka arrival time, not clinical time: a reading taken days ago but
        # arriving now is on time here, and nothing is dropped for being clinically late.
        .withWatermark("kafka_timestamp", config.stream.dedup_horizon)
        .dropDuplicatesWithinWatermark(["dedup_key"])
    )


def keep_rows(df: DataFrame, condition: Column) -> DataFrame:
    """``df.where(condition)``, written so that Spark cannot push it down into the parser.

    A filter above the parser is pushed below its projections, and each column of the condition
    is replaced by the expression that made it: ``from_json`` is copied once for every field
    the parser derives (133 copies; parsing becomes 15x slower, see ``bench/parse_bench.py``).
    Exploding ``[true]`` or null keeps or drops each row the same, and is not a filter.
    """
    return df.withColumn("_keep", F.explode(F.when(condition, F.array(F.lit(True))))).drop("_keep")


def trends_stream(source_df: DataFrame, config: Config) -> DataFrame:
    """Parse and classify the Kafka stream, then aggregate it into trend windows on event time.

    The watermark sits ``trends.watermark`` behind the latest effective time. A reading older
    than the watermark is left out of trends (Spark counts it; the routing query still stores
    it), and a window is final, its state dropped, once the watermark passes its end. Each
    observation counts once (its first version; a correction is not subtracted): it is
    de-duplicated once per reading, before it is placed in its windows (11 by default).
    """
    t = config.trends
    return (
        source_df.transform(parse_observations)
        .transform(lambda df: keep_rows(df, F.col("error").isNull() & (F.col("status") != RETRACTED_STATUS)))
        .transform(lambda df: with_classification(df, config.thresholds))
        .select("observation_id", "patient_id", "effective_time", "systolic", "diastolic", "is_anomaly",
                "anomaly_types")
        .withWatermark("effective_time", f"{seconds(t.watermark)} seconds")
        .dropDuplicatesWithinWatermark(["observation_id"])
        .transform(lambda df: with_windows(df, t))
        .transform(lambda df: on_event_time(df, "window_end", seconds(t.watermark)))
        .transform(lambda df: aggregate_windows(df, t))
        .withColumn("previous_trend_id", F.when(F.col("scope") == SUSTAINED, previous_window_id(t)))
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


def latest_versions(ok_df: DataFrame) -> DataFrame:
    """Of several versions of one observation in a batch, keep the last to arrive."""
    order = Window.partitionBy("observation_id").orderBy(
        F.col("kafka_timestamp").desc(), F.col("kafka_partition").desc(), F.col("kafka_offset").desc())
    return ok_df.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") == 1).drop("_rank")


@dataclass
class BatchStats:
    """What one micro-batch did; logged as one line."""

    batch_id: int
    rows: int = 0
    anomalies: int = 0
    alerts: int = 0
    normals: int = 0
    dead_letters: int = 0
    updates: int = 0
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (f"batch {self.batch_id}: {self.rows} rows in {self.seconds:.2f} s ({rate:,.0f} rows/s); "
                f"anomalies {self.anomalies}, alerts {self.alerts}, normals {self.normals}, "
                f"dead letters {self.dead_letters}, corrections/retractions {self.updates}{per_step(self.steps)}")


def per_step(steps: dict[str, float]) -> str:
    """``"; seconds per step: read+parse 3.1, ..."`` for a batch's log line, or nothing."""
    return "; seconds per step: " + ", ".join(f"{name} {took:.1f}" for name, took in steps.items()) if steps else ""


def _remember(counts: dict[int, dict[str, int]], batch_id: int, entry: dict[str, int]) -> dict[int, dict[str, int]]:
    """``counts`` with ``entry`` for ``batch_id``, keeping the last 100 batches."""
    kept = {b: c for b, c in counts.items() if b > batch_id - 100}
    kept[batch_id] = entry
    return kept


@contextmanager
def timed(steps: dict[str, float], step: str) -> Iterator[None]:
    """Add the seconds the block takes to ``steps[step]``."""
    started = time.monotonic()
    try:
        yield
    finally:
        steps[step] = steps.get(step, 0.0) + time.monotonic() - started


class BatchRouter:
    """The foreachBatch function: route each reading of a micro-batch to its sink."""

    def __init__(self, config: Config, sinks: Sinks | None) -> None:
        self.config = config
        self.sinks = sinks  # None: parse and classify only (the benchmark's ceiling)
        self.last: BatchStats | None = None
        self.counts: dict[int, dict[str, int]] = {}  # rows per sink of recent batches, for monitoring

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        batch_df = batch_df.persist()
        try:
            stats = self._route(batch_df, batch_id)
        finally:
            batch_df.unpersist()
        stats.seconds = time.monotonic() - started
        self.last = stats
        self.counts = _remember(self.counts, batch_id, {
            "anomalies": stats.anomalies, "alerts": stats.alerts, "archive": stats.normals,
            "dead_letters": stats.dead_letters, "corrections": stats.updates} if self.sinks is not None else {})
        log.info(stats.line())

    def _clear_earlier_versions(self, ok_df: DataFrame, batch_id: int) -> DataFrame:
        """Corrections and retractions: keep each id's last version in this batch, and clear the
        earlier version from wherever it was stored, before the new one is written."""
        latest_df = latest_versions(ok_df)
        updated = latest_df.where(is_update(F.col("status"))).select("observation_id", "patient_id").collect()
        self.sinks.delete_documents([r.observation_id for r in updated], batch_id)
        by_patient: dict[str, set[str]] = {}
        for r in updated:
            by_patient.setdefault(r.patient_id, set()).add(r.observation_id)
        self.sinks.remove_from_archive(by_patient, batch_id)
        return latest_df

    def _route(self, batch_df: DataFrame, batch_id: int) -> BatchStats:
        usable = F.col("error").isNull()
        live = usable & (F.col("status") != RETRACTED_STATUS)
        started = time.monotonic()
        counts = batch_df.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(~usable, 1)).alias("dead"),
            F.count(F.when(usable & is_update(F.col("status")), 1)).alias("updates"),
            F.count(F.when(live & F.col("is_anomaly"), 1)).alias("anomalies"),
            F.count(F.when(live & (F.col("severity") == CRITICAL), 1)).alias("alerts"),
            F.count(F.when(live & ~F.col("is_anomaly"), 1)).alias("normals"),
        ).first()
        stats = BatchStats(batch_id, counts.rows, counts.anomalies, counts.alerts, counts.normals, counts.dead,
                           counts.updates)
        stats.steps["read+parse"] = time.monotonic() - started
        if self.sinks is None or stats.rows == 0:
            return stats

        ok_df = batch_df.where(usable)
        if stats.updates:
            with timed(stats.steps, "corrections"):
                ok_df = self._clear_earlier_versions(ok_df, batch_id)
        current_df = ok_df.where(F.col("status") != RETRACTED_STATUS)

        # Elasticsearch first (one pass for all three indices), the archive last: if Elasticsearch
        # refuses the batch, the archive holds none of it, and the replay writes everything once.
        docs = {}
        if stats.dead_letters:
            docs["dead letters"] = self.sinks.deadletter_docs(batch_df.where(~usable), batch_id)
        if stats.anomalies:
            docs["anomalies"] = self.sinks.anomaly_docs(current_df.where(F.col("is_anomaly")), batch_id)
        if stats.alerts:
            docs["alerts"] = self.sinks.alert_docs(current_df.where(F.col("severity") == CRITICAL), batch_id)
        with timed(stats.steps, "elasticsearch"):
            self.sinks.write_documents(docs, batch_id)
        if stats.alerts:
            self.sinks.publish_alerts(docs["alerts"], batch_id)
        if stats.normals:
            with timed(stats.steps, "archive"):
                self.sinks.write_archive(current_df.where(~F.col("is_anomaly")), batch_id)
        return stats


class TrendRouter:
    """The trend query's foreachBatch function: trend windows to the trends index, onsets of
    sustained hypertension to the alert index (and the alert topic)."""

    def __init__(self, config: Config, sinks: Sinks) -> None:
        self.config = config
        self.sinks = sinks
        self.counts: dict[int, dict[str, int]] = {}

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        steps: dict[str, float] = {}
        batch_df = batch_df.persist()
        try:
            counts = self._route(batch_df, batch_id, steps)
        finally:
            batch_df.unpersist()
        onsets = counts.pop("onsets", 0)
        windows = sum(counts.values())
        self.counts = _remember(self.counts, batch_id, {"trend_windows": windows, "alerts": onsets})
        by_scope = ", ".join(f"{scope} {n}" for scope, n in sorted(counts.items()))
        log.info("trends batch %d: %d windows updated (%s); sustained-hypertension onsets %d; %.2f s%s",
                 batch_id, windows, by_scope or "none", onsets, time.monotonic() - started, per_step(steps))

    def _route(self, batch_df: DataFrame, batch_id: int, steps: dict[str, float]) -> dict[str, int]:
        """Write the batch's windows and onsets; return the windows per scope and ``onsets``."""
        with timed(steps, "aggregate"):
            counts = {r.scope: r["count"] for r in batch_df.groupBy("scope").count().collect()}
        if not counts:
            return counts
        with timed(steps, "onsets"):
            sustained = F.col("scope") == SUSTAINED
            windows = [(r.trend_id, r.previous_trend_id, r.is_sustained) for r in
                       batch_df.where(sustained).select("trend_id", "previous_trend_id", "is_sustained").collect()]
            in_batch = {window_id for window_id, _, _ in windows}
            unknown = {previous for _, previous, is_sustained in windows if is_sustained and previous not in in_batch}
            onsets = sustained_onsets(windows, self.sinks.sustained_states(unknown, batch_id))
        counts["onsets"] = len(onsets)
        docs = {"trends": self.sinks.trend_docs(batch_df, batch_id)}
        if onsets:
            docs["alerts"] = self.sinks.sustained_alert_docs(batch_df.where(F.col("trend_id").isin(onsets)), batch_id)
        with timed(steps, "elasticsearch"):
            self.sinks.write_documents(docs, batch_id)
        if onsets:
            self.sinks.publish_alerts(docs["alerts"], batch_id)
        return counts


def _checkpointed(writer, config: Config, name: str):
    """The query's checkpoint ``<checkpoint-dir>/<name>`` and trigger."""
    writer = writer.option("checkpointLocation", f"{config.paths.checkpoint_dir.rstrip('/')}/{name}")
    if config.stream.trigger == "available-now":
        return writer.trigger(availableNow=True)
    return writer.trigger(processingTime=config.stream.trigger)


# The trend query's checkpoint folder. Its state changed shape (one de-duplication entry per
# reading, not per window), which Spark cannot read from the earlier folder, ``trends``.
TRENDS_CHECKPOINT = "trends-v2"
EARLIER_TRENDS_CHECKPOINT = "trends"


def start_trends_query(spark: SparkSession, config: Config, router: TrendRouter) -> StreamingQuery:
    """Start the trend query: Kafka -> readings -> windowed aggregations (update mode) -> ``router``.

    A second query on the same topic, not a branch of the routing query: the routing query
    appends each reading once, while aggregations emit updated windows (update mode), and one
    query has one output mode. Its own checkpoint also lets trends be rebuilt from Kafka alone.
    """
    _configure_state(spark, config)
    writer = (trends_stream(kafka_source(spark, config), config)
              .writeStream.queryName(TRENDS_QUERY).outputMode("update").foreachBatch(router))
    return _checkpointed(writer, config, TRENDS_CHECKPOINT).start()


def _configure_state(spark: SparkSession, config: Config) -> None:
    # The de-duplication state lives in RocksDB (off-heap, on disk), not on the JVM heap; its
    # partition count is fixed by the checkpoint after the first run.
    spark.conf.set("spark.sql.streaming.stateStore.providerClass",
                   "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
    spark.conf.set("spark.sql.shuffle.partitions", str(config.stream.state_partitions))


def start_query(spark: SparkSession, config: Config, router: BatchRouter) -> StreamingQuery:
    """Start the routing query: Kafka -> readings -> ``router`` per micro-batch, checkpointed."""
    _configure_state(spark, config)
    # Each micro-batch is cached once and read by every sink; compressing that short-lived
    # cache costs more CPU than the memory it saves (measured: +3.0 s vs +1.5 s per 200k rows).
    spark.conf.set("spark.sql.inMemoryColumnarStorage.compressed", "false")
    writer = readings_stream(kafka_source(spark, config), config).writeStream.queryName(ROUTING_QUERY).foreachBatch(router)
    return _checkpointed(writer, config, "routing").start()


class CheckpointLayoutError(RuntimeError):
    """The checkpoint directory was written by a version with a single query."""


def check_checkpoint_layout(spark: SparkSession, config: Config) -> None:
    """Refuse a checkpoint of the one-query layout (offsets directly under the directory), which
    this version would silently ignore, re-reading the topic from the start; say so when the
    trend query's state of an earlier version is left behind."""
    root = config.paths.checkpoint_dir.rstrip("/")
    if _exists(spark, f"{root}/offsets"):
        raise CheckpointLayoutError(
            f"{root} holds a checkpoint of an earlier bp-monitor, which ran one query. Each query now "
            f"has its own folder: move its contents into {root}/routing (mkdir {root}/routing, then move "
            f"commits, metadata, offsets, sources and state there) to resume where it stopped.")
    earlier = f"{root}/{EARLIER_TRENDS_CHECKPOINT}"
    if config.trends.enabled and _exists(spark, earlier) and not _exists(spark, f"{root}/{TRENDS_CHECKPOINT}"):
        log.warning("%s holds the trend query's state of an earlier bp-monitor, which this version cannot read: "
                    "trends are rebuilt from the topic (kafka.starting_offsets) into %s/%s, overwriting each "
                    "window's document by id. Delete %s once the rebuild has caught up.",
                    earlier, root, TRENDS_CHECKPOINT, earlier)


def _exists(spark: SparkSession, uri: str) -> bool:
    fs, path = hadoop_fs(spark, uri)
    return fs.exists(path)


@dataclass
class Pipeline:
    """The running stream job: its queries, their routers and the progress listener."""

    spark: SparkSession
    router: BatchRouter
    trend_router: TrendRouter | None
    queries: list[StreamingQuery]
    listener: ProgressLog

    def stop(self) -> None:
        """Stop the queries, let the listener record their last batches, then remove it."""
        for query in self.queries:
            query.stop()
        if not self.listener.wait_for([query.lastProgress for query in self.queries]):
            log.warning("the last progress reports did not reach the monitoring listener in time")
        self.spark.streams.removeListener(self.listener)


def start_pipeline(spark: SparkSession, config: Config, sinks: Sinks | None) -> Pipeline:
    """Start the routing query and, when trends are on and there are sinks, the trend query,
    with a listener that logs (and, with sinks, indexes) each batch's health record."""
    check_checkpoint_layout(spark, config)
    router = BatchRouter(config, sinks)
    trend_router = TrendRouter(config, sinks) if sinks is not None and config.trends.enabled else None
    routers = {ROUTING_QUERY: router, TRENDS_QUERY: trend_router}

    def sink_counts(query: str, batch_id: int) -> dict[str, int] | None:
        query_router = routers.get(query)
        return None if query_router is None else query_router.counts.get(batch_id)

    listener = ProgressLog(sink_counts, sinks.es if sinks else None, config.elasticsearch.metrics_index)
    pipeline = Pipeline(spark, router, trend_router, [], listener)
    spark.streams.addListener(listener)
    pipeline.queries.append(start_query(spark, config, router))
    if trend_router is not None:
        pipeline.queries.append(start_trends_query(spark, config, trend_router))
    return pipeline


def await_queries(queries: list[StreamingQuery], timeout_s: float | None = None) -> None:
    """Wait until every query has stopped (``available-now``) or one fails; a failure stops the
    others and is raised. ``timeout_s``: give up waiting (the queries keep running)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for query in queries:
            if not query.isActive and query.exception() is not None:
                for other in queries:
                    if other.isActive:
                        other.stop()
                raise query.exception()
        if not any(query.isActive for query in queries):
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"the queries were still running after {timeout_s:.0f} s")
        # A query may end between the checks above and here; then the loop looks again.
        active = [query for query in queries if query.isActive]
        if active:
            active[0].awaitTermination(1)
