"""The versions of each observation the stream job has seen: repeats left out by one lookup a batch.

A message delivered again (the same id with the same content), or a late repeat of an earlier
version of a reading corrected since, must not be routed again: the first would only cost
work, the second would bring back what its correction replaced. The stream job remembers, per
observation id, the content hashes it has routed (``elasticsearch.versions_index``, ``_id`` =
Observation.id) and drops a row whose hash is among them.

Why not Spark's ``dropDuplicatesWithinWatermark``, which did this before: Spark 3.5 evicts its
expired keys by walking the whole state store on every batch whose watermark moved, and a
watermark on the job's clock moves every batch, so each batch paid for every reading of the
last ``stream.dedup_horizon`` (7 days: 12 million at 20 obs/s). Here a batch reads only its own
ids (one multi-get, whatever the history), and the history's end is deleted hourly, by a range
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

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.parse import FHIR_ID

# Hashes kept per id: the versions a correction chain can have in a horizon, with room to spare.
MAX_HASHES = 32
# Documents per bulk request when the batch's versions are recorded.
WRITE_CHUNK = 5_000
# A row's place in the topic: unique per row (a Bundle's entries share their message's offset).
POSITION = ("kafka_topic", "kafka_partition", "kafka_offset", "bundle_entry")


def version_hash() -> Column:
    """What tells two versions of an id apart: the content hash of a usable reading, the hash of
    the bytes of one that is not (two unusable messages that read alike are still two)."""
    return F.when(F.col("error").isNull(), F.col("content_hash")).otherwise(F.xxhash64("raw"))


@dataclass
class Seen:
    """What :meth:`VersionLedger.drop_repeats` found in a batch, for :meth:`VersionLedger.record`."""

    batch_id: int
    keys: dict[str, list[int]] = field(default_factory=dict)  # id -> the batch's new hashes, in topic order
    stored: dict[str, dict] = field(default_factory=dict)  # id -> its document before this batch
    repeats: int = 0  # rows left out: seen in an earlier batch, or earlier in this one
    lookup_s: float = 0.0  # the versions index's answer (the rest is reading the batch's ids)


class VersionLedger:
    """Drops a batch's repeats before routing, and records its versions after."""

    def __init__(self, spark: SparkSession, config: Config, elasticsearch, tag: Callable[[], str]) -> None:
        """``elasticsearch``: the job's :class:`~bp_spark.sinks.es.ElasticsearchSink`; ``tag``: gives
        the stream job's name for its batches (known once the query has started; a new checkpoint
        numbers its batches from 0 again, under another name)."""
        self.spark = spark
        self.index = config.elasticsearch.versions_index
        self.elasticsearch = elasticsearch
        self._tag = tag

    @property
    def tag(self) -> str:
        return self._tag()

    def drop_repeats(self, batch_df: DataFrame, batch_id: int) -> tuple[DataFrame, Seen]:
        """``batch_df`` without its repeats: rows whose (id, hash) an earlier batch routed, and
        every copy of an (id, hash) but the first in topic order. Rows without a valid id are all
        kept (each is known by its place in the topic, which a replay reads again)."""
        seen = Seen(batch_id)
        rows = (batch_df.where(F.col("observation_id").rlike(FHIR_ID))
                .select("observation_id", version_hash().alias("hash"), *POSITION).collect())
        if not rows:
            return batch_df, seen
        rows.sort(key=lambda r: (r.kafka_topic, r.kafka_partition, r.kafka_offset,
                                 -1 if r.bundle_entry is None else r.bundle_entry))
        started = time.monotonic()
        seen.stored = self.elasticsearch.documents(self.index, {r.observation_id for r in rows},
                                                   f"batch {batch_id}: asking which versions were seen")
        seen.lookup_s = time.monotonic() - started
        dropped = []
        for row in rows:
            hashes = seen.keys.setdefault(row.observation_id, [])
            if row.hash in hashes or row.hash in self._before(seen.stored.get(row.observation_id), batch_id):
                dropped.append(tuple(getattr(row, column) for column in POSITION))
            else:
                hashes.append(row.hash)
        seen.repeats = len(dropped)
        if not dropped:
            return batch_df, seen
        drop_df = self.spark.createDataFrame(dropped, "_t string, _p int, _o long, _e int")
        on = ((F.col("kafka_topic") == drop_df._t) & (F.col("kafka_partition") == drop_df._p)
              & (F.col("kafka_offset") == drop_df._o) & F.col("bundle_entry").eqNullSafe(drop_df._e))
        return batch_df.join(F.broadcast(drop_df), on, "left_anti"), seen

    def _before(self, doc: dict | None, batch_id: int) -> set[int]:
        """The hashes ``doc`` held before this batch: what this very batch added in an earlier
        attempt (a replay) does not count."""
        if doc is None:
            return set()
        hashes = set(doc.get("hashes") or ())
        if (doc.get("tag"), doc.get("batch_id")) == (self.tag, batch_id):
            hashes -= set(doc.get("added") or ())
        return hashes

    def routed_before(self, seen: Seen) -> set[str]:
        """The ids of ``seen`` that an earlier batch routed a version of (this batch's are new
        versions of them: corrections)."""
        return {doc_id for doc_id in seen.keys if self._before(seen.stored.get(doc_id), seen.batch_id)}

    def record(self, seen: Seen) -> int:
        """Remember the batch's new versions (after every sink has its rows); return how many ids."""
        now_ms = int(time.time() * 1000)
        docs = {}
        for doc_id, new in seen.keys.items():
            before = seen.stored.get(doc_id)
            kept = [h for h in (before or {}).get("hashes") or () if h in self._before(before, seen.batch_id)]
            added = [h for h in new if h not in kept]
            if not added:
                continue
            docs[doc_id] = {"hashes": (kept + added)[-MAX_HASHES:], "added": added, "tag": self.tag,
                            "batch_id": seen.batch_id, "seen_at": now_ms}
        items = list(docs.items())
        for start in range(0, len(items), WRITE_CHUNK):
            self.elasticsearch.put(self.index, dict(items[start:start + WRITE_CHUNK]),
                                   f"batch {seen.batch_id}: recording {len(docs)} versions seen", refresh=False)
        return len(docs)

