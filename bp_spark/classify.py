"""Classification of readings as column expressions: anomaly flags, AHA 2017 category,
severity and FHIR interpretation codes. No UDFs: Spark plans and runs these natively.

Column functions take and return ``Column``; :func:`with_classification` wraps them as a
DataFrame transformation for ``df.transform``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.config import Thresholds

SYSTOLIC_HIGH = "systolic_high"
SYSTOLIC_LOW = "systolic_low"
DIASTOLIC_HIGH = "diastolic_high"
DIASTOLIC_LOW = "diastolic_low"

NORMAL = "normal"
ELEVATED = "elevated"
STAGE_1 = "hypertension_stage_1"
STAGE_2 = "hypertension_stage_2"
CRISIS = "hypertensive_crisis"
HYPOTENSION = "hypotension"

CRITICAL = "critical"
WARNING = "warning"
NONE = "none"

# AHA/ACC 2017 stage limits (mmHg). Fixed by the guideline; the anomaly rule and the crisis
# and critically-low limits are the configurable ones.
ELEVATED_SYSTOLIC = 120
STAGE_1_SYSTOLIC, STAGE_1_DIASTOLIC = 130, 80
STAGE_2_SYSTOLIC, STAGE_2_DIASTOLIC = 140, 90


def anomaly_types(systolic: Column, diastolic: Column, t: Thresholds) -> Column:
    """The anomaly rule's findings, e.g. ``["systolic_high", "diastolic_high"]``; empty when normal.

    Strict inequalities: with the defaults, 140/90 and 90/60 are not anomalies.

    Examples
    --------
    >>> df.select(anomaly_types(F.lit(150), F.lit(95), thresholds))  # doctest: +SKIP
    ["systolic_high", "diastolic_high"]
    """
    findings = F.array(
        F.when(systolic > t.systolic_high, F.lit(SYSTOLIC_HIGH)),
        F.when(systolic < t.systolic_low, F.lit(SYSTOLIC_LOW)),
        F.when(diastolic > t.diastolic_high, F.lit(DIASTOLIC_HIGH)),
        F.when(diastolic < t.diastolic_low, F.lit(DIASTOLIC_LOW)),
    )
    return F.filter(findings, lambda finding: finding.isNotNull())


def is_anomaly(systolic: Column, diastolic: Column, t: Thresholds) -> Column:
    """True when the anomaly rule fires on either pressure."""
    return (
        (systolic > t.systolic_high) | (systolic < t.systolic_low)
        | (diastolic > t.diastolic_high) | (diastolic < t.diastolic_low)
    )


def aha_category(systolic: Column, diastolic: Column, t: Thresholds) -> Column:
    """AHA/ACC 2017 category; the higher of the two readings decides.

    ``hypertensive_crisis`` (> crisis limits) is tested first, so it is reachable; then stage 2
    (>= 140 or >= 90), stage 1 (>= 130 or >= 80), elevated (>= 120), then ``hypotension`` where
    the stage is normal and a low threshold is crossed.
    """
    return (
        F.when(systolic.isNull() | diastolic.isNull(), F.lit(None))
        .when((systolic > t.crisis_systolic) | (diastolic > t.crisis_diastolic), F.lit(CRISIS))
        .when((systolic >= STAGE_2_SYSTOLIC) | (diastolic >= STAGE_2_DIASTOLIC), F.lit(STAGE_2))
        .when((systolic >= STAGE_1_SYSTOLIC) | (diastolic >= STAGE_1_DIASTOLIC), F.lit(STAGE_1))
        .when(systolic >= ELEVATED_SYSTOLIC, F.lit(ELEVATED))
        .when((systolic < t.systolic_low) | (diastolic < t.diastolic_low), F.lit(HYPOTENSION))
        .otherwise(F.lit(NORMAL))
    )


def is_critically_low(systolic: Column, diastolic: Column, t: Thresholds) -> Column:
    """True below the critically-low limits."""
    return (systolic < t.critical_low_systolic) | (diastolic < t.critical_low_diastolic)


def severity(systolic: Column, diastolic: Column, t: Thresholds) -> Column:
    """``critical`` for a crisis or a critically low reading, ``warning`` for other anomalies, else ``none``."""
    return (
        F.when((aha_category(systolic, diastolic, t) == CRISIS) | is_critically_low(systolic, diastolic, t),
               F.lit(CRITICAL))
        .when(is_anomaly(systolic, diastolic, t), F.lit(WARNING))
        .when(systolic.isNotNull() & diastolic.isNotNull(), F.lit(NONE))
    )


def interpretation(value: Column, low: float, high: float, critical_low: float, critical_high: float) -> Column:
    """HL7 ObservationInterpretation code of one component: LL, L, N, H or HH."""
    return (
        F.when(value > critical_high, F.lit("HH"))
        .when(value > high, F.lit("H"))
        .when(value < critical_low, F.lit("LL"))
        .when(value < low, F.lit("L"))
        .when(value.isNotNull(), F.lit("N"))
    )


def with_classification(df: DataFrame, t: Thresholds) -> DataFrame:
    """Add ``anomaly_types``, ``is_anomaly``, ``category``, ``severity`` and ``interpretation``
    (a struct of the systolic and diastolic codes) from ``systolic``/``diastolic`` in mmHg."""
    s, d = F.col("systolic"), F.col("diastolic")
    return df.select(
        "*",
        anomaly_types(s, d, t).alias("anomaly_types"),
        F.coalesce(is_anomaly(s, d, t), F.lit(False)).alias("is_anomaly"),
        aha_category(s, d, t).alias("category"),
        severity(s, d, t).alias("severity"),
        F.struct(
            interpretation(s, t.systolic_low, t.systolic_high, t.critical_low_systolic, t.crisis_systolic).alias("systolic"),
            interpretation(d, t.diastolic_low, t.diastolic_high, t.critical_low_diastolic, t.crisis_diastolic).alias("diastolic"),
        ).alias("interpretation"),
    )
