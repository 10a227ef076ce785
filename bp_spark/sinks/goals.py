"""Each patient's targets, kept in Elasticsearch (``elasticsearch.goals_index``, one document per
Goal id) and in the driver's memory, and applied to every batch's readings.

A batch's Goals (:func:`bp_spark.clinical.goals.parse_goals`) are written before its readings
are classified against them, so a Goal and a reading of the same batch apply as they would
apart (the Goal counts from its ``startDate``). The latest version of each Goal is kept: by
``meta.lastUpdated`` where both versions carry it, else the one read later. Writing the same
Goal again changes nothing, so a replayed batch (a lost commit, a ``kill -9``) leaves the
targets as they were. Goals that cannot be read are dead letters with their reason.

The driver holds every Goal (a clinic's patients: one or a few each), loaded at the first batch
and again every :data:`RELOAD_S` (another job, such as the backfill, may write them too), and
updated by each batch's own.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.clinical.goals import GOAL_BOUNDS, GOAL_COLUMNS, parse_goals, with_targets

log = logging.getLogger("bp_spark.sinks")

RELOAD_S = 60.0
GOAL_ROW = T.StructType([
    T.StructField("goal_id", T.StringType()), T.StructField("patient_id", T.StringType()),
    T.StructField("active", T.BooleanType()), T.StructField("start", T.TimestampType()),
    T.StructField("version_time", T.TimestampType()),
    T.StructField("systolic", GOAL_BOUNDS), T.StructField("diastolic", GOAL_BOUNDS),
    T.StructField("error", T.StringType()),
])
# What a Goal row keeps of its message, for its dead letter.
MESSAGE_COLUMNS = ("raw", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "bundle_entry")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def _newer(candidate: dict, stored: dict | None) -> bool:
    """Whether ``candidate`` (read later) replaces ``stored``: unless both carry a version time
    and the stored one is later."""
    if stored is None:
        return True
    new, old = candidate.get("version_time"), stored.get("version_time")
    return new is None or old is None or _time(new) >= _time(old)


class GoalStore:
    """The job's patient targets: written per batch, applied to every batch's readings."""

    def __init__(self, spark: SparkSession, elasticsearch, index: str) -> None:
        """``elasticsearch``: the job's :class:`~bp_spark.sinks.es.ElasticsearchSink`."""
        self.spark = spark
        self.elasticsearch = elasticsearch
        self.index = index
        self._goals: dict[str, dict] | None = None
        self._loaded_at = 0.0
        self._active_df: DataFrame | None = None  # the active goals as rows, built once per change

    def _known(self) -> dict[str, dict]:
        if self._goals is None or time.monotonic() - self._loaded_at > RELOAD_S:
            self._goals = self.elasticsearch.every_document(self.index, "reading the patients' targets")
            self._loaded_at = time.monotonic()
            self._forget_active()
        return self._goals

    def _forget_active(self) -> None:
        """Drop the active goals' rows (the goals changed, or were read again)."""
        if self._active_df is not None:
            self._active_df.unpersist()
        self._active_df = None

    def record(self, goal_rows: DataFrame, batch_id: int) -> tuple[DataFrame | None, int, int]:
        """Read the batch's Goal rows, keep the latest version of each; return the Goals that
        cannot be read (as dead-letter rows), how many, and how many targets were written."""
        parsed = parse_goals(goal_rows.select(*MESSAGE_COLUMNS)).cache()
        try:
            rows = parsed.select(*GOAL_COLUMNS, "kafka_topic", "kafka_partition", "kafka_offset",
                                 "bundle_entry").collect()
            bad = [row for row in rows if row.error is not None]
            dead = None
            if bad:
                dead = parsed.where(F.col("error").isNotNull()).select(
                    *MESSAGE_COLUMNS, F.concat(F.lit("Goal/"), F.substring("goal_id", 1, 64)).alias("observation_id"),
                    "error")
            latest: dict[str, dict] = {}
            order = sorted((row for row in rows if row.error is None),
                           key=lambda r: (r.kafka_partition, r.kafka_offset, r.bundle_entry or 0))
            for row in order:  # in arrival order: a later one replaces an earlier one of the same id
                doc = self._document(row, batch_id)
                if _newer(doc, latest.get(row.goal_id)):
                    latest[row.goal_id] = doc
            known = self._known()
            stored = self.elasticsearch.documents(self.index, latest, f"batch {batch_id}: reading the patients' targets")
            changed = {goal_id: doc for goal_id, doc in latest.items()
                       if _newer(doc, stored.get(goal_id)) and _newer(doc, known.get(goal_id))}
            self.elasticsearch.put(self.index, changed, f"batch {batch_id}: writing {len(changed)} patient targets")
            known.update(changed)
            if changed:
                self._forget_active()
            return dead, len(bad), len(changed)
        finally:
            parsed.unpersist()

    @staticmethod
    def _document(row, batch_id: int) -> dict:
        def bounds(value) -> dict | None:
            return None if value is None else {k: v for k, v in value.asDict().items() if v is not None}
        doc = {"goal_id": row.goal_id, "patient_id": row.patient_id, "lifecycle_status": row.lifecycle_status,
               "active": bool(row.active), "start": _iso(row.start), "version_time": _iso(row.version_time),
               "systolic": bounds(row.systolic), "diastolic": bounds(row.diastolic),
               "kafka": {"topic": row.kafka_topic, "partition": row.kafka_partition, "offset": row.kafka_offset,
                         "entry": row.bundle_entry},
               "batch_id": batch_id, "processed_at": _iso(datetime.now(timezone.utc))}
        return {k: v for k, v in doc.items() if v is not None}

    def applied(self, readings_df: DataFrame) -> DataFrame | None:
        """``readings_df`` held to the active targets (:func:`with_targets`), or None when no
        patient has one (nothing to add, no join). Panels and pairs alike."""
        known = self._known()
        if self._active_df is None:
            active = [doc for doc in known.values() if doc.get("active")]
            if not active:
                return None

            def bounds(doc: dict, side: str):
                b = doc.get(side)
                return None if b is None else tuple(b.get(name) for name in ("low", "low_inclusive", "high",
                                                                             "high_inclusive"))
            # Kept in Spark's memory: every action of a batch joins them again, and rows made on the
            # driver are otherwise read back through a Python worker each time (0.1 s an action).
            self._active_df = self.spark.createDataFrame(
                [(doc["goal_id"], doc["patient_id"], True, _time(doc.get("start")), _time(doc.get("version_time")),
                  bounds(doc, "systolic"), bounds(doc, "diastolic"), None) for doc in active], GOAL_ROW).persist()
        return with_targets(readings_df, self._active_df)
