"""Tests of bp_spark/clinical/goals.py on static frames: FHIR Goals read (and every kind of bad
one given its reason), and each reading held to the target that applies at its time."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from pyspark.sql import DataFrame, SparkSession

from bp_spark.clinical.classify import rules_for, with_classification
from bp_spark.clinical.goals import parse_goals, with_targets
from bp_spark.config import Config

LOINC = "http://loinc.org"
ARRIVED = datetime(2026, 3, 1, 12, 0)


def target(code: str, **detail) -> dict:
    return {"measure": {"coding": [{"system": LOINC, "code": code}]}, **detail}


def mmhg(value, comparator: str | None = None, code: str = "mm[Hg]") -> dict:
    return {"value": value, "unit": code, "system": "http://unitsofmeasure.org", "code": code,
            **({"comparator": comparator} if comparator else {})}


def goal(goal_id: str = "g1", patient: str = "p1", status: str = "active", start: str | None = "2026-01-01",
         targets: list | None = None, **extra) -> dict:
    body = {"resourceType": "Goal", "id": goal_id, "lifecycleStatus": status,
            "description": {"text": "Blood pressure below 130/80"}, "subject": {"reference": f"Patient/{patient}"},
            "target": targets if targets is not None else [
                target("8480-6", detailRange={"high": mmhg(130)}), target("8462-4", detailQuantity=mmhg(80, "<"))]}
    if start is not None:
        body["startDate"] = start
    return {**body, **extra}


def goals_df(spark: SparkSession, goals: list) -> DataFrame:
    rows = [(g if isinstance(g, str) else json.dumps(g), ARRIVED) for g in goals]
    return parse_goals(spark.createDataFrame(rows, "raw string, kafka_timestamp timestamp"))


def test_a_goal_is_read_into_its_patients_bounds(spark: SparkSession) -> None:
    kpa = goal("g2", targets=[target("8480-6", detailRange={"low": mmhg(12, code="kPa"), "high": mmhg(18, code="kPa")})])
    lower = goal("g3", start=None, targets=[target("8462-4", detailQuantity=mmhg(60, ">="))])
    rows = {r.goal_id: r for r in goals_df(spark, [goal(), kpa, lower]).collect()}
    first = rows["g1"]
    assert (first.patient_id, first.active, first.start, first.error) == ("p1", True, datetime(2026, 1, 1), None)
    assert first.systolic.asDict() == {"low": None, "low_inclusive": None, "high": 130.0, "high_inclusive": True}
    assert first.diastolic.asDict() == {"low": None, "low_inclusive": None, "high": 80.0, "high_inclusive": False}
    assert (round(rows["g2"].systolic.low, 1), round(rows["g2"].systolic.high, 1)) == (90.0, 135.0)
    assert rows["g2"].diastolic is None
    assert rows["g3"].start == ARRIVED  # no startDate: from its arrival
    assert rows["g3"].diastolic.asDict() == {"low": 60.0, "low_inclusive": True, "high": None, "high_inclusive": None}


def test_an_ending_status_ends_and_a_waiting_one_sets_nothing(spark: SparkSession) -> None:
    rows = goals_df(spark, [goal(status="cancelled", targets=[]), goal(status="proposed"),
                            goal(status="accepted")]).collect()
    assert [(r.lifecycle_status, r.active, r.error) for r in rows] == [
        ("cancelled", False, None), ("proposed", False, None), ("accepted", True, None)]


BAD = [
    ("{not json", "not a Goal"),
    (json.dumps({"resourceType": "Observation", "id": "x"}), "not a Goal"),
    (goal(goal_id=""), "Goal has no id"),
    (goal(goal_id="a/b"), "Goal id 'a/b' is not a FHIR id (1-64 letters, digits, '-' or '.')"),
    ({k: v for k, v in goal().items() if k != "lifecycleStatus"}, "Goal has no lifecycleStatus"),
    (goal(status="done"), "Goal lifecycleStatus 'done' is not a FHIR Goal status"),
    ({k: v for k, v in goal().items() if k != "subject"}, "Goal has no subject reference"),
    (goal(subject={"reference": "Group/g1"}), "Goal subject 'Group/g1' is not a Patient reference"),
    (goal(start="next week"), "Goal startDate 'next week' is not a FHIR date"),
    (goal(targets=[target("8867-4", detailQuantity=mmhg(70))]),
     "Goal has no blood-pressure target (target.measure LOINC 8480-6 or 8462-4, with its system)"),
    (goal(targets=[target("8480-6")]), "Goal systolic target has neither detailRange nor detailQuantity"),
    (goal(targets=[target("8480-6", detailQuantity=mmhg(130, "~"))]), "Goal systolic target comparator '~' is not <, <=, > or >="),
    (goal(targets=[target("8462-4", detailQuantity=mmhg(80, code="cm"))]),
     "Goal diastolic target a value that is not a number in mm[Hg], mmHg or kPa"),
    (goal(targets=[target("8480-6", detailQuantity=mmhg("low"))]),
     "Goal systolic target a value that is not a number in mm[Hg], mmHg or kPa"),
    (goal(targets=[target("8480-6", detailRange={"low": mmhg(140), "high": mmhg(120)})]),
     "Goal systolic target low 140.0 mmHg is above high 120.0 mmHg"),
]


@pytest.fixture(scope="module")
def bad_goals(spark: SparkSession) -> list:
    return goals_df(spark, [payload for payload, _ in BAD]).collect()


@pytest.mark.parametrize(("index", "reason"), list(enumerate(reason for _, reason in BAD)),
                         ids=[reason[:50] for _, reason in BAD])
def test_each_kind_of_bad_goal_gets_its_reason(bad_goals: list, index: int, reason: str) -> None:
    assert bad_goals[index].error == reason


def readings(spark: SparkSession, config: Config, rows: list[tuple]) -> DataFrame:
    """(observation id, patient, time, systolic, diastolic), classified under the default profile."""
    df = spark.createDataFrame([(i, p, datetime.fromisoformat(t), float(s), float(d)) for i, p, t, s, d in rows],
                               "observation_id string, patient_id string, effective_time timestamp, "
                               "systolic double, diastolic double")
    return df.transform(lambda frame: with_classification(frame, rules_for(config)))


def test_each_reading_is_held_to_the_target_that_applies_at_its_time(spark: SparkSession, config: Config) -> None:
    goals = goals_df(spark, [
        goal("g-old", start="2026-01-01", targets=[target("8480-6", detailRange={"high": mmhg(150)})]),
        goal("g-new", start="2026-02-01"),  # systolic <= 130, diastolic < 80
        goal("g-low", patient="p2", start="2026-01-01",
             targets=[target("8480-6", detailRange={"low": mmhg(110), "high": mmhg(140)})]),
        goal("g-gone", patient="p3", status="cancelled", targets=[]),
    ])
    rows = {r.observation_id: r for r in with_targets(readings(spark, config, [
        ("before-any", "p1", "2025-12-31T08:00:00", 138, 78),   # no goal yet
        ("old-met", "p1", "2026-01-15T08:00:00", 138, 78),      # the old goal: at most 150
        ("new-above", "p1", "2026-02-02T08:00:00", 138, 78),    # the new one: normal by the profile, above target
        ("on-the-bound", "p1", "2026-02-03T08:00:00", 130, 79),  # 130 inclusive, 79 < 80: met
        ("diastolic-80", "p1", "2026-02-04T08:00:00", 125, 80),  # < 80 excludes 80: above
        ("also-profile", "p1", "2026-02-05T08:00:00", 150, 95),  # an anomaly by both
        ("below", "p2", "2026-02-01T08:00:00", 105, 70),
        ("cancelled", "p3", "2026-02-01T08:00:00", 138, 85),    # no active goal
        ("no-goal", "p4", "2026-02-01T08:00:00", 138, 85),
    ]), goals).collect()}
    summary = {k: (r.goal_id, r.target_status, r.is_anomaly, r.severity) for k, r in rows.items()}
    assert summary == {
        "before-any": (None, None, False, "none"),
        "old-met": ("g-old", "met", False, "none"),
        "new-above": ("g-new", "above", True, "warning"),
        "on-the-bound": ("g-new", "met", False, "none"),
        "diastolic-80": ("g-new", "above", True, "warning"),
        "also-profile": ("g-new", "above", True, "warning"),
        "below": ("g-low", "below", True, "warning"),
        "cancelled": (None, None, False, "none"),
        "no-goal": (None, None, False, "none"),
    }
    assert rows["new-above"].anomaly_types == ["above_target"]
    assert rows["also-profile"].anomaly_types == ["systolic_high", "diastolic_high", "above_target"]
    assert rows["below"].anomaly_types == ["below_target"]
    assert rows["new-above"].category == "hypertension_stage_1"  # the profile's category stays


def test_the_goal_parser_and_the_targets_join_stay_small_plans(spark: SparkSession, config: Config) -> None:
    """Each piece of a Goal is computed once and named (successive selects), and the targets'
    join does not filter the parsed goals (Spark would push the filter into the parser, copying its
    error expression): written otherwise, the plans were 320 KB and 700 KB, seconds to plan and
    ship for a few rows."""
    goals = goals_df(spark, [goal()])
    joined = with_targets(readings(spark, config, [("r", "p1", "2026-02-02T08:00:00", 138, 78)]), goals)
    for frame in (goals, joined):
        plan = frame._jdf.queryExecution().optimizedPlan().toString()
        assert len(plan) < 60_000, f"the optimized plan is {len(plan):,} characters"
    assert [(r.goal_id, r.target_status) for r in joined.collect()] == [("g1", "above")]
