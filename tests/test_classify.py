"""Tests of bp_spark/classify.py on every boundary of the rule and the AHA 2017 categories."""

from __future__ import annotations

import pytest
from chispa import assert_column_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.classify import aha_category, anomaly_types, interpretation, severity, with_classification
from bp_spark.config import Config

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


def test_anomaly_types_with_strict_inequalities(cases_df, config: Config) -> None:
    df = cases_df.withColumn("types", anomaly_types(F.col("systolic"), F.col("diastolic"), config.thresholds))
    assert_column_equality(df, "types", "expected_types")


def test_aha_category_including_a_reachable_crisis(cases_df, config: Config) -> None:
    df = cases_df.withColumn("category", aha_category(F.col("systolic"), F.col("diastolic"), config.thresholds))
    assert_column_equality(df, "category", "expected_category")


def test_severity(cases_df, config: Config) -> None:
    df = cases_df.withColumn("severity", severity(F.col("systolic"), F.col("diastolic"), config.thresholds))
    assert_column_equality(df, "severity", "expected_severity")


def test_interpretation_codes(spark: SparkSession) -> None:
    rows = [(181.0, "HH"), (180.0, "H"), (141.0, "H"), (140.0, "N"), (90.0, "N"), (89.0, "L"), (70.0, "L"),
            (69.0, "LL"), (None, None)]
    df = (spark.createDataFrame(rows, "value double, expected string")
          .withColumn("code", interpretation(F.col("value"), 90, 140, 70, 180)))
    assert_column_equality(df, "code", "expected")


def test_with_classification_adds_every_column(cases_df, config: Config) -> None:
    out = cases_df.transform(lambda df: with_classification(df, config.thresholds)).collect()
    by_values = {(r.systolic, r.diastolic): r for r in out}
    crisis = by_values[(181.0, 100.0)]
    assert crisis.is_anomaly is True
    assert crisis.interpretation.asDict() == {"systolic": "HH", "diastolic": "H"}
    normal = by_values[(107.0, 60.0)]
    assert normal.is_anomaly is False and normal.anomaly_types == []
    assert normal.interpretation.asDict() == {"systolic": "N", "diastolic": "N"}
    missing = by_values[(None, 80.0)]
    assert missing.is_anomaly is False and missing.category is None


def test_thresholds_come_from_config(spark: SparkSession, config: Config) -> None:
    import dataclasses

    strict = dataclasses.replace(config.thresholds, systolic_high=130.0)
    df = spark.createDataFrame([(135.0, 80.0)], "systolic double, diastolic double")
    row = df.select(anomaly_types(F.col("systolic"), F.col("diastolic"), strict).alias("t")).first()
    assert row.t == ["systolic_high"]
