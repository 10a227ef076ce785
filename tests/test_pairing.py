"""Systolic and diastolic sent as two Observations (bp_spark/pairing.py), through the stream job
on the real broker and Elasticsearch: paired in one batch or across batches, routed once under
the systolic's id, a half left alone a dead letter once the event time passes the horizon, a
second half of one kind a dead letter, a correction that moves a pair to another sink, a
retraction that takes the pair back."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import orjson
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.pairing import EXPIRED, PAIRED, PENDING, SUPERSEDED
from streams import archive_lines, ids_in, publish, reading, run_once, stream_config

LOINC = "http://loinc.org"


def half(patient: str, when: str, kind: str, value: float, status: str = "final", suffix: str = "") -> tuple[bytes, bytes]:
    code = {"systolic": "8480-6", "diastolic": "8462-4"}[kind]
    body = {
        "resourceType": "Observation", "id": f"{patient}-{kind[:3]}-{when[11:13]}{suffix}", "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    }
    return patient.encode(), orjson.dumps(body)


def obs_id(message: tuple[bytes, bytes]) -> str:
    return orjson.loads(message[1])["id"]


def run_counts(spark: SparkSession, config, es: Elasticsearch) -> dict[str, int]:
    """Run the job over what was published since; the pairing counts of its batches, added up,
    and ``first``: its first batch's id."""
    counts = run_once(spark, config, es).counts
    return {"first": min(counts),
            **{key: sum(b[key] for b in counts.values()) for key in ("paired", "halves_waiting", "halves_expired")}}


def forget_since(config, batch_id: int) -> None:
    """A crash after the batch's writes, before Spark recorded it as done: it runs again, with
    the same offsets (the empty batch Spark ran after it goes too)."""
    routing = Path(config.paths.checkpoint_dir) / "routing"
    for entry in [*routing.glob("commits/*"), *routing.glob("offsets/*")]:
        if entry.name.isdigit() and (int(entry.name) > batch_id or (int(entry.name) == batch_id
                                                                     and entry.parent.name == "commits")):
            entry.unlink()
    time.sleep(1.1)


def retraction(message: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return message[0], orjson.dumps({"resourceType": "Observation", "id": obs_id(message), "status": "entered-in-error"})


def test_separate_systolic_and_diastolic_observations_are_paired_and_routed_once(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{"trends.enabled": True})
    e = config.elasticsearch
    t1, t0 = "2026-01-10T08:00:00+00:00", "2026-01-10T05:00:00+00:00"
    sys_a, dia_a = half("pa", t1, "systolic", 150), half("pa", t1, "diastolic", 95)   # abnormal, one batch
    sys_b, dia_b = half("pb", t1, "systolic", 120), half("pb", t1, "diastolic", 78)   # normal, one batch
    sys_b2 = half("pb", t1, "systolic", 118, suffix="-again")                          # a second systolic
    sys_c = half("pc", t1, "systolic", 190)                                             # waits for batch 2
    dia_e = half("pe", t0, "diastolic", 80)                                             # never paired
    first = [dia_a, sys_b, sys_a, sys_c, dia_e, dia_b, sys_b2]
    coordinates = dict(zip(map(obs_id, first), publish(config, first)))

    counts = run_counts(spark, config, es)
    assert (counts["paired"], counts["halves_waiting"], counts["halves_expired"]) == (2, 2, 0)
    anomalies = ids_in(es, e.anomalies_index)
    assert {i: (d["paired_observation_id"], d["systolic"], d["diastolic"]) for i, d in anomalies.items()} == {
        obs_id(sys_a): (obs_id(dia_a), 150.0, 95.0)}
    assert sorted(archive_lines(config)) == sorted([sys_b[1], dia_b[1]])  # each Observation as it came
    dead = ids_in(es, e.deadletter_index)
    partition, offset = coordinates[obs_id(sys_b2)]
    assert {i: d["reason"] for i, d in dead.items()} == {
        f"{unique_name}-{partition}-{offset}":
            "a second systolic Observation for the same patient and effective time: one of each is paired"}
    pending = ids_in(es, e.pending_index)
    waiting = {doc["observation_id"] for doc in pending.values() if doc.get("state") == PENDING}
    assert waiting == {obs_id(sys_c), obs_id(dia_e)}
    assert f"pc|{round(datetime.fromisoformat(t1).timestamp() * 1000)}|systolic" in pending  # patient|time ms|kind
    # A pair counts in the trend windows once paired, as the reading it makes.
    days = {d["patient_id"]: d for d in ids_in(es, e.trends_index, scope="patient").values()}
    assert (days["pa"]["readings"], days["pa"]["peak"]["observation_id"], days["pb"]["readings"]) == (1, obs_id(sys_a), 1)
    assert "pc" not in days and "pe" not in days  # halves waiting count nowhere yet

    # Batch 2: sys_c's diastolic comes (a crisis: an alert), and a panel two hours later moves the
    # event time past dia_e's horizon (1 hour): dia_e is a dead letter.
    dia_c = half("pc", t1, "diastolic", 125)
    later = reading("pz", "2026-01-10T10:00:00+00:00", 118, 76)
    dia_c_at, _ = publish(config, [dia_c, later])
    counts = run_counts(spark, config, es)
    assert (counts["paired"], counts["halves_waiting"], counts["halves_expired"]) == (1, 0, 1)
    assert ids_in(es, e.anomalies_index)[obs_id(sys_c)]["paired_observation_id"] == obs_id(dia_c)
    alert = ids_in(es, e.alerts_index)[obs_id(sys_c)]
    assert (alert["paired_observation_id"], alert["alert_type"]) == (obs_id(dia_c), "critical_reading")
    partition, offset = coordinates[obs_id(dia_e)]
    assert ids_in(es, e.deadletter_index)[f"{unique_name}-{partition}-{offset}"]["reason"] == (
        "diastolic Observation without its systolic: none came within 1 hour of its effective time "
        "(stream.pair_horizon)")
    states = {doc["observation_id"]: (doc["state"], doc.get("partner_id")) for doc in ids_in(es, e.pending_index).values()
              if "observation_id" in doc}
    assert states[obs_id(sys_c)] == (PAIRED, obs_id(dia_c)) and states[obs_id(dia_c)] == (PAIRED, obs_id(sys_c))

    # Batch 2 again, as after a crash before its commit: it pairs the same halves, and every sink
    # and the pending index hold what they held (the alert as it was: created once).
    before = {index: ids_in(es, index) for index in (e.anomalies_index, e.alerts_index, e.deadletter_index)}
    lines = sorted(archive_lines(config))
    forget_since(config, counts["first"])
    again = run_counts(spark, config, es)
    assert (again["first"], again["paired"], again["halves_expired"]) == (counts["first"], 1, 0)
    after = {index: ids_in(es, index) for index in before}
    assert {index: set(docs) for index, docs in after.items()} == {index: set(docs) for index, docs in before.items()}
    assert after[e.alerts_index] == before[e.alerts_index]
    assert sorted(archive_lines(config)) == lines
    assert {doc["observation_id"]: (doc["state"], doc.get("partner_id")) for doc in ids_in(es, e.pending_index).values()
            if "observation_id" in doc} == states
    # and the trend windows count pair C once, replay or not
    days = {d["patient_id"]: d for d in ids_in(es, e.trends_index, scope="patient").values()}
    assert (days["pc"]["readings"], days["pc"]["peak"]["systolic"], days["pz"]["readings"]) == (1, 190.0, 1)

    # Batch 3: dia_b corrected to 100 moves pair B from the archive to the anomaly index; sys_c
    # retracted takes pair C out of both indices, and dia_c, alone again and already past the
    # horizon, is a dead letter.
    dia_b_corrected = half("pb", t1, "diastolic", 100, status="corrected")
    publish(config, [dia_b_corrected, retraction(sys_c)])
    run_once(spark, config, es)
    anomalies = ids_in(es, e.anomalies_index)
    assert {i: (d["paired_observation_id"], d["diastolic"], d["status"]) for i, d in anomalies.items()} == {
        obs_id(sys_a): (obs_id(dia_a), 95.0, "final"), obs_id(sys_b): (obs_id(dia_b), 100.0, "corrected")}
    assert obs_id(sys_c) not in ids_in(es, e.alerts_index)
    assert sorted(archive_lines(config)) == sorted([later[1]])
    states = {doc["observation_id"]: doc["state"] for doc in ids_in(es, e.pending_index).values()
              if "observation_id" in doc}
    assert (states[obs_id(sys_c)], states[obs_id(dia_c)]) == (SUPERSEDED, EXPIRED)
    assert "without its systolic" in ids_in(es, e.deadletter_index)[f"{unique_name}-{dia_c_at[0]}-{dia_c_at[1]}"]["reason"]
