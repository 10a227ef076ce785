"""Tests of bp_spark/clinical/classify.py on every boundary of each profile's table: the mission
rule and the AHA 2017 categories, then ESH 2023, ACC/AHA 2025 and NICE NG136, in home and office
settings. The expected categories are written from the guidelines' tables, not from the code."""

from __future__ import annotations

import pytest
from chispa import assert_column_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.clinical.classify import anomaly_types, category, interpretation, mission_rules, rules_for, with_classification
from bp_spark.clinical.profiles import Limit
from bp_spark.config import Config, load_config

# systolic, diastolic, anomaly types, category, severity
CASES = [
    (140.0, 90.0, [], "hypertension_stage_2", "none"),
    (141.0, 90.0, ["systolic_high"], "hypertension_stage_2", "warning"),
    (90.0, 60.0, [], "normal", "none"),
    (89.0, 60.0, ["systolic_low"], "hypotension", "warning"),
    (90.0, 59.0, ["diastolic_low"], "hypotension", "warning"),
    (180.0, 120.0, ["systolic_high", "diastolic_high"], "hypertension_stage_2", "warning"),
    (181.0, 100.0, ["systolic_high", "diastolic_high"], "hypertensive_crisis", "critical"),
    (170.0, 121.0, ["systolic_high", "diastolic_high"], "hypertensive_crisis", "critical"),
    (120.0, 80.0, [], "hypertension_stage_1", "none"),
    (129.0, 79.0, [], "elevated", "none"),
    (130.0, 79.0, [], "hypertension_stage_1", "none"),
    (107.0, 60.0, [], "normal", "none"),  # the HL7 FHIR example reading
    (119.0, 79.0, [], "normal", "none"),
    (139.0, 89.0, [], "hypertension_stage_1", "none"),
    (95.0, 91.0, ["diastolic_high"], "hypertension_stage_2", "warning"),
    (69.0, 45.0, ["systolic_low", "diastolic_low"], "hypotension", "critical"),
    (85.0, 39.0, ["systolic_low", "diastolic_low"], "hypotension", "critical"),
    (None, 80.0, [], None, None),
]

SCHEMA = T.StructType([
    T.StructField("systolic", T.DoubleType()),
    T.StructField("diastolic", T.DoubleType()),
    T.StructField("expected_types", T.ArrayType(T.StringType())),
    T.StructField("expected_category", T.StringType()),
    T.StructField("expected_severity", T.StringType()),
])


@pytest.fixture(scope="module")
def cases_df(spark: SparkSession):
    return spark.createDataFrame(CASES, SCHEMA)


def home() -> object:
    """The home setting as a column (made once Spark runs)."""
    return F.lit("home")


def test_anomaly_types_with_strict_inequalities(cases_df, config: Config) -> None:
    df = cases_df.withColumn("types", anomaly_types(F.col("systolic"), F.col("diastolic"), home(), rules_for(config)))
    assert_column_equality(df, "types", "expected_types")


def test_aha_category_including_a_reachable_crisis(cases_df, config: Config) -> None:
    df = cases_df.withColumn("category", category(F.col("systolic"), F.col("diastolic"), home(), rules_for(config)))
    assert_column_equality(df, "category", "expected_category")


def test_severity(cases_df, config: Config) -> None:
    df = cases_df.transform(lambda df: with_classification(df, rules_for(config)))
    assert_column_equality(df, "severity", "expected_severity")


def test_interpretation_codes(spark: SparkSession) -> None:
    rows = [(181.0, "HH"), (180.0, "H"), (141.0, "H"), (140.0, "N"), (90.0, "N"), (89.0, "L"), (70.0, "L"),
            (69.0, "LL"), (None, None)]
    df = (spark.createDataFrame(rows, "value double, expected string")
          .withColumn("code", interpretation(F.col("value"), 90, Limit(">", 140), 70, Limit(">", 180))))
    assert_column_equality(df, "code", "expected")


def test_with_classification_adds_every_column(cases_df, config: Config) -> None:
    out = cases_df.transform(lambda df: with_classification(df, rules_for(config))).collect()
    by_values = {(r.systolic, r.diastolic): r for r in out}
    crisis = by_values[(181.0, 100.0)]
    assert crisis.is_anomaly is True
    assert crisis.interpretation.asDict() == {"systolic": "HH", "diastolic": "H"}
    normal = by_values[(107.0, 60.0)]
    assert normal.is_anomaly is False and normal.anomaly_types == []
    assert normal.interpretation.asDict() == {"systolic": "N", "diastolic": "N"}
    missing = by_values[(None, 80.0)]
    assert missing.is_anomaly is False and missing.category is None
    assert {(r.profile, r.setting) for r in out} == {("mission", "home")}


def test_thresholds_come_from_config(spark: SparkSession, config: Config) -> None:
    import dataclasses

    strict = dataclasses.replace(config.thresholds, systolic_high=130.0)
    df = spark.createDataFrame([(135.0, 80.0)], "systolic double, diastolic double")
    row = df.select(anomaly_types(F.col("systolic"), F.col("diastolic"), home(), mission_rules(strict)).alias("t")).first()
    assert row.t == ["systolic_high"]


# --- guideline profiles -------------------------------------------------------------------------
# (profile, setting, systolic, diastolic, category, abnormal, critical), each row read off the
# guideline's own table (docs/clinical.md cites them). Abnormal: the anomaly index gets it.
GUIDELINES = [
    # ESH 2023, table 5: optimal < 120 and < 80; normal 120-129 and/or 80-84; high normal
    # 130-139 and/or 85-89; grade 1 140-159 and/or 90-99; grade 2 160-179 and/or 100-109;
    # grade 3 >= 180 and/or >= 110; isolated systolic >= 140 and < 90. Hypertension: office
    # >= 140/90, home >= 135/85 (table 7).
    ("esh2023", "office", 119, 79, "optimal", False, False),
    ("esh2023", "office", 120, 79, "normal", False, False),
    ("esh2023", "office", 119, 80, "normal", False, False),
    ("esh2023", "office", 129, 84, "normal", False, False),
    ("esh2023", "office", 130, 84, "high_normal", False, False),
    ("esh2023", "office", 129, 85, "high_normal", False, False),
    ("esh2023", "office", 139, 89, "high_normal", False, False),
    ("esh2023", "office", 140, 89, "isolated_systolic", True, False),
    ("esh2023", "office", 140, 90, "grade_1", True, False),
    ("esh2023", "office", 139, 90, "grade_1", True, False),
    ("esh2023", "office", 159, 99, "grade_1", True, False),
    ("esh2023", "office", 160, 99, "grade_2", True, False),
    ("esh2023", "office", 150, 100, "grade_2", True, False),
    ("esh2023", "office", 179, 109, "grade_2", True, False),
    ("esh2023", "office", 180, 109, "grade_3", True, True),
    ("esh2023", "office", 170, 110, "grade_3", True, True),
    ("esh2023", "office", 185, 85, "grade_3", True, True),  # a grade-3 systolic stays critical
    ("esh2023", "home", 134, 84, "high_normal", False, False),
    ("esh2023", "home", 135, 84, "high_normal", True, False),
    ("esh2023", "home", 134, 85, "high_normal", True, False),
    ("esh2023", "office", 135, 85, "high_normal", False, False),
    ("esh2023", "home", 89, 70, "hypotension", True, False),
    ("esh2023", "home", 100, 59, "hypotension", True, False),
    ("esh2023", "home", 69, 50, "hypotension", True, True),  # under the critically-low limits
    # ACC/AHA 2025: normal < 120 and < 80; elevated 120-129 and < 80; stage 1 130-139 or 80-89;
    # stage 2 >= 140 or >= 90; severe > 180 and/or > 120. Home equivalents: 130/80 stage 1,
    # 135/85 stage 2. Abnormal from stage 1.
    ("acc_aha2025", "office", 119, 79, "normal", False, False),
    ("acc_aha2025", "office", 120, 79, "elevated", False, False),
    ("acc_aha2025", "office", 129, 79, "elevated", False, False),
    ("acc_aha2025", "office", 130, 79, "stage_1", True, False),
    ("acc_aha2025", "office", 129, 80, "stage_1", True, False),
    ("acc_aha2025", "office", 139, 89, "stage_1", True, False),
    ("acc_aha2025", "office", 140, 89, "stage_2", True, False),
    ("acc_aha2025", "office", 139, 90, "stage_2", True, False),
    ("acc_aha2025", "office", 180, 120, "stage_2", True, False),
    ("acc_aha2025", "office", 181, 100, "severe", True, True),
    ("acc_aha2025", "office", 150, 121, "severe", True, True),
    ("acc_aha2025", "home", 134, 84, "stage_1", True, False),
    ("acc_aha2025", "home", 135, 84, "stage_2", True, False),
    ("acc_aha2025", "home", 134, 85, "stage_2", True, False),
    ("acc_aha2025", "home", 129, 79, "elevated", False, False),
    ("acc_aha2025", "office", 88, 62, "hypotension", True, False),
    # NICE NG136: stage 1 clinic >= 140/90, home >= 135/85; stage 2 clinic >= 160/100, home
    # >= 150/95; severe systolic >= 180 or diastolic >= 120.
    ("nice_ng136", "office", 139, 89, "normal", False, False),
    ("nice_ng136", "office", 140, 89, "stage_1", True, False),
    ("nice_ng136", "office", 139, 90, "stage_1", True, False),
    ("nice_ng136", "office", 159, 99, "stage_1", True, False),
    ("nice_ng136", "office", 160, 99, "stage_2", True, False),
    ("nice_ng136", "office", 159, 100, "stage_2", True, False),
    ("nice_ng136", "office", 179, 119, "stage_2", True, False),
    ("nice_ng136", "office", 180, 119, "severe", True, True),
    ("nice_ng136", "office", 179, 120, "severe", True, True),
    ("nice_ng136", "home", 134, 84, "normal", False, False),
    ("nice_ng136", "home", 135, 84, "stage_1", True, False),
    ("nice_ng136", "home", 134, 85, "stage_1", True, False),
    ("nice_ng136", "home", 149, 94, "stage_1", True, False),
    ("nice_ng136", "home", 150, 94, "stage_2", True, False),
    ("nice_ng136", "home", 149, 95, "stage_2", True, False),
    ("nice_ng136", "home", 180, 90, "severe", True, True),
    ("nice_ng136", "office", 85, 65, "hypotension", True, False),
]


@pytest.fixture(scope="module")
def classified_by_profile(spark: SparkSession) -> dict[tuple, object]:
    """Every row of GUIDELINES classified under its profile and setting (one Spark job per profile
    and setting, the readings without meta.profile, so the configured setting applies)."""
    found = {}
    for name, setting in sorted({(row[0], row[1]) for row in GUIDELINES}):
        config = load_config(env={"BP_SECURITY_MODE": "plain"}, stack_env=None,
                             overrides={"classification.profile": name, "classification.setting": setting})
        rows = [(float(s), float(d), False) for p, st, s, d, *_ in GUIDELINES if (p, st) == (name, setting)]
        df = spark.createDataFrame(rows, "systolic double, diastolic double, self_measured boolean")
        for row in df.transform(lambda frame: with_classification(frame, rules_for(config))).collect():
            found[(name, setting, row.systolic, row.diastolic)] = row
    return found


@pytest.mark.parametrize("case", GUIDELINES, ids=[f"{p}-{st}-{s}/{d}" for p, st, s, d, *_ in GUIDELINES])
def test_each_profile_at_the_boundaries_of_its_guideline(classified_by_profile, case) -> None:
    name, setting, systolic, diastolic, expected, abnormal, critical = case
    row = classified_by_profile[(name, setting, float(systolic), float(diastolic))]
    assert (row.category, row.is_anomaly, row.severity == "critical") == (expected, abnormal, critical)
    assert (row.profile, row.setting) == (name, setting)


def test_a_self_measured_reading_is_classified_as_home_whatever_the_default(spark: SparkSession) -> None:
    config = load_config(env={"BP_SECURITY_MODE": "plain"}, stack_env=None,
                         overrides={"classification.profile": "esh2023", "classification.setting": "office"})
    df = spark.createDataFrame([(136.0, 80.0, True), (136.0, 80.0, False)],
                               "systolic double, diastolic double, self_measured boolean")
    rows = df.transform(lambda frame: with_classification(frame, rules_for(config))).collect()
    assert [(r.setting, r.is_anomaly, r.anomaly_types) for r in rows] == [
        ("home", True, ["systolic_high"]), ("office", False, [])]


def test_a_profile_is_chosen_by_its_environment_variable_and_a_wrong_one_is_refused() -> None:
    from bp_spark.config import ConfigError
    config = load_config(env={"BP_SECURITY_MODE": "plain", "BP_CLASSIFICATION_PROFILE": "nice_ng136"}, stack_env=None)
    assert config.classification.profile == "nice_ng136"
    assert (config.trends.sustained_systolic, config.trends.sustained_diastolic) == (135, 85)
    acc = load_config(env={"BP_SECURITY_MODE": "plain", "BP_CLASSIFICATION_PROFILE": "acc_aha2025"}, stack_env=None)
    assert (acc.trends.sustained_systolic, acc.trends.sustained_diastolic) == (130, 80)  # its home stage 1
    with pytest.raises(ConfigError, match="classification.profile = 'jnc7'.*one of mission, esh2023"):
        load_config(env={"BP_SECURITY_MODE": "plain", "BP_CLASSIFICATION_PROFILE": "jnc7"}, stack_env=None)
