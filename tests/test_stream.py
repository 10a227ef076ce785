"""Integration tests of the stream job on the real broker and Elasticsearch: every sink by id,
reconciliation, duplicates, a correction, a retraction, a kill -9 followed by a restart, and the
trend query (windows, sustained-hypertension onsets, late readings, the alert topic)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.connections import kafka_settings
from bp_spark.monitoring import ROUTING_QUERY
from bp_spark.pipeline import CheckpointLayoutError, PipelineStopped, check_checkpoint_layout
from streams import (ROOT, archive_lines, expectations, generated, ids_in, job_env, publish, reading, run_once,
                     run_pipeline, stream_config, version)

BAD_MESSAGES = [
    (b"x", b"{this is not json", "not a JSON object"),
    (b"x", b'{"resourceType": "Patient", "id": "p1"}', "not an Observation: resourceType Patient"),
]


def test_a_guideline_profile_routes_by_its_table_and_each_readings_setting(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    """ESH 2023, office readings by default: a self-measured 136/80 is a home reading over 135/85
    (an anomaly), the same reading from the clinic is high-normal (archived); 185/85 is grade 3
    (an alert); 141/85 isolated systolic hypertension."""
    config = stream_config(unique_name, tmp_path, **{"classification.profile": "esh2023",
                                                     "classification.setting": "office"})
    smbp = {"profile": ["http://hl7.org/fhir/uv/cardx-htn-mng/StructureDefinition/self-measured-bp"]}
    home = orjson.loads(reading("pe", "2026-01-01T08:00:00Z", 136, 80)[1]) | {"id": "esh-home", "meta": smbp}
    clinic = orjson.loads(reading("pe", "2026-01-01T09:00:00Z", 136, 80)[1]) | {"id": "esh-clinic"}
    grade_3 = orjson.loads(reading("pe", "2026-01-01T10:00:00Z", 185, 85)[1]) | {"id": "esh-grade-3"}
    isolated = orjson.loads(reading("pe", "2026-01-01T11:00:00Z", 141, 85)[1]) | {"id": "esh-isolated"}
    publish(config, [(b"pe", orjson.dumps(obs)) for obs in (home, clinic, grade_3, isolated)])
    run_once(spark, config, es)

    anomalies = ids_in(es, config.elasticsearch.anomalies_index)
    assert {doc_id: (doc["category"], doc["setting"], doc["profile"], doc["severity"])
            for doc_id, doc in anomalies.items()} == {
        "esh-home": ("high_normal", "home", "esh2023", "warning"),
        "esh-grade-3": ("grade_3", "office", "esh2023", "critical"),
        "esh-isolated": ("isolated_systolic", "office", "esh2023", "warning")}
    assert anomalies["esh-home"]["thresholds"]["systolic_high"] == 135.0
    assert anomalies["esh-isolated"]["thresholds"]["systolic_high"] == 140.0
    alerts = ids_in(es, config.elasticsearch.alerts_index)
    assert set(alerts) == {"esh-grade-3"} and alerts["esh-grade-3"]["reason"] == "grade 3: 185/85 mmHg"
    assert [orjson.loads(line)["id"] for line in archive_lines(config)] == ["esh-clinic"]


def patient_goal(status: str = "active", **extra) -> dict:
    """Patient pg's target: systolic at most 130, diastolic below 80, from 2 January."""
    loinc = "http://loinc.org"
    return {"resourceType": "Goal", "id": "goal-pg", "lifecycleStatus": status, "subject": {"reference": "Patient/pg"},
            "description": {"text": "BP < 130/80"}, "startDate": "2026-01-02", "target": [
                {"measure": {"coding": [{"system": loinc, "code": "8480-6"}]},
                 "detailRange": {"high": {"value": 130, "unit": "mmHg", "code": "mm[Hg]"}}},
                {"measure": {"coding": [{"system": loinc, "code": "8462-4"}]},
                 "detailQuantity": {"value": 80, "comparator": "<", "unit": "mmHg", "code": "mm[Hg]"}}], **extra}


def test_a_patients_goal_holds_their_readings_to_their_own_target(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    """A Goal in a Bundle with the patient's readings, a reading before it starts, one that meets
    it, two outside it (one normal by the profile); a Goal that cannot be read; a replay after a
    lost commit; then the Goal cancelled. A reading sent as two Observations (a split reading) is
    held to the target as a panel is."""
    from test_pairing import forget_since, half

    config = stream_config(unique_name, tmp_path)
    e = config.elasticsearch

    def obs(obs_id: str, when: str, systolic: int, diastolic: int) -> dict:
        return orjson.loads(reading("pg", when, systolic, diastolic)[1]) | {"id": obs_id}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs("pg-above", "2026-01-03T08:00:00Z", 138, 78)}, {"resource": patient_goal()},
        {"resource": obs("pg-met", "2026-01-03T20:00:00Z", 125, 75)}]}
    unreadable = {k: v for k, v in patient_goal(id="goal-broken").items() if k != "subject"}
    publish(config, [(b"pg", orjson.dumps(obs("pg-before", "2026-01-01T08:00:00Z", 138, 78))),
                     (b"pg", orjson.dumps(bundle)), (b"pg", orjson.dumps(obs("pg-both", "2026-01-04T08:00:00Z", 150, 95))),
                     (b"pg", orjson.dumps(unreadable)),
                     half("pg", "2026-01-03T12:00:00Z", "systolic", 136), half("pg", "2026-01-03T12:00:00Z", "diastolic", 78),
                     half("pg", "2026-01-03T14:00:00Z", "systolic", 120), half("pg", "2026-01-03T14:00:00Z", "diastolic", 75)])
    first = min(run_once(spark, config, es).counts)

    def routed() -> tuple[dict, list, dict]:
        anomalies = {doc_id: (doc["anomaly_types"], doc.get("goal_id"), doc.get("target_status"), doc["category"])
                     for doc_id, doc in ids_in(es, e.anomalies_index).items()}
        archived = sorted(orjson.loads(line)["id"] for line in archive_lines(config))
        return anomalies, archived, {d["observation_id"]: d["reason"] for d in ids_in(es, e.deadletter_index).values()}
    expected = ({"pg-above": (["above_target"], "goal-pg", "above", "hypertension_stage_1"),
                 "pg-both": (["systolic_high", "diastolic_high", "above_target"], "goal-pg", "above",
                             "hypertension_stage_2"),
                 "pg-sys-12": (["above_target"], "goal-pg", "above", "hypertension_stage_1")},
                ["pg-before", "pg-dia-14", "pg-met", "pg-sys-14"], {"Goal/goal-broken": "Goal has no subject reference"})
    assert routed() == expected
    goals = ids_in(es, e.goals_index)
    assert set(goals) == {"goal-pg"} and goals["goal-pg"]["systolic"] == {"high": 130.0, "high_inclusive": True}

    forget_since(config, first)  # the batch again, as after a crash before its commit: nothing changes
    run_once(spark, config, es)
    assert routed() == expected and set(ids_in(es, e.goals_index)) == {"goal-pg"}

    publish(config, [(b"pg", orjson.dumps(patient_goal("cancelled"))),
                     (b"pg", orjson.dumps(obs("pg-after", "2026-01-05T08:00:00Z", 138, 78)))])
    run_once(spark, config, es)
    anomalies, archived, _ = routed()
    assert "pg-after" not in anomalies and "pg-after" in archived  # the target no longer applies
    assert ids_in(es, e.goals_index)["goal-pg"]["active"] is False


def test_known_mix_reaches_every_sink_by_id_and_reconciles(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    good = generated(patients=30, days=2, seed=5)
    preliminary = orjson.loads(good[0][1])
    preliminary.update(id="prelim-1", status="preliminary")
    no_diastolic = orjson.loads(good[1][1])
    no_diastolic.update(id="nodia-1", component=no_diastolic["component"][:1])
    bad = [(k, v) for k, v, _ in BAD_MESSAGES] + [(b"p", orjson.dumps(preliminary)), (b"p", orjson.dumps(no_diastolic))]
    reasons = [r for _, _, r in BAD_MESSAGES] + [
        "status 'preliminary' is not processed (final, amended, corrected, entered-in-error are)",
        "no diastolic component (LOINC 8462-4 or SNOMED CT 271650006, with its system)"]
    coordinates = publish(config, good + bad)

    router = run_once(spark, config, es)

    abnormal, critical, normal = expectations(config, [v for _, v in good])
    assert abnormal and critical and normal  # the mix exercises every sink
    anomalies = ids_in(es, config.elasticsearch.anomalies_index)
    assert set(anomalies) == abnormal
    sample = next(iter(anomalies.values()))
    assert sample["anomaly_types"] and sample["kafka"]["topic"] == unique_name
    assert sample["thresholds"]["systolic_high"] == 140.0 and sample["severity"] in ("warning", "critical")
    assert (sample["profile"], sample["setting"]) == ("mission", "home")
    assert set(ids_in(es, config.elasticsearch.alerts_index)) == critical
    lines = archive_lines(config)
    assert sorted(lines) == sorted(normal)  # byte-for-byte, each once
    for path in Path(config.paths.archive_dir).glob("patient_id=*/*.jsonl"):
        patient = path.parent.name.split("=", 1)[1]
        assert all(orjson.loads(line)["subject"]["reference"] == f"Patient/{patient}"
                   for line in path.read_bytes().splitlines())
    # patient data at rest: files 0600, folders 0700 (paths.archive_umask), whatever the process umask
    archive = Path(config.paths.archive_dir)
    modes = {oct(p.stat().st_mode & 0o777) for p in [archive, *archive.rglob("*")] if p.is_dir()}
    assert modes == {"0o700"}, [(oct(p.stat().st_mode & 0o777), str(p)) for p in [archive, *archive.rglob("*")]]
    assert {oct(p.stat().st_mode & 0o777) for p in archive.rglob("*.jsonl")} == {"0o600"}
    dead = ids_in(es, config.elasticsearch.deadletter_index)
    expected_dead = {f"{unique_name}-{p}-{o}": reason for (p, o), reason in zip(coordinates[len(good):], reasons)}
    assert {doc_id: doc["reason"] for doc_id, doc in dead.items()} == expected_dead
    assert {doc["raw"] for doc in dead.values()} == {v.decode() for _, v in bad}
    # reconciliation: every consumed message is in exactly one sink
    assert len(anomalies) + len(lines) + len(dead) == len(good) + len(bad)
    assert router.last is not None


def test_duplicates_and_replays_land_once(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    good = generated(patients=10, days=1, seed=6)
    publish(config, good + good[:5])  # five duplicates in the same batch
    run_once(spark, config, es)
    publish(config, good)  # every message again, in a later batch
    run_once(spark, config, es)
    abnormal, _, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    assert sorted(archive_lines(config)) == sorted(normal)


def test_corrections_move_observations_and_retractions_remove_them(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    good = generated(patients=4, days=1, seed=7, crisis_rate=0)
    key = good[0][0]
    normal_then_crisis = version(good[0][1], "final", 118, 76)
    crisis_then_normal = version(good[1][1], "final", 190, 125)
    high_then_retracted = version(good[2][1], "final", 160, 95)
    publish(config, [(key, normal_then_crisis), (good[1][0], crisis_then_normal), (good[2][0], high_then_retracted)])
    run_once(spark, config, es)
    ids = [orjson.loads(v)["id"] for v in (normal_then_crisis, crisis_then_normal, high_then_retracted)]
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == {ids[1], ids[2]}
    assert set(ids_in(es, config.elasticsearch.alerts_index)) == {ids[1]}
    assert archive_lines(config) == [normal_then_crisis]

    corrected_up = version(normal_then_crisis, "corrected", 186, 118)
    corrected_down = version(crisis_then_normal, "amended", 121, 78)
    retraction = orjson.loads(high_then_retracted)
    retraction["status"] = "entered-in-error"
    publish(config, [(key, corrected_up), (good[1][0], corrected_down), (good[2][0], orjson.dumps(retraction))])
    run_once(spark, config, es)

    anomalies = ids_in(es, config.elasticsearch.anomalies_index)
    assert set(anomalies) == {ids[0]}
    assert anomalies[ids[0]]["status"] == "corrected" and anomalies[ids[0]]["systolic"] == 186.0
    assert set(ids_in(es, config.elasticsearch.alerts_index)) == {ids[0]}
    assert archive_lines(config) == [corrected_down]  # the old normal version is gone from the archive
    assert not list(Path(config.paths.archive_dir).glob("_rewrite/*/batch=*"))

    # The first versions delivered again, late (a device's sync, a replayed feed): they do not
    # undo their corrections, nor bring back the retracted reading; nor do the corrections, again.
    publish(config, [(key, normal_then_crisis), (good[1][0], crisis_then_normal), (good[2][0], high_then_retracted),
                     (key, corrected_up)])
    assert run_once(spark, config, es).last.repeats == 4
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == {ids[0]}
    assert set(ids_in(es, config.elasticsearch.alerts_index)) == {ids[0]}
    assert archive_lines(config) == [corrected_down]


def test_kill_minus_nine_mid_stream_then_restart_gives_each_observation_once(
    es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    good = generated(patients=100, days=30, seed=8)  # 12,000 observations
    publish(config, good)
    env = job_env(config)
    command = [sys.executable, str(ROOT / "jobs" / "stream.py"), "--trigger", "available-now",
               "--max-offsets-per-trigger", "1500"]
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while "batch 2:" not in log_path.read_text(errors="replace"):
            assert first.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not get through two batches in time"
            time.sleep(0.2)
        time.sleep(1.0)  # somewhere inside the next batch
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    partial = len(archive_lines(config))
    abnormal, critical, normal = expectations(config, [v for _, v in good])
    assert 0 < partial < len(normal)  # killed mid-stream

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    alerts = ids_in(es, config.elasticsearch.alerts_index)
    assert {i for i, doc in alerts.items() if doc["alert_type"] == "critical_reading"} == critical
    # the trend query (on, as the job runs by default) counted every observation once
    cohort_days = ids_in(es, config.elasticsearch.trends_index, scope="cohort", period="daily")
    assert sum(doc["readings"] for doc in cohort_days.values()) == len(good)
    lines = archive_lines(config)
    assert len(lines) == len(normal)
    assert set(lines) == normal
    assert not list(Path(config.paths.archive_dir).glob("_staging/*/batch=*"))


def test_a_read_only_index_is_waited_for_and_the_job_resumes_by_itself(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path, caplog
) -> None:
    config = stream_config(unique_name, tmp_path)
    good = generated(patients=10, days=1, seed=9)
    publish(config, good)
    # A read-only anomaly index, as Elasticsearch makes it when a disk fills up, lifted once the
    # job has waited for it three times.
    es.indices.create(index=config.elasticsearch.anomalies_index, settings={"number_of_replicas": 0})
    es.indices.put_settings(index=config.elasticsearch.anomalies_index, settings={"index.blocks.write": True})

    def waits() -> list[str]:
        return [r.getMessage() for r in caplog.records if "is unavailable" in r.getMessage()]

    def lift_after_three_waits() -> None:
        deadline = time.monotonic() + 120
        while len(waits()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        es.indices.put_settings(index=config.elasticsearch.anomalies_index, settings={"index.blocks.write": False})

    lifter = threading.Thread(target=lift_after_three_waits, daemon=True)
    with caplog.at_level("WARNING", logger="bp_spark.sinks"), caplog.at_level("INFO", logger="bp_spark.metrics"):
        lifter.start()
        pipeline = run_pipeline(spark, config, es)
    lifter.join()
    waits = waits()
    assert len(waits) >= 3 and all(w.startswith("elasticsearch is unavailable: batch 0: writing") for w in waits)
    assert "403 cluster_block_exception" in waits[0]
    assert any(r.getMessage().startswith("elasticsearch is back") for r in caplog.records)
    assert pipeline.restarts == {}  # waited inside the batch: the query never stopped
    abnormal, _, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    assert sorted(archive_lines(config)) == sorted(normal)
    assert pipeline.router.counts[0]["waited_s"]["elasticsearch"] >= 0.2 + 0.4 + 0.8
    health = [json.loads(r.getMessage()) for r in caplog.records if r.name == "bp_spark.metrics"]
    waiting = [h for h in health if h.get("event") == "sink_unavailable"]  # the others are batch records
    assert [h["attempt"] for h in waiting][:3] == [1, 2, 3]
    assert all(h["sink"] == "elasticsearch" and h["what"].startswith("batch 0: writing") for h in waiting)


def test_give_up_after_stops_the_job_and_a_restart_completes(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{"outages.give_up_after": "3 seconds"})
    good = generated(patients=10, days=1, seed=9)
    publish(config, good)
    es.indices.create(index=config.elasticsearch.anomalies_index, settings={"number_of_replicas": 0})
    es.indices.put_settings(index=config.elasticsearch.anomalies_index, settings={"index.blocks.write": True})
    with pytest.raises(PipelineStopped) as stopped:
        run_pipeline(spark, config, es)
    assert re.search(r"batch 0: writing [a-z, ]*anomalies[a-z, ]*: elasticsearch kept failing for [34] s "
                     r"\(outages.give_up_after = 3 seconds\)", str(stopped.value))
    assert "restart the job on the same checkpoint" in str(stopped.value)
    assert archive_lines(config) == []  # the archive holds none of the failed batch

    es.indices.put_settings(index=config.elasticsearch.anomalies_index, settings={"index.blocks.write": False})
    run_once(spark, config, es)
    abnormal, _, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    assert sorted(archive_lines(config)) == sorted(normal)


def test_trends_count_a_reading_once_whatever_batch_brings_its_correction_or_retraction(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    """A reading counts once in its windows, as it first came: its correction, or its retraction
    (whole or by id alone), in the same batch or a later one, neither counts it again nor takes
    it back; the anomaly index holds only the last versions."""
    config = stream_config(unique_name, tmp_path, **{"trends.enabled": True})
    corrected, retracted, by_id = (reading("pt", f"2026-01-01T0{h}:00:00Z", 150, 95) for h in (7, 8, 9))
    later_corrected, later_retracted = (reading("pt", f"2026-01-01T1{h}:00:00Z", 160, 100) for h in (0, 1))

    def retraction(value: bytes, whole: bool) -> bytes:
        obs = orjson.loads(value)
        return orjson.dumps({**obs, "status": "entered-in-error"} if whole else
                            {"resourceType": "Observation", "id": obs["id"], "status": "entered-in-error"})
    publish(config, [corrected, (b"pt", version(corrected[1], "amended", 182, 121)),
                     retracted, (b"pt", retraction(retracted[1], True)), by_id, (b"pt", retraction(by_id[1], False)),
                     later_corrected, later_retracted])
    run_once(spark, config, es)
    publish(config, [(b"pt", version(later_corrected[1], "corrected", 120, 70)),
                     (b"pt", retraction(later_retracted[1], False))])
    run_once(spark, config, es)

    day = ids_in(es, config.elasticsearch.trends_index)["patient|daily|pt|2026-01-01 00:00:00"]
    assert (day["readings"], day["systolic_max"], day["systolic_min"]) == (5, 160.0, 150.0)  # as they first came
    cohort_day = ids_in(es, config.elasticsearch.trends_index, scope="cohort", period="daily")
    assert [doc["readings"] for doc in cohort_day.values()] == [5]
    assert {doc_id: doc["systolic"] for doc_id, doc in ids_in(es, config.elasticsearch.anomalies_index).items()} == {
        orjson.loads(corrected[1])["id"]: 182.0}


def test_trends_sustained_onsets_and_late_readings(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{
        "trends.enabled": True, "trends.sustained_min_readings": 3,
        "kafka.alerts_topic": f"{unique_name}_alerts"})
    hypertensive = [reading("pa", f"2026-01-0{d}T08:00:00Z", 150, 95) for d in range(1, 6)]
    normal = [reading("pb", f"2026-01-0{d}T08:30:00+01:00", 118, 76) for d in range(1, 6)]
    crisis = [reading("pc", "2026-01-03T09:15:00Z", 185, 125)]
    # pd's first readings, all on one day: its week from Dec 30 is an onset (the week before has
    # none of its readings), and stays one by that rule when a later batch adds a reading to it
    first_day = [reading("pd", f"2026-01-05T0{h}:00:00Z", 150, 95) for h in (4, 5, 6)]
    publish(config, hypertensive + normal + crisis + first_day + normal[:1])  # and one duplicate
    first = run_pipeline(spark, config, es)

    trends = ids_in(es, config.elasticsearch.trends_index)
    day1 = trends["patient|daily|pa|2026-01-01 00:00:00"]
    assert (day1["readings"], day1["systolic_max"], day1["diastolic_mean"]) == (1, 150.0, 95.0)
    assert day1["anomalies"] == {"systolic_high": 1, "systolic_low": 0, "diastolic_high": 1, "diastolic_low": 0}
    assert trends["patient|daily|pb|2026-01-01 00:00:00"]["readings"] == 1  # 08:30+01:00, counted once
    assert "patient|hourly|pb|2026-01-01 07:00:00" not in trends  # per patient, daily windows by default
    cohort = trends["cohort|daily|2026-01-03 00:00:00"]
    assert (cohort["readings"], cohort["abnormal_readings"], cohort["abnormal_patients"]) == (3, 2, 2)
    assert cohort["peak"]["observation_id"] == "pc-2026-01-03T09" and cohort["peak"]["systolic"] == 185.0
    # pa's 7-day windows reach 3 readings (the minimum here) in the window starting Dec 28: the onset
    onset = "sustained|7 days/1 day|pa|2025-12-28 00:00:00"
    assert trends[onset]["is_sustained"] and trends[onset]["readings"] == 3
    assert not trends["sustained|7 days/1 day|pa|2025-12-27 00:00:00"]["is_sustained"]  # 2 readings
    assert not any(doc["is_sustained"] for doc in trends.values() if doc["scope"] == "sustained" and doc["patient_id"] == "pb")
    alerts = ids_in(es, config.elasticsearch.alerts_index)
    pd_onset = "sustained|7 days/1 day|pd|2025-12-30 00:00:00"
    assert set(alerts) == {onset, pd_onset, "pc-2026-01-03T09"}
    assert alerts[onset]["alert_type"] == "sustained_hypertension" and alerts[onset]["systolic_mean"] == 150.0
    assert alerts[onset]["reason"] == "sustained hypertension: mean 150/95 mmHg over 3 readings in 7 days (limit 135/85)"

    # 12 patient-days, 14 cohort hours, 5 cohort days, 11 + 11 + 7 + 7 sustained windows; no state in Spark
    assert len(trends) == 67
    assert all(q.lastProgress["stateOperators"] == [] for q in first.queries)

    inside = reading("pb", "2026-01-04T12:00:00Z", 121, 79)
    late = reading("pa", "2025-12-20T08:00:00Z", 160, 100)  # two weeks before pa's other readings
    publish(config, [inside, late, reading("pd", "2026-01-05T07:00:00Z", 150, 95)])
    run_pipeline(spark, config, es)

    trends = ids_in(es, config.elasticsearch.trends_index)
    assert trends["patient|daily|pb|2026-01-04 00:00:00"]["readings"] == 2
    # pb's week from Jan 1, summed from this run's Jan 4 and the days the first run wrote
    week = trends["sustained|7 days/1 day|pb|2026-01-01 00:00:00"]
    assert (week["readings"], week["systolic_sum"], week["systolic_mean"]) == (6, 711.0, 711.0 / 6)
    # a late reading joins its windows whenever it comes (no watermark leaves it out)
    assert trends["patient|daily|pa|2025-12-20 00:00:00"]["readings"] == 1
    assert trends["sustained|7 days/1 day|pa|2025-12-14 00:00:00"]["readings"] == 1
    assert not trends["sustained|7 days/1 day|pa|2025-12-20 00:00:00"]["is_sustained"]
    assert "pa-2025-12-20T08" in ids_in(es, config.elasticsearch.anomalies_index)
    assert inside[1] in archive_lines(config)
    assert trends[pd_onset]["readings"] == 4  # recomputed, still the first sustained week of pd: not alerted again
    assert set(ids_in(es, config.elasticsearch.alerts_index)) == {onset, pd_onset, "pc-2026-01-03T09"}

    consumer = Consumer({**kafka_settings(config), "group.id": unique_name,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([config.kafka.alerts_topic])
    published = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            published.append((message.key(), orjson.loads(message.value())))
            if len(published) == 5:  # all there: a few seconds more for a repeat
                deadline = min(deadline, time.monotonic() + 3)
    consumer.close()
    # each alert opened once on the topic, as a FHIR DetectedIssue: pd's onset was not sent again
    # by the second run, nor did the readings that joined an open alert page
    assert sorted((key, doc["resourceType"], doc["code"]["coding"][0]["code"], doc["identifier"][1]["value"].split("|")[1])
                  for key, doc in published) == [
        (b"pa", "DetectedIssue", "above_target", "opened"), (b"pa", "DetectedIssue", "sustained_hypertension", "opened"),
        (b"pc", "DetectedIssue", "critical_reading", "opened"),
        (b"pd", "DetectedIssue", "above_target", "opened"), (b"pd", "DetectedIssue", "sustained_hypertension", "opened")]
    episodes = {(doc["patient_id"], doc["kind"]): doc for doc in ids_in(es, config.elasticsearch.episodes_index).values()}
    assert sorted(episodes) == [("pa", "above_target"), ("pa", "sustained_hypertension"), ("pc", "critical_reading"),
                                ("pd", "above_target"), ("pd", "sustained_hypertension")]
    # pa: opened at its third reading above the limits, then the 4th, 5th and the late one joined
    assert (episodes["pa", "above_target"]["readings_count"], episodes["pa", "above_target"]["pages"]) == (4, 1)


def test_checkpoints_of_earlier_versions_are_refused_or_reported(spark: SparkSession, tmp_path: Path, caplog) -> None:
    config = stream_config("unused", tmp_path, **{"trends.enabled": True})
    root = Path(config.paths.checkpoint_dir)
    (root / "trends-v4" / "state").mkdir(parents=True)  # the trend query an earlier version ran
    with caplog.at_level("WARNING", logger="bp_spark.pipeline"):
        check_checkpoint_layout(spark, config)
    assert [r.message for r in caplog.records] == [
        f"{root}/trends-v4: the checkpoint of the trend query of an earlier bp-monitor, which this version does not "
        "run (trends are merged from the routing query's readings into the same documents, from this start on). "
        "Delete it."]

    (root / "offsets").mkdir()  # the one-query layout
    with pytest.raises(CheckpointLayoutError, match=f"move its contents into {root}/routing"):
        check_checkpoint_layout(spark, config)


def test_health_metrics_are_logged_and_indexed_per_batch(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path, caplog
) -> None:
    config = stream_config(unique_name, tmp_path, **{"kafka.max_offsets_per_trigger": 120, "trends.enabled": True})
    good = generated(patients=10, days=8, seed=10)  # 320 observations: three batches of at most 120
    publish(config, good + [(b"x", b"not json")])
    with caplog.at_level("INFO", logger="bp_spark.metrics"):
        pipeline = run_pipeline(spark, config, es)

    logged = [json.loads(r.message) for r in caplog.records if r.name == "bp_spark.metrics"]
    routing = [r for r in logged if r["query"] == ROUTING_QUERY and r["input_rows"]]
    assert sum(r["input_rows"] for r in routing) == len(good) + 1
    assert len(routing) >= 3 and all(r["input_rows"] <= 120 for r in routing)
    assert sum(sum(r["sinks"][k] for k in ("anomalies", "archive", "dead_letters")) for r in routing) == len(good) + 1
    assert sum(r["sinks"]["dead_letters"] for r in routing) == 1
    assert routing[0]["kafka_lag"] == len(good) + 1 - routing[0]["input_rows"] > 0
    assert routing[-1]["kafka_lag"] == 0  # the lag reaches zero
    assert all(r["batch_duration_ms"] > 0 and r["processed_rows_per_second"] > 0 for r in routing)
    # each step's seconds, the versions index's lookup and record among them; the routing query holds no state
    assert all({"read_parse", "repeats", "counts", "elasticsearch", "versions"} <= set(r["sinks"]["steps_s"]) for r in routing)
    assert all(r["state_operators"] == [] for r in routing)
    # each batch's partial trend windows (merged when the job stops: trends.trigger is a minute)
    assert all(r["sinks"]["trend_windows"] > 0 and "trends" in r["sinks"]["steps_s"] for r in routing)
    assert {r["query"] for r in logged} == {ROUTING_QUERY}
    assert logged == pipeline.listener.records

    es.indices.refresh(index=config.elasticsearch.metrics_index)
    indexed = [h["_source"] for h in es.search(index=config.elasticsearch.metrics_index, size=100,
                                               query={"term": {"query": ROUTING_QUERY}})["hits"]["hits"]]
    assert sorted(r["input_rows"] for r in indexed) == sorted(r["input_rows"] for r in logged if r["query"] == ROUTING_QUERY)
    assert min(r["kafka_lag"] for r in indexed) == 0


def test_a_bundles_entries_reach_their_sinks_each_once_whatever_the_envelope(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    """A transaction Bundle: its readings routed as if alone (the urn:uuid subject resolved to the
    Bundle's Patient), its broken reading a dead letter of its own with the entry's index, its
    other entries counted; then the same readings alone and in another Bundle: stored once."""
    config = stream_config(unique_name, tmp_path)
    urn = "urn:uuid:6a1e0c0e-2f4b-4d0e-8a57-3c9e1b2d4f60"
    normal = orjson.loads(reading("pb1", "2026-01-01T08:00:00+00:00", 118, 76)[1])
    normal["subject"] = {"reference": urn}
    crisis = orjson.loads(reading("pb2", "2026-01-01T09:00:00+00:00", 192, 124)[1])
    broken = orjson.loads(reading("pb3", "2026-01-01T10:00:00+00:00", 130, 85)[1])
    broken["component"] = broken["component"][:1]
    heart_rate = {**orjson.loads(reading("pb4", "2026-01-01T11:00:00+00:00", 120, 80)[1]),
                  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}}
    entries = [{"fullUrl": urn, "resource": {"resourceType": "Patient", "id": "pb1"}},
               {"resource": normal}, {"resource": crisis}, {"resource": heart_rate}, {"resource": broken}]
    message = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    [(partition, offset)] = publish(config, [(b"pb", message)])
    router = run_once(spark, config, es)
    first = router.counts[0]
    assert (first["ignored_entries"], first["dead_letters"], first["anomalies"], first["archive"]) == (2, 1, 1, 1)
    assert {doc_id: (doc["patient_id"], doc["kafka"]["entry"]) for doc_id, doc in
            ids_in(es, config.elasticsearch.anomalies_index).items()} == {crisis["id"]: ("pb2", 2)}
    assert set(ids_in(es, config.elasticsearch.alerts_index)) == {crisis["id"]}
    lines = archive_lines(config)
    assert [orjson.loads(line) for line in lines] == [normal]
    assert list(Path(config.paths.archive_dir).glob("patient_id=pb1/*.jsonl"))  # the resolved patient
    dead = ids_in(es, config.elasticsearch.deadletter_index)
    assert {doc_id: (doc["reason"], doc["kafka"]["entry"], orjson.loads(doc["raw"])) for doc_id, doc in dead.items()} == {
        f"{unique_name}-{partition}-{offset}-entry-4":
            ("no diastolic component (LOINC 8462-4 or SNOMED CT 271650006, with its system)", 4, broken)}

    # The same readings again: the crisis alone, both in a collection Bundle. Nothing is added.
    publish(config, [(b"pb2", orjson.dumps(crisis)), (b"pb", orjson.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": urn, "resource": {"resourceType": "Patient", "id": "pb1"}},
            {"resource": normal}, {"resource": crisis}]}))])
    run_once(spark, config, es)
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == {crisis["id"]}
    assert [orjson.loads(line) for line in archive_lines(config)] == [normal]


def test_a_stop_asked_mid_batch_lets_the_batch_end_with_its_trends_and_begins_no_other(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    """Ctrl-C or SIGTERM while a batch is routed: the stop waits for it, so its readings are in
    every sink and in the trend windows merged at the stop, and Spark commits it; the next batch
    is not begun, and the next start routes it."""
    from bp_spark.config import duration_seconds
    from bp_spark.elastic import install_templates, pipeline_indices
    from bp_spark.pipeline import start_pipeline
    from bp_spark.sinks import Sinks

    config = stream_config(unique_name, tmp_path, **{"kafka.max_offsets_per_trigger": 100, "trends.enabled": True,
                                                     "trends.trigger": "1 hour"})
    good = generated(patients=5, days=8, seed=31)  # 160 readings: two batches
    publish(config, good)
    install_templates(es, pipeline_indices(config), 0)
    pipeline = start_pipeline(spark, config, Sinks(spark, config, es))
    try:
        deadline = time.monotonic() + 120
        while not pipeline.router.busy and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pipeline.router.busy, "no batch began within 120 s"
    finally:
        pipeline.stop()
    assert list(pipeline.router.counts) == [0]  # the batch in flight ended; no other began
    first = pipeline.router.counts[0]
    routed = first["anomalies"] + first["archive"]
    assert routed == 100
    assert (Path(config.paths.checkpoint_dir) / "routing" / "commits" / "0").exists()
    day = next(label for label, d in config.trends.window_list if duration_seconds(d) == 86_400)

    def daily_readings() -> int:
        return sum(doc["readings"] for doc in ids_in(es, config.elasticsearch.trends_index, scope="cohort",
                                                    period=day).values())
    assert daily_readings() == routed  # merged at the stop
    run_once(spark, config, es)  # the next start routes the rest
    assert daily_readings() == len(good)
    assert len(ids_in(es, config.elasticsearch.anomalies_index)) + len(archive_lines(config)) == len(good)
