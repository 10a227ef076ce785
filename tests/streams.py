"""What the stream job's integration tests share: a configuration of their own (topic, indices,
folders), publishing, running the job's queries as the job wires them, and reading every sink."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import orjson
from confluent_kafka import Producer
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.archive.layout import archived_lines
from bp_spark.config import Config, env_name, load_config
from bp_spark.connections import kafka_settings
from bp_spark.elastic import INDEX_KINDS, install_templates, pipeline_indices
from bp_spark.generator import encode, make_patients, readings, window
from bp_spark.pipeline import Pipeline, start_pipeline
from bp_spark.routing.query import BatchRouter
from bp_spark.sinks import Sinks

ROOT = Path(__file__).resolve().parent.parent
END = "2026-03-01T00:00:00+00:00"
MIX = {"normotensive": 0.4, "elevated": 0.1, "stage_1": 0.1, "stage_2": 0.3, "hypotensive": 0.1}


def stream_config(name: str, tmp_path: Path, **extra) -> Config:
    overrides = {
        "kafka.topic": name,
        "elasticsearch.anomalies_index": f"{name}_anomalies",
        "elasticsearch.alerts_index": f"{name}_alerts",
        "elasticsearch.trends_index": f"{name}_trends",
        "elasticsearch.deadletter_index": f"{name}_deadletter",
        "elasticsearch.metrics_index": f"{name}_metrics",
        "elasticsearch.pending_index": f"{name}_pending",
        "elasticsearch.archive_index": f"{name}_archive",
        "elasticsearch.versions_index": f"{name}_versions",
        "elasticsearch.goals_index": f"{name}_goals",
        "elasticsearch.episodes_index": f"{name}_episodes",
        "elasticsearch.alert_state_index": f"{name}_alert_state",
        "alerts.sweep_every": "1 hour",  # a test sweeps when it means to (tests/test_alerts.py)
        "alerts.max_age": "0",  # the tests' readings keep fixed dates of the past
        "outages.backoff_s": 0.2,
        "outages.max_backoff_s": 2.0,
        "paths.archive_dir": str(tmp_path / "archive"),
        "paths.checkpoint_dir": str(tmp_path / "checkpoint"),
        "stream.trigger": "available-now",
        "trends.enabled": False,  # on where a test is about trends: it is a second query to run
        **extra,
    }
    return load_config(env={}, overrides=overrides)


def job_env(config: Config) -> dict[str, str]:
    """The environment that gives a job subprocess ``config``'s topic, indices and paths."""
    keys = ["kafka.topic", "paths.archive_dir", "paths.checkpoint_dir", "elasticsearch.driver_write_max_docs",
            *[f"elasticsearch.{kind}_index" for kind in INDEX_KINDS]]
    values = {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) for key in keys}
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **{env_name(key): str(value) for key, value in values.items()}}


def publish(config: Config, messages: list[tuple]) -> list[tuple[int, int]]:
    """Send ``(key, value)`` or ``(key, value, Kafka timestamp in ms)`` messages; return each one's (partition, offset)."""
    coordinates: dict[int, tuple[int, int]] = {}
    producer = Producer({**kafka_settings(config), "enable.idempotence": True,
                         "message.max.bytes": 1_000_000})
    for i, (key, value, *timestamp) in enumerate(messages):
        producer.produce(config.kafka.topic, key=key, value=value, timestamp=timestamp[0] if timestamp else 0,
                         on_delivery=lambda err, msg, i=i: coordinates.__setitem__(i, (msg.partition(), msg.offset())))
    assert producer.flush(30) == 0
    return [coordinates[i] for i in range(len(messages))]


def run_pipeline(spark: SparkSession, config: Config, es: Elasticsearch, templates: bool = True) -> Pipeline:
    """Run the stream job's queries with --trigger available-now, as the job wires them
    (``templates``: install the index templates first, as the job does)."""
    if templates:
        install_templates(es, pipeline_indices(config), 0)
    pipeline = start_pipeline(spark, config, Sinks(spark, config, es))
    try:
        pipeline.await_termination(timeout_s=300)
    finally:
        pipeline.stop()
    return pipeline


def run_once(spark: SparkSession, config: Config, es: Elasticsearch) -> BatchRouter:
    return run_pipeline(spark, config, es).router


def ids_in(es: Elasticsearch, index: str, **terms: str) -> dict[str, dict]:
    if not es.indices.exists(index=index):
        return {}
    es.indices.refresh(index=index)
    query = {"bool": {"filter": [{"term": {k: v}} for k, v in terms.items()]}} if terms else {"match_all": {}}
    hits = es.search(index=index, size=10_000, query=query)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def archive_lines(config: Config) -> list[bytes]:
    """Every line of the archive as it lies (staged or published): a job run by run_pipeline has stopped."""
    return list(archived_lines(Path(config.paths.archive_dir), exact=True))


def expectations(config: Config, values: list[bytes]) -> tuple[set[str], set[str], set[bytes]]:
    """Abnormal ids, critical ids and normal payloads, worked out in plain Python from the messages."""
    t = config.thresholds
    abnormal, critical, normal = set(), set(), set()
    for value in values:
        obs = orjson.loads(value)
        s, d = (c["valueQuantity"]["value"] for c in obs["component"])
        if s > t.systolic_high or s < t.systolic_low or d > t.diastolic_high or d < t.diastolic_low:
            abnormal.add(obs["id"])
            if (s > t.crisis_systolic or d > t.crisis_diastolic
                    or s < t.critical_low_systolic or d < t.critical_low_diastolic):
                critical.add(obs["id"])
        else:
            normal.add(value)
    return abnormal, critical, normal


def generated(patients: int, days: int, seed: int, crisis_rate: float = 0.05) -> list[tuple[bytes, bytes]]:
    start, end = window("", END, days)
    return [encode(r) for r in readings(make_patients(patients, seed, MIX), start, end, 4, seed, crisis_rate, 0.03)]


def version(value: bytes, status: str, systolic: int, diastolic: int) -> bytes:
    obs = copy.deepcopy(orjson.loads(value))
    obs["status"] = status
    obs["component"][0]["valueQuantity"]["value"] = systolic
    obs["component"][1]["valueQuantity"]["value"] = diastolic
    return orjson.dumps(obs)


def reading(patient: str, when: str, systolic: int, diastolic: int) -> tuple[bytes, bytes]:
    obs_id = f"{patient}-{when[:13].replace(':', '')}"
    body = {
        "resourceType": "Observation", "id": obs_id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        ],
    }
    return patient.encode(), orjson.dumps(body)
