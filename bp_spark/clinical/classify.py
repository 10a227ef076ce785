"""Classification of readings as column expressions: category, anomaly types, severity and FHIR
interpretation codes, by the chosen guideline profile (:mod:`bp_spark.clinical.profiles`) and
the setting of each reading (home or office). No UDFs: Spark plans and runs these natively.

Column functions take and return ``Column``; :func:`with_classification` adds them all to a
DataFrame, for ``df.transform``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.clinical.profiles import HOME, OFFICE, Limit, Profile, Rule, profile
from bp_spark.columns import once_per_jvm
from bp_spark.config import Config, Thresholds


SYSTOLIC_HIGH = "systolic_high"
SYSTOLIC_LOW = "systolic_low"
DIASTOLIC_HIGH = "diastolic_high"
DIASTOLIC_LOW = "diastolic_low"

# The mission profile's (AHA/ACC 2017) categories.
NORMAL = "normal"
ELEVATED = "elevated"
STAGE_1 = "hypertension_stage_1"
STAGE_2 = "hypertension_stage_2"
CRISIS = "hypertensive_crisis"
HYPOTENSION = "hypotension"

CRITICAL = "critical"
WARNING = "warning"
NONE = "none"

# AHA/ACC 2017 stage limits (mmHg), drawn by the patient view.
ELEVATED_SYSTOLIC = 120
STAGE_1_SYSTOLIC, STAGE_1_DIASTOLIC = 130, 80
STAGE_2_SYSTOLIC, STAGE_2_DIASTOLIC = 140, 90


@dataclass(frozen=True)
class Rules:
    """What classifies a reading: the profile, the setting of a reading that does not say where it
    was taken, and the low and critically-low limits (``[thresholds]``)."""

    profile: Profile
    setting: str
    thresholds: Thresholds


def rules_for(config: Config) -> Rules:
    """The rules ``config`` chooses (``classification.profile``, ``classification.setting``)."""
    c, t = config.classification, config.trends
    chosen = profile(c.profile, config.thresholds, (t.sustained_systolic, t.sustained_diastolic))
    return Rules(chosen, c.setting, config.thresholds)


def mission_rules(t: Thresholds, setting: str = HOME) -> Rules:
    """The project's first rule with the limits ``t`` (its sustained limits are not used here)."""
    return Rules(profile("mission", t, (135, 85)), setting, t)


def limits(rules: Rules, setting: str) -> dict[str, float]:
    """The limits a reading of ``setting`` was classified by: the profile's high limits and its
    critical category's, the low and critically-low ``[thresholds]``."""
    t, (systolic_high, diastolic_high) = rules.thresholds, rules.profile.high[setting]
    critical = _critical_rule(rules, setting)
    return {"systolic_high": systolic_high.value, "systolic_low": t.systolic_low,
            "diastolic_high": diastolic_high.value, "diastolic_low": t.diastolic_low,
            "crisis_systolic": critical.systolic.value, "crisis_diastolic": critical.diastolic.value,
            "critical_low_systolic": t.critical_low_systolic, "critical_low_diastolic": t.critical_low_diastolic}


def _reaches(value: Column, limit: Limit) -> Column:
    return {">=": value >= limit.value, ">": value > limit.value, "<": value < limit.value}[limit.op]


def _rule_reached(rule: Rule, systolic: Column, diastolic: Column) -> Column | None:
    """Whether a reading reaches ``rule``; None: the rule takes every reading."""
    sides = [_reaches(value, limit) for value, limit in ((systolic, rule.systolic), (diastolic, rule.diastolic))
             if limit is not None]
    if not sides:
        return None
    return reduce(lambda a, b: (a | b) if rule.join == "or" else (a & b), sides)


def _per_setting(setting: Column, home: Column, office: Column, same: bool) -> Column:
    return home if same else F.when(setting == OFFICE, office).otherwise(home)


def setting_of(rules: Rules, self_measured: bool) -> Column:
    """Where a reading was taken: ``home`` when it says it was self-measured (``self_measured``,
    from ``meta.profile``, when the frame has that column), otherwise ``classification.setting``."""
    default = F.lit(rules.setting)
    return F.when(F.col("self_measured"), F.lit(HOME)).otherwise(default) if self_measured else default


def category(systolic: Column, diastolic: Column, setting: Column, rules: Rules) -> Column:
    """The profile's category: the first rule of the setting's table the reading reaches."""
    def table(rows: tuple[Rule, ...]) -> Column:
        expr = F.when(systolic.isNull() | diastolic.isNull(), F.lit(None).cast("string"))
        for rule in rows:
            reached = _rule_reached(rule, systolic, diastolic)
            if reached is None:
                return expr.otherwise(F.lit(rule.category))
            expr = expr.when(reached, F.lit(rule.category))
        return expr
    r = rules.profile.rules
    return _per_setting(setting, table(r[HOME]), table(r[OFFICE]), r[HOME] == r[OFFICE])


def _high(value: Column, side: int, setting: Column, rules: Rules) -> Column:
    h = rules.profile.high
    return _per_setting(setting, _reaches(value, h[HOME][side]), _reaches(value, h[OFFICE][side]),
                        h[HOME][side] == h[OFFICE][side])


def anomaly_types(systolic: Column, diastolic: Column, setting: Column, rules: Rules) -> Column:
    """The profile's findings, e.g. ``["systolic_high", "diastolic_high"]``; empty when none."""
    t = rules.thresholds
    findings = F.array(
        F.when(_high(systolic, 0, setting, rules), F.lit(SYSTOLIC_HIGH)),
        F.when(systolic < t.systolic_low, F.lit(SYSTOLIC_LOW)),
        F.when(_high(diastolic, 1, setting, rules), F.lit(DIASTOLIC_HIGH)),
        F.when(diastolic < t.diastolic_low, F.lit(DIASTOLIC_LOW)),
    )
    return F.filter(findings, lambda finding: finding.isNotNull())


def is_critically_low(systolic: Column, diastolic: Column, t: Thresholds) -> Column:
    """True below the critically-low limits."""
    return (systolic < t.critical_low_systolic) | (diastolic < t.critical_low_diastolic)


def severity(category_col: Column, types: Column, systolic: Column, diastolic: Column, rules: Rules) -> Column:
    """``critical`` for the profile's critical category or a critically low reading, ``warning``
    for other anomalies, else ``none`` (null without both pressures)."""
    return (
        F.when(systolic.isNull() | diastolic.isNull(), F.lit(None).cast("string"))
        .when((category_col == rules.profile.critical) | is_critically_low(systolic, diastolic, rules.thresholds),
              F.lit(CRITICAL))
        .when(F.size(types) > 0, F.lit(WARNING))
        .otherwise(F.lit(NONE))
    )


def interpretation(value: Column, low: float, high: Limit, critical_low: float, critical_high: Limit) -> Column:
    """HL7 ObservationInterpretation code of one component: LL, L, N, H or HH."""
    return (
        F.when(_reaches(value, critical_high), F.lit("HH"))
        .when(_reaches(value, high), F.lit("H"))
        .when(value < critical_low, F.lit("LL"))
        .when(value < low, F.lit("L"))
        .when(value.isNotNull(), F.lit("N"))
    )


def _critical_rule(rules: Rules, setting: str) -> Rule:
    return next(rule for rule in rules.profile.rules[setting] if rule.category == rules.profile.critical)


def _interpretations(s: Column, d: Column, setting: Column, rules: Rules) -> Column:
    t = rules.thresholds

    def codes(where: str) -> tuple[Column, Column]:
        high, critical = rules.profile.high[where], _critical_rule(rules, where)
        return (interpretation(s, t.systolic_low, high[0], t.critical_low_systolic, critical.systolic),
                interpretation(d, t.diastolic_low, high[1], t.critical_low_diastolic, critical.diastolic))
    home, office = codes(HOME), codes(OFFICE)
    same = rules.profile.high[HOME] == rules.profile.high[OFFICE] and _critical_rule(rules, HOME) == _critical_rule(
        rules, OFFICE)
    return F.struct(_per_setting(setting, home[0], office[0], same).alias("systolic"),
                    _per_setting(setting, home[1], office[1], same).alias("diastolic"))


def with_classification(df: DataFrame, rules: Rules) -> DataFrame:
    """Add ``setting``, ``profile``, ``anomaly_types``, ``is_anomaly``, ``category``, ``severity``
    and ``interpretation`` (a struct of the systolic and diastolic codes) from
    ``systolic``/``diastolic`` in mmHg. The columns are built once per rules
    (:func:`bp_spark.columns.once_per_jvm`): a pair batch, a backfill's chunk, each test
    classifies again."""
    setting, columns = _columns(rules, "self_measured" in df.columns)
    return df.withColumn("setting", setting).select("*", *columns)


@once_per_jvm
def _columns(rules: Rules, self_measured: bool) -> tuple[Column, tuple[Column, ...]]:
    """(the setting, the columns made from it) for ``rules``."""
    s, d = F.col("systolic"), F.col("diastolic")
    setting_col, setting = setting_of(rules, self_measured), F.col("setting")
    types = anomaly_types(s, d, setting, rules)
    cat = category(s, d, setting, rules)
    return setting_col, (
        F.lit(rules.profile.name).alias("profile"),
        types.alias("anomaly_types"),
        (F.size(types) > 0).alias("is_anomaly"),
        cat.alias("category"),
        severity(cat, types, s, d, rules).alias("severity"),
        _interpretations(s, d, setting, rules).alias("interpretation"),
    )
