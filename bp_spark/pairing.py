"""A systolic and a diastolic sent as two Observations, paired into one reading.

Device gateways and EHR interfaces often send a blood pressure as two Observations, LOINC 8480-6
and 8462-4 (or their SNOMED CT codes), each with its ``valueQuantity``. The parser marks each as
a half (``half``). The routing query pairs the halves of one patient with the same effective
time into a reading, classified and routed like a panel, once: under the systolic's id, with
the diastolic's recorded (``paired_observation_id``). A normal pair's two Observations are
archived as they came, a line each.

A half whose partner is not in the same batch waits in the pending index
(``elasticsearch.pending_index``), its document keyed by patient, effective time and kind; the
partner, in any later batch, finds it there by that key. A paired half is marked with its
partner's id, not deleted, so that a replayed batch pairs the two again. The wait is bounded on
event time: once the latest effective time the job has seen is ``stream.pair_horizon`` past a
half's own, that half is a dead letter saying its partner never came. A correction or
retraction of a paired half unpairs both (their pair is removed from wherever it was stored)
and the other half waits again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from bp_spark.clinical.classify import Rules, rules_for, with_classification
from bp_spark.config import Config
from bp_spark.config import duration_seconds as seconds
from bp_spark.elastic import epoch_ms, index_time
from bp_spark.parse import DIASTOLIC, SYSTOLIC
from bp_spark.sinks import Sinks

log = logging.getLogger("bp_spark.pipeline")

PENDING, PAIRED, EXPIRED, SUPERSEDED = "pending", "paired", "expired", "superseded"
OTHER = {SYSTOLIC: DIASTOLIC, DIASTOLIC: SYSTOLIC}
# The pending index's record of the latest effective time seen (epoch milliseconds).
EVENT_TIME_ID = "_event_time"
# Expired halves handled per batch, at most (the rest in the next batches).
EXPIRE_PAGE = 1000

HALF_COLUMNS = ("observation_id", "patient_id", "effective_time", "half", "value", "raw", "content_hash", "status",
                "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "bundle_entry")
HALF_TYPES = ("string", "string", "timestamp", "string", "double", "string", "long", "string",
              "string", "int", "long", "timestamp", "int")
PAIR_SCHEMA = ", ".join(["patient_id string", "effective_time timestamp"]
                        + [f"{side}_{name} {kind}" for side in "sd" for name, kind in zip(HALF_COLUMNS, HALF_TYPES)
                           if name not in ("patient_id", "effective_time")])
DEAD_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in zip(HALF_COLUMNS, HALF_TYPES)) + ", error string"
# What the archive needs of a row: a pair gives one such row per half.
ARCHIVE_COLUMNS = ("patient_id", "raw", "observation_id", "content_hash", "effective_time")


def pending_key(kind: Column) -> Column:
    """A half's document id in the pending index: ``<patient>|<effective time, ms>|<kind>``; the
    one definition, for the halves paired in a batch and those looked up or left waiting."""
    return F.concat_ws("|", "patient_id", F.floor(F.unix_micros("effective_time") / 1000).cast("string"), kind)


def _document(half: dict, state: str, batch_id: int, partner_id: str | None = None) -> dict:
    doc = {
        "state": state, "kind": half["half"], "observation_id": half["observation_id"],
        "patient_id": half["patient_id"], "effective_time": epoch_ms(half["effective_time"]), "value": half["value"],
        "status": half["status"], "content_hash": half["content_hash"], "raw": half["raw"],
        "kafka": {"topic": half["kafka_topic"], "partition": half["kafka_partition"], "offset": half["kafka_offset"],
                  "timestamp": epoch_ms(half["kafka_timestamp"]) if half["kafka_timestamp"] else None,
                  "entry": half["bundle_entry"]},
        "batch_id": batch_id, "processed_at": epoch_ms(datetime.now(timezone.utc)),
    }
    if partner_id:
        doc["partner_id"] = partner_id
    return doc


def _half(doc: dict) -> dict:
    """A pending document back as a half's row."""
    kafka = doc.get("kafka") or {}
    return {"observation_id": doc["observation_id"], "patient_id": doc["patient_id"],
            "effective_time": index_time(doc["effective_time"]), "half": doc["kind"], "value": doc["value"],
            "raw": doc["raw"], "content_hash": doc["content_hash"], "status": doc["status"],
            "kafka_topic": kafka.get("topic"), "kafka_partition": kafka.get("partition"),
            "kafka_offset": kafka.get("offset"),
            "kafka_timestamp": index_time(kafka.get("timestamp")),
            "bundle_entry": kafka.get("entry")}


def _pair_row(systolic: dict, diastolic: dict) -> tuple:
    row = {"patient_id": systolic["patient_id"], "effective_time": systolic["effective_time"]}
    for side, half in (("s", systolic), ("d", diastolic)):
        row.update({f"{side}_{name}": half[name] for name in HALF_COLUMNS if name not in row})
    return tuple(row[name.split(" ")[0]] for name in PAIR_SCHEMA.split(", "))


@dataclass
class Paired:
    """What pairing made of a batch's halves."""

    readings_df: DataFrame | None = None  # one row per pair, as the parser and classifier give a panel
    dead_df: DataFrame | None = None  # halves that are dead letters (DEAD_SCHEMA)
    paired: int = 0
    waiting: int = 0
    expired: int = 0
    dead: int = 0
    documents: dict[str, dict] = field(default_factory=dict)  # pending index documents to write
    # The halves paired within the batch, as pending-index documents (marked paired): a later
    # correction of one finds its partner there. Written with the batch's other documents.
    paired_docs_df: DataFrame | None = None


class Pairing:
    """Pairs the halves of each routing batch, through the pending index."""

    def __init__(self, config: Config, sinks: Sinks) -> None:
        self.config = config
        self.sinks = sinks
        self.index = config.elasticsearch.pending_index
        self.horizon_s = seconds(config.stream.pair_horizon)
        self.rules = rules_for(config)
        # Whether halves were ever seen: until then a batch without one costs nothing here.
        try:
            self.active = sinks.es is not None and sinks.elasticsearch.exists(self.index)
        except Exception:  # Elasticsearch not answering yet: look each batch (waiting out the outage there)
            self.active = True

    # ------------------------------------------------------------------ corrections and retractions

    def unpair(self, ids: set[str], batch_id: int) -> set[str]:
        """Halves among ``ids`` (corrected or retracted) leave their pair: each is marked
        superseded and its partner waits again. Return the partners' ids, whose pair must be
        removed from wherever it was stored, as the corrected ones' earlier versions are."""
        if not ids or not self.active:
            return set()
        # Superseded too: a replay of this batch finds its halves already marked so, and must
        # still clear their partners' pair.
        found = self.sinks.elasticsearch.search(
            self.index, {"bool": {"filter": [{"terms": {"observation_id": sorted(ids)}},
                                             {"terms": {"state": [PENDING, PAIRED, SUPERSEDED]}}]}}, 10_000,
            f"batch {batch_id}: looking for corrected halves among the pending ones")
        if not found:
            return set()
        partner_ids = {doc["partner_id"] for doc in found.values() if doc.get("partner_id")}
        partners = self.sinks.elasticsearch.search(
            self.index, {"bool": {"filter": [{"terms": {"observation_id": sorted(partner_ids)}},
                                             {"term": {"state": PAIRED}}]}}, 10_000,
            f"batch {batch_id}: looking for the partners of corrected halves") if partner_ids else {}
        updates = {doc_id: {**doc, "state": SUPERSEDED, "batch_id": batch_id} for doc_id, doc in found.items()}
        for doc_id, doc in partners.items():
            if doc_id not in updates:
                updates[doc_id] = {k: v for k, v in doc.items() if k != "partner_id"} | {"state": PENDING}
        self.sinks.elasticsearch.put(self.index, updates, f"batch {batch_id}: unpairing {len(found)} corrected halves")
        return partner_ids

    # ------------------------------------------------------------------ pairing

    def pair(self, halves_df: DataFrame | None, newest_s: int | None, batch_id: int) -> Paired:
        """Pair ``halves_df`` (the batch's usable halves, current versions) with each other and with
        the halves waiting in the index; expire the halves the event time has left behind."""
        result = Paired()
        pair_frames, dead_rows, leftovers = [], [], []
        if halves_df is not None:
            self.active = True
            value = F.coalesce("systolic", "diastolic").alias("value")
            halves = halves_df.select(*[value if name == "value" else F.col(name) for name in HALF_COLUMNS])
            first = Window.partitionBy("patient_id", "effective_time", "half").orderBy(
                "kafka_topic", "kafka_partition", "kafka_offset", F.col("bundle_entry").asc_nulls_first())
            ranked = halves.withColumn("_rank", F.row_number().over(first))
            second = F.concat(F.lit("a second "), F.col("half"),
                              F.lit(" Observation for the same patient and effective time: one of each is paired"))
            dead_rows.extend(tuple(row) for row in ranked.where(F.col("_rank") > 1).drop("_rank")
                             .withColumn("error", second).collect())
            firsts = ranked.where(F.col("_rank") == 1).drop("_rank")
            sides = [firsts.where(F.col("half") == kind).select(
                "patient_id", "effective_time",
                *[F.col(name).alias(f"{side}_{name}") for name in HALF_COLUMNS
                  if name not in ("patient_id", "effective_time")]) for side, kind in (("s", SYSTOLIC), ("d", DIASTOLIC))]
            joined = sides[0].join(sides[1], ["patient_id", "effective_time"], "full_outer")
            both = F.col("s_observation_id").isNotNull() & F.col("d_observation_id").isNotNull()
            in_batch = joined.where(both).select(*[c.split(" ")[0] for c in PAIR_SCHEMA.split(", ")])
            pair_frames.append(in_batch)
            result.paired_docs_df = paired_documents(in_batch, self.index, batch_id)
            kind = F.coalesce("s_half", "d_half")
            other = F.when(kind == SYSTOLIC, F.lit(DIASTOLIC)).otherwise(F.lit(SYSTOLIC))
            for row in joined.where(~both).select("*", pending_key(kind).alias("_own_key"),
                                                   pending_key(other).alias("_partner_key")).collect():
                side = "s" if row["s_observation_id"] is not None else "d"
                leftovers.append({**{name: row[name] if name in ("patient_id", "effective_time") else row[f"{side}_{name}"]
                                     for name in HALF_COLUMNS}, "_own_key": row["_own_key"],
                                  "_partner_key": row["_partner_key"]})
        rows = self._pair_leftovers(leftovers, batch_id, result, dead_rows)
        spark = self.sinks.spark
        if rows:
            pair_frames.append(spark.createDataFrame(rows, PAIR_SCHEMA))
        self._expire(newest_s, batch_id, result, dead_rows)
        if pair_frames:
            pairs = pair_frames[0]
            for more in pair_frames[1:]:
                pairs = pairs.unionByName(more)
            result.readings_df = pair_readings(pairs, self.rules).persist()
            result.paired = result.readings_df.count()
        if dead_rows:
            result.dead_df, result.dead = spark.createDataFrame(dead_rows, DEAD_SCHEMA), len(dead_rows)
        return result

    def _pair_leftovers(self, leftovers: list[dict], batch_id: int, result: Paired, dead_rows: list) -> list[tuple]:
        """Halves without their partner in the batch: paired with a waiting one, or left waiting."""
        if not leftovers:
            return []
        keys = {h[key] for h in leftovers for key in ("_own_key", "_partner_key")}
        stored = self.sinks.elasticsearch.documents(self.index, keys, f"batch {batch_id}: looking for waiting halves")
        rows = []
        for half in leftovers:
            own_id, partner_id = half["_own_key"], half["_partner_key"]
            own, partner = stored.get(own_id), stored.get(partner_id)
            if own and own["observation_id"] != half["observation_id"] and own["state"] in (PENDING, PAIRED):
                dead_rows.append((*[half[name] for name in HALF_COLUMNS],
                                  f"a second {half['half']} Observation for the same patient and effective time: "
                                  "one of each is paired"))
                continue
            if partner and (partner["state"] == PENDING or (
                    partner["state"] == PAIRED and partner.get("partner_id") == half["observation_id"])):
                other = _half(partner)
                systolic, diastolic = (half, other) if half["half"] == SYSTOLIC else (other, half)
                rows.append(_pair_row(systolic, diastolic))
                result.documents[own_id] = _document(half, PAIRED, batch_id, other["observation_id"])
                result.documents[partner_id] = {**partner, "state": PAIRED, "partner_id": half["observation_id"]}
            else:
                result.documents[own_id] = _document(half, PENDING, batch_id)
                result.waiting += 1
        return rows

    # ------------------------------------------------------------------ the horizon

    def _expire(self, newest_s: int | None, batch_id: int, result: Paired, dead_rows: list) -> None:
        """Move the event time to ``newest_s`` (the batch's latest effective time, seconds) if later;
        halves still waiting that far behind it, by ``stream.pair_horizon``, are dead letters."""
        es = self.sinks.elasticsearch
        seen = es.documents(self.index, [EVENT_TIME_ID], f"batch {batch_id}: reading the pairing's event time")
        if EVENT_TIME_ID not in seen and not result.documents and result.paired_docs_df is None:
            return  # no half was ever seen (every batch with one records the event time)
        event_ms = (seen.get(EVENT_TIME_ID) or {}).get("effective_time") or 0
        if newest_s is not None and newest_s * 1000 > event_ms:
            event_ms = newest_s * 1000
            result.documents[EVENT_TIME_ID] = {"state": "event_time", "effective_time": event_ms, "batch_id": batch_id}
        waiting = es.search(
            self.index, {"bool": {"filter": [{"term": {"state": PENDING}},
                                             {"range": {"effective_time": {"lt": event_ms - self.horizon_s * 1000}}}]}},
            EXPIRE_PAGE, f"batch {batch_id}: looking for halves past stream.pair_horizon",
            sort=[{"effective_time": "asc"}])
        for doc_id, doc in waiting.items():
            if doc_id in result.documents:  # paired (or waiting anew) in this very batch
                continue
            half = _half(doc)
            dead_rows.append((*[half[name] for name in HALF_COLUMNS],
                              f"{half['half']} Observation without its {OTHER[half['half']]}: none came within "
                              f"{self.config.stream.pair_horizon} of its effective time (stream.pair_horizon)"))
            result.documents[doc_id] = {**doc, "state": EXPIRED, "batch_id": batch_id}
            result.expired += 1

    def save(self, paired: Paired, batch_id: int) -> None:
        """Write the batch's pending documents: after its other writes, so that a batch that fails
        before them is replayed against the same waiting halves."""
        self.sinks.elasticsearch.put(self.index, paired.documents,
                                     f"batch {batch_id}: writing {len(paired.documents)} waiting or paired halves")


def paired_documents(pairs_df: DataFrame, index: str, batch_id: int) -> DataFrame:
    """Both halves of each pair (PAIR_SCHEMA) as pending-index documents marked paired, with
    their partner's id: the documents the driver writes for a pair made across batches."""
    def side(own: str, other: str, kind: str) -> DataFrame:
        kafka = F.struct(*[F.col(f"{own}_{name}").alias(field) for name, field in (
            ("kafka_topic", "topic"), ("kafka_partition", "partition"), ("kafka_offset", "offset"),
            ("kafka_timestamp", "timestamp"), ("bundle_entry", "entry"))])
        return pairs_df.select(
            F.lit(index).alias("_target"), pending_key(F.lit(kind)).alias("_doc_id"), F.lit(PAIRED).alias("state"), F.lit(kind).alias("kind"),
            F.col(f"{own}_observation_id").alias("observation_id"), F.col(f"{other}_observation_id").alias("partner_id"),
            "patient_id", "effective_time", F.col(f"{own}_value").alias("value"), F.col(f"{own}_status").alias("status"),
            F.col(f"{own}_content_hash").alias("content_hash"), F.col(f"{own}_raw").alias("raw"), kafka.alias("kafka"),
            F.lit(batch_id).cast("long").alias("batch_id"), F.current_timestamp().alias("processed_at"))
    return side("s", "d", SYSTOLIC).unionByName(side("d", "s", DIASTOLIC))


def pair_readings(pairs_df: DataFrame, rules: Rules) -> DataFrame:
    """Pairs (PAIR_SCHEMA) as the parser's and classifier's rows of a panel: the systolic's id,
    message and Kafka record, the diastolic's id in ``paired_observation_id``; a correction's
    status if either half is one; ``_halves``: each half's line for the archive."""
    status = (F.when(F.col("s_status") != "final", F.col("s_status"))
              .when(F.col("d_status") != "final", F.col("d_status")).otherwise(F.lit("final")))
    error = F.when(F.col("s_value") <= F.col("d_value"), F.format_string(
        "systolic %s mmHg is not above diastolic %s mmHg (a pair of separate Observations)", "s_value", "d_value"))
    # A pair that cannot be used is one dead letter holding both Observations.
    raw = F.when(error.isNull(), F.col("s_raw")).otherwise(F.concat(F.lit("["), "s_raw", F.lit(","), "d_raw", F.lit("]")))
    halves = F.array(*[F.struct(*[F.col(f"{side}_{name}").alias(name)
                                  for name in ("observation_id", "raw", "content_hash")]) for side in "sd"])
    readings = pairs_df.select(
        raw.alias("raw"), F.col("s_kafka_topic").alias("kafka_topic"),
        F.col("s_kafka_partition").alias("kafka_partition"), F.col("s_kafka_offset").alias("kafka_offset"),
        F.col("s_kafka_timestamp").alias("kafka_timestamp"), F.col("s_bundle_entry").alias("bundle_entry"),
        F.col("s_observation_id").alias("observation_id"), status.alias("status"), "patient_id", "effective_time",
        F.col("s_value").alias("systolic"), F.col("d_value").alias("diastolic"),
        F.lit(None).cast("timestamp").alias("version_time"), F.lit(None).cast("string").alias("version_id"),
        error.alias("error"), F.lit(0).alias("ignored_entries"), F.col("s_content_hash").alias("content_hash"),
        F.lit(None).cast("string").alias("half"), F.lit(False).alias("self_measured"),
        F.col("d_observation_id").alias("paired_observation_id"),
        halves.alias("_halves"))
    return with_classification(readings, rules)


def archive_rows(pairs_df: DataFrame) -> DataFrame:
    """A normal pair's two Observations as the archive's rows (ARCHIVE_COLUMNS), a line each."""
    return (pairs_df.select("patient_id", "effective_time", F.explode("_halves").alias("_h"))
            .select("patient_id", F.col("_h.raw").alias("raw"), F.col("_h.observation_id").alias("observation_id"),
                    F.col("_h.content_hash").alias("content_hash"), "effective_time"))
