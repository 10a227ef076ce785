"""The versions of each observation the stream job has seen: repeats left out by one lookup a batch.

A message delivered again (the same id with the same content), or a late repeat of an earlier
version of a reading corrected since, must not be routed again: the first would only cost
work, the second would bring back what its correction replaced. The stream job remembers, per
observation id, the content hashes it has routed (``elasticsearch.versions_index``, ``_id`` =
Observation.id) and drops a row whose hash is among them. All of it runs in Spark's tasks: the
lookup by multi-get in each task with its own client (:func:`bp_spark.elastic.lookup_in_tasks`),
the batch's own repeats by a window, the record by the connector; the driver sees three
numbers a batch, never the ids.

Why not Spark's ``dropDuplicatesWithinWatermark``, which did this before: Spark 3.5 evicts its
expired keys by walking the whole state store on every batch whose watermark moved, and a
watermark on the job's clock moves every batch, so each batch paid for every reading of the
last ``stream.dedup_horizon`` (7 days: 12 million at 20 obs/s). Here a batch reads only its own
ids (a multi-get per task, whatever the history), and the history's end is deleted hourly, by a range
query on ``seen_at``, with the dead letters' retention (:mod:`bp_spark.sinks.retention`).

A batch replayed after a crash must not find its own rows there: each document records the
job's tag and batch that last wrote it, and which hashes that batch added; those do not count
as seen when that same batch runs again. The documents are written last in the batch, once
every sink has its rows, so a batch that fails before leaves them as they were.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.elastic import lookup_in_tasks
from bp_spark.parse import FHIR_ID

# Hashes kept per id: the versions a correction chain can have in a horizon, with room to spare.
MAX_HASHES = 32
# A row's place in the topic: unique per row (a Bundle's entries share their message's offset).
POSITION = ("kafka_topic", "kafka_partition", "kafka_offset", "bundle_entry")


def topic_order() -> list[Column]:
    """A row's place in topic order: a Bundle's entries after their message's place, in order."""
    return [F.col("kafka_topic"), F.col("kafka_partition"), F.col("kafka_offset"),
            F.coalesce(F.col("bundle_entry"), F.lit(-1)).alias("entry")]


def version_hash() -> Column:
    """What tells two versions of an id apart: the content hash of a usable reading, the hash of
    the bytes of one that is not (two unusable messages that read alike are still two)."""
    return F.when(F.col("error").isNull(), F.col("content_hash")).otherwise(F.xxhash64("raw"))


@dataclass
class Seen:
    """What :meth:`VersionLedger.drop_repeats` found in a batch, for :meth:`VersionLedger.record`
    and for trends: a frame per id of the batch, kept until the batch ends (:attr:`frames`)."""

    batch_id: int
    versions_df: DataFrame | None = None  # observation_id, before (hashes routed earlier), new (this batch's, in topic order)
    repeats: int = 0  # rows left out: seen in an earlier batch, or earlier in this one
    new_ids: int = 0  # ids with a version new to the ledger: the documents record() writes
    corrected: int = 0  # ids an earlier batch routed a version of
    several: bool = False  # some id came in several new versions
    frames: list[DataFrame] = field(default_factory=list)  # persisted here, unpersisted by the caller

    def routed_before(self) -> DataFrame | None:
        """The ids of the batch that an earlier batch routed a version of (this batch's are new
        versions of them: corrections), or None when there are none."""
        if not self.corrected:
            return None
        return self.versions_df.where(F.size("before") > 0).select("observation_id")


def hashes_before(doc: dict | None, tag: str, batch_id: int) -> list[int]:
    """The hashes a versions document ``doc`` held before batch ``batch_id`` of job ``tag``, in
    its order: what this very batch added in an earlier attempt (a replay) does not count."""
    if doc is None:
        return []
    hashes = list(doc.get("hashes") or ())
    if (doc.get("tag"), doc.get("batch_id")) == (tag, batch_id):
        added = set(doc.get("added") or ())
        hashes = [h for h in hashes if h not in added]
    return hashes


class VersionLedger:
    """Drops a batch's repeats before routing, and records its versions after."""

    def __init__(self, spark: SparkSession, config: Config, elasticsearch, tag: Callable[[], str]) -> None:
        """``elasticsearch``: the job's :class:`~bp_spark.sinks.es.ElasticsearchSink`; ``tag``: gives
        the stream job's name for its batches (known once the query has started; a new checkpoint
        numbers its batches from 0 again, under another name)."""
        self.spark = spark
        self.config = config
        self.index = config.elasticsearch.versions_index
        self.elasticsearch = elasticsearch
        self._tag = tag

    @property
    def tag(self) -> str:
        return self._tag()

    def drop_repeats(self, batch_df: DataFrame, batch_id: int, rows: int) -> tuple[DataFrame, Seen]:
        """``batch_df`` without its repeats: rows whose (id, hash) an earlier batch routed, and
        every copy of an (id, hash) but the first in topic order. Rows without a valid id are all
        kept (each is known by its place in the topic, which a replay reads again). ``rows``: the
        batch's rows; a live batch of at most ``elasticsearch.driver_write_max_docs`` is looked up
        by the driver in one multi-get (a Spark job per task's client costs it more), a bigger one
        in Spark's tasks."""
        rows_df = (batch_df.where(F.col("observation_id").rlike(FHIR_ID))
                   .select("observation_id", version_hash().alias("hash"), *POSITION))
        if rows <= self.config.elasticsearch.driver_write_max_docs:
            return self._drop_on_driver(batch_df, rows_df, batch_id)
        return self._drop_in_tasks(batch_df, rows_df, batch_id)

    def _drop_in_tasks(self, batch_df: DataFrame, rows_df: DataFrame, batch_id: int) -> tuple[DataFrame, Seen]:
        seen = Seen(batch_id)
        rows_df = rows_df.withColumn("_copy", F.row_number().over(
            Window.partitionBy("observation_id", "hash").orderBy(*topic_order())))
        per_id = rows_df.groupBy("observation_id").agg(
            F.count(F.lit(1)).alias("rows"),
            F.sort_array(F.collect_list(F.when(F.col("_copy") == 1, F.struct(*topic_order(), "hash")))).alias("_firsts"))
        per_id = per_id.select("observation_id", "rows", F.transform("_firsts", lambda first: first["hash"]).alias("hashes"))
        tag = self.tag  # the task's function takes values, not the ledger (it holds the clients)
        looked_up = lookup_in_tasks(
            per_id, self.config, self.index, ["hashes", "added", "tag", "batch_id"],
            lambda row, doc: (row.observation_id, row.rows, row.hashes, hashes_before(doc, tag, batch_id)),
            "observation_id string, rows long, hashes array<bigint>, before array<bigint>")
        versions_df = looked_up.select(
            "observation_id", "rows", "before",
            F.filter("hashes", lambda h: ~F.array_contains("before", h)).alias("new")).persist()
        seen.frames.append(versions_df)
        summary = self.elasticsearch.retry(lambda: versions_df.agg(
            F.sum(F.col("rows") - F.size("new")).alias("repeats"), F.count(F.when(F.size("new") > 0, 1)).alias("new_ids"),
            F.count(F.when(F.size("before") > 0, 1)).alias("corrected"),
            F.max(F.size("new")).alias("most")).first(), f"batch {batch_id}: asking which versions were seen")
        seen.versions_df = versions_df
        seen.repeats, seen.new_ids, seen.corrected = summary.repeats or 0, summary.new_ids, summary.corrected
        seen.several = (summary.most or 0) > 1
        if not seen.repeats:
            return batch_df, seen
        dropped_df = (rows_df.join(versions_df.select("observation_id", "before"), "observation_id")
                      .where((F.col("_copy") > 1) | F.array_contains("before", F.col("hash")))
                      .select(*[F.col(c).alias(f"_{c}") for c in POSITION]))
        return self._without(batch_df, dropped_df), seen

    def _drop_on_driver(self, batch_df: DataFrame, rows_df: DataFrame, batch_id: int) -> tuple[DataFrame, Seen]:
        """What :meth:`_drop_in_tasks` decides, for a live batch's few rows: one collect, one multi-get."""
        seen = Seen(batch_id)
        rows = sorted(rows_df.collect(), key=lambda r: (r.kafka_topic, r.kafka_partition, r.kafka_offset,
                                                        -1 if r.bundle_entry is None else r.bundle_entry))
        stored = self.elasticsearch.documents(self.index, {r.observation_id for r in rows},
                                              f"batch {batch_id}: asking which versions were seen") if rows else {}
        tag, per_id, dropped = self.tag, {}, []
        for row in rows:
            entry = per_id.get(row.observation_id)
            if entry is None:
                entry = per_id[row.observation_id] = [0, hashes_before(stored.get(row.observation_id), tag, batch_id), []]
            entry[0] += 1
            if row.hash in entry[1] or row.hash in entry[2]:
                dropped.append(tuple(getattr(row, c) for c in POSITION))
            else:
                entry[2].append(row.hash)
        versions = [(observation_id, n, before, new) for observation_id, (n, before, new) in per_id.items()]
        seen.versions_df = self.spark.createDataFrame(
            versions, "observation_id string, rows long, before array<bigint>, new array<bigint>")
        seen.repeats = len(dropped)
        seen.new_ids = sum(1 for v in versions if v[3])
        seen.corrected = sum(1 for v in versions if v[2])
        seen.several = any(len(v[3]) > 1 for v in versions)
        if not dropped:
            return batch_df, seen
        dropped_df = F.broadcast(self.spark.createDataFrame(dropped, ", ".join(
            f"_{c} {t}" for c, t in zip(POSITION, ("string", "int", "long", "int")))))
        return self._without(batch_df, dropped_df), seen

    @staticmethod
    def _without(batch_df: DataFrame, dropped_df: DataFrame) -> DataFrame:
        """``batch_df`` without the rows at the places ``dropped_df`` names (``_kafka_topic``, ...)."""
        on = [batch_df[c] == dropped_df[f"_{c}"] for c in POSITION[:3]]
        on.append(batch_df["bundle_entry"].eqNullSafe(dropped_df["_bundle_entry"]))
        return batch_df.join(dropped_df, on, "left_anti")

    def record(self, seen: Seen) -> int:
        """Remember the batch's new versions (after every sink has its rows), a document per id
        that has one, written by the connector (by the driver for a live batch's few); return how many."""
        if not seen.new_ids:
            return 0
        kept = F.concat("before", "new")
        docs_df = seen.versions_df.where(F.size("new") > 0).select(
            F.col("observation_id").alias("_doc_id"),
            F.when(F.size(kept) > MAX_HASHES, F.slice(kept, F.size(kept) - (MAX_HASHES - 1), F.lit(MAX_HASHES)))
            .otherwise(kept).alias("hashes"),
            F.col("new").alias("added"), F.lit(self.tag).alias("tag"), F.lit(seen.batch_id).cast("long").alias("batch_id"),
            F.lit(int(time.time() * 1000)).alias("seen_at"))
        self.elasticsearch.index_frame(self.index, docs_df, seen.new_ids,
                                       f"batch {seen.batch_id}: recording {seen.new_ids} versions seen")
        return seen.new_ids
