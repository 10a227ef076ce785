"""The backfill (jobs/backfill.py) on the real Elasticsearch: an export's lines reach the stream
job's sinks under the same ids; run twice, nothing is stored twice; then the stream job over a
topic holding the same observations stores nothing twice either, and computes the very trend
windows the backfill wrote."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.backfill import BackfillInputError, archive_tag_for, input_files, run_backfill
from bp_spark.elastic import install_templates, pipeline_indices
from bp_spark.sinks import Sinks
from streams import (ROOT, archive_lines, expectations, generated, ids_in, job_env, publish, reading, run_pipeline,
                     stream_config)

URN = "urn:uuid:0b6f7b64-35c1-4c57-9a0f-2f8c2a6d9e11"


def export_bundle() -> tuple[bytes, dict, dict, dict]:
    """A transaction Bundle: a Patient, a normal reading whose subject is the Patient's urn:uuid,
    a crisis, and a reading without its diastolic (entry 3)."""
    normal = orjson.loads(reading("bf-bundle", "2026-02-27T08:00:00+00:00", 117, 75)[1])
    normal["subject"] = {"reference": URN}
    crisis = orjson.loads(reading("bf-bundle", "2026-02-27T09:00:00+00:00", 195, 126)[1])
    broken = orjson.loads(reading("bf-bundle", "2026-02-27T10:00:00+00:00", 130, 85)[1])
    broken["component"] = broken["component"][:1]
    entries = [{"fullUrl": URN, "resource": {"resourceType": "Patient", "id": "bf-bundle"}},
               {"resource": normal}, {"resource": crisis}, {"resource": broken}]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}), normal, crisis, broken


def write_export(folder: Path) -> tuple[list[bytes], dict]:
    """An export in two files (one in a subfolder, as some servers write them): readings, a
    Bundle, a line that is not JSON, a blank line and a reading repeated. Returns the plain
    readings and where the unusable lines are."""
    plain = [value for _, value in generated(patients=12, days=3, seed=11)]
    bundle, *_ = export_bundle()
    first = [*plain[:60], bundle, b"", b"{not json"]
    repeated = next(value for value in plain[:60] if value in expectations_normal(plain))
    second = [*plain[60:], repeated]
    (folder / "part").mkdir(parents=True)
    (folder / "Observation.ndjson").write_bytes(b"\n".join(first) + b"\n")
    (folder / "part" / "Observation-2.ndjson").write_bytes(b"\n".join(second) + b"\n")
    (folder / "Patient.json").write_bytes(b'{"resourceType": "Patient", "id": "not-read"}\n')  # not an export file
    return plain, {"bundle": ("Observation.ndjson", 61), "garbage": ("Observation.ndjson", 63)}


def expectations_normal(values: list[bytes]) -> set[bytes]:
    return expectations(stream_config("unused", Path("/nonexistent")), values)[2]


def backfill(spark: SparkSession, config, es: Elasticsearch, folder: Path, **kwargs):
    install_templates(es, pipeline_indices(config), 0)  # as the job does first
    sinks = Sinks(spark, config, es, archive_tag=archive_tag_for(str(folder), datetime.now(timezone.utc)))
    return run_backfill(spark, config, sinks, str(folder), progress=lambda line: None, **kwargs)


def trend_docs(es: Elasticsearch, index: str) -> dict[str, dict]:
    return {doc_id: {k: v for k, v in doc.items() if k not in ("batch_id", "processed_at")}
            for doc_id, doc in ids_in(es, index).items()}


def test_a_backfill_routes_an_export_as_the_stream_would_and_nothing_is_stored_twice(
    spark: SparkSession, es: Elasticsearch, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path, **{"trends.enabled": True})
    folder = tmp_path / "export"
    plain, where = write_export(folder)
    _, normal_entry, crisis_entry, broken_entry = export_bundle()
    abnormal, critical, normal = expectations(config, plain)
    assert abnormal and critical and normal

    # In two chunks (one file each): a normal reading repeated in the second is a repeat of the first's.
    summary = backfill(spark, config, es, folder, chunk_lines=1)
    assert len(summary.batches) == 2 and summary.files == 2 and summary.lines == len(plain) + 4
    assert ids_in(es, config.elasticsearch.anomalies_index).keys() == abnormal | {crisis_entry["id"]}
    alerts = ids_in(es, config.elasticsearch.alerts_index)
    assert {i for i, doc in alerts.items() if doc["alert_type"] == "critical_reading"} == critical | {crisis_entry["id"]}
    assert Counter(orjson.loads(line)["id"] for line in archive_lines(config)) == Counter(
        {orjson.loads(v)["id"]: 1 for v in normal} | {normal_entry["id"]: 1})
    assert list(Path(config.paths.archive_dir).glob("patient_id=bf-bundle/*.jsonl"))  # the urn:uuid resolved
    dead = ids_in(es, config.elasticsearch.deadletter_index)
    file, line = where["bundle"]
    garbage_file, garbage_line = where["garbage"]
    assert {doc_id: doc["reason"] for doc_id, doc in dead.items()} == {
        f"backfill:{file}-0-{line}-entry-3": "no diastolic component (LOINC 8462-4 or SNOMED CT 271650006, with its system)",
        f"backfill:{garbage_file}-0-{garbage_line}": "not a JSON object"}
    assert orjson.loads(dead[f"backfill:{file}-0-{line}-entry-3"]["raw"]) == broken_entry
    stored = summary.anomalies + summary.archived + summary.already_archived + summary.dead_letters
    # Each plain reading, the Bundle's three readings and the garbage line; the repeat left out.
    assert (stored, summary.readings, summary.other) == (len(plain) + 4, len(plain) + 5, 0)
    assert (summary.duplicates, summary.already_archived) == (1, 0)
    assert summary.trend_windows and summary.onsets
    trends = trend_docs(es, config.elasticsearch.trends_index)
    archive_before = sorted(archive_lines(config))

    # Again, in one chunk: every reading was routed before (the versions index says so), nothing is
    # written again, and trends count nothing twice.
    again = backfill(spark, config, es, folder)
    assert (again.archived, again.already_archived, again.anomalies, again.duplicates) == (0, 0, 0, again.readings - 1)
    assert again.dead_letters == 1  # the garbage line: known by its place, not by an id
    assert sorted(archive_lines(config)) == archive_before
    assert ids_in(es, config.elasticsearch.anomalies_index).keys() == abnormal | {crisis_entry["id"]}
    assert len(ids_in(es, config.elasticsearch.deadletter_index)) == 2
    assert trend_docs(es, config.elasticsearch.trends_index) == trends

    # The stream job on the same sinks, over a topic that replays the export: every reading is a
    # repeat of the backfill's, and its trend windows are the backfill's.
    bundle, *_ = export_bundle()
    publish(config, [(b"k", value) for value in [*plain, bundle]])
    router = run_pipeline(spark, config, es).router
    counts = router.counts.values()
    assert sum(c["repeats"] for c in counts) == len(plain) + 3 and sum(c["archive"] for c in counts) == 0
    assert sorted(archive_lines(config)) == archive_before
    assert ids_in(es, config.elasticsearch.anomalies_index).keys() == abnormal | {crisis_entry["id"]}
    assert trend_docs(es, config.elasticsearch.trends_index) == trends


def test_a_backfill_input_that_is_not_an_export_is_named(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(BackfillInputError, match="no such file"):
        input_files(spark, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(BackfillInputError, match=r"no \*\.ndjson file"):
        input_files(spark, str(tmp_path / "empty"))
    one = tmp_path / "one.json"
    one.write_text("{}\n")
    assert [name for _, name in input_files(spark, str(one))] == ["one.json"]  # a file is read whatever its name


def test_the_backfill_job_refuses_a_missing_input_before_starting_spark(unique_name: str, tmp_path: Path) -> None:
    config = stream_config(unique_name, tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "backfill.py"), "--input", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, env=job_env(config), timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == f"backfill: --input {tmp_path / 'nowhere'}: no such file or folder"
