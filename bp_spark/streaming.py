"""What both streaming queries share: the Kafka source (and waiting for its topic), the
checkpoint and trigger, the state store, and the per-batch timing and counting helpers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession

from bp_spark.config import Config
from bp_spark.config import duration_seconds as seconds
from bp_spark.connections import AccessRefused, KafkaAccess, spark_kafka_options
from bp_spark.parse import parse_observations
from bp_spark.outages import SinkFailure, with_retries

log = logging.getLogger("bp_spark.pipeline")


def topic_state(admin: KafkaAccess, topic: str, timeout_s: float = 10.0) -> tuple[str | None, list[int]]:
    """Why ``topic`` cannot be read yet (missing, a partition without a leader, the broker silent),
    or None; and its partitions."""
    try:
        # All topics' metadata: asking for this one by name would make a broker that auto-creates
        # topics create it, with its default partitions, before the producer of the feed does.
        metadata = admin.list_topics(timeout=timeout_s).topics.get(topic)
    except AccessRefused:
        raise  # a wrong password or CA: waiting would not mend it
    except Exception as exc:  # librdkafka's KafkaException: the broker did not answer
        return f"the broker did not answer ({str(exc)[:160]})", []
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return "the topic does not exist (yet)", []
    partitions = sorted(metadata.partitions)
    leaderless = [p for p, info in metadata.partitions.items() if info.leader < 0 or info.error is not None]
    if leaderless:
        return f"partitions {sorted(leaderless)} have no leader yet", partitions
    return None, partitions


def wait_for_topic(config: Config) -> list[int]:
    """Return the topic's partitions once it exists and each has a leader: a job started before
    its topic, or while Kafka is down, waits for them as for any unavailable sink (capped
    backoff, each attempt logged, ``outages.give_up_after``)."""
    admin = KafkaAccess(config)

    def ready() -> list[int]:
        problem, partitions = topic_state(admin, config.kafka.topic)
        if problem is not None:
            raise SinkFailure(problem)
        return partitions
    return with_retries(ready, f"waiting for Kafka topic {config.kafka.topic} at {config.kafka.bootstrap_servers}",
                        "kafka", config.outages)


def kafka_source(spark: SparkSession, config: Config) -> DataFrame:
    """The topic as a stream of Kafka records."""
    reader = (
        spark.readStream.format("kafka")
        .options(**spark_kafka_options(config))
        .option("subscribe", config.kafka.topic)
        .option("startingOffsets", config.kafka.starting_offsets)
        # A topic recreated or trimmed by retention must not stop a monitor: the offsets it lost
        # are counted and logged at ERROR by the routing query (bp_spark/routing/query.py).
        .option("failOnDataLoss", "false")
    )
    if config.kafka.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", config.kafka.max_offsets_per_trigger)
    # Split into equal ranges (three per core by default), then those ranges read and parsed in
    # one task per core: a big batch keeps every core busy to the end, and a live batch of a
    # hundred readings pays the parser's fixed cost per task (~75 ms of CPU: its converters for
    # the FHIR schema, the Kafka fetch) twice, not six times (docs/performance.md).
    ranges = read_tasks(spark, config)
    return reader.option("minPartitions", ranges).load().coalesce(min(ranges, spark.sparkContext.defaultParallelism))


def parsed(source_df: DataFrame, config: Config) -> DataFrame:
    """The Kafka records parsed as both queries read them (:func:`bp_spark.parse.parse_observations`
    with the job's ``stream.max_future_skew`` and ``stream.max_bundle_entries``)."""
    return parse_observations(source_df, seconds(config.stream.max_future_skew), config.stream.max_bundle_entries)


def read_tasks(spark: SparkSession, config: Config) -> int:
    """How many tasks at least read a micro-batch: ``kafka.min_partitions``, or three per core."""
    return config.kafka.min_partitions or 3 * spark.sparkContext.defaultParallelism


def configure_state(spark: SparkSession, config: Config) -> None:
    """De-duplication and aggregation state in RocksDB (off-heap, on disk), not on the JVM heap;
    its partition count is fixed by the checkpoint after the first run."""
    spark.conf.set("spark.sql.streaming.stateStore.providerClass",
                   "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
    spark.conf.set("spark.sql.shuffle.partitions", str(config.stream.state_partitions))


def start_in_pool(writer, spark: SparkSession, pool: str):
    """Start the query ``writer`` describes with its jobs in the scheduler pool ``pool``
    (conf/fairscheduler.xml): a query's thread inherits the local properties of the thread that
    starts it, and foreachBatch runs its jobs on that thread."""
    context = spark.sparkContext
    context.setLocalProperty("spark.scheduler.pool", pool)
    try:
        return writer.start()
    finally:
        context.setLocalProperty("spark.scheduler.pool", None)


def checkpointed(writer, config: Config, name: str, interval: str = ""):
    """The query's checkpoint ``<checkpoint-dir>/<name>`` and trigger: ``stream.trigger``, or
    ``interval`` when given and the job runs continuously (available-now applies to every query)."""
    writer = writer.option("checkpointLocation", f"{config.paths.checkpoint_dir.rstrip('/')}/{name}")
    if config.stream.trigger == "available-now":
        return writer.trigger(availableNow=True)
    return writer.trigger(processingTime=interval or config.stream.trigger)


def per_step(steps: dict[str, float]) -> str:
    """``"; seconds per step: read+parse 3.1, ..."`` for a batch's log line, or nothing."""
    return "; seconds per step: " + ", ".join(f"{name} {took:.1f}" for name, took in steps.items()) if steps else ""


def remember(counts: dict[int, dict], batch_id: int, entry: dict) -> dict[int, dict]:
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
