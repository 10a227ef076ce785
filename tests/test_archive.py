"""Tests of the archive (bp_spark/archive/, bp_spark/sinks/archive.py): the file count follows
patients and periods whatever the number of batches; a roll killed with kill -9 at any step
is finished at the next start with each reading once, and a reader never misses one meanwhile;
the driver's and Spark's staging publish the same bytes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from bp_spark.files import LocalFiles
from bp_spark.archive.layout import archived_lines, file_count, line_id
from bp_spark.archive.roll import Roller
from bp_spark.config import load_config
from bp_spark.sinks import archive
from bp_spark.sinks.archive import ArchiveSink

ROOT = Path(__file__).resolve().parent.parent


def payload(obs_id: str, when: str, note: str = "") -> str:
    return f'{{"resourceType":"Observation","id":"{obs_id}","effectiveDateTime":"{when}"{note}}}'


ROWS = [
    ("p1", payload("a1", "2026-01-01T08:00:00Z")),
    ("p1", payload("a2", "2026-01-01T20:00:00Z", ',\n"note":"tension art\u00e9rielle"')),  # a line break, non-ASCII
    ("p1", payload("a3", "2026-01-02T08:00:00Z")),
    ("p2", payload("b1", "2026-01-01T09:00:00Z")),
    ("unit/7 a=b", payload("c1", "2026-01-01T10:00:00Z")),  # characters Spark escapes in a folder name
]
SCHEMA = "patient_id string, raw string, observation_id string, content_hash long, effective_time timestamp"


def frame(spark: SparkSession, rows: list[tuple[str, str]]):
    data = [(patient, raw, raw.split('"id":"')[1].split('"')[0], hash(raw) & 0xFFFF,
             raw.split('"effectiveDateTime":"')[1][:19].replace("T", " ")) for patient, raw in rows]
    return spark.createDataFrame(data, "patient_id string, raw string, observation_id string, content_hash long, "
                                       "effective_time string").withColumn("effective_time",
                                                                            F.to_timestamp("effective_time"))


def sink(spark: SparkSession, folder: Path, **overrides) -> ArchiveSink:
    config = load_config(env={"BP_SECURITY_MODE": "plain"}, stack_env=None, overrides={
        "paths.archive_dir": str(folder), "paths.checkpoint_dir": str(folder.parent / f"{folder.name}-checkpoint"),
        **overrides})
    return ArchiveSink(spark, config, {}, tag="t0000001")


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every published file and folder under ``root`` (relative name: content, mode)."""
    return {str(path.relative_to(root)): (b"" if path.is_dir() else path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
            for path in sorted(root.rglob("*")) if not str(path.relative_to(root)).startswith("_")}


def test_many_batches_end_in_one_file_per_patient_and_day_byte_for_byte(spark: SparkSession, tmp_path: Path) -> None:
    archive_sink = sink(spark, tmp_path / "archive")
    batches = [ROWS[i % len(ROWS):i % len(ROWS) + 1] for i in range(10)]  # 10 batches, one reading each
    for batch_id, rows in enumerate(batches):
        renamed = [(p, raw.replace('"id":"', f'"id":"{batch_id}-')) for p, raw in rows]
        archive_sink.stage(frame(spark, renamed), batch_id, len(renamed))
        if batch_id % 5 == 4:  # two rolls: the second appends to the first's files, adds none per batch
            assert archive_sink.roll_if_due(force=True).batches == 5
    published, staged, _ = file_count(tmp_path / "archive")
    # p1 on two days, p2 and the escaped patient on one: 4 files, whatever the batch count
    assert (published, staged) == (4, 0)
    files = tree(tmp_path / "archive")
    assert sorted(name for name, (content, _) in files.items() if content) == [
        "patient_id=p1/2026-01-01-000.jsonl", "patient_id=p1/2026-01-02-000.jsonl",
        "patient_id=p2/2026-01-01-000.jsonl", "patient_id=unit%2F7 a%3Db/2026-01-01-000.jsonl"]
    day = files["patient_id=p1/2026-01-01-000.jsonl"][0].splitlines()
    assert len(day) == 4 and len({line_id(line) for line in day}) == 4
    assert ROWS[1][1].replace("\n", " ").replace('"id":"', '"id":"1-').encode() in day  # on one line, bytes kept
    assert {mode for _, mode in files.values()} == {0o600, 0o700}
    assert archive_sink.replayed(9) and not archive_sink.replayed(10)


def test_a_part_that_is_full_starts_the_next(spark: SparkSession, tmp_path: Path) -> None:
    archive_sink = sink(spark, tmp_path / "archive")
    archive_sink.roller.max_bytes = 200
    for batch_id in range(3):
        archive_sink.stage(frame(spark, [("p1", payload(f"x{batch_id}", "2026-01-01T08:00:00Z"))]), batch_id, 1)
        archive_sink.roll_if_due(force=True)
    names = sorted(path.name for path in (tmp_path / "archive" / "patient_id=p1").iterdir())
    assert names == ["2026-01-01-000.jsonl", "2026-01-01-001.jsonl"]
    assert sorted(line_id(line) for line in archived_lines(tmp_path / "archive", exact=True)) == ["x0", "x1", "x2"]


def test_the_driver_and_spark_stage_the_same_bytes(spark: SparkSession, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trees = {}
    for way, limit in (("driver", 100), ("spark", 0)):
        monkeypatch.setattr(archive, "DRIVER_WRITE_MAX_ROWS", limit)
        archive_sink = sink(spark, tmp_path / way)
        archive_sink.stage(frame(spark, ROWS), 7, len(ROWS))
        archive_sink.stage(frame(spark, ROWS), 7, len(ROWS))  # a replay of the batch: staged again, not twice
        archive_sink.roll_if_due(force=True)
        trees[way] = tree(tmp_path / way)
    assert trees["driver"] == trees["spark"]
    assert sorted(archived_lines(tmp_path / "driver", exact=True)) == sorted(
        raw.replace("\n", " ").encode() for _, raw in ROWS)


KILLER = r"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from bp_spark.files import LocalFiles
from bp_spark.archive.roll import Roller

class Dying(LocalFiles):
    writes = 0
    def write(self, path, chunks):
        Dying.writes += 1
        if Dying.writes == int(sys.argv[2]):
            chunks = list(chunks)
            os.kill(os.getpid(), signal.SIGKILL)
        super().write(path, chunks)
    def rename(self, source, target):
        Dying.writes += 1
        if Dying.writes == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        super().rename(source, target)
    def delete(self, path):
        Dying.writes += 1
        if Dying.writes == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        super().delete(path)
    def append(self, path, chunks, at):
        Dying.writes += 2  # two steps: killed before the append, and half way through it
        chunks = list(chunks)
        if Dying.writes - 1 == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        if Dying.writes == int(sys.argv[2]):
            with open(self.root / path, "ab") as torn:  # half the lines' bytes written, then killed
                torn.write(b"".join(chunks)[: len(b"".join(chunks)) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        super().append(path, chunks, at)
    def sync(self):
        Dying.writes += 1
        if Dying.writes == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        super().sync()

Roller(Dying(Path(sys.argv[1]), 0o077), 8 << 20).roll()
"""


def _staged(root: Path) -> None:
    """Three staged batches over two patients and two days, on top of a published file; and a
    third patient's day in the first batch only (a new file from one staged file: moved)."""
    files = LocalFiles(root, 0o077)
    files.write("patient_id=p1/2026-01-01-000.jsonl", [b'{"id":"old"}\n'])
    files.write("_staging/t1/batch=000000000000/patient_id=p3/period=2026-01-03/part-00000.jsonl",
                [b'{"id":"p3-2026-01-03-0"}\n'])
    for batch in range(3):
        for patient, day in (("p1", "2026-01-01"), ("p1", "2026-01-02"), ("p2", "2026-01-01")):
            files.write(f"_staging/t1/batch={batch:012d}/patient_id={patient}/period={day}/part-00000.jsonl",
                        [f'{{"id":"{patient}-{day}-{batch}"}}\n'.encode()])


def test_a_roll_killed_at_any_step_is_finished_with_each_reading_once_and_none_missing_meanwhile(
        tmp_path: Path) -> None:
    expected = sorted(["old", "p3-2026-01-03-0"] + [f"{p}-{d}-{b}" for b in range(3) for p, d in
                                                    (("p1", "2026-01-01"), ("p1", "2026-01-02"), ("p2", "2026-01-01"))])
    step = 1
    while True:
        root = tmp_path / f"kill-{step}"
        _staged(root)
        result = subprocess.run([sys.executable, "-c", KILLER, str(root), str(step), str(ROOT)], capture_output=True)
        if result.returncode == 0:
            break  # the roll has fewer steps than this: every step was killed once
        assert result.returncode == -9, result.stderr.decode()[-2000:]
        # meanwhile, a reader sees every reading once (staged or published, never neither)
        assert sorted(line_id(line) for line in archived_lines(root)) == expected, step
        Roller(LocalFiles(root, 0o077), 8 << 20).roll()  # the next start: finish it, then roll what is left
        assert sorted(line_id(line) for line in archived_lines(root, exact=True)) == expected, step
        assert file_count(root)[:2] == (4, 0) and not list(root.rglob("*.tmp")), step
        assert Roller(LocalFiles(root, 0o077), 8 << 20).rolled_through("t1") == 2
        step += 1
    # the manifest, four targets (one moved, two appended: killed before and half way), the sync,
    # the mark, three staged batches, the manifest's removal
    assert step == 13


def test_a_removal_reads_only_the_files_of_the_patient_and_period(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path, 0o077)
    roller = Roller(files, 8 << 20)
    files.write("patient_id=p1/2026-01-01-000.jsonl", [b'{"id":"a"}\n{"id":"b"}\n'])
    files.write("patient_id=p1/2026-01-02-000.jsonl", [b'{"id":"a"}\n'])  # not asked: left as it is
    files.write("_staging/t1/batch=000000000004/patient_id=p1/period=2026-01-01/part-00000.jsonl", [b'{"id":"b"}\n'])
    where = roller.files_of("patient_id=p1", "2026-01-01")
    assert sorted(where) == ["_staging/t1/batch=000000000004/patient_id=p1/period=2026-01-01/part-00000.jsonl",
                             "patient_id=p1/2026-01-01-000.jsonl"]
    assert roller.remove({"b"}, where) == 2
    assert files.read("patient_id=p1/2026-01-01-000.jsonl") == b'{"id":"a"}\n'
    assert not files.exists("_staging/t1/batch=000000000004/patient_id=p1/period=2026-01-01/part-00000.jsonl")
    assert files.read("patient_id=p1/2026-01-02-000.jsonl") == b'{"id":"a"}\n'
    assert os.stat(tmp_path / "patient_id=p1/2026-01-01-000.jsonl").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("driver_max", [2000, 0], ids=["a live batch, on the driver", "a big batch, in Spark's tasks"])
def test_the_archive_index_says_which_normal_readings_the_archive_holds(
    spark: SparkSession, es, kafka_admin, unique_name: str, tmp_path: Path, driver_max: int
) -> None:
    """A normal reading the archive holds (its id and content, from a batch rolled or staged whole)
    is not archived again; a new content of the id, a new id, or the very batch that wrote the
    document (a replay) are. The same answers from the driver and from Spark's tasks."""
    from bp_spark.sinks import Sinks
    from streams import ids_in, publish, reading as stream_reading, run_once, stream_config

    config = stream_config(unique_name, tmp_path, **{"elasticsearch.driver_write_max_docs": driver_max})
    publish(config, [stream_reading("pa", "2026-01-01T08:00:00Z", 118, 76),
                     stream_reading("pa", "2026-01-01T09:00:00Z", 117, 75)])
    run_once(spark, config, es)  # batch 0: archived, and rolled at the stop
    (a, doc_a), (b, doc_b) = sorted(ids_in(es, config.elasticsearch.archive_index).items())
    sink = Sinks(spark, config, es).archive
    normal_df = spark.createDataFrame([(a, doc_a["content_hash"]), (b, doc_b["content_hash"] + 1), ("pa-new", 5)],
                                      "observation_id string, content_hash long")
    keep: list = []
    try:
        new_df, held = sink.new_readings(normal_df, 3, 1, keep)
        assert (held, sorted(r.observation_id for r in new_df.collect())) == (1, sorted([b, "pa-new"]))
        again_df, held = sink.new_readings(normal_df, 3, 0, keep)  # batch 0 replayed: its own documents do not count
        assert (held, again_df.count()) == (0, 3)
    finally:
        for df in keep:
            df.unpersist()
