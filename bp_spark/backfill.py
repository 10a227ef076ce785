"""Backfill from a FHIR Bulk Data export: the stream job's parsing, classification and routing,
as a Spark batch job, into the same sinks under the same ids.

A Bulk Data ``$export`` writes newline-delimited JSON, one resource per line, one or more files
per resource type (``Observation.ndjson``, ``Observation-2.ndjson`` ...). Each line is read as
the stream job reads a Kafka message: one Observation, or a Bundle whose blood-pressure entries
are each a reading. Where a Kafka record has a topic, a partition and an offset, a line has
``backfill:<file>`` (its path under ``--input``), partition 0 and its line number, so that a
dead letter's id names the line to look at (``backfill:Observation.ndjson-0-17``) and stays the
same when the backfill runs again.

The input is routed in chunks of whole file blocks (``--chunk-lines``), each one micro-batch of
the routing query's :class:`~bp_spark.routing.query.BatchRouter`, with the stream job's memory of the
versions it routed (:mod:`bp_spark.routing.repeats`): a reading routed before, by an earlier
backfill or by the stream job, is a repeat and is left out, so that a backfill run twice, or
followed by the stream job on a feed that replays it, stores and counts each observation once.
Abnormal readings, alerts and dead letters are written under their ids, and the archive leaves
out what its index says it holds (same id, same content: :mod:`bp_spark.sinks.archive`). Each
chunk's trend windows are merged into the trends index after it (:mod:`bp_spark.trends.step`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.clinical.classify import rules_for, with_classification
from bp_spark.config import Config
from bp_spark.routing.query import BatchRouter, BatchStats, with_dedup_key
from bp_spark.files import hadoop_fs
from bp_spark.sinks import Sinks
from bp_spark.streaming import parsed
from bp_spark.trends.step import TrendStep

log = logging.getLogger("bp_spark.backfill")

# What a Bulk Data export names its files; a file given by name is read whatever its name.
EXPORT_SUFFIXES = (".ndjson", ".ndjson.gz")
TOPIC_PREFIX = "backfill:"
# A file's name in dead-letter ids and the kafka.topic field: at most this many characters (the
# end of the path, where the file name is).
NAME_LIMIT = 120
DEFAULT_CHUNK_LINES = 500_000


class BackfillInputError(ValueError):
    """The input cannot be read as a Bulk Data export (missing, or no ndjson file in it)."""


@dataclass
class Block:
    """A block of an input file as Spark splits it: its lines get numbers from ``first_line``."""

    file: str  # as Spark's input_file_name() gives it
    start: int  # byte offset in the file
    first_seq: int  # monotonically_increasing_id of its first line
    lines: int
    blank: int
    name: str = ""
    first_line: int = 1
    chunk: int = 0


@dataclass
class BackfillSummary:
    """What a backfill did, for its last lines."""

    files: int = 0
    lines: int = 0
    blank: int = 0
    readings: int = 0
    duplicates: int = 0
    anomalies: int = 0
    alerts: int = 0
    archived: int = 0
    already_archived: int = 0
    dead_letters: int = 0
    ignored_entries: int = 0
    trend_windows: int = 0
    onsets: int = 0
    seconds: float = 0.0
    batches: list[BatchStats] = field(default_factory=list)

    def add(self, stats: BatchStats) -> None:
        self.batches.append(stats)
        self.readings += stats.rows + stats.repeats
        self.duplicates += stats.repeats
        self.anomalies += stats.anomalies
        self.alerts += stats.alerts
        self.archived += stats.normals
        self.already_archived += stats.already_archived
        self.dead_letters += stats.dead_letters
        self.ignored_entries += stats.ignored_entries
        self.trend_windows += stats.trends_merged
        self.onsets += stats.trend_onsets

    @property
    def other(self) -> int:
        """Readings that are in no sink by design: retractions, and earlier versions of a reading
        the same chunk also holds a later version of."""
        routed = self.anomalies + self.archived + self.already_archived + self.dead_letters + self.duplicates
        return self.readings - routed

    def lines_out(self, config: Config, source: str) -> list[str]:
        e = config.elasticsearch
        blank = f", {self.blank:,} blank skipped" if self.blank else ""
        ignored = f"; {self.ignored_entries:,} Bundle entries that are not blood pressure" if self.ignored_entries else ""
        return [
            "summary",
            f"  input {source}: {self.files:,} files, {self.lines:,} lines{blank}; {self.readings:,} readings{ignored}",
            f"  {e.anomalies_index:<32} {self.anomalies:>10,}  abnormal readings ({self.alerts:,} critical: alerts)",
            f"  {config.paths.archive_dir + '/':<32} {self.archived:>10,}  normal readings archived"
            + (f", {self.already_archived:,} already there" if self.already_archived else ""),
            f"  {e.deadletter_index:<32} {self.dead_letters:>10,}  unreadable (dead letters, id backfill:<file>-0-<line>)",
            f"  {e.trends_index:<32} {self.trend_windows:>10,}  trend windows ({self.onsets:,} sustained-hypertension onsets)",
            f"  reconciliation: {self.anomalies:,} + {self.archived + self.already_archived:,} + {self.dead_letters:,}"
            f" = {self.anomalies + self.archived + self.already_archived + self.dead_letters:,} stored for "
            f"{self.readings:,} readings; {self.duplicates:,} repeats (within the input, or routed before), "
            f"{self.other:,} retractions or "
            "superseded versions",
            f"  elapsed {self.seconds:.0f} s",
        ]


def input_files(spark: SparkSession, uri: str) -> list[tuple[str, str]]:
    """The files to read, sorted: ``uri`` itself, or the ``*.ndjson`` (and ``.ndjson.gz``) files
    under the folder ``uri``, at any depth. Each as (path, name): the path qualified (as Spark
    reads it), the name its path under ``uri``."""
    fs, root = hadoop_fs(spark, uri)
    if not fs.exists(root):
        raise BackfillInputError(f"--input {uri}: no such file or folder")
    if fs.getFileStatus(root).isFile():
        return [(root.toString(), root.getName())]
    base = root.toUri().getPath().rstrip("/") + "/"
    found, listing = [], fs.listFiles(root, True)
    while listing.hasNext():
        path = listing.next().getPath()
        relative = path.toUri().getPath()[len(base):]
        if path.getName().endswith(EXPORT_SUFFIXES) and not any(p.startswith((".", "_")) for p in relative.split("/")):
            found.append((path.toString(), relative))
    if not found:
        raise BackfillInputError(f"--input {uri}: no *.ndjson file in this folder (a Bulk Data export writes "
                                 "Observation.ndjson, or Observation-1.ndjson ...); give the folder of the export "
                                 "or one file")
    return sorted(found, key=lambda item: item[1])


def _source_name(name: str) -> str:
    return TOPIC_PREFIX + (name if len(name) <= NAME_LIMIT else "..." + name[-(NAME_LIMIT - 3):])


def plan_blocks(spark: SparkSession, files: list[tuple[str, str]], chunk_lines: int) -> list[Block]:
    """Read the input's blocks once: their lines, numbered per file, and the chunk each is routed in."""
    lines_df = _lines(spark, files)
    rows = (lines_df.groupBy("_file", "_block")
            .agg(F.min("_seq").alias("first_seq"), F.count(F.lit(1)).alias("lines"),
                 F.count(F.when(F.trim("value") == "", 1)).alias("blank"))
            .collect())
    names = {_local(spark, path): name for path, name in files}
    blocks = sorted((Block(r._file, r._block, r.first_seq, r.lines, r.blank, names.get(_local(spark, r._file), r._file))
                     for r in rows), key=lambda b: (b.name, b.start))
    chunk, in_chunk, line_in_file, previous = 0, 0, 1, None
    for block in blocks:
        if block.name != previous:
            line_in_file, previous = 1, block.name
        if in_chunk and in_chunk + block.lines > chunk_lines:
            chunk, in_chunk = chunk + 1, 0
        block.first_line, block.chunk = line_in_file, chunk
        line_in_file += block.lines
        in_chunk += block.lines
    return blocks


def _local(spark: SparkSession, path: str) -> str:
    """A file's path as Hadoop decodes it (input_file_name() gives an escaped URI)."""
    return spark._jvm.org.apache.hadoop.fs.Path(path).toUri().getPath()


def _lines(spark: SparkSession, files: list[tuple[str, str]]) -> DataFrame:
    return spark.read.text([path for path, _ in files]).select(
        "value", F.input_file_name().alias("_file"), F.input_file_block_start().alias("_block"),
        F.monotonically_increasing_id().alias("_seq"))


def records(spark: SparkSession, files: list[tuple[str, str]], blocks: list[Block],
            arrived: datetime) -> DataFrame:
    """The input's lines as the Kafka records the parser reads (``topic`` = ``backfill:<file>``,
    ``partition`` 0, ``offset`` = line number, ``timestamp`` = the backfill's start), with ``_chunk``.
    Blank lines are left out (their numbers are not reused). ``monotonically_increasing_id`` numbers
    a block's lines one after the other; the same read gives the same numbers every time."""
    plan_df = spark.createDataFrame(
        [(b.file, b.start, b.first_seq, b.first_line, _source_name(b.name), b.chunk) for b in blocks],
        "_file string, _block long, _first_seq long, _first_line long, topic string, _chunk int")
    return (_lines(spark, files).join(F.broadcast(plan_df), ["_file", "_block"])
            .where(F.trim("value") != "")
            .select(F.col("value"), F.col("topic"), F.lit(0).alias("partition"),
                    (F.col("_first_line") + F.col("_seq") - F.col("_first_seq")).alias("offset"),
                    F.lit(arrived).cast("timestamp").alias("timestamp"), "_chunk"))


def chunk_readings(records_df: DataFrame, config: Config) -> DataFrame:
    """A chunk's records as the routing query's micro-batch, cached: parsed, classified, each
    reading once (the first line that holds it; ``_copies``: how many lines held it). The caller
    unpersists it.

    The parsed rows are cached once, and repeats are found from their keys alone (ranking the
    rows would shuffle every payload). An export rarely has any: the cached rows are then the
    batch; else each repeat's later lines are left out by a broadcast join."""
    classified = (records_df.transform(lambda df: parsed(df, config))
                  .transform(lambda df: with_classification(df, rules_for(config)))
                  .transform(with_dedup_key)
                  .withColumn("_copies", F.lit(1).cast("long"))).persist()
    position = F.struct("kafka_topic", "kafka_offset", F.coalesce("bundle_entry", F.lit(-1)).alias("entry"))
    repeats = (classified.select("dedup_key", position.alias("_position"))
               .groupBy("dedup_key").agg(F.count(F.lit(1)).alias("_n"), F.min("_position").alias("_first"))
               .where(F.col("_n") > 1).collect())
    if not repeats:
        return classified
    repeats_df = classified.sparkSession.createDataFrame(
        [(r.dedup_key, r._n, r._first.kafka_topic, r._first.kafka_offset, r._first.entry) for r in repeats],
        "dedup_key string, _n long, _topic string, _offset long, _entry int")
    first = ((F.col("_topic") == F.col("kafka_topic")) & (F.col("_offset") == F.col("kafka_offset"))
             & (F.col("_entry") == F.coalesce("bundle_entry", F.lit(-1))))
    deduplicated = (classified.join(F.broadcast(repeats_df), "dedup_key", "left")
                    .where(F.col("_n").isNull() | first)
                    .withColumn("_copies", F.coalesce("_n", "_copies"))
                    .drop("_n", "_topic", "_offset", "_entry")).persist()
    deduplicated.count()
    classified.unpersist()
    return deduplicated


def archive_tag_for(uri: str, started: datetime) -> str:
    """A backfill's name for its staged batches: its own per run (a second run stages only what
    the first did not archive)."""
    return hashlib.sha256(f"backfill|{uri}|{started.isoformat()}".encode()).hexdigest()[:8]


def run_backfill(spark: SparkSession, config: Config, sinks: Sinks, uri: str,
                 chunk_lines: int = DEFAULT_CHUNK_LINES, progress=print) -> BackfillSummary:
    """Route every line of the export at ``uri``, chunk by chunk, each with its trend windows; return
    what was done. ``sinks``: the backfill's (``Sinks(..., archive_tag=...)``)."""
    started, arrived = time.monotonic(), datetime.now(timezone.utc)
    # Each chunk is shuffled once (its repeats); few partitions of it, as the stream's batches
    # have, keep the writes to a handful of tasks each.
    spark.conf.set("spark.sql.shuffle.partitions", str(max(config.stream.state_partitions, chunk_lines // 100_000)))
    summary = BackfillSummary()
    files = input_files(spark, uri)
    blocks = plan_blocks(spark, files, chunk_lines)
    summary.files = len(files)
    summary.lines = sum(b.lines for b in blocks)
    summary.blank = sum(b.blank for b in blocks)
    chunks = max((b.chunk for b in blocks), default=-1) + 1
    progress(f"backfill: {summary.files:,} files, {summary.lines:,} lines, in {chunks} chunk{'s' * (chunks != 1)}")
    records_df = records(spark, files, blocks, arrived)
    trends = TrendStep(spark, config, sinks, lambda: sinks.archive.tag, None) if config.trends.enabled else None
    router = BatchRouter(config, sinks, sinks.repeats, trends)
    done = 0
    for chunk in range(chunks):
        lines, chunk_started = sum(b.lines for b in blocks if b.chunk == chunk), time.monotonic()
        batch_df = chunk_readings(records_df.where(F.col("_chunk") == chunk).drop("_chunk"), config)
        try:
            router(batch_df, chunk)  # its trend windows merged after it (trends.trigger is for the stream)
            if trends is not None and trends.pending():
                router.merge_trends(router.last)
        finally:
            batch_df.unpersist()
        summary.add(router.last)
        done += lines
        s = router.last
        progress(f"backfill: chunk {chunk + 1} of {chunks}: {done:,} of {summary.lines:,} lines "
                 f"({100 * done / max(summary.lines, 1):.0f}%); anomalies {s.anomalies:,}, archived {s.normals:,}"
                 + (f" ({s.already_archived:,} already)" if s.already_archived else "")
                 + f", dead letters {s.dead_letters:,}; {time.monotonic() - chunk_started:.1f} s")
    rolled = sinks.archive.roll_if_due(force=True)
    if rolled is not None and rolled.batches:
        progress(f"backfill: archive rolled: {rolled.batches} staged chunks into {rolled.files:,} files "
                 f"in {rolled.seconds:.1f} s")
    summary.seconds = time.monotonic() - started
    return summary
