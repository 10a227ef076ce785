"""Never stop, never lose: each test tries to break one guarantee of the stream job on the real
broker and Elasticsearch, and reconciles every sink by id.

- documents Elasticsearch refuses go to the dead letter, and the rest of the batch is written;
- hostile messages (huge fields, garbage after the JSON, two values, NaN, deep nesting, random
  bytes, a tombstone, wrong types, a date in 2099) each get a dead letter, never a crash;
- no message is dropped for its Kafka timestamp;
- corrections and retractions find the earlier version under any patient, by id alone too;
- a topic created after the job started is waited for;
- offsets Kafka removed before they were read are counted and logged;
- one job per checkpoint and per archive; two jobs never write the same archive file name;
- a replayed batch leaves alerts as they were; a failing trend query is restarted, routing goes on.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.config import Config
from bp_spark.elastic import install_templates, pipeline_indices
from bp_spark.monitoring import ROUTING_QUERY
from bp_spark.ownership import OwnershipError
from bp_spark.parse import NOT_ONE_VALUE
from bp_spark.pipeline import start_pipeline
from bp_spark.sinks import Sinks
from streams import (archive_lines, expectations, generated, ids_in, publish, reading, run_once, run_pipeline,
                     stream_config, version)

NOW_MS = int(time.time() * 1000)


def create_topic(admin: AdminClient, topic: str, partitions: int = 1) -> None:
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)


def dead_letters(es: Elasticsearch, config: Config) -> dict[str, dict]:
    return ids_in(es, config.elasticsearch.deadletter_index)


def test_documents_elasticsearch_refuses_go_to_the_dead_letter_and_the_rest_of_the_batch_is_written(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path, caplog
) -> None:
    # Through the connector, whose failed bulk falls back to the careful path (the other tests'
    # small batches go from the driver in one bulk request, the careful path's way).
    config = stream_config(unique_name, tmp_path, **{"elasticsearch.driver_write_max_docs": 0})
    # An anomaly index whose patient_id is a number (an operator's mapping change): Elasticsearch
    # refuses the anomaly documents of patients whose ids are not numbers, one by one.
    install_templates(es, pipeline_indices(config), 0)
    es.indices.create(index=config.elasticsearch.anomalies_index, mappings={"properties": {"patient_id": {"type": "long"}}})
    numeric = [reading("12345", f"2026-01-0{d}T08:00:00Z", 150, 95) for d in range(1, 4)]
    named = [reading("pa", f"2026-01-0{d}T08:00:00Z", 155, 96) for d in range(1, 3)]
    crisis = [reading("pa", "2026-01-03T09:00:00Z", 190, 125)]
    normal = [reading("pb", "2026-01-01T08:00:00Z", 118, 76), reading("12345", "2026-01-04T08:00:00Z", 117, 75)]
    messages = numeric + named + crisis + normal
    coordinates = publish(config, messages)

    with caplog.at_level("WARNING", logger="bp_spark.sinks"):
        router = run_pipeline(spark, config, es, templates=False).router

    ids = [orjson.loads(value)["id"] for _, value in messages]
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == set(ids[:3])
    assert ids_in(es, config.elasticsearch.alerts_index) == {}  # the crisis was refused: its alert went with it
    dead = dead_letters(es, config)
    refused = {f"{unique_name}-{p}-{o}": value.decode() for (p, o), (_, value) in zip(coordinates[3:6], messages[3:6])}
    assert {doc_id: doc["raw"] for doc_id, doc in dead.items()} == refused
    for doc in dead.values():
        assert doc["reason"].startswith(f"Elasticsearch refused the document for {config.elasticsearch.anomalies_index}: "
                                        "document_parsing_exception: ")
        assert len(doc["reason"]) <= 300 and doc["kafka"]["topic"] == unique_name
    assert sorted(archive_lines(config)) == sorted(value for _, value in normal)
    sinks = router.counts[0]
    assert (sinks["anomalies"], sinks["alerts"], sinks["dead_letters"], sinks["refused"], sinks["archive"]) == (3, 0, 3, 3, 2)
    # the log says how many and why, never what the documents held
    logged = " ".join(r.getMessage() for r in caplog.records)
    # 6 anomalies, 1 alert and the archive index's 2 documents (where each normal reading lies)
    assert "Elasticsearch refused 3 of 9 documents for what they hold (document_parsing_exception x3)" in logged
    assert "pa-2026" not in logged and "155" not in logged


def hostile_messages() -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, the dead-letter reason or its start) for every kind of input that tries to break the parser."""
    base = orjson.loads(reading("ph", "2026-01-01T08:00:00Z", 150, 95)[1])
    text = orjson.dumps(base).decode()
    assert '"value":150' in text

    def changed(**fields) -> bytes:
        return orjson.dumps({**base, **fields})
    rng = random.Random(13)
    return [
        (b"ph", changed(resourceType="X" * 40_000), "not an Observation: resourceType " + "X" * 40 + "... (40000 characters)"),
        (b"ph", changed(id="i" * 600), "Observation id '" + "i" * 40 + "... (600 characters)' is not a FHIR id"),
        (b"ph", changed(subject={"reference": "Patient/" + "7" * 40_000}), "subject 'Patient/" + "7" * 32 + "... (40008"),
        (b"ph", changed(note="n" * 900_000, id="ph-huge-unread-field", effectiveDateTime="2099-01-01T00:00:00Z"),
         "effective time 2099-01-01T00:00:00Z is more than 3600 s after the message arrived"),
        (b"ph", (text + "\x00garbage").encode(), NOT_ONE_VALUE),
        (b"ph", (text + "\n" + text).encode(), NOT_ONE_VALUE),
        (b"ph", text.replace('"value":150', '"value":NaN').encode(), NOT_ONE_VALUE),
        (b"ph", ('{"resourceType":"Observation","x":' + "[" * 3000 + "]" * 3000 + "}").encode(), "not a JSON object"),
        (b"ph", bytes(rng.randrange(256) for _ in range(300)), "not a JSON object"),
        (b"ph", None, "empty message"),
        (b"ph", text[: len(text) // 2].encode(), "not a JSON object"),
        (b"ph", changed(status=5), "status '5' is not processed"),
        (b"ph", changed(component="x"), "no systolic component"),
        (b"ph", changed(effectiveDateTime=20260101), "effective time '20260101' is not a FHIR dateTime"),
        (None, b"[]", "not a JSON object"),
    ]


def test_hostile_messages_each_get_a_dead_letter_and_the_readings_around_them_land(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    good = generated(patients=5, days=2, seed=21)  # 40 readings, before and after the hostile ones
    hostile = hostile_messages()
    coordinates = publish(config, good[:20] + [(k, v) for k, v, _ in hostile] + good[20:])
    run_once(spark, config, es)

    abnormal, _, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    assert sorted(archive_lines(config)) == sorted(normal)
    dead = dead_letters(es, config)
    expected = {f"{unique_name}-{p}-{o}": (value, reason) for (p, o), (_, value, reason) in zip(coordinates[20:], hostile)}
    assert set(dead) == set(expected)
    for doc_id, (value, reason) in expected.items():
        assert dead[doc_id]["reason"].startswith(reason), (dead[doc_id]["reason"][:200], reason)
        assert len(dead[doc_id]["reason"]) < 200
        if value is not None and value.isascii():
            assert dead[doc_id]["raw"] == value.decode()  # the whole payload, even 900 KB of it


def test_no_reading_is_dropped_for_an_old_kafka_timestamp(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    recent = reading("pk", "2026-01-02T08:00:00Z", 160, 100)
    publish(config, [(*recent, NOW_MS)])
    run_once(spark, config, es)
    # A device syncing a month late, or a mirrored topic: the producer's timestamp is 30 days old.
    late = reading("pk", "2026-01-01T08:00:00Z", 150, 95)
    month_ago = NOW_MS - 30 * 86_400_000
    publish(config, [(*late, month_ago), (*recent, month_ago)])  # and a repeat of the first, also "old"
    run_once(spark, config, es)
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == {"pk-2026-01-02T08", "pk-2026-01-01T08"}


def test_corrections_and_retractions_find_the_earlier_version_under_any_patient(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    retracted = reading("p1", "2026-01-01T08:00:00Z", 118, 76)
    moved = reading("p2", "2026-01-01T09:00:00Z", 119, 77)
    amended = reading("p3", "2026-01-01T10:00:00Z", 150, 95)
    kept = reading("p1", "2026-01-01T11:00:00Z", 117, 75)
    publish(config, [retracted, moved, amended, kept])
    run_once(spark, config, es)
    assert sorted(archive_lines(config)) == sorted([retracted[1], moved[1], kept[1]])

    # In one batch: a retraction by id alone (no subject), a correction that moves a reading to
    # another patient, and an amendment with a patient (this mix once raised TypeError in sorted()).
    by_id = orjson.dumps({"resourceType": "Observation", "id": orjson.loads(retracted[1])["id"],
                          "status": "entered-in-error"})
    moved_body = orjson.loads(version(moved[1], "corrected", 121, 79))
    moved_body["subject"] = {"reference": "Patient/p4"}
    amended_again = version(amended[1], "amended", 152, 96)
    publish(config, [(b"p1", by_id), (b"p4", orjson.dumps(moved_body)), (b"p3", amended_again)])
    run_once(spark, config, es)

    assert sorted(archive_lines(config)) == sorted([kept[1], orjson.dumps(moved_body)])
    root = Path(config.paths.archive_dir)
    assert [orjson.loads(line)["id"] for f in root.glob("patient_id=p2/*.jsonl") for line in f.read_bytes().splitlines()] == []
    anomalies = ids_in(es, config.elasticsearch.anomalies_index)
    assert set(anomalies) == {"p3-2026-01-01T10"} and anomalies["p3-2026-01-01T10"]["systolic"] == 152.0


def test_a_topic_created_after_the_job_started_is_waited_for(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path, caplog
) -> None:
    config = stream_config(unique_name, tmp_path)
    finished: list = []
    with caplog.at_level("WARNING", logger="bp_spark.sinks"):
        job = threading.Thread(target=lambda: finished.append(run_once(spark, config, es)), daemon=True)
        job.start()
        deadline = time.monotonic() + 60
        while not any("waiting for Kafka topic" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline and job.is_alive(), "the job did not wait for its topic"
            time.sleep(0.2)
        create_topic(kafka_admin, unique_name, partitions=3)
        good = generated(patients=3, days=1, seed=22)
        publish(config, good)
        job.join(300)
    assert finished, "the job did not finish once its topic was there"
    waits = [r.getMessage() for r in caplog.records if "waiting for Kafka topic" in r.getMessage()]
    assert waits[0].startswith(f"kafka is unavailable: waiting for Kafka topic {unique_name} at ")
    assert "the topic does not exist (yet)" in waits[0]
    # The run reads what the topic held when it found it (available-now), which may be before
    # the readings came: the next run on the same checkpoint reads the rest, none twice.
    run_once(spark, config, es)
    abnormal, _, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    assert sorted(archive_lines(config)) == sorted(normal)


def test_offsets_kafka_removed_before_they_were_read_are_counted_and_logged(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path, caplog
) -> None:
    config = stream_config(unique_name, tmp_path)
    create_topic(kafka_admin, unique_name, partitions=1)
    first = [reading("pl", f"2026-01-01T0{h}:00:00Z", 118, 76) for h in range(5)]
    publish(config, first)
    run_once(spark, config, es)
    then = [reading("pl", f"2026-01-02T0{h}:00:00Z", 117, 75) for h in range(8)]
    publish(config, then)
    # Retention takes the first three of the new records before the job reads them.
    kafka_admin.delete_records([TopicPartition(unique_name, 0, 8)])[TopicPartition(unique_name, 0, 8)].result(30)
    with caplog.at_level("ERROR", logger="bp_spark.monitoring"):
        pipeline = run_pipeline(spark, config, es)
    records = [r for r in pipeline.listener.records if r["query"] == ROUTING_QUERY and r["input_rows"]]
    assert [r["lost_offsets"] for r in records] == [3]
    assert records[0]["kafka_partitions"][0]["lost_offsets"] == 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"3 offsets of Kafka topic {unique_name} partition 0 between 5 and 12 had no record to read" in e
               for e in errors), errors
    assert sorted(archive_lines(config)) == sorted(v for _, v in first + then[3:])


def test_one_job_per_checkpoint_and_per_archive(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{"stream.trigger": "1 second"})
    publish(config, generated(patients=2, days=1, seed=23))
    install_templates(es, pipeline_indices(config), 0)
    running = start_pipeline(spark, config, Sinks(spark, config, es))
    try:
        with pytest.raises(OwnershipError, match=r"the checkpoint .* is in use by another bp-monitor job \(pid \d+\)"):
            start_pipeline(spark, config, Sinks(spark, config, es))
        elsewhere = stream_config(unique_name, tmp_path / "other", **{"paths.archive_dir": config.paths.archive_dir})
        with pytest.raises(OwnershipError, match="the archive .* is in use by another bp-monitor job .*--archive-dir"):
            start_pipeline(spark, elsewhere, Sinks(spark, elsewhere, es))
    finally:
        running.stop()
    # once the first job stopped, the folders are free again
    again = start_pipeline(spark, stream_config(unique_name, tmp_path), Sinks(spark, config, es))
    again.stop()


def test_two_jobs_on_one_archive_each_archive_their_readings_once(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    archive = str(tmp_path / "shared-archive")
    first = stream_config(unique_name, tmp_path / "a", **{"paths.archive_dir": archive})
    second = stream_config(f"{unique_name}_b", tmp_path / "b", **{"paths.archive_dir": archive})
    one, two = [reading("ps", "2026-01-01T08:00:00Z", 118, 76)], [reading("ps", "2026-01-01T09:00:00Z", 117, 75)]
    publish(first, one)
    publish(second, two)
    run_once(spark, first, es)
    run_once(spark, second, es)  # batch 0 of another checkpoint and topic, same patient
    assert sorted(archive_lines(first)) == sorted([one[0][1], two[0][1]])
    # batch 0 of each job, staged apart, rolled into the patient's one file of that day
    assert [path.name for path in Path(archive).glob("patient_id=ps/*.jsonl")] == ["2026-01-01-000.jsonl"]


def test_a_replayed_batch_leaves_alerts_as_they_were_so_no_rule_fires_twice(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    crisis = reading("pr", "2026-01-01T08:00:00Z", 190, 125)
    publish(config, [crisis])
    run_once(spark, config, es)
    alert, anomaly = (ids_in(es, index)["pr-2026-01-01T08"] for index in
                      (config.elasticsearch.alerts_index, config.elasticsearch.anomalies_index))
    # A crash after the writes, before Spark recorded the batch as done: the batch runs again.
    # (Spark ran a batch without data after it, for the watermark; it goes too.)
    routing = Path(config.paths.checkpoint_dir) / "routing"
    for entry in [*routing.glob("commits/*"), *routing.glob("offsets/*")]:
        if entry.name != "0" or entry.parent.name == "commits":
            entry.unlink()
    time.sleep(1.1)
    run_once(spark, config, es)
    alert_again, anomaly_again = (ids_in(es, index)["pr-2026-01-01T08"] for index in
                                  (config.elasticsearch.alerts_index, config.elasticsearch.anomalies_index))
    assert anomaly_again["processed_at"] != anomaly["processed_at"]  # the replay did write
    assert alert_again == alert  # the alert was left as it was: same processed_at, a rule on it stays quiet


def test_a_failing_trend_merge_keeps_its_windows_and_routing_goes_on(
    spark: SparkSession, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path, caplog
) -> None:
    config = stream_config(unique_name, tmp_path, **{"trends.enabled": True, "trends.trigger": "",
                                                     "kafka.max_offsets_per_trigger": 10})
    good = generated(patients=4, days=2, seed=24)
    publish(config, good)
    install_templates(es, pipeline_indices(config), 0)
    pipeline = start_pipeline(spark, config, Sinks(spark, config, es))
    # The first merge fails (as a bug, or a trends index that refuses its documents, would); the next are real.
    step = pipeline.router.trends
    real_merge, failures = step.merge, []

    def fail_once():
        if not failures:
            failures.append(len(step.pending()))
            raise RuntimeError("a trend merge failed")
        return real_merge()
    step.merge = fail_once
    try:
        with caplog.at_level("ERROR", logger="bp_spark.pipeline"):
            pipeline.await_termination(timeout_s=300)
    finally:
        pipeline.stop()
    assert failures == [1] and pipeline.restarts == {}  # routing never stopped
    assert any(r.getMessage().startswith("trends: merging the kept partial windows failed (") and
               "a trend merge failed" in r.getMessage() for r in caplog.records)
    assert sum(c["trend_failures"] for c in pipeline.router.counts.values()) == 1
    abnormal, _, normal = expectations(config, [v for _, v in good])
    assert set(ids_in(es, config.elasticsearch.anomalies_index)) == abnormal
    assert sorted(archive_lines(config)) == sorted(normal)
    cohort_days = ids_in(es, config.elasticsearch.trends_index, scope="cohort", period="daily")
    assert sum(doc["readings"] for doc in cohort_days.values()) == len(good)  # the failed batch's windows too
    assert step.pending() == []  # nothing left kept

