"""A batch's decisions as a plan: which rows go to which sink, as lazy frames.

Pure: no action, no request. The same rows give the same frames, so every routing outcome is
tested on static frames in seconds (tests/test_plan.py). The executor
(:class:`bp_spark.routing.query.BatchRouter`) reads what the plan needs of earlier state (the
versions index, the pending halves, the archive index), clears what corrections replace,
and writes the plan's documents in the documented order.

Every row of a batch ends in exactly one place:

- unusable (``error``): the dead letter;
- a retraction (``entered-in-error``): nowhere (the executor removes what it retracts);
- a half (a systolic or diastolic sent alone): the pairing, which gives pairs back as readings
  (:func:`with_pairs`) or, once expired, dead letters;
- a Goal (a patient's target): the goals index (:class:`bp_spark.sinks.goals.GoalStore`), or the
  dead letter when it cannot be read;
- a reading: the anomaly index when abnormal (and the alert index too when critical), else the
  archive.

Of several versions of one id in a batch that holds a correction or a retraction, only the
latest is planned (:func:`bp_spark.routing.query.latest_versions`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark import documents
from bp_spark.clinical.classify import CRITICAL, Rules
from bp_spark.pairing import ARCHIVE_COLUMNS, archive_rows
from bp_spark.parse import RETRACTED_STATUS, is_update

def usable() -> Column:
    """A row that can be stored as a reading (or a half of one)."""
    return F.col("error").isNull()


def live() -> Column:
    """A usable Observation that is not a retraction (a Goal has no status: never live)."""
    return usable() & ~F.col("goal") & (F.col("status") != RETRACTED_STATUS)


def panel() -> Column:
    """A live reading with both values (a half is routed once paired: bp_spark/pairing.py)."""
    return live() & F.col("half").isNull()


def batch_counts(batch_df: DataFrame) -> DataFrame:
    """One row: how many of the batch's rows each outcome takes (one pass over the batch)."""
    return batch_df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(~usable(), 1)).alias("dead"),
        F.count(F.when(usable() & is_update(F.col("status")), 1)).alias("updates"),
        F.count(F.when(panel() & F.col("is_anomaly"), 1)).alias("anomalies"),
        F.count(F.when(panel() & (F.col("severity") == CRITICAL), 1)).alias("alerts"),
        F.count(F.when(panel() & ~F.col("is_anomaly"), 1)).alias("normals"),
        F.count(F.when(live() & F.col("half").isNotNull(), 1)).alias("halves"),
        F.count(F.when(usable() & F.col("goal"), 1)).alias("goals"),
        F.sum("ignored_entries").alias("ignored"),
        (F.sum(F.col("_copies") - 1) if "_copies" in batch_df.columns else F.lit(0)).alias("repeats"),
        F.max(F.when(usable(), F.unix_seconds("effective_time"))).alias("newest"),
    )


def pair_counts(pairs_df: DataFrame) -> DataFrame:
    """One row: what the batch's pairs add to its counts (a normal pair archives two lines)."""
    return pairs_df.agg(
        F.count(F.when(usable() & F.col("is_anomaly"), 1)).alias("anomalies"),
        F.count(F.when(usable() & (F.col("severity") == CRITICAL), 1)).alias("alerts"),
        F.count(F.when(usable() & ~F.col("is_anomaly"), 1)).alias("normals"),
        F.count(F.when(~usable(), 1)).alias("dead"))


@dataclass(frozen=True)
class BatchPlan:
    """Where a batch's rows go: lazy frames of the batch's cached rows."""

    readings: DataFrame  # usable, not retracted, not a half: the anomaly index or the archive
    counted: DataFrame  # what trends may count: every version that is a reading (a later one may retract it)
    dead: DataFrame | None  # the dead letter
    halves: DataFrame  # usable, not retracted, halves: for the pairing
    normals: DataFrame  # the archive's rows (ARCHIVE_COLUMNS): a line per Observation
    goals: DataFrame  # the patients' Goals: their targets

    @property
    def anomalies(self) -> DataFrame:
        return self.readings.where(F.col("is_anomaly"))

    @property
    def alerts(self) -> DataFrame:
        return self.readings.where(F.col("severity") == CRITICAL)


def plan_batch(batch_df: DataFrame, latest_df: DataFrame | None = None) -> BatchPlan:
    """The plan of a batch's rows. ``latest_df``: the usable rows, latest version of each id only,
    when the batch holds corrections or retractions (else every usable row is planned)."""
    usable_df = batch_df.where(usable()) if latest_df is None else latest_df
    live_df = usable_df.where(~F.col("goal") & (F.col("status") != RETRACTED_STATUS))
    readings_df = live_df.where(F.col("half").isNull())
    return BatchPlan(
        readings=readings_df,
        # Not the latest version alone: a reading and its retraction in one batch count once, as
        # they do in two batches (trends count a reading once, in the batch that first routes it).
        counted=batch_df.where(panel()),
        dead=batch_df.where(~usable()),
        halves=live_df.where(F.col("half").isNotNull()),
        normals=readings_df.where(~F.col("is_anomaly")).select(*ARCHIVE_COLUMNS),
        goals=batch_df.where(usable() & F.col("goal")),
    )


def with_pairs(plan: BatchPlan, pairs_df: DataFrame) -> BatchPlan:
    """``plan`` with the batch's pairs (:func:`bp_spark.pairing.pair_readings`) routed as readings:
    a usable pair to the anomaly index or, with both its Observations, to the archive; one that is
    not (systolic not above diastolic) to the dead letter, as one message holding both."""
    bad = pairs_df.where(~usable())
    return replace(
        plan,
        readings=plan.readings.unionByName(pairs_df.where(usable()).drop("_halves"), allowMissingColumns=True),
        counted=plan.counted.unionByName(pairs_df.where(usable()).drop("_halves"), allowMissingColumns=True),
        dead=bad if plan.dead is None else plan.dead.unionByName(bad, allowMissingColumns=True),
        normals=plan.normals.unionByName(archive_rows(pairs_df.where(usable() & ~F.col("is_anomaly")))),
    )


def with_dead(plan: BatchPlan, dead_df: DataFrame) -> BatchPlan:
    """``plan`` with more dead letters (halves whose partner never came)."""
    return replace(plan, dead=dead_df if plan.dead is None else plan.dead.unionByName(dead_df, allowMissingColumns=True))


def elasticsearch_documents(plan: BatchPlan, indices: dict[str, str], rules: Rules, batch_id: int, dead_letters: bool,
                            anomalies: bool, alerts: bool) -> dict[str, DataFrame]:
    """The documents of the plan's Elasticsearch targets, each only when the batch has some (the
    flags: from the counts, so that an empty frame costs no write). ``indices``: index of each
    kind (:func:`bp_spark.elastic.pipeline_indices`); ``rules``: those the batch was classified by."""
    docs = {}
    if dead_letters:
        docs["dead letters"] = documents.deadletter_docs(plan.dead, indices["deadletter"], batch_id)
    if anomalies:
        docs["anomalies"] = documents.anomaly_docs(plan.anomalies, indices["anomalies"], rules, batch_id)
    if alerts:
        docs["alerts"] = documents.alert_docs(plan.alerts, indices["alerts"], batch_id)
    return docs
