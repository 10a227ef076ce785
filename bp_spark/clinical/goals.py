"""Each patient's own target, from FHIR Goal resources: read, and applied to readings.

A Goal whose ``target.measure`` is the systolic (LOINC 8480-6) or the diastolic (8462-4)
pressure, with ``detailRange`` (low and/or high) or ``detailQuantity`` (with its comparator),
in mm[Hg] or kPa, sets its ``subject``'s target from its ``startDate`` (from its arrival when it
has none) while its ``lifecycleStatus`` is ``active`` or ``accepted``. ``cancelled``,
``completed``, ``entered-in-error`` and ``rejected`` end it; ``proposed``, ``planned`` and
``on-hold`` set none yet. A Goal that cannot be read gets a dead-letter reason, as an
Observation would.

Pure column expressions, like the rest of :mod:`bp_spark.clinical`:

- :func:`parse_goals`: rows holding a Goal's JSON (``raw``) and its Kafka ``kafka_timestamp`` ->
  one row per Goal with its bounds, or its ``error``;
- :func:`with_targets`: classified readings and the goals that may apply -> each reading with the
  goal that applies at its time (``goal_id``), ``target_status`` (``met``, ``above``, ``below``)
  and, outside its target, ``above_target`` / ``below_target`` among its anomaly types (an
  anomaly even where the profile finds the reading normal).

Bounds: a range's ``low`` and ``high`` are inclusive (a reading on them meets the target);
``detailQuantity`` with ``<`` or ``<=`` is an upper bound, with ``>`` or ``>=`` a lower one,
and without a comparator an upper bound (a blood-pressure target is a ceiling: "130" is "at
most 130"), inclusive.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.clinical.classify import WARNING
from bp_spark.parse import (DIASTOLIC_CODINGS, FHIR_ID, SYSTOLIC_CODINGS, has_coding, patient_id_from_reference,
                            quantity_in_mmhg, quoted)
from bp_spark.schema import CODEABLE_CONCEPT, QUANTITY, REFERENCE

ABOVE_TARGET, BELOW_TARGET = "above_target", "below_target"
MET, ABOVE, BELOW = "met", "above", "below"
ACTIVE_STATUSES = ("active", "accepted")
ENDING_STATUSES = ("cancelled", "completed", "entered-in-error", "rejected")
WAITING_STATUSES = ("proposed", "planned", "on-hold")
COMPARATORS = ("<", "<=", ">", ">=")

_COMPARED = T.StructType([*QUANTITY.fields, T.StructField("comparator", T.StringType())])
GOAL_SCHEMA = T.StructType([
    T.StructField("resourceType", T.StringType()),
    T.StructField("id", T.StringType()),
    T.StructField("meta", T.StructType([T.StructField("versionId", T.StringType()),
                                        T.StructField("lastUpdated", T.StringType())])),
    T.StructField("lifecycleStatus", T.StringType()),
    T.StructField("subject", REFERENCE),
    T.StructField("startDate", T.StringType()),
    T.StructField("target", T.ArrayType(T.StructType([
        T.StructField("measure", CODEABLE_CONCEPT),
        T.StructField("detailRange", T.StructType([T.StructField("low", QUANTITY), T.StructField("high", QUANTITY)])),
        T.StructField("detailQuantity", _COMPARED),
    ]))),
])
# The bounds of one pressure: (value in mmHg, inclusive), low and high; null where there is none.
GOAL_BOUNDS = T.StructType([T.StructField("low", T.DoubleType()), T.StructField("low_inclusive", T.BooleanType()),
                            T.StructField("high", T.DoubleType()), T.StructField("high_inclusive", T.BooleanType())])


def _target_of(targets: Column, codings: tuple[tuple[str, str], ...]) -> Column:
    return F.element_at(F.filter(targets, lambda t: F.coalesce(has_coding(t["measure"], codings), F.lit(False))), 1)


def _bounds(target: Column) -> tuple[Column, Column, Column, Column, Column]:
    """(low, low inclusive, high, high inclusive, problem) of one target."""
    range_, quantity = target["detailRange"], target["detailQuantity"]
    comparator = quantity["comparator"]
    as_low = comparator.isin(">", ">=")
    low = F.when(range_.isNotNull(), quantity_in_mmhg(range_["low"])).when(as_low, quantity_in_mmhg(quantity))
    high = (F.when(range_.isNotNull(), quantity_in_mmhg(range_["high"]))
            .when(quantity.isNotNull() & ~F.coalesce(as_low, F.lit(False)), quantity_in_mmhg(quantity)))
    low_inclusive = F.when(low.isNotNull(), F.when(range_.isNotNull(), True).otherwise(comparator == ">="))
    high_inclusive = F.when(high.isNotNull(), F.when(range_.isNotNull(), True).otherwise(
        F.coalesce(comparator, F.lit("<=")) == "<="))
    given = [range_["low"], range_["high"], quantity]
    unreadable = reduce_or([q.isNotNull() & quantity_in_mmhg(q).isNull() for q in given])
    problem = (
        F.when(range_.isNull() & quantity.isNull(), F.lit("has neither detailRange nor detailQuantity"))
        .when(quantity.isNotNull() & comparator.isNotNull() & ~comparator.isin(*COMPARATORS),
              F.concat(F.lit("comparator '"), quoted(comparator), F.lit("' is not <, <=, > or >=")))
        .when(unreadable, F.lit("a value that is not a number in mm[Hg], mmHg or kPa"))
        .when(low.isNull() & high.isNull(), F.lit("has no low and no high"))
        .when(low > high, F.format_string("low %s mmHg is above high %s mmHg", low, high))
    )
    return low, low_inclusive, high, high_inclusive, problem


def reduce_or(conditions: list[Column]) -> Column:
    out = F.coalesce(conditions[0], F.lit(False))
    for condition in conditions[1:]:
        out = out | F.coalesce(condition, F.lit(False))
    return out


def parse_goals(goal_df: DataFrame) -> DataFrame:
    """Rows with a Goal's JSON (``raw``) and ``kafka_timestamp`` -> ``goal_id``, ``patient_id``,
    ``lifecycle_status``, ``active``, ``start``, ``version_time``, ``systolic`` and ``diastolic``
    (structs of :data:`GOAL_BOUNDS`, null where the Goal sets none), and ``error`` (null when read).
    Other columns are kept."""
    goal = F.from_json("raw", GOAL_SCHEMA)
    read_df = goal_df.withColumn("_goal", goal)
    g = F.col("_goal")
    targets = g["target"]
    systolic, diastolic = _target_of(targets, SYSTOLIC_CODINGS), _target_of(targets, DIASTOLIC_CODINGS)
    s_low, s_low_in, s_high, s_high_in, s_problem = _bounds(systolic)
    d_low, d_low_in, d_high, d_high_in, d_problem = _bounds(diastolic)
    status, subject, start = g["lifecycleStatus"], g["subject"]["reference"], g["startDate"]
    patient = patient_id_from_reference(subject)
    start_time = F.to_timestamp(start)
    error = (
        F.when(F.coalesce(g["resourceType"] != "Goal", F.lit(True)), F.lit("not a Goal"))
        .when(F.coalesce(F.length(g["id"]), F.lit(0)) == 0, F.lit("Goal has no id"))
        .when(~g["id"].rlike(FHIR_ID), F.concat(F.lit("Goal id '"), quoted(g["id"]),
                                                F.lit("' is not a FHIR id (1-64 letters, digits, '-' or '.')")))
        .when(status.isNull(), F.lit("Goal has no lifecycleStatus"))
        .when(~status.isin(*ACTIVE_STATUSES, *ENDING_STATUSES, *WAITING_STATUSES),
              F.concat(F.lit("Goal lifecycleStatus '"), quoted(status), F.lit("' is not a FHIR Goal status")))
        .when(subject.isNull(), F.lit("Goal has no subject reference"))
        .when(patient.isNull(), F.concat(F.lit("Goal subject '"), quoted(subject),
                                         F.lit("' is not a Patient reference")))
        .when(start.isNotNull() & start_time.isNull(),
              F.concat(F.lit("Goal startDate '"), quoted(start), F.lit("' is not a FHIR date")))
        .when(status.isin(*ENDING_STATUSES), F.lit(None))  # ending a Goal needs only its id and subject
        .when(systolic.isNull() & diastolic.isNull(),
              F.lit("Goal has no blood-pressure target (target.measure LOINC 8480-6 or 8462-4, with its system)"))
        .when(systolic.isNotNull() & s_problem.isNotNull(), F.concat(F.lit("Goal systolic target "), s_problem))
        .when(diastolic.isNotNull() & d_problem.isNotNull(), F.concat(F.lit("Goal diastolic target "), d_problem))
    )

    def bounds(low, low_in, high, high_in, target) -> Column:
        return F.when(target.isNotNull(), F.struct(low.alias("low"), low_in.alias("low_inclusive"),
                                                   high.alias("high"), high_in.alias("high_inclusive")))
    return read_df.select(
        *[c for c in goal_df.columns],
        g["id"].alias("goal_id"), patient.alias("patient_id"), status.alias("lifecycle_status"),
        F.coalesce(status.isin(*ACTIVE_STATUSES), F.lit(False)).alias("active"),
        F.coalesce(start_time, F.col("kafka_timestamp")).alias("start"),
        g["meta"]["lastUpdated"].cast("timestamp").alias("version_time"),
        bounds(s_low, s_low_in, s_high, s_high_in, systolic).alias("systolic"),
        bounds(d_low, d_low_in, d_high, d_high_in, diastolic).alias("diastolic"),
        error.alias("error"),
    )


def _above(value: Column, bounds: Column) -> Column:
    high = bounds["high"]
    return F.coalesce(F.when(bounds["high_inclusive"], value > high).otherwise(value >= high), F.lit(False))


def _below(value: Column, bounds: Column) -> Column:
    low = bounds["low"]
    return F.coalesce(F.when(bounds["low_inclusive"], value < low).otherwise(value <= low), F.lit(False))


def with_targets(readings_df: DataFrame, goals_df: DataFrame) -> DataFrame:
    """Each classified reading with the goal of its patient that applies at its time: the active
    goal with the latest ``start`` at or before ``effective_time`` (then the latest version, then
    the largest id). Adds ``goal_id`` and ``target_status``; a reading outside its target gets
    ``above_target`` or ``below_target`` among its ``anomaly_types``, is an anomaly, and its
    severity is at least ``warning``. ``goals_df``: rows of :func:`parse_goals` (the latest
    version of each goal: a later version replaces it, an ending one ends it); the active ones
    are gathered per patient and broadcast, so no reading is shuffled."""
    entry = F.struct(F.col("start").alias("start"), F.col("version_time").alias("version_time"),
                     F.col("goal_id").alias("goal_id"), F.col("systolic").alias("systolic"),
                     F.col("diastolic").alias("diastolic"))
    per_patient = (goals_df.where(F.col("error").isNull() & F.col("active"))
                   .groupBy(F.col("patient_id").alias("_g_patient"))
                   .agg(F.sort_array(F.collect_list(entry), asc=False).alias("_g_goals")))
    joined = readings_df.join(F.broadcast(per_patient), F.col("patient_id") == F.col("_g_patient"), "left")
    s, d, when = F.col("systolic"), F.col("diastolic"), F.col("effective_time")
    applies = F.element_at(F.filter("_g_goals", lambda g: g["start"] <= when), 1)
    chosen = joined.withColumn("_goal", applies)
    goal = F.col("_goal")
    has_goal = goal.isNotNull() & s.isNotNull() & d.isNotNull()
    above = has_goal & (_above(s, goal["systolic"]) | _above(d, goal["diastolic"]))
    below = has_goal & ~above & (_below(s, goal["systolic"]) | _below(d, goal["diastolic"]))
    outside = above | below
    return chosen.select(
        *[c for c in readings_df.columns if c not in ("anomaly_types", "is_anomaly", "severity")],
        F.when(above, F.concat("anomaly_types", F.array(F.lit(ABOVE_TARGET))))
        .when(below, F.concat("anomaly_types", F.array(F.lit(BELOW_TARGET))))
        .otherwise(F.col("anomaly_types")).alias("anomaly_types"),
        (F.col("is_anomaly") | outside).alias("is_anomaly"),
        F.when(outside & (F.col("severity") == "none"), F.lit(WARNING)).otherwise(F.col("severity")).alias("severity"),
        F.when(has_goal, goal["goal_id"]).alias("goal_id"),
        F.when(above, F.lit(ABOVE)).when(below, F.lit(BELOW)).when(has_goal, F.lit(MET)).alias("target_status"),
    )
