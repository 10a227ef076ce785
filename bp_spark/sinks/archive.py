"""The archive of normal readings: JSON Lines under ``<archive-dir>/patient_id=<id>/``, byte-for-byte.

Each write is idempotent, because foreachBatch delivery is at-least-once: a batch is written to
a staging folder, then each file is moved to a name made of the job's tag, the batch id and the
part (``batch-<tag>-<batch>-<part>.jsonl``); a replayed batch writes the same files under the
same names. The tag is a hash of the checkpoint's location and the topic, so two jobs (two
checkpoints, or two topics) sharing an archive never write the same name.

Corrections and retractions remove the earlier version of an observation from whichever
patient's files hold it: the patient the new version names, and, for ids the anomaly index did
not hold (a reading moved to another patient, an id-only retraction, a normal reading
corrected), every patient whose files a scan of the whole archive finds them in.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.sinks.retry import SinkFailure, with_retries

log = logging.getLogger("bp_spark.sinks")

SINK = "archive"


def one_line(raw: Column) -> Column:
    """The payload on one line: JSON allows line breaks only between tokens, so they become spaces.
    The regular expression runs only on the rare payload with a line break: on 200,000 payloads
    of ~1 KB it took 0.6-0.7 s run on each, 0.24 s guarded by the search."""
    return F.when(raw.contains("\n") | raw.contains("\r"), F.regexp_replace(raw, r"[\r\n]+", " ")).otherwise(raw)


def hadoop_fs(spark: SparkSession, uri: str):
    """The Hadoop file system that holds ``uri`` (local, HDFS, S3A ...) and the qualified path."""
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    return fs, fs.makeQualified(path)


def archive_tag(spark: SparkSession, config: Config) -> str:
    """Eight hex digits naming this job's files: a hash of the checkpoint's location and the topic."""
    _, checkpoint = hadoop_fs(spark, config.paths.checkpoint_dir)
    return hashlib.sha256(f"{checkpoint.toString()}|{config.kafka.topic}".encode()).hexdigest()[:8]


def _observation_id(line: Column) -> Column:
    return F.coalesce(F.get_json_object(line, "$.id"), F.lit(""))


class ArchiveSink:
    """Writes normal readings; removes superseded ones."""

    def __init__(self, spark: SparkSession, config: Config, waits: dict[str, float]) -> None:
        self.spark = spark
        self.config = config
        self.waits = waits
        self.tag = archive_tag(spark, config)
        self.root = config.paths.archive_dir.rstrip("/")

    def _retry(self, action, what: str):
        return with_retries(action, what, SINK, self.config.outages, self.waits)

    def _name(self, batch_id: int, part_file: str) -> str:
        return f"batch-{self.tag}-{batch_id:012d}-{part_file.split('-')[1]}.jsonl"

    def _rewrite_name(self, batch_id: int) -> str:
        return f"rewrite-{self.tag}-{batch_id:012d}.jsonl"

    def _own_prefix(self, batch_id: int) -> str:
        return f"batch-{self.tag}-{batch_id:012d}-"

    # ------------------------------------------------------------------ writes

    def write(self, normal_df: DataFrame, batch_id: int) -> int:
        """Normal readings as JSON Lines, byte-for-byte, under ``patient_id=<id>/``; returns files written."""
        return self._retry(lambda: self._write(normal_df, batch_id), f"batch {batch_id}: archiving normal readings")

    def _write(self, normal_df: DataFrame, batch_id: int) -> int:
        staging = f"{self.root}/_staging/{self.tag}/batch={batch_id}"
        lines_df = normal_df.select("patient_id", one_line(F.col("raw")).alias("value")).repartition("patient_id")
        lines_df.write.mode("overwrite").partitionBy("patient_id").text(staging)
        fs, root_path = hadoop_fs(self.spark, self.root)
        _, staging_path = hadoop_fs(self.spark, staging)
        if fs.getScheme() == "file":
            moved = self._move_local(Path(staging_path.toUri().getPath()), Path(root_path.toUri().getPath()), batch_id)
        else:
            moved = self._move_hadoop(fs, staging_path, root_path, batch_id)
        fs.delete(staging_path, True)
        return moved

    def _move_local(self, staging: Path, root: Path, batch_id: int) -> int:
        """Local disk: plain renames, ~100x faster than a Hadoop call per file through py4j."""
        moved = 0
        for source in staging.glob("patient_id=*/part-*"):
            target_dir = root / source.parent.name
            target_dir.mkdir(parents=True, exist_ok=True)
            os.replace(source, target_dir / self._name(batch_id, source.name))  # a replay overwrites its own file
            moved += 1
        return moved

    def _move_hadoop(self, fs, staging_path, root_path, batch_id: int) -> int:
        """Any Hadoop file system (HDFS, S3A ...): the same moves through its API."""
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        moved = 0
        for status in fs.globStatus(HadoopPath(staging_path, "patient_id=*/part-*")) or []:
            source = status.getPath()
            target_dir = HadoopPath(root_path, source.getParent().getName())
            target = HadoopPath(target_dir, self._name(batch_id, source.getName()))
            fs.mkdirs(target_dir)
            if fs.exists(target):  # a replay of this batch: same rows, same name
                fs.delete(target, False)
            if not fs.rename(source, target):
                raise SinkFailure(f"could not move an archive file of batch {batch_id} into place")
            moved += 1
        return moved

    # ------------------------------------------------------------------ removals

    def remove(self, ids_by_patient: dict[str, set[str]], unlocated: set[str], batch_id: int) -> int:
        """Drop observation ids from the archive; return the lines removed.

        ``ids_by_patient``: ids to look for in the files of the patient the new version names.
        ``unlocated``: ids whose earlier version may be anywhere (not found in the anomaly index),
        looked for in the whole archive.
        """
        if not ids_by_patient and not unlocated:
            return 0
        return self._retry(lambda: self._remove(ids_by_patient, unlocated, batch_id),
                           f"batch {batch_id}: removing superseded readings from the archive")

    def _remove(self, ids_by_patient: dict[str, set[str]], unlocated: set[str], batch_id: int) -> int:
        fs, root_path = hadoop_fs(self.spark, self.root)
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        work_root = HadoopPath(root_path, f"_rewrite/{self.tag}/batch={batch_id}")
        # A rewrite this batch began before a crash is finished first, from its manifest.
        for manifest in fs.globStatus(HadoopPath(work_root, "patient_id=*/manifest.txt")) or []:
            work = manifest.getPath().getParent()
            self._finish_rewrite(fs, work, manifest.getPath(), HadoopPath(root_path, work.getName()), batch_id)
        # One rewrite per patient and batch: the ids named for it, and the ids found in its files.
        plan = {patient_id: set(ids) for patient_id, ids in ids_by_patient.items()}
        for patient_id, ids in self._patients_holding(fs, root_path, unlocated, batch_id).items():
            plan.setdefault(patient_id, set()).update(ids)
        removed = sum(self._rewrite_patient(fs, root_path, work_root, patient_id, ids, batch_id)
                      for patient_id, ids in sorted(plan.items()))
        fs.delete(work_root, True)
        return removed

    def _patients_holding(self, fs, root_path, ids: set[str], batch_id: int) -> dict[str, set[str]]:
        """Which of ``ids`` each patient's archive files hold (a scan of the whole archive)."""
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        pattern = HadoopPath(root_path, "patient_id=*/*.jsonl")
        if not ids or not fs.globStatus(pattern):
            return {}
        file_name = F.input_file_name()
        found = (self.spark.read.text(pattern.toString())
                 .where(~file_name.contains("/" + self._own_prefix(batch_id)))
                 .select(F.regexp_extract(file_name, r"/patient_id=([^/]+)/[^/]+$", 1).alias("patient"),
                         _observation_id(F.col("value")).alias("id"))
                 .where(F.col("id").isin(*sorted(ids))).distinct().collect())
        holding: dict[str, set[str]] = {}
        for row in found:
            if row.patient:
                holding.setdefault(row.patient, set()).add(row.id)
        return holding

    def _rewrite_patient(self, fs, root_path, work_root, patient_id: str, ids: set[str],
                         batch_id: int) -> int:
        """Rewrite one patient's files without ``ids``: the kept lines go to ``rewrite-<tag>-<batch>.jsonl``,
        then the old files are deleted; a manifest written between the two steps lets a replay
        finish an interrupted rewrite. Return the lines removed."""
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        patient_dir = HadoopPath(root_path, f"patient_id={patient_id}")
        if not fs.exists(patient_dir):
            return 0
        mine, rewritten = self._own_prefix(batch_id), self._rewrite_name(batch_id)
        old = [s.getPath().toString() for s in fs.listStatus(patient_dir)
               if s.getPath().getName().endswith(".jsonl") and not s.getPath().getName().startswith(mine)
               and s.getPath().getName() != rewritten]
        if not old:
            return 0
        lines_df = self.spark.read.text(old)
        wanted = _observation_id(F.col("value")).isin(*sorted(ids))
        keep_df = lines_df.where(~wanted)
        total, kept = lines_df.count(), keep_df.count()
        if total == kept:
            return 0
        work = HadoopPath(work_root, f"patient_id={patient_id}")
        keep_df.coalesce(1).write.mode("overwrite").text(HadoopPath(work, "data").toString())
        manifest = HadoopPath(work, "manifest.txt")
        self._write_text(fs, manifest, "\n".join(old))
        self._finish_rewrite(fs, work, manifest, patient_dir, batch_id)
        return total - kept

    def _write_text(self, fs, path, text: str) -> None:
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()

    def _finish_rewrite(self, fs, work, manifest, patient_dir, batch_id: int) -> None:
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        reader = self.spark._jvm.java.io.BufferedReader(self.spark._jvm.java.io.InputStreamReader(fs.open(manifest)))
        try:
            old = [line for line in iter(reader.readLine, None) if line]
        finally:
            reader.close()
        target = HadoopPath(patient_dir, self._rewrite_name(batch_id))
        for part in fs.globStatus(HadoopPath(work, "data/part-*")) or []:
            if fs.exists(target):
                fs.delete(target, False)
            fs.rename(part.getPath(), target)
        for name in old:
            fs.delete(HadoopPath(name), False)
        fs.delete(work, True)
