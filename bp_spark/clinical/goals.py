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
from bp_spark.columns import once_per_jvm
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


def reduce_or(conditions: list[Column]) -> Column:
    out = F.coalesce(conditions[0], F.lit(False))
    for condition in conditions[1:]:
        out = out | F.coalesce(condition, F.lit(False))
    return out


def parse_goals(goal_df: DataFrame) -> DataFrame:
    """Rows with a Goal's JSON (``raw``) and ``kafka_timestamp`` -> ``goal_id``, ``patient_id``,
    ``lifecycle_status``, ``active``, ``start``, ``version_time``, ``systolic`` and ``diastolic``
    (structs of :data:`GOAL_BOUNDS`, null where the Goal sets none), and ``error`` (null when read).
    Other columns are kept.

    Successive selects, as the Observations' parser: each piece (a target, a bound in mmHg, a
    problem) is a column of its own that later steps name, so no expression is copied into the
    ones that use it (written as one select, the plan was 320 KB and took seconds to plan and ship
    for a few Goals; Spark keeps a projection apart rather than copy a costly expression twice)."""
    df = goal_df
    for step in _goal_steps():
        df = df.select("*", *step)
    return df.select(*goal_df.columns, *GOAL_COLUMNS)


GOAL_COLUMNS = ("goal_id", "patient_id", "lifecycle_status", "active", "start", "version_time", "systolic",
                "diastolic", "error")
_SIDES = ("_sys", "_dia")


@once_per_jvm
def _goal_steps() -> tuple[tuple[Column, ...], ...]:
    """The Goal parser as successive selects of new columns over the ones before, the last
    step's being the parser's outputs."""
    g = F.col("_goal")
    steps = [(F.from_json("raw", GOAL_SCHEMA).alias("_goal"),),
             (_target_of(g["target"], SYSTOLIC_CODINGS).alias("_sys"),
              _target_of(g["target"], DIASTOLIC_CODINGS).alias("_dia"),
              patient_id_from_reference(g["subject"]["reference"]).alias("patient_id"),
              F.to_timestamp(g["startDate"]).alias("_start"))]
    # Each side's given values in mmHg, then its bounds, then what is wrong with them.
    steps.append(tuple(column for side in _SIDES for column in (
        quantity_in_mmhg(F.col(side)["detailRange"]["low"]).alias(f"{side}_range_low"),
        quantity_in_mmhg(F.col(side)["detailRange"]["high"]).alias(f"{side}_range_high"),
        quantity_in_mmhg(F.col(side)["detailQuantity"]).alias(f"{side}_quantity"))))
    steps.append(tuple(column for side in _SIDES for column in _bounds(side)))
    steps.append(tuple(_problem(side).alias(f"{side}_problem") for side in _SIDES))
    status, subject, start = g["lifecycleStatus"], g["subject"]["reference"], g["startDate"]
    systolic, diastolic = F.col("_sys"), F.col("_dia")
    error = (
        F.when(F.coalesce(g["resourceType"] != "Goal", F.lit(True)), F.lit("not a Goal"))
        .when(F.coalesce(F.length(g["id"]), F.lit(0)) == 0, F.lit("Goal has no id"))
        .when(~g["id"].rlike(FHIR_ID), F.concat(F.lit("Goal id '"), quoted(g["id"]),
                                                F.lit("' is not a FHIR id (1-64 letters, digits, '-' or '.')")))
        .when(status.isNull(), F.lit("Goal has no lifecycleStatus"))
        .when(~status.isin(*ACTIVE_STATUSES, *ENDING_STATUSES, *WAITING_STATUSES),
              F.concat(F.lit("Goal lifecycleStatus '"), quoted(status), F.lit("' is not a FHIR Goal status")))
        .when(subject.isNull(), F.lit("Goal has no subject reference"))
        .when(F.col("patient_id").isNull(), F.concat(F.lit("Goal subject '"), quoted(subject),
                                                     F.lit("' is not a Patient reference")))
        .when(start.isNotNull() & F.col("_start").isNull(),
              F.concat(F.lit("Goal startDate '"), quoted(start), F.lit("' is not a FHIR date")))
        .when(status.isin(*ENDING_STATUSES), F.lit(None))  # ending a Goal needs only its id and subject
        .when(systolic.isNull() & diastolic.isNull(),
              F.lit("Goal has no blood-pressure target (target.measure LOINC 8480-6 or 8462-4, with its system)"))
        .when(systolic.isNotNull() & F.col("_sys_problem").isNotNull(),
              F.concat(F.lit("Goal systolic target "), F.col("_sys_problem")))
        .when(diastolic.isNotNull() & F.col("_dia_problem").isNotNull(),
              F.concat(F.lit("Goal diastolic target "), F.col("_dia_problem")))
    )
    steps.append((
        g["id"].alias("goal_id"), status.alias("lifecycle_status"),
        F.coalesce(status.isin(*ACTIVE_STATUSES), F.lit(False)).alias("active"),
        F.coalesce(F.col("_start"), F.col("kafka_timestamp")).alias("start"),
        g["meta"]["lastUpdated"].cast("timestamp").alias("version_time"),
        *[_bounds_struct(side).alias(name) for side, name in zip(_SIDES, ("systolic", "diastolic"))],
        error.alias("error"),
    ))
    return tuple(steps)


def _bounds(side: str) -> tuple[Column, Column]:
    """A target's low and high in mmHg, from the side's converted values: a range's own, or a
    quantity's as its comparator says (none: a ceiling)."""
    range_, quantity = F.col(side)["detailRange"], F.col(side)["detailQuantity"]
    as_low = quantity["comparator"].isin(">", ">=")
    low = F.when(range_.isNotNull(), F.col(f"{side}_range_low")).when(as_low, F.col(f"{side}_quantity"))
    high = (F.when(range_.isNotNull(), F.col(f"{side}_range_high"))
            .when(quantity.isNotNull() & ~F.coalesce(as_low, F.lit(False)), F.col(f"{side}_quantity")))
    return low.alias(f"{side}_low"), high.alias(f"{side}_high")


def _problem(side: str) -> Column:
    """Why a side's target cannot be used, or null."""
    range_, quantity = F.col(side)["detailRange"], F.col(side)["detailQuantity"]
    comparator = quantity["comparator"]
    low, high = F.col(f"{side}_low"), F.col(f"{side}_high")
    unreadable = reduce_or([given.isNotNull() & F.col(f"{side}_{converted}").isNull()
                            for given, converted in ((range_["low"], "range_low"), (range_["high"], "range_high"),
                                                     (quantity, "quantity"))])
    return (
        F.when(range_.isNull() & quantity.isNull(), F.lit("has neither detailRange nor detailQuantity"))
        .when(quantity.isNotNull() & comparator.isNotNull() & ~comparator.isin(*COMPARATORS),
              F.concat(F.lit("comparator '"), quoted(comparator), F.lit("' is not <, <=, > or >=")))
        .when(unreadable, F.lit("a value that is not a number in mm[Hg], mmHg or kPa"))
        .when(low.isNull() & high.isNull(), F.lit("has no low and no high"))
        .when(low > high, F.format_string("low %s mmHg is above high %s mmHg", low, high))
    )


def _bounds_struct(side: str) -> Column:
    """The side's :data:`GOAL_BOUNDS`, null without a target: a range's bounds are inclusive, a
    quantity's as its comparator says (none: at most)."""
    range_, comparator = F.col(side)["detailRange"], F.col(side)["detailQuantity"]["comparator"]
    low, high = F.col(f"{side}_low"), F.col(f"{side}_high")
    low_inclusive = F.when(low.isNotNull(), F.when(range_.isNotNull(), True).otherwise(comparator == ">="))
    high_inclusive = F.when(high.isNotNull(), F.when(range_.isNotNull(), True).otherwise(
        F.coalesce(comparator, F.lit("<=")) == "<="))
    return F.when(F.col(side).isNotNull(), F.struct(low.alias("low"), low_inclusive.alias("low_inclusive"),
                                                    high.alias("high"), high_inclusive.alias("high_inclusive")))


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
    # The inactive and unreadable goals are left out by collect_list (it skips nulls), not by a
    # filter: Spark would push a filter on `error` down through the parser's selects, copying the
    # whole error expression into it (a 700 KB plan over parse_goals' rows).
    usable = F.when(F.col("error").isNull() & F.col("active"), entry)
    per_patient = (goals_df.groupBy(F.col("patient_id").alias("_g_patient"))
                   .agg(F.sort_array(F.collect_list(usable), asc=False).alias("_g_goals")))
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
