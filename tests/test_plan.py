"""Tests of bp_spark/routing/plan.py on static frames: where each kind of row of a batch goes.

No stack: the rows are parsed and classified as the routing query reads them, and the plan's
frames are read back."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from pyspark.sql import DataFrame, SparkSession

from bp_spark.clinical.classify import rules_for
from bp_spark.config import Config
from bp_spark.elastic import pipeline_indices
from bp_spark.pairing import PAIR_SCHEMA, pair_readings
from bp_spark.routing.plan import BatchPlan, batch_counts, elasticsearch_documents, pair_counts, plan_batch, with_pairs
from bp_spark.routing.query import latest_versions, readings_stream
from test_parse import BASE, half, kafka_df, variant

NORMAL = variant(id="normal-1")
HIGH = variant(id="high-1", component__0__valueQuantity__value=150)
CRISIS = variant(id="crisis-1", component__0__valueQuantity__value=190, component__1__valueQuantity__value=125)
GARBAGE = "{not json"
SYSTOLIC_ALONE = {**half("8480-6"), "id": "half-s"}


def batch(spark: SparkSession, config: Config, payloads: list) -> DataFrame:
    return readings_stream(kafka_df(spark, payloads), config).cache()


def ids(df: DataFrame | None) -> list:
    return [] if df is None else sorted(r.observation_id for r in df.select("observation_id").collect())


def test_each_row_of_a_batch_goes_to_one_place(spark: SparkSession, config: Config) -> None:
    batch_df = batch(spark, config, [NORMAL, HIGH, CRISIS, GARBAGE, SYSTOLIC_ALONE])
    plan = plan_batch(batch_df)
    assert ids(plan.readings) == ["crisis-1", "high-1", "normal-1"]
    assert ids(plan.anomalies) == ["crisis-1", "high-1"] and ids(plan.alerts) == ["crisis-1"]
    assert ids(plan.halves) == ["half-s"]  # waits for the pairing, in no sink yet
    assert [r.error for r in plan.dead.collect()] == ["not a JSON object"]
    (normal,) = plan.normals.collect()
    assert normal.observation_id == "normal-1" and json.loads(normal.raw) == NORMAL  # the message as it came
    c = batch_counts(batch_df).first()
    assert (c.rows, c.dead, c.anomalies, c.alerts, c.normals, c.halves, c.updates) == (5, 1, 2, 1, 1, 1, 0)


def test_a_goal_is_planned_for_the_patients_targets_and_in_no_other_sink(spark, config) -> None:
    goal = {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active", "subject": {"reference": "Patient/p1"}}
    batch_df = batch(spark, config, [NORMAL, goal])
    plan = plan_batch(batch_df)
    assert ids(plan.goals) == ["Goal/g1"] and ids(plan.readings) == ["normal-1"] and plan.dead.count() == 0
    c = batch_counts(batch_df).first()
    assert (c.rows, c.goals, c.normals, c.anomalies, c.dead) == (2, 1, 1, 0, 0)


def test_the_documents_say_what_was_detected_and_where_the_message_came_from(spark, config) -> None:
    plan = plan_batch(batch(spark, config, [CRISIS, GARBAGE]))
    docs = elasticsearch_documents(plan, pipeline_indices(config), rules_for(config), 7, dead_letters=True, anomalies=True, alerts=True)
    (anomaly,) = docs["anomalies"].collect()
    assert (anomaly._target, anomaly._doc_id, anomaly.category, anomaly.severity, anomaly.batch_id) == (
        config.elasticsearch.anomalies_index, "crisis-1", "hypertensive_crisis", "critical", 7)
    assert sorted(anomaly.anomaly_types) == ["diastolic_high", "systolic_high"]
    (alert,) = docs["alerts"].collect()
    assert (alert._op, alert.alert_type, alert.reason) == ("create", "critical_reading", "hypertensive crisis: 190/125 mmHg")
    (dead,) = docs["dead letters"].collect()
    assert (dead._doc_id, dead.reason, dead.raw) == ("t-0-1", "not a JSON object", GARBAGE)
    assert elasticsearch_documents(plan, pipeline_indices(config), rules_for(config), 7, dead_letters=False, anomalies=False, alerts=False) == {}


def test_a_correction_plans_its_latest_version_and_a_retraction_nothing(spark, config) -> None:
    corrected = variant(id="normal-1", status="amended", component__0__valueQuantity__value=151)
    retracted = {"resourceType": "Observation", "id": "high-1", "status": "entered-in-error"}
    batch_df = batch(spark, config, [NORMAL, HIGH, corrected, retracted])
    assert batch_counts(batch_df).first().updates == 2
    plan = plan_batch(batch_df, latest_versions(batch_df.where("error IS NULL")))
    assert ids(plan.readings) == ["normal-1"] and ids(plan.anomalies) == ["normal-1"]  # the correction, abnormal now
    assert plan.normals.count() == 0 and plan.dead.count() == 0  # the retraction is in no sink


def pair(patient: str, systolic: float, diastolic: float, suffix: str) -> tuple:
    row = {"patient_id": patient, "effective_time": datetime(2026, 1, 1, 8, 30)}
    for side, value in (("s", systolic), ("d", diastolic)):
        row |= {f"{side}_observation_id": f"{side}-{suffix}", f"{side}_value": value, f"{side}_status": "final",
                f"{side}_half": {"s": "systolic", "d": "diastolic"}[side],
                f"{side}_content_hash": 1, f"{side}_raw": json.dumps({"id": f"{side}-{suffix}"}),
                f"{side}_kafka_topic": "t", f"{side}_kafka_partition": 0, f"{side}_kafka_offset": 9,
                f"{side}_kafka_timestamp": datetime(2026, 1, 2), f"{side}_bundle_entry": None}
    return tuple(row[name.split(" ")[0]] for name in PAIR_SCHEMA.split(", "))


@pytest.mark.parametrize(("systolic", "diastolic", "readings", "normals", "dead"), [
    (118.0, 76.0, ["s-x"], ['{"id": "d-x"}', '{"id": "s-x"}'], 0),  # normal: both Observations archived
    (165.0, 95.0, ["s-x"], [], 0),  # abnormal: one anomaly, the diastolic's id beside it
    (80.0, 95.0, [], [], 1),  # systolic not above diastolic: one dead letter holding both
])
def test_a_pair_is_planned_as_the_reading_it_makes(spark, config, systolic, diastolic, readings, normals, dead) -> None:
    pairs_df = pair_readings(spark.createDataFrame([pair("p1", systolic, diastolic, "x")], PAIR_SCHEMA), rules_for(config))
    plan = with_pairs(plan_batch(batch(spark, config, [NORMAL])), pairs_df)
    assert ids(plan.readings) == sorted(readings + ["normal-1"])
    assert sorted(r.raw for r in plan.normals.collect() if r.observation_id != "normal-1") == normals
    assert plan.dead.count() == dead == pair_counts(pairs_df).first().dead
    if readings and systolic > 140:
        assert plan.anomalies.first().paired_observation_id == "d-x"


def test_a_plan_is_lazy_frames(spark, config) -> None:
    plan = plan_batch(batch(spark, config, [BASE]))
    assert isinstance(plan, BatchPlan) and all(isinstance(getattr(plan, name), DataFrame)
                                               for name in ("readings", "dead", "halves", "normals"))
