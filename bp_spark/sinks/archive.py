"""The archive sink: a batch's normal readings staged, rolled into per-patient, per-period files.

The layout, the roll and why they are safe are described in :mod:`bp_spark.archive`. Here is
what a micro-batch does with them, in the routing query's order:

1. corrections and retractions (:meth:`ArchiveSink.remove`): the archive index
   (``elasticsearch.archive_index``: observation id -> patient, period and content hash) says
   which patient's period holds each earlier version; only those files are read and rewritten,
   so the cost follows the batch, not the archive;
2. :meth:`ArchiveSink.new_readings`: the normal readings the archive holds already (same id,
   same content, per the archive index; a repeat, or a backfill's reading the feed replays) are
   left out; the rest get their archive-index documents, written in the batch's one pass to
   Elasticsearch;
3. :meth:`ArchiveSink.stage`: the readings staged as one whole batch folder (a replay stages the
   same folder again);
4. :meth:`ArchiveSink.roll_if_due`: every ``archive.roll_every``, the staged batches published.

A batch the roll has already published (a replay after a crash between the roll and Spark's
commit) has nothing left to archive: :meth:`ArchiveSink.replayed`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import defaultdict
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.files import HadoopFiles, LocalFiles, files_at, hadoop_fs
from bp_spark.archive.layout import LEGACY, PATIENT_PREFIX, PERIOD_PREFIX, UNDATED, period_of, staged_batch
from bp_spark.archive.roll import Roller, RollResult
from bp_spark.config import Config
from bp_spark.elastic import lookup_in_tasks
from bp_spark.config import duration_seconds as seconds
from bp_spark.outages import with_retries

log = logging.getLogger("bp_spark.sinks")

SINK = "archive"
# Batches with at most this many normal readings are staged by the driver when the archive is
# on the local file system: a live batch, not a backfill's.
DRIVER_WRITE_MAX_ROWS = 20_000
# Folder names Spark writes as they are (no character it escapes).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._-]+")
# The routing query's checkpoint folder, whose query id names the stream job's staged batches.
ROUTING_CHECKPOINT = "routing"


def one_line(raw: Column) -> Column:
    """The payload on one line: JSON allows line breaks only between tokens, so they become spaces.
    The regular expression runs only on the rare payload with a line break: on 200,000 payloads
    of ~1 KB it took 0.6-0.7 s run on each, 0.24 s guarded by the search."""
    return F.when(raw.contains("\n") | raw.contains("\r"), F.regexp_replace(raw, r"[\r\n]+", " ")).otherwise(raw)


def archive_tag(spark: SparkSession, config: Config) -> str:
    """Eight hex digits naming the stream job's staged batches: a hash of the checkpoint's location,
    the topic and the routing query's id (a checkpoint made anew numbers its batches from 0 again)."""
    fs, checkpoint = hadoop_fs(spark, config.paths.checkpoint_dir)
    query_id = (HadoopFiles(spark, fs, checkpoint).read(f"{ROUTING_CHECKPOINT}/metadata") or b"").decode().strip()
    return hashlib.sha256(f"{checkpoint.toString()}|{config.kafka.topic}|{query_id}".encode()).hexdigest()[:8]


class ArchiveSink:
    """Stages, rolls and corrects the archive of normal readings."""

    def __init__(self, spark: SparkSession, config: Config, waits: dict[str, float], elasticsearch=None,
                 tag: str | None = None) -> None:
        """``elasticsearch``: the job's :class:`~bp_spark.sinks.es.ElasticsearchSink` (the archive
        index); ``tag``: the name of this job's staged batches (default :func:`archive_tag`)."""
        self.spark = spark
        self.config = config
        self.waits = waits
        self.elasticsearch = elasticsearch
        self._tag = tag
        self.root = config.paths.archive_dir.rstrip("/")
        # Patient readings: the session masks every file Hadoop creates with paths.archive_umask
        # (bp_spark.session.private_files_conf; 077: 0600 files, 0700 folders); our own writes too.
        self.umask = config.paths.archive_umask_bits
        self.files = files_at(spark, self.root, self.umask)
        self.local_root: Path | None = self.files.root if isinstance(self.files, LocalFiles) else None
        self.roller = Roller(self.files, config.archive.max_file_mb << 20)
        self.roll_every_s = seconds(config.archive.roll_every)
        self.last_roll: RollResult | None = None
        self._last_roll_at: float | None = None  # None: roll at the first chance (what a crash left staged)
        self._rolled_through: int | None = None
        self._legacy: list[str] | None = None
        self._retry(self.roller.recover, "finishing an interrupted roll")

    @property
    def tag(self) -> str:
        if self._tag is None:
            self._tag = archive_tag(self.spark, self.config)
        return self._tag

    def _retry(self, action, what: str):
        return with_retries(action, what, SINK, self.config.outages, self.waits)

    def replayed(self, batch_id: int) -> bool:
        """Whether the roll has published this batch already (it is replayed after a crash)."""
        if self._rolled_through is None:
            self._rolled_through = self._retry(lambda: self.roller.rolled_through(self.tag), "reading the roll's mark")
        return batch_id <= self._rolled_through

    # ------------------------------------------------------------------ what is new

    def new_readings(self, normal_df: DataFrame, rows: int, batch_id: int, keep: list[DataFrame]) -> tuple[DataFrame, int]:
        """The normal readings the archive does not hold yet, and how many it holds already: by id
        and content hash in the archive index, where the batch that wrote the document was rolled
        or staged whole (a document this very batch wrote in an earlier attempt, or one whose
        batch broke off before it was staged, does not count: those readings are staged again).
        ``rows``: how many normal readings there are; a live batch's (at most
        ``elasticsearch.driver_write_max_docs``) are looked up by the driver in one multi-get, a
        bigger batch's in Spark's tasks (:func:`~bp_spark.elastic.lookup_in_tasks`). Either way the
        driver decides per batch that wrote a document, not per reading. ``keep``: frames
        persisted here, for the caller to unpersist when the batch ends."""
        if self.elasticsearch is None:
            return normal_df, 0
        tag = self.tag

        def held(row, doc: dict | None) -> tuple | None:
            """The row's archive-index document, when it names this content and another batch."""
            if doc is None or doc.get("content_hash") != row.content_hash or doc.get("tag") is None \
                    or doc.get("batch_id") is None or (doc["tag"], doc["batch_id"]) == (tag, batch_id):
                return None
            return row.observation_id, row.content_hash, doc["tag"], doc["batch_id"]
        readings_df = normal_df.select("observation_id", "content_hash")
        index, what = self.config.elasticsearch.archive_index, f"batch {batch_id}: asking the archive index"
        if rows <= self.config.elasticsearch.driver_write_max_docs:
            readings = readings_df.collect()
            stored = self.elasticsearch.documents(index, {r.observation_id for r in readings}, what)
            found = [answer for r in readings if (answer := held(r, stored.get(r.observation_id))) is not None]
            archived = self._archived({(tag_, batch) for _, _, tag_, batch in found})
            held_rows = [(i, h) for i, h, tag_, batch in found if (tag_, batch) in archived]
            if not held_rows:
                return normal_df, 0
            held_df = F.broadcast(self.spark.createDataFrame(held_rows, "observation_id string, content_hash long"))
            return normal_df.join(held_df, ["observation_id", "content_hash"], "left_anti"), len(held_rows)
        held_df = lookup_in_tasks(readings_df, self.config, index, ["content_hash", "tag", "batch_id"], held,
                                  "observation_id string, content_hash long, tag string, batch_id long").persist()
        keep.append(held_df)
        writers = self.elasticsearch.retry(lambda: held_df.select("tag", "batch_id").distinct().collect(), what)
        archived = self._archived({(w.tag, w.batch_id) for w in writers})
        if not archived:
            return normal_df, 0
        archived_df = self.spark.createDataFrame(sorted(archived), "tag string, batch_id long")
        held_df = held_df.join(F.broadcast(archived_df), ["tag", "batch_id"]).select("observation_id", "content_hash")
        count = held_df.count()
        return normal_df.join(held_df, ["observation_id", "content_hash"], "left_anti"), count

    def _archived(self, writers: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Of the ``(tag, batch)`` that wrote archive-index documents, those whose readings the
        archive holds: rolled, or staged whole."""
        rolled = {tag: self.roller.rolled_through(tag) for tag in {tag for tag, _ in writers}}  # a file read per tag
        return {(tag, batch_id) for tag, batch_id in writers
                if batch_id <= rolled[tag] or self.files.exists(staged_batch(tag, batch_id))}

    # ------------------------------------------------------------------ staging and rolling

    def stage(self, new_df: DataFrame, batch_id: int, rows: int) -> int:
        """Stage the batch's new normal readings as one whole folder; return how many."""
        if rows <= 0:
            return 0
        lines_df = new_df.select("patient_id", period_of(self.config.archive.period).alias("period"),
                                 one_line(F.col("raw")).alias("value"))
        folder = staged_batch(self.tag, batch_id)
        working = f"{folder}.tmp"  # renamed to the batch's folder once whole
        if self.local_root is not None and rows <= DRIVER_WRITE_MAX_ROWS:
            write = self._stage_from_driver
        else:
            write = self._stage_with_spark

        def staged() -> None:
            self.files.delete(working)
            write(lines_df, working)
            self.files.delete(folder)  # an earlier attempt of this batch, not rolled: the same readings
            self.files.rename(working, folder)
        self._retry(staged, f"batch {batch_id}: staging normal readings")
        return rows

    def _stage_from_driver(self, lines_df: DataFrame, working: str) -> None:
        """A live batch's few thousand readings are collected and written by the driver: the
        partitioned write's shuffle and task per patient cost more than the bytes
        (``bench/archive_bench.py``). Folder names are escaped as Spark escapes partition values."""
        groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for row in lines_df.select("patient_id", "period", F.col("value").cast("binary").alias("line")).collect():
            groups[(row.patient_id, row.period)].append(bytes(row.line))
        for (patient_id, period), lines in groups.items():
            self.files.write(f"{working}/{PATIENT_PREFIX}{self.partition_name(patient_id)}/{PERIOD_PREFIX}{period}/"
                             "part-00000.jsonl", [b"\n".join(lines) + b"\n"])

    def _stage_with_spark(self, lines_df: DataFrame, working: str) -> None:
        (lines_df.repartition("patient_id", "period").write.mode("overwrite").partitionBy("patient_id", "period")
         .text(f"{self.root}/{working}"))

    def roll_if_due(self, force: bool = False) -> RollResult | None:
        """Publish the staged batches when ``archive.roll_every`` has passed since the last roll
        (or ``force``); return what the roll did, or None."""
        now = time.monotonic()
        if not force and self._last_roll_at is not None and now - self._last_roll_at < self.roll_every_s:
            return None
        result = self._retry(self.roller.roll, "rolling the staged readings into the archive")
        self._last_roll_at = now
        self._rolled_through = None
        self.last_roll = result
        if result.batches:
            log.info("archive roll: %d staged batches into %d files (%.1f MB) in %.2f s", result.batches,
                     result.files, result.bytes / 1e6, result.seconds)
        return result

    # ------------------------------------------------------------------ removals

    def partition_name(self, value: str | None) -> str:
        """``value`` as Spark names its partition folder (escaped; null or empty: Hive's default)."""
        if value and _PLAIN_VALUE.fullmatch(value):
            return value
        if not value:
            return "__HIVE_DEFAULT_PARTITION__"
        return self.spark._jvm.org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils.escapePathName(value)

    def remove(self, ids: set[str], batch_id: int) -> int:
        """Drop every archived line of these observation ids (their earlier versions: a correction
        may have moved a reading to another patient, and a retraction may carry nothing but its
        id), wherever the archive index says they lie; return the lines removed."""
        if not ids:
            return 0
        return self._retry(lambda: self._remove(ids, batch_id), f"batch {batch_id}: removing superseded readings")

    def _remove(self, ids: set[str], batch_id: int) -> int:
        self.roller.recover()
        index = self.config.elasticsearch.archive_index
        where = self.elasticsearch.documents(index, ids, f"batch {batch_id}: asking the archive index") \
            if self.elasticsearch is not None else {}
        own = staged_batch(self.tag, batch_id) + "/"  # this batch's own readings (an earlier attempt's)
        files = []
        for doc in where.values():
            patient = f"{PATIENT_PREFIX}{self.partition_name(doc.get('patient_id'))}"
            files += [path for path in self.roller.files_of(patient, doc.get("period") or UNDATED)
                      if not path.startswith(own)]
        files += self.legacy_files()
        removed = self.roller.remove(ids, sorted(set(files)))
        if where:
            self.elasticsearch.forget(index, sorted(where), batch_id)
        return removed

    def legacy_files(self) -> list[str]:
        """Files of the layout before periods (one per patient and batch), if the archive still
        holds any: they are not in the archive index, so a correction reads them all (docs/operations.md)."""
        if self._legacy is None:
            self._legacy = [f"{patient}/{name}" for patient in self.files.names("")
                            if patient.startswith(PATIENT_PREFIX)
                            for name in self.files.names(patient) if LEGACY.match(name)]
            if self._legacy:
                log.warning("the archive holds %d files of the layout before periods: corrections read them all "
                            "until they are migrated (docs/operations.md#upgrading)", len(self._legacy))
        return self._legacy
