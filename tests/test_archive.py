"""Tests of bp_spark/sinks/archive.py on static frames: the two ways a batch reaches the archive
write the same files, byte for byte, with the same names and modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from bp_spark.config import load_config
from bp_spark.sinks import archive
from bp_spark.sinks.archive import ArchiveSink

ROWS = [
    ("p1", '{"id":"a1","resourceType":"Observation"}'),
    ("p1", '{"id":"a2",\n"resourceType":"Observation","note":"tension art\u00e9rielle"}'),  # a line break, non-ASCII
    ("p2", '{"id":"b1"}'),
    ("unit/7 a=b", '{"id":"c1"}'),  # characters Spark escapes in a folder name
]


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (relative name: content, mode), and every folder (name: b"", mode)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.name.startswith("_"):
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        found[str(path.relative_to(root))] = (b"" if path.is_dir() else path.read_bytes(), mode)
    return found


def test_a_small_batch_written_by_the_driver_is_the_partitioned_write_byte_for_byte(
        spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch_df = spark.createDataFrame(ROWS, "patient_id string, raw string")
    trees = {}
    for way, limit in (("driver", 10), ("spark", 0)):
        monkeypatch.setattr(archive, "DRIVER_WRITE_MAX_ROWS", limit)
        config = load_config(env={"BP_SECURITY_MODE": "plain"}, stack_env=None, overrides={
            "paths.archive_dir": str(tmp_path / way), "paths.checkpoint_dir": str(tmp_path / "checkpoint")})
        sink = ArchiveSink(spark, config, {})
        assert sink.write(batch_df, 7, rows=len(ROWS)) == 3
        sink.write(batch_df, 7, rows=len(ROWS))  # a replay of the batch: the same files, not more
        trees[way] = tree(tmp_path / way)
    assert trees["driver"] == trees["spark"]
    files = {name: content for name, (content, _) in trees["driver"].items() if content}
    assert len(files) == 3 and all(name.endswith(f"/batch-{sink.tag}-000000000007-00000.jsonl") for name in files)
    p1 = next(content for name, content in files.items() if name.startswith("patient_id=p1/"))
    assert p1 == (ROWS[0][1] + "\n" + ROWS[1][1].replace("\n", " ") + "\n").encode()
    assert "patient_id=unit%2F7 a%3Db" in {name.split("/")[0] for name in files}
    assert {mode for name, (content, mode) in trees["driver"].items()} == {0o600, 0o700}
    assert not [name for name in os.listdir(tmp_path / "driver" / "patient_id=p1") if name.endswith(".tmp")]


def test_after_a_backfill_the_archive_is_asked_and_a_replayed_batch_still_writes_its_readings(
        spark: SparkSession, tmp_path: Path) -> None:
    """A backfill archives r1 and r2; the stream's batch 5 brings r1 again and r3 (both no later
    than the backfill's last reading): only r3 is written, and so again when batch 5 is replayed
    (its own file from the first attempt is not "already archived"); batch 6's reading, later
    than anything backfilled, is written without asking."""
    from pyspark.sql import functions as F

    from bp_spark.parse import parse_observations
    from streams import reading

    config = load_config(env={}, overrides={"paths.archive_dir": str(tmp_path / "archive"),
                                            "paths.checkpoint_dir": str(tmp_path / "checkpoint")})
    payloads = {name: reading(patient, when, 120, 80)[1] for name, patient, when in (
        ("r1", "p1", "2026-01-01T08:00:00+00:00"), ("r2", "p1", "2026-01-02T08:00:00+00:00"),
        ("r3", "p2", "2026-01-01T20:00:00+00:00"), ("r4", "p2", "2026-01-05T08:00:00+00:00"))}

    def batch(*names: str):
        records = spark.createDataFrame([(payloads[n].decode(), "t", 0, i) for i, n in enumerate(names)],
                                        "value string, topic string, partition int, offset long").withColumn(
            "timestamp", F.current_timestamp())
        df = parse_observations(records)
        extent = df.agg(F.min(F.unix_seconds("effective_time")), F.max(F.unix_seconds("effective_time"))).first()
        return df, len(names), extent[0], extent[1]

    backfill = ArchiveSink(spark, config, {}, tag="bf000001", backfill=True)
    assert backfill.write_new(*_at(batch("r1", "r2"), 0)) == (2, 0)
    stream = ArchiveSink(spark, config, {})
    assert stream.write_new(*_at(batch("r1", "r3"), 5)) == (1, 1)
    assert stream.write_new(*_at(batch("r1", "r3"), 5)) == (1, 1)  # the replay
    assert stream.write_new(*_at(batch("r4"), 6)) == (1, 0)
    lines = sorted(line for f in (tmp_path / "archive").glob("patient_id=*/*.jsonl") for line in f.read_bytes().splitlines())
    assert lines == sorted(payloads.values())


def _at(prepared: tuple, batch_id: int) -> tuple:
    df, rows, oldest, newest = prepared
    return df, batch_id, rows, oldest, newest
