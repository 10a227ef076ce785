"""Tests of bp_spark/generator.py and jobs/generate.py: valid FHIR, reproducible, realistic,
time-ordered, and published to the real broker exactly."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from fhir.resources.R4B.observation import Observation

from bp_spark.config import Config
from bp_spark.connections import kafka_settings
from bp_spark.generator import (
    GROUPS, Validator, aha_category, encode, make_patients, readings, window,
)

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("generate_job", ROOT / "jobs" / "generate.py")
generate_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_job)

END = "2026-03-01T00:00:00+00:00"
MIX = {"normotensive": 0.55, "elevated": 0.15, "stage_1": 0.15, "stage_2": 0.10, "hypotensive": 0.05}


def dry_run(capsys: pytest.CaptureFixture, *args: str) -> list[bytes]:
    """The generator's --dry-run output, one JSON line per observation."""
    status = generate_job.main(["--dry-run", "--end", END, *args])
    out = capsys.readouterr().out
    assert status == 0
    return [line.encode() for line in out.splitlines()]


def test_every_message_is_a_valid_r4_blood_pressure_observation(capsys) -> None:
    lines = dry_run(capsys, "--patients", "40", "--days", "3", "--validate", "all")
    assert len(lines) == 40 * 3 * 4
    for line in lines:
        obs = orjson.loads(line)
        Observation.model_validate(obs)  # raises on anything invalid
        assert obs["status"] == "final"
        assert obs["category"][0]["coding"][0]["code"] == "vital-signs"
        assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": "85354-9",
                                            "display": "Blood pressure panel with all children optional"}
        systolic, diastolic = obs["component"]
        assert systolic["code"]["coding"][0]["code"] == "8480-6"
        assert diastolic["code"]["coding"][0]["code"] == "8462-4"
        for component in obs["component"]:
            quantity = component["valueQuantity"]
            assert (quantity["system"], quantity["code"], quantity["unit"]) == ("http://unitsofmeasure.org", "mm[Hg]", "mmHg")
        assert systolic["valueQuantity"]["value"] > diastolic["valueQuantity"]["value"]
        assert obs["subject"]["reference"].startswith("Patient/patient-")
        assert obs["performer"] == [obs["subject"]]  # a home reading: the patient took it
        assert obs["text"]["status"] == "generated"
        assert (f">Blood pressure {systolic['valueQuantity']['value']}/{diastolic['valueQuantity']['value']} mmHg, "
                f"measured by the patient at home on {obs['effectiveDateTime']}</div>") in obs["text"]["div"]
        assert datetime.fromisoformat(obs["effectiveDateTime"]).tzinfo is not None
        assert obs["id"] != "blood-pressure"


def test_reference_workload_has_unique_ids_and_the_design_size(capsys) -> None:
    lines = dry_run(capsys, "--validate", "none")
    assert len(lines) == 200 * 30 * 4
    ids = [orjson.loads(line)["id"] for line in lines]
    assert len(set(ids)) == len(ids)


def test_same_seed_same_bytes_other_seed_other_bytes(capsys) -> None:
    first = dry_run(capsys, "--patients", "30", "--days", "2", "--seed", "7")
    again = dry_run(capsys, "--patients", "30", "--days", "2", "--seed", "7")
    other = dry_run(capsys, "--patients", "30", "--days", "2", "--seed", "8")
    assert first == again
    assert first != other
    assert len(first) == len(other)


def test_feed_is_in_event_time_order_and_interleaves_patients(capsys) -> None:
    lines = dry_run(capsys, "--patients", "50", "--days", "2")
    observations = [orjson.loads(line) for line in lines]
    times = [datetime.fromisoformat(o["effectiveDateTime"]) for o in observations]
    assert times == sorted(times)
    first_slot = [o["subject"]["reference"] for o in observations[:50]]
    assert len(set(first_slot)) == 50  # every patient once before anyone's second reading
    # keyed by patient: the key equals the subject's id
    start, end = window("", END, 1)
    for reading in list(readings(make_patients(5, 1, MIX), start, end, 4, 1, 0.0, 0.0))[:10]:
        key, value = encode(reading)
        assert orjson.loads(value)["subject"]["reference"] == f"Patient/{key.decode()}"


def test_population_mix_follows_the_configured_weights() -> None:
    patients = make_patients(4000, 3, MIX)
    shares = Counter(p.group for p in patients)
    for group in GROUPS:
        assert abs(shares[group] / 4000 - MIX[group]) < 0.03, (group, shares)
    only_stage_2 = make_patients(200, 3, {**{g: 0.0 for g in GROUPS}, "stage_2": 1.0})
    assert {p.group for p in only_stage_2} == {"stage_2"}


def test_default_readings_are_mostly_normal_with_a_minority_abnormal_and_rare_crises() -> None:
    start, end = window("", END, 30)
    generated = list(readings(make_patients(200, 42, MIX), start, end, 4, 42, 0.003, 0.005))
    abnormal = sum(r.systolic > 140 or r.systolic < 90 or r.diastolic > 90 or r.diastolic < 60 for r in generated)
    crises = sum(aha_category(r.systolic, r.diastolic) == "hypertensive_crisis" for r in generated)
    assert 0.10 < abnormal / len(generated) < 0.35
    assert 0 < crises / len(generated) < 0.01


def test_episode_rates_are_honoured() -> None:
    start, end = window("", END, 5)
    patients = make_patients(100, 1, MIX)
    stormy = list(readings(patients, start, end, 4, 1, 0.5, 0.0))
    calm = list(readings(patients, start, end, 4, 1, 0.0, 0.0))
    assert 0.4 < sum(r.episode == "hypertensive_crisis" for r in stormy) / len(stormy) < 0.6
    assert not any(r.episode for r in calm)
    for r in stormy:
        if r.episode == "hypertensive_crisis":
            assert aha_category(r.systolic, r.diastolic) == "hypertensive_crisis", r


def test_diurnal_morning_peak() -> None:
    start, end = window("", END, 30)
    generated = readings(make_patients(300, 5, {**{g: 0.0 for g in GROUPS}, "normotensive": 1.0}), start, end, 24, 5, 0, 0)
    by_hour: dict[int, list[int]] = {}
    for r in generated:
        by_hour.setdefault(r.effective.hour, []).append(r.systolic)
    mean = {h: sum(v) / len(v) for h, v in by_hour.items()}
    assert mean[9] - mean[21] > 8  # about twice the 7 mmHg amplitude


def test_validator_refuses_invalid_observations_by_id() -> None:
    bad = orjson.dumps({"resourceType": "Observation", "id": "x-1", "component": "not a list"})
    with pytest.raises(ValueError, match="observation x-1 is not valid FHIR R4"):
        Validator("all")(bad)
    sample = Validator("sample")
    start, end = window("", END, 30)
    for reading in readings(make_patients(50, 1, MIX), start, end, 4, 1, 0, 0):
        sample(encode(reading)[1])
    # the first 100, then every 1,000th: 1000, 2000, ..., 6000
    assert sample.checked == 100 + 6


@pytest.mark.parametrize(("args", "key"), [
    (["--patients", "0"], "generator.patients"),
    (["--validate", "some"], "generator.validate"),
    (["--end", "2026-01-01"], "generator.end"),
    (["--rate", "-1"], "generator.rate"),
    (["--bootstrap-servers", "nohost"], "kafka.bootstrap_servers"),
])
def test_bad_flags_are_refused_before_anything_is_sent(capsys, args: list[str], key: str) -> None:
    assert generate_job.main(args) == 2
    captured = capsys.readouterr()
    assert key in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(("args", "says"), [
    # A count the window cannot hold, when the window is given: refused, saying how to fix it.
    (["--count", "1000", "--patients", "10", "--days", "1"],
     "--count 1,000 is more than the 40 readings of the window (10 patients x 4 a day); lengthen it (--days 25"),
    (["--count", "1000", "--patients", "10", "--start", "2026-02-28T00:00:00+00:00", "--end", END],
     "--count 1,000 is more than the 40 readings of the window"),
    # Flags --live would ignore.
    (["--live", "--rate", "5", "--days", "3"], "--live publishes readings taken now: --days would be ignored"),
    (["--live", "--rate", "5", "--start", "2026-01-01T00:00:00+00:00", "--end", END],
     "--live publishes readings taken now: --start, --end would be ignored"),
])
def test_contradictory_flags_are_refused_saying_how(capsys, args: list[str], says: str) -> None:
    assert generate_job.main(["--dry-run", *args]) == 2
    captured = capsys.readouterr()
    assert says in captured.err
    assert captured.out == ""


def test_a_count_larger_than_the_default_window_extends_it(capsys) -> None:
    lines = dry_run(capsys, "--patients", "10", "--count", "2000", "--validate", "none")
    assert len(lines) == 2000  # 50 days of 10 patients, not the default 30 days' 1,200
    ids = {orjson.loads(line)["id"] for line in lines}
    assert len(ids) == 2000


def test_unreachable_broker_fails_fast_and_says_what_to_do(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate_job, "CONNECT_TIMEOUT_S", 1.0)  # the wait is the job's default, shortened
    started = time.monotonic()
    assert generate_job.main(["--bootstrap-servers", "127.0.0.1:1", "--patients", "1", "--days", "1"]) == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "Kafka at 127.0.0.1:1 did not answer within 1 s" in err and "make up" in err


def test_publishes_the_exact_observations_to_the_real_broker(
    capsys, config: Config, kafka_admin: AdminClient, unique_name: str
) -> None:
    expected = dry_run(capsys, "--patients", "25", "--days", "2", "--seed", "11")
    status = generate_job.main(["--topic", unique_name, "--patients", "25", "--days", "2", "--seed", "11",
                                "--end", END])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "delivered 200, failed 0" in err

    consumer = Consumer({**kafka_settings(config), "group.id": unique_name,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([unique_name])
    received = []
    try:
        deadline = time.monotonic() + 60
        while len(received) < len(expected) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                assert msg.error() is None, msg.error()
                received.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    assert sorted(value for _, value in received) == sorted(expected)
    for key, value in received:
        assert orjson.loads(value)["subject"]["reference"] == f"Patient/{key.decode()}"
    # per partition (= per key), order is event-time order
    assert len({key for key, _ in received}) == 25


def test_failed_deliveries_make_the_exit_status_non_zero(
    capsys, kafka_admin: AdminClient, unique_name: str
) -> None:
    # A topic that refuses messages over 300 bytes: the broker rejects every observation.
    futures = kafka_admin.create_topics([NewTopic(unique_name, 1, 1, config={"max.message.bytes": "300"})])
    futures[unique_name].result(30)
    status = generate_job.main(["--topic", unique_name, "--patients", "2", "--days", "1", "--end", END])
    err = capsys.readouterr().err
    assert status == 1
    assert "delivered 0, failed 8" in err
    assert "deliveries failed" in err


def test_live_mode_publishes_current_readings_at_the_rate(capsys) -> None:
    started = time.time()
    assert generate_job.main(["--live", "--rate", "40", "--count", "20", "--patients", "50", "--dry-run"]) == 0
    elapsed = time.time() - started
    observations = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(observations) == 20
    assert 0.35 < elapsed < 5  # 20 at 40/s: about half a second
    assert len({o["id"] for o in observations}) == 20
    for o in observations:
        assert abs(datetime.fromisoformat(o["effectiveDateTime"]).timestamp() - started) < 10
    assert generate_job.main(["--live", "--rate", "500", "--patients", "50", "--dry-run"]) == 2
    assert "one reading per patient per second" in capsys.readouterr().err


def test_goals_for_a_share_of_patients_come_first_valid_and_the_same_for_a_seed(capsys) -> None:
    lines = dry_run(capsys, "--patients", "200", "--days", "1", "--goals", "0.25", "--validate", "all")
    messages = [orjson.loads(line) for line in lines]
    goals = [m for m in messages if m["resourceType"] == "Goal"]
    assert messages[:len(goals)] == goals and 30 <= len(goals) <= 70  # first, before any reading; ~50
    patients = {m["subject"]["reference"] for m in messages if m["resourceType"] == "Observation"}
    assert {g["subject"]["reference"] for g in goals} <= patients
    assert {(g["target"][0]["detailRange"]["high"]["value"], g["target"][1]["detailQuantity"]["value"])
            for g in goals} == {(130, 80), (150, 90)}
    assert all(g["startDate"] == END[:10] or g["startDate"] < END[:10] for g in goals)
    assert lines == dry_run(capsys, "--patients", "200", "--days", "1", "--goals", "0.25", "--validate", "all")
    assert not [line for line in dry_run(capsys, "--patients", "200", "--days", "1") if b'"Goal"' in line]
