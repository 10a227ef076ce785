"""Alert episodes on the real broker and Elasticsearch (bp_spark/alerts/, jobs/alerts.py): one
alert and one page for a patient's run of critical readings, acknowledgement, a person and the
job changing one alert at once, escalation and silence on the sweep's clock across a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

import jobs.alerts as alerts_job
from bp_spark.alerts.episodes import ACKNOWLEDGED, CRITICAL_READING, NO_READINGS, OPEN, RESOLVED, advance
from bp_spark.alerts.step import EpisodeStep
from bp_spark.config import env_name
from bp_spark.connections import kafka_settings
from bp_spark.sinks.alert_topic import AlertTopic
from bp_spark.sinks.es import ElasticsearchSink
from streams import ids_in, job_env, publish, reading, run_once, stream_config


def observation(patient: str, obs_id: str, when: datetime, systolic: int, diastolic: int) -> tuple[bytes, bytes]:
    key, value = reading(patient, when.strftime("%Y-%m-%dT%H:%M:%SZ"), systolic, diastolic)
    return key, orjson.dumps(orjson.loads(value) | {"id": obs_id})


ROOT = Path(__file__).resolve().parent.parent
# A job's alert sweep (its configuration from the environment), killed with SIGKILL by itself at
# the moment argv[2] names: between sending the events and writing the alerts, or between the
# alerts and the patients' state. The real broker and Elasticsearch, a real kill -9.
SWEEP = """
import os, signal, sys
from bp_spark.alerts.step import EpisodeStep
from bp_spark.config import load_config
from bp_spark.elastic import make_client
from bp_spark.sinks.alert_topic import AlertTopic
from bp_spark.sinks.es import ElasticsearchSink
config = load_config()
step = EpisodeStep(config, ElasticsearchSink(config, make_client(config), {}), AlertTopic(config, {}))
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "before the alerts":
    step.store.es.put_versioned = die
elif sys.argv[2] == "before the state":
    step.store.es.put = die
step.sweep(int(sys.argv[1]))
"""


def _issues_on(config, wanted: int, wait_s: float) -> list[dict]:
    """The DetectedIssues on the alert topic, from its start."""
    consumer = Consumer({**kafka_settings(config), "group.id": f"{config.kafka.alerts_topic}-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([config.kafka.alerts_topic])
    found, deadline = [], time.monotonic() + wait_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            issue = orjson.loads(message.value())
            assert issue["resourceType"] == "DetectedIssue"
            found.append(issue)
            if len(found) >= wanted:  # a moment more, for anything sent twice
                deadline = min(deadline, time.monotonic() + 2)
    consumer.close()
    return found


def events_on(config, wanted: int, wait_s: float = 20.0) -> list[tuple[str, str, str]]:
    """(patient, kind, event) of the DetectedIssues on the alert topic, from its start."""
    return [(issue["patient"]["reference"].split("/")[1], issue["code"]["coding"][0]["code"],
             issue["identifier"][1]["value"].split("|")[1]) for issue in _issues_on(config, wanted, wait_s)]


def event_ids_on(config, wanted: int, wait_s: float = 20.0) -> list[str]:
    """The event id of each DetectedIssue on the alert topic, repeats included."""
    return [issue["identifier"][1]["value"] for issue in _issues_on(config, wanted, wait_s)]


@pytest.fixture
def alert_config(unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A test's own topics and indices; jobs/alerts.py, run in the test, reads them from its environment."""
    config = stream_config(unique_name, tmp_path, **{"kafka.alerts_topic": f"{unique_name}_alerts"})
    for name, value in {**job_env(config), "BP_KAFKA_ALERTS_TOPIC": config.kafka.alerts_topic}.items():
        monkeypatch.setenv(name, value)
    return config


def the_alert(es: Elasticsearch, config, patient: str, kind: str) -> dict:
    (alert,) = [a for a in ids_in(es, config.elasticsearch.episodes_index).values()
                if a["patient_id"] == patient and a["kind"] == kind]
    return alert


def test_a_run_of_critical_readings_is_one_alert_that_pages_once_and_an_acknowledged_one_stays_quiet(
    spark: SparkSession, es: Elasticsearch, kafka_admin, alert_config, capsys
) -> None:
    config = alert_config
    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    publish(config, [observation("pk", f"pk-{m}", t0 + timedelta(minutes=m), 190, 125) for m in (0, 20, 50)])
    run_once(spark, config, es)
    alert = the_alert(es, config, "pk", CRITICAL_READING)
    assert (alert["readings_count"], alert["reading_ids"], alert["confirmed"], alert["status"]) == (
        3, ["pk-0", "pk-20", "pk-50"], True, OPEN)
    assert sorted(set(ids_in(es, config.elasticsearch.alerts_index))) == ["pk-0", "pk-20", "pk-50"]  # each reading's evidence
    # one page for the crisis; three readings above the limits also open the persistent kind
    assert sorted(events_on(config, 2)) == [("pk", "above_target", "opened"), ("pk", CRITICAL_READING, "opened")]

    assert alerts_job.main(["ack", alert["alert_id"], "--by", "nurse.a", "--note", "called"]) == 0
    assert capsys.readouterr().out.strip() == f"alert {alert['alert_id']} acknowledged by nurse.a"
    publish(config, [observation("pk", "pk-90", t0 + timedelta(minutes=90), 195, 126)])
    run_once(spark, config, es)
    acked = the_alert(es, config, "pk", CRITICAL_READING)
    assert (acked["status"], acked["acknowledged_by"], acked["readings_count"]) == (ACKNOWLEDGED, "nurse.a", 4)
    kinds = [e for e in events_on(config, 3) if e[1] == CRITICAL_READING]
    assert kinds == [("pk", CRITICAL_READING, "opened"), ("pk", CRITICAL_READING, "acknowledged")]  # no page

    # clear one-line errors: an unknown id, a resolved alert
    assert alerts_job.main(["resolve", acked["alert_id"], "--by", "dr.b"]) == 0
    capsys.readouterr()
    assert alerts_job.main(["ack", acked["alert_id"], "--by", "nurse.a"]) == 2
    assert capsys.readouterr().err.strip() == f"alerts: alert {acked['alert_id']} is resolved (by dr.b); nothing to acknowledge"
    assert alerts_job.main(["ack", "critical-reading-0000", "--by", "nurse.a"]) == 2
    assert "no alert critical-reading-0000" in capsys.readouterr().err
    assert alerts_job.main(["list", "--status", "all", "--patient", "pk"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("ALERT") and len(listed) == 3  # the active first, the resolved one last
    assert " open " in listed[1] and "above_target" in listed[1]
    assert acked["alert_id"] in listed[2] and " resolved " in listed[2]


def test_a_persons_acknowledgement_and_the_jobs_update_of_one_alert_are_both_kept(
    es: Elasticsearch, alert_config
) -> None:
    """The person acknowledges while the job is deciding (between its read and its write): the
    job's write is refused (the version moved), it reads again and decides again."""
    config = alert_config
    from bp_spark.elastic import install_templates, pipeline_indices
    install_templates(es, pipeline_indices(config), 0)
    step = EpisodeStep(config, ElasticsearchSink(config, es, {}), AlertTopic(config, {}))
    from bp_spark.alerts.episodes import Reading
    t0 = 1_780_000_000_000
    crisis = lambda obs_id, at: Reading(obs_id, at, 190, 125, "critical", frozenset({CRITICAL_READING}), "crisis")  # noqa: E731
    step._decide(["pc"], lambda state, at: advance(state, [crisis("c1", t0)], at, 1, step.settings), "batch 1")
    alert_id = the_alert(es, config, "pc", CRITICAL_READING)["alert_id"]
    rounds = []

    def decide(state, at):  # the job's decision; the first time, a person acknowledges meanwhile
        if not rounds:
            assert alerts_job.main(["ack", alert_id, "--by", "nurse.a"]) == 0
        rounds.append(state.episodes[CRITICAL_READING]["status"])
        return advance(state, [crisis("c2", t0 + 60_000)], at, 2, step.settings)
    step._decide(["pc"], decide, "batch 2")
    assert rounds == [OPEN, ACKNOWLEDGED]  # decided again on the acknowledged alert
    alert = the_alert(es, config, "pc", CRITICAL_READING)
    assert (alert["status"], alert["acknowledged_by"], alert["readings_count"], alert["confirmed"]) == (
        ACKNOWLEDGED, "nurse.a", 2, True)


def test_escalation_and_silence_on_the_sweeps_clock_each_once_across_a_kill_9(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{
        "kafka.alerts_topic": f"{unique_name}_alerts", "alerts.escalate_after": "2 seconds",  # noqa: E501
        "alerts.silence_after": "3 seconds", "alerts.silence_window": "1 day", "alerts.max_age": "7 days"})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    publish(config, [observation("pe", "pe-1", now - timedelta(minutes=5), 190, 125),
                     observation("ps", "ps-1", now - timedelta(seconds=1), 118, 76),
                     observation("po", "po-1", now - timedelta(days=30), 190, 125)])  # history: no page
    run_once(spark, config, es)  # the job stops: nothing more arrives
    assert "po-1" in ids_in(es, config.elasticsearch.anomalies_index)
    assert [a for a in ids_in(es, config.elasticsearch.episodes_index).values() if a["patient_id"] == "po"] == []

    paged_at = the_alert(es, config, "pe", CRITICAL_READING)["paged_at"]
    time.sleep(max(0.0, (paged_at + 4_500) / 1000 - time.time()))
    at = paged_at + 4_500  # the sweeps' clock, as the timer reads it: 4.5 s after the page
    env = {**job_env(config), **{env_name(f"alerts.{k}"): str(getattr(config.alerts, k)) for k in
                                 ("escalate_after", "silence_after", "silence_window", "max_age")},
           "BP_KAFKA_ALERTS_TOPIC": config.kafka.alerts_topic}

    def sweep_in_a_job(at_ms: int, killed: str = "") -> int:
        """A sweep by a job process of its own, ``kill -9``-ed at the moment named, if any."""
        return subprocess.run([sys.executable, "-c", SWEEP, str(at_ms), killed], env=env, cwd=ROOT).returncode

    # Killed after the events went out and the alerts were written, before the patients' state:
    # levels 1 and 2, and both patients silent for 3 s and more; the next job sends none again.
    assert sweep_in_a_job(at, killed="before the state") == -signal.SIGKILL
    assert sweep_in_a_job(at + 500) == 0
    escalated = the_alert(es, config, "pe", CRITICAL_READING)
    assert escalated["escalation_level"] == 2
    silent = the_alert(es, config, "ps", NO_READINGS)
    assert silent["status"] == OPEN and silent["reason"].startswith("no readings for")
    events = events_on(config, 5)  # both patients went silent for 3 s too
    assert sorted(events) == [("pe", CRITICAL_READING, "escalated"), ("pe", CRITICAL_READING, "escalated"),
                              ("pe", CRITICAL_READING, "opened"), ("pe", NO_READINGS, "opened"),
                              ("ps", NO_READINGS, "opened")]
    # Killed after sending level 3, before writing it: the next job sends it again, with the
    # same event id (a consumer keeps the first), and records it; then nothing more.
    assert sweep_in_a_job(paged_at + 6_500, killed="before the alerts") == -signal.SIGKILL
    assert sweep_in_a_job(paged_at + 6_700) == 0
    assert the_alert(es, config, "pe", CRITICAL_READING)["escalation_level"] == 3
    ids = Counter(event_ids_on(config, 8))
    level_3 = [i for i in ids if i.endswith("|escalated|1.3")]
    assert len(level_3) == 1 and ids[level_3[0]] == 2
    assert sorted(ids.values()) == [1, 1, 1, 1, 1, 2]  # every other event once
    EpisodeStep(config, ElasticsearchSink(config, es, {}), AlertTopic(config, {})).sweep(paged_at + 6_900)
    assert len(event_ids_on(config, 9, wait_s=4)) == 7  # nothing new

    publish(config, [observation("ps", "ps-2", datetime.now(timezone.utc), 120, 78)])
    run_once(spark, config, es)
    assert the_alert(es, config, "ps", NO_READINGS)["status"] == RESOLVED  # measuring again
