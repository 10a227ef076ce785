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
