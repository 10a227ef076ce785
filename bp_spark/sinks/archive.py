"""The archive of normal readings: JSON Lines under ``<archive-dir>/patient_id=<id>/``, byte-for-byte.

Each write is idempotent, because foreachBatch delivery is at-least-once: a batch is written to
a staging folder, then each file is moved to a name made of the job's tag, the batch id and the
part (``batch-<tag>-<batch>-<part>.jsonl``); a replayed batch writes the same files under the
same names. The tag is a hash of the checkpoint's location and the topic, so two jobs (two
checkpoints, or two topics) sharing an archive never write the same name.

Corrections and retractions remove the earlier version of an observation from whichever
patient's files hold it (a correction may move a reading to another patient; a retraction may
carry nothing but its id): one scan of the archive finds them, one write rewrites those files.

A backfill (:mod:`bp_spark.backfill`) writes here too, and a reading may reach the archive both
ways (an export of last month, then the feed replaying it). The stream's de-duplication state
knows nothing of what a backfill wrote, so the archive itself is asked: a backfill leaves out
every reading some file already holds (same id, same content), and records in
:data:`BACKFILL_MARK` the latest effective time it archived; the stream job then asks the
archive only about normal readings no later than that mark (a live feed's are all later: the
check costs nothing there).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.parse import parse_observations
from bp_spark.sinks.retry import SinkFailure, with_retries

log = logging.getLogger("bp_spark.sinks")

SINK = "archive"
# Batches with at most this many normal readings are archived by the driver when the archive is
# on the local file system (ArchiveSink._write_from_driver): a live batch, not a backfill's.
DRIVER_WRITE_MAX_ROWS = 20_000
# Partition values Spark writes as they are (no character it escapes in a folder name).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._-]+")
# The latest effective time (epoch seconds) any backfill archived, in the archive's root folder.
BACKFILL_MARK = "_backfilled_until"
# Above this many patients, the files of every patient are read rather than each one's folder.
_READ_ALL_ABOVE = 200


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

    def __init__(self, spark: SparkSession, config: Config, waits: dict[str, float], tag: str | None = None,
                 backfill: bool = False) -> None:
        """``tag``: the job's file-name tag (default :func:`archive_tag`); ``backfill``: this job
        is a backfill, which checks every normal reading against the archive and extends the mark."""
        self.spark = spark
        self.config = config
        self.waits = waits
        self.tag = tag or archive_tag(spark, config)
        self.backfill = backfill
        self.root = config.paths.archive_dir.rstrip("/")
        # Patient readings: the job's session masks every file Hadoop creates with paths.archive_umask
        # (bp_spark.session.private_files_conf; 077: 0600 files, 0700 folders).
        self.umask = config.paths.archive_umask_bits
        # Hadoop creates missing parent folders with the process's umask, not the one above: make
        # the folders that writes create parents of ourselves, one level at a time.
        self._private_dirs(self.root, f"{self.root}/_staging", f"{self.root}/_staging/{self.tag}",
                           f"{self.root}/_rewrite", f"{self.root}/_rewrite/{self.tag}")

    def _private_dirs(self, *uris: str) -> None:
        fs, _ = hadoop_fs(self.spark, self.root)
        permission = self.spark._jvm.org.apache.hadoop.fs.permission.FsPermission(0o777 & ~self.umask)
        for uri in uris:  # each one's parent exists by then, so each gets the permission
            _, path = hadoop_fs(self.spark, uri)
            if not fs.exists(path):
                fs.mkdirs(path, permission)

    def _retry(self, action, what: str):
        return with_retries(action, what, SINK, self.config.outages, self.waits)

    def _name(self, batch_id: int, part_file: str) -> str:
        return f"batch-{self.tag}-{batch_id:012d}-{part_file.split('-')[1]}.jsonl"

    def _rewrite_name(self, batch_id: int) -> str:
        return f"rewrite-{self.tag}-{batch_id:012d}.jsonl"

    def _own_prefix(self, batch_id: int) -> str:
        return f"batch-{self.tag}-{batch_id:012d}-"

    # ------------------------------------------------------------------ writes

    def write_new(self, normal_df: DataFrame, batch_id: int, rows: int, oldest_s: int | None,
                  newest_s: int | None) -> tuple[int, int]:
        """Archive the normal readings no file holds yet (:meth:`write`); return how many were
        written and how many some file already held. ``rows``: how many ``normal_df`` holds;
        ``oldest_s``/``newest_s``: their earliest and latest effective times (epoch seconds)."""
        if self.backfill:
            self._retry(lambda: self._extend_mark(newest_s), f"batch {batch_id}: recording the backfill's extent")
            candidates = normal_df
        else:
            mark = self._retry(self._read_mark, "reading the archive's backfill mark")
            if mark is None or oldest_s is None or oldest_s > mark:
                self.write(normal_df, batch_id, rows)
                return rows, 0
            candidates = normal_df.where(F.unix_seconds("effective_time") <= mark)
        stored_df = self._retry(lambda: self._stored_keys(candidates, batch_id), f"batch {batch_id}: reading the archive")
        if stored_df is None:
            self.write(normal_df, batch_id, rows)
            return rows, 0
        new_df = normal_df.join(stored_df, ["observation_id", "content_hash"], "left_anti").persist()
        try:
            new = new_df.count()
            if new:
                self.write(new_df, batch_id, new)
        finally:
            new_df.unpersist()
        return new, rows - new

    def _mark_path(self):
        _, root_path = hadoop_fs(self.spark, self.root)
        return self.spark._jvm.org.apache.hadoop.fs.Path(root_path, BACKFILL_MARK)

    def _read_mark(self) -> int | None:
        """The latest effective time a backfill archived (epoch seconds), or None: no backfill."""
        fs, _ = hadoop_fs(self.spark, self.root)
        path = self._mark_path()
        if not fs.exists(path):
            return None
        lines = self._read_lines(fs, path)
        return int(lines[0]) if lines else None

    def _extend_mark(self, newest_s: int | None) -> None:
        """Move the backfill mark to ``newest_s`` if that is later, before the readings are written."""
        current = self._read_mark()
        if newest_s is None or (current is not None and current >= newest_s):
            return
        fs, _ = hadoop_fs(self.spark, self.root)
        self._write_text(fs, self._mark_path(), f"{newest_s}\n")

    def _stored_keys(self, candidates_df: DataFrame, batch_id: int) -> DataFrame | None:
        """(observation_id, content_hash) of the archived readings of the candidates' patients,
        leaving out this batch's own files (an earlier attempt of it wrote the same readings, and
        its replay must write them again under the same names); None when none is archived."""
        fs, root_path = hadoop_fs(self.spark, self.root)
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        folders = {status.getPath().getName() for status in fs.globStatus(HadoopPath(root_path, "patient_id=*")) or []}
        wanted = sorted(folders & {f"patient_id={self._partition_name(row.patient_id)}"
                                   for row in candidates_df.select("patient_id").distinct().collect()})
        if not wanted:
            return None
        patterns = ([HadoopPath(root_path, "patient_id=*/*.jsonl").toString()] if len(wanted) > _READ_ALL_ABOVE else
                    [HadoopPath(root_path, f"{folder}/*.jsonl").toString() for folder in wanted])
        patterns = [p for p in patterns if fs.globStatus(HadoopPath(p))]
        if not patterns:
            return None
        file_name = F.input_file_name()
        lines_df = (self.spark.read.text(patterns).where(~file_name.contains("/" + self._own_prefix(batch_id)))
                    .select("value", F.lit(SINK).alias("topic"), F.lit(0).alias("partition"),
                            F.lit(0).cast("long").alias("offset"), F.current_timestamp().alias("timestamp")))
        return parse_observations(lines_df).select("observation_id", "content_hash").distinct()

    def write(self, normal_df: DataFrame, batch_id: int, rows: int | None = None) -> int:
        """Normal readings as JSON Lines, byte-for-byte, under ``patient_id=<id>/``; returns files written.
        ``rows``: how many there are, when known; a live batch's few go the short way (below)."""
        local_root = self._local_root() if rows is not None and rows <= DRIVER_WRITE_MAX_ROWS else None
        if local_root is not None:
            return self._retry(lambda: self._write_from_driver(normal_df, batch_id, local_root),
                               f"batch {batch_id}: archiving normal readings")
        return self._retry(lambda: self._write(normal_df, batch_id), f"batch {batch_id}: archiving normal readings")

    def _local_root(self) -> Path | None:
        """The archive's folder when it is on the local file system, else None."""
        fs, root_path = hadoop_fs(self.spark, self.root)
        return Path(root_path.toUri().getPath()) if fs.getScheme() == "file" else None

    def _write_from_driver(self, normal_df: DataFrame, batch_id: int, root: Path) -> int:
        """The same files, written by the driver: a live batch holds a few thousand normal readings
        of up to as many patients, and the partitioned write's shuffle, staging folder and one
        task file per patient cost more than the bytes (``bench/archive_bench.py``). The rows are
        collected as bytes (the payload exactly as it arrived, on one line), grouped by patient,
        and each patient's file is written beside its final name and renamed onto it, under the
        name the partitioned write would give part 0: a replay of the batch (same rows, so the
        same way) overwrites it. Folder names are escaped as Spark escapes partition values.
        ``root``: the archive's local folder."""
        by_patient: dict[str, list[bytes]] = {}
        for row in normal_df.select("patient_id", one_line(F.col("raw")).cast("binary").alias("line")).collect():
            by_patient.setdefault(row.patient_id, []).append(bytes(row.line))
        name = self._name(batch_id, "part-00000")
        for patient_id, lines in by_patient.items():
            folder = root / f"patient_id={self._partition_name(patient_id)}"
            folder.mkdir(mode=0o777 & ~self.umask, exist_ok=True)
            temporary = folder / f".{name}.{os.getpid()}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~self.umask)
            with os.fdopen(descriptor, "wb") as out:
                out.write(b"\n".join(lines) + b"\n")
            os.replace(temporary, folder / name)
        return len(by_patient)

    def _partition_name(self, value: str | None) -> str:
        """``value`` as Spark names its partition folder (escaped; null or empty: Hive's default)."""
        if value and _PLAIN_VALUE.fullmatch(value):
            return value
        if not value:
            return "__HIVE_DEFAULT_PARTITION__"
        return self.spark._jvm.org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils.escapePathName(value)

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
            target_dir.mkdir(mode=0o777 & ~self.umask, exist_ok=True)  # the root exists: staging lies in it
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

    def remove(self, ids: set[str], batch_id: int) -> int:
        """Drop every line of these observation ids from the archive, under any patient (their
        earlier versions: a correction may have moved a reading to another patient, and a
        retraction may carry nothing but its id); return the lines removed."""
        if not ids:
            return 0
        return self._retry(lambda: self._remove(ids, batch_id),
                           f"batch {batch_id}: removing superseded readings from the archive")

    def _remove(self, ids: set[str], batch_id: int) -> int:
        """One scan of the archive finds the files holding the ids; one write rewrites them, per
        patient, without those lines, into ``_rewrite/<tag>/batch=<id>/data``; a manifest of the
        files to replace is written next; then each patient's new file is moved into place
        (``rewrite-<tag>-<batch>.jsonl``) and the old files deleted. A replay finishes an
        interrupted rewrite from its manifest, or starts it again if the manifest was not written."""
        fs, root_path = hadoop_fs(self.spark, self.root)
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        work = HadoopPath(root_path, f"_rewrite/{self.tag}/batch={batch_id}")
        manifest = HadoopPath(work, "manifest.txt")
        removed = 0
        if not fs.exists(manifest):
            pattern = HadoopPath(root_path, "patient_id=*/*.jsonl")
            if not fs.globStatus(pattern):
                return 0
            file_name = F.input_file_name()
            # This batch's own files (written by an earlier attempt of it) hold new versions.
            own = file_name.contains("/" + self._own_prefix(batch_id)) | file_name.endswith("/" + self._rewrite_name(batch_id))
            lines_df = (self.spark.read.text(pattern.toString()).where(~own)
                        .select("value", file_name.alias("file"),
                                F.regexp_extract(file_name, r"/patient_id=([^/]+)/[^/]+$", 1).alias("patient_id")))
            stale = _observation_id(F.col("value")).isin(*sorted(ids))
            affected = lines_df.where(stale).groupBy("file", "patient_id").count().collect()
            if not affected:
                return 0
            removed = sum(row["count"] for row in affected)
            files = sorted({(row.patient_id, row.file) for row in affected})
            kept_df = (self.spark.read.text([file for _, file in files])
                       .select("value", F.regexp_extract(F.input_file_name(), r"/patient_id=([^/]+)/[^/]+$", 1)
                               .alias("patient_id"))
                       .where(~stale))
            kept_df.repartition("patient_id").write.mode("overwrite").partitionBy("patient_id").text(
                HadoopPath(work, "data").toString())
            self._write_text(fs, manifest, "\n".join(f"{patient}\t{file}" for patient, file in files))
        self._finish_rewrite(fs, work, manifest, root_path, batch_id)
        return removed

    def _write_text(self, fs, path, text: str) -> None:
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()

    def _read_lines(self, fs, path) -> list[str]:
        """The non-empty lines of a small text file on ``fs``."""
        reader = self.spark._jvm.java.io.BufferedReader(self.spark._jvm.java.io.InputStreamReader(fs.open(path)))
        try:
            return [line for line in iter(reader.readLine, None) if line]
        finally:
            reader.close()

    def _finish_rewrite(self, fs, work, manifest, root_path, batch_id: int) -> None:
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        entries = [line.split("\t", 1) for line in self._read_lines(fs, manifest)]
        for patient_id in sorted({patient for patient, _ in entries}):
            patient_dir = HadoopPath(root_path, f"patient_id={patient_id}")
            target = HadoopPath(patient_dir, self._rewrite_name(batch_id))
            for part in fs.globStatus(HadoopPath(work, f"data/patient_id={patient_id}/part-*")) or []:
                if fs.exists(target):
                    fs.delete(target, False)
                fs.rename(part.getPath(), target)
        for _, name in entries:
            fs.delete(HadoopPath(name), False)
        fs.delete(work, True)
