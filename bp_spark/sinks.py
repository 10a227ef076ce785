"""Every write of the stream job, in one place: Elasticsearch indices and the normal-reading archive.

Each write is idempotent, because foreachBatch delivery is at-least-once:

- Elasticsearch documents have deterministic ids (Observation.id; topic-partition-offset for
  dead letters), so a replayed batch overwrites what it wrote before.
- The archive is written to a staging folder for the batch, then each file is moved to a
  name made of the batch id and the patient (``patient_id=<id>/batch-<batch>-<part>.jsonl``);
  a replayed batch writes the same files under the same names.

Writes that fail (node down, 429, read-only index) are retried with exponential backoff; when
the retries run out :class:`SinkUnavailable` is raised, the query stops, and a restart
replays the batch from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from elastic_transport import TransportError
from elasticsearch import Elasticsearch
from elasticsearch import exceptions as es_exceptions
from elasticsearch.helpers import BulkIndexError, bulk
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.elastic import connector_options

log = logging.getLogger("bp_spark.sinks")

ES_FORMAT = "org.elasticsearch.spark.sql"
RETRYABLE = (Py4JError, PySparkException, es_exceptions.ApiError, TransportError, BulkIndexError, OSError)


class SinkUnavailable(RuntimeError):
    """A sink kept refusing writes after every retry; the batch was not completed."""


_CAUSES = (
    re.compile(r"EsHadoopRemoteException: ([^\n]+)"),
    re.compile(r"(EsHadoop\w*Exception: [^\n]+)"),
    re.compile(r"Caused by: ([^\n]+)"),
)


def summarise(exc: BaseException) -> str:
    """The line of a (possibly Java) error that says what went wrong, not where."""
    text = str(exc)
    for pattern in _CAUSES:
        match = pattern.search(text)
        if match:
            return match.group(1).strip()[:300]
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def with_retries(action: Callable[[], object], what: str, retries: int, backoff_s: float) -> object:
    """Run ``action``; on failure wait ``backoff_s``, 2x, 4x ... and try again, ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            return action()
        except RETRYABLE as exc:
            summary = summarise(exc)
            if attempt == retries:
                raise SinkUnavailable(
                    f"{what} failed {retries + 1} times; last error: {summary}. The batch was not completed; "
                    "fix the cause and restart the job on the same checkpoint to resume where it stopped."
                ) from exc
            delay = backoff_s * 2 ** attempt
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.1f s", what, attempt + 1, retries + 1,
                        summary, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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


def _provenance(batch_id: int) -> list[Column]:
    """Where a document came from: its Kafka record, the batch, and when it was written."""
    kafka = F.struct(F.col("kafka_topic").alias("topic"), F.col("kafka_partition").alias("partition"),
                     F.col("kafka_offset").alias("offset"), F.col("kafka_timestamp").alias("timestamp"))
    return [kafka.alias("kafka"), *_written(batch_id)]


def _written(batch_id: int) -> list[Column]:
    """The batch that wrote a document, and when."""
    return [F.lit(batch_id).cast("long").alias("batch_id"), F.current_timestamp().alias("processed_at")]


@dataclass
class Sinks:
    """The stream job's targets; one method per target, all idempotent."""

    spark: SparkSession
    config: Config
    es: Elasticsearch

    def __post_init__(self) -> None:
        self._es_options = {
            **connector_options(self.config.elasticsearch.url),
            "es.write.operation": "index",
            # Bulk requests of 5,000 documents / 5 MB: a fifth of the round trips of the defaults.
            "es.batch.size.entries": "5000",
            "es.batch.size.bytes": "5mb",
            "es.batch.write.retry.count": "2",
            "es.batch.write.retry.wait": "1s",
            "es.spark.dataframe.write.null": "false",
        }

    # ------------------------------------------------------------------ Elasticsearch

    def _retry(self, action: Callable[[], object], what: str) -> object:
        es = self.config.elasticsearch
        return with_retries(action, what, es.write_retries, es.retry_backoff_s)

    def anomaly_docs(self, abnormal_df: DataFrame, batch_id: int) -> DataFrame:
        """Abnormal readings with what was detected, ``_id`` = Observation.id."""
        t = self.config.thresholds
        thresholds = F.struct(*[F.lit(float(getattr(t, name))).alias(name) for name in (
            "systolic_high", "systolic_low", "diastolic_high", "diastolic_low", "crisis_systolic",
            "crisis_diastolic", "critical_low_systolic", "critical_low_diastolic")])
        return abnormal_df.select(
            F.lit(self.config.elasticsearch.anomalies_index).alias("_target"), F.col("observation_id").alias("_doc_id"),
            "observation_id", "patient_id", "status", "effective_time", "systolic", "diastolic",
            "anomaly_types", "category", "severity", "interpretation", thresholds.alias("thresholds"),
            *_provenance(batch_id),
        )

    def alert_docs(self, critical_df: DataFrame, batch_id: int) -> DataFrame:
        """Critical readings as alerts, ``_id`` = Observation.id (a replay never alerts twice)."""
        reason = F.format_string("%s: %s/%s mmHg", F.regexp_replace("category", "_", " "),
                                 F.col("systolic").cast("int").cast("string"), F.col("diastolic").cast("int").cast("string"))
        return critical_df.select(
            F.lit(self.config.elasticsearch.alerts_index).alias("_target"), F.col("observation_id").alias("_doc_id"),
            F.lit("critical_reading").alias("alert_type"), F.col("observation_id").alias("alert_id"),
            reason.alias("reason"),
            "observation_id", "patient_id", "effective_time", "systolic", "diastolic", "category", "severity",
            *_provenance(batch_id),
        )

    def trend_docs(self, trends_df: DataFrame, batch_id: int) -> DataFrame:
        """Trend windows, ``_id`` = ``trend_id``: a window updated by a later batch overwrites its document."""
        fields = [c for c in trends_df.columns if c != "previous_trend_id"]
        return trends_df.select(
            F.lit(self.config.elasticsearch.trends_index).alias("_target"), F.col("trend_id").alias("_doc_id"),
            *fields, *_written(batch_id))

    def sustained_alert_docs(self, onset_df: DataFrame, batch_id: int) -> DataFrame:
        """Onsets of sustained hypertension as alerts, ``_id`` = the window's ``trend_id``."""
        t = self.config.trends
        reason = F.format_string(
            "sustained hypertension: mean %s/%s mmHg over %s readings in %s (limit %s/%s)",
            F.round("systolic_mean").cast("int").cast("string"), F.round("diastolic_mean").cast("int").cast("string"),
            F.col("readings").cast("string"), F.lit(t.sustained_window),
            F.lit(f"{t.sustained_systolic:g}"), F.lit(f"{t.sustained_diastolic:g}"))
        return onset_df.select(
            F.lit(self.config.elasticsearch.alerts_index).alias("_target"), F.col("trend_id").alias("_doc_id"),
            F.lit("sustained_hypertension").alias("alert_type"), F.col("trend_id").alias("alert_id"),
            reason.alias("reason"), "patient_id", F.col("last_reading_time").alias("effective_time"),
            "window_start", "window_end", "readings", "systolic_mean", "diastolic_mean",
            F.lit("warning").alias("severity"), *_written(batch_id))

    def sustained_states(self, trend_ids: Iterable[str], batch_id: int) -> dict[str, bool]:
        """``is_sustained`` of the given sustained windows as the trends index holds them (absent: left out)."""
        ids = sorted(set(trend_ids))
        index = self.config.elasticsearch.trends_index
        if not ids or not self.es.indices.exists(index=index):
            return {}

        def run() -> dict[str, bool]:
            found = self.es.mget(index=index, ids=ids, source_includes=["is_sustained"])["docs"]
            return {doc["_id"]: bool(doc["_source"].get("is_sustained")) for doc in found if doc.get("found")}
        return self._retry(run, f"trends batch {batch_id}: reading {len(ids)} earlier sustained windows")

    def publish_alerts(self, alert_docs_df: DataFrame, batch_id: int) -> None:
        """Alerts to the Kafka topic ``kafka.alerts_topic`` (when set) as JSON keyed by patient.
        At-least-once: a replayed batch sends its alerts again, with the same ``alert_id``."""
        topic = self.config.kafka.alerts_topic
        if not topic:
            return
        fields = [c for c in alert_docs_df.columns if c not in ("_target", "_doc_id")]
        records_df = alert_docs_df.select(F.col("patient_id").alias("key"), F.to_json(F.struct(*fields)).alias("value"))
        writer = (records_df.write.format("kafka")
                  .option("kafka.bootstrap.servers", self.config.kafka.bootstrap_servers).option("topic", topic))
        self._retry(writer.save, f"batch {batch_id}: publishing alerts to Kafka topic {topic}")

    def deadletter_docs(self, dead_df: DataFrame, batch_id: int) -> DataFrame:
        """Unusable messages with the raw payload and the reason, ``_id`` = topic-partition-offset."""
        return dead_df.select(
            F.lit(self.config.elasticsearch.deadletter_index).alias("_target"),
            F.concat_ws("-", "kafka_topic", "kafka_partition", "kafka_offset").alias("_doc_id"),
            F.col("error").alias("reason"), "raw", "observation_id",
            *_provenance(batch_id),
        )

    def write_documents(self, docs: dict[str, DataFrame], batch_id: int) -> None:
        """Write the documents of several indices (``{"anomalies": df, ...}``) in one pass: each row
        names its index (``_target``) and id (``_doc_id``); absent fields are left out, not null."""
        if not docs:
            return
        frames = list(docs.values())
        union_df = frames[0]
        for more_df in frames[1:]:
            union_df = union_df.unionByName(more_df, allowMissingColumns=True)
        writer = (union_df.write.format(ES_FORMAT).options(**self._es_options)
                  .option("es.mapping.id", "_doc_id").option("es.mapping.exclude", "_target,_doc_id")
                  .mode("append"))
        self._retry(lambda: writer.save("{_target}"), f"batch {batch_id}: writing {', '.join(docs)}")

    def delete_documents(self, ids: Iterable[str], batch_id: int) -> None:
        """Remove observations from the anomaly and alert indices (corrections, retractions)."""
        es = self.config.elasticsearch
        actions = [{"_op_type": "delete", "_index": index, "_id": doc_id}
                   for doc_id in ids for index in (es.anomalies_index, es.alerts_index)]
        if not actions:
            return

        def run() -> None:
            # A document that is not there is already where we want it: 404s are not errors.
            bulk(self.es, actions, raise_on_error=False, raise_on_exception=True, refresh=False)
        self._retry(run, f"batch {batch_id}: removing {len(actions) // 2} superseded observations")

    # ------------------------------------------------------------------ archive

    def write_archive(self, normal_df: DataFrame, batch_id: int) -> int:
        """Normal readings as JSON Lines, byte-for-byte, under ``patient_id=<id>/``; returns files written."""
        root = self.config.paths.archive_dir
        staging = f"{root.rstrip('/')}/_staging/batch={batch_id}"
        lines_df = normal_df.select("patient_id", one_line(F.col("raw")).alias("value")).repartition("patient_id")
        self._retry(lambda: lines_df.write.mode("overwrite").partitionBy("patient_id").text(staging),
                    f"batch {batch_id}: archive staging")
        fs, root_path = hadoop_fs(self.spark, root)
        _, staging_path = hadoop_fs(self.spark, staging)
        if fs.getScheme() == "file":
            moved = self._move_local(Path(staging_path.toUri().getPath()), Path(root_path.toUri().getPath()), batch_id)
        else:
            moved = self._move_hadoop(fs, staging_path, root_path, batch_id)
        fs.delete(staging_path, True)
        return moved

    @staticmethod
    def _archive_name(batch_id: int, part_file: str) -> str:
        return f"batch-{batch_id:012d}-{part_file.split('-')[1]}.jsonl"

    def _move_local(self, staging: Path, root: Path, batch_id: int) -> int:
        """Local disk: plain renames, ~100x faster than a Hadoop call per file through py4j."""
        moved = 0
        for source in staging.glob("patient_id=*/part-*"):
            target_dir = root / source.parent.name
            target_dir.mkdir(parents=True, exist_ok=True)
            os.replace(source, target_dir / self._archive_name(batch_id, source.name))  # a replay overwrites
            moved += 1
        return moved

    def _move_hadoop(self, fs, staging_path, root_path, batch_id: int) -> int:
        """Any Hadoop file system (HDFS, S3A ...): the same moves through its API."""
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        moved = 0
        for status in fs.globStatus(HadoopPath(staging_path, "patient_id=*/part-*")) or []:
            source = status.getPath()
            target_dir = HadoopPath(root_path, source.getParent().getName())
            target = HadoopPath(target_dir, self._archive_name(batch_id, source.getName()))
            fs.mkdirs(target_dir)
            if fs.exists(target):  # a replay of this batch: same rows, same name
                fs.delete(target, False)
            if not fs.rename(source, target):
                raise SinkUnavailable(f"could not move {source} to {target}")
            moved += 1
        return moved

    def remove_from_archive(self, ids_by_patient: dict[str, set[str]], batch_id: int) -> int:
        """Drop the given observation ids from each patient's archive files; return lines removed.

        Rare (corrections and retractions), so it rewrites only the affected patients' files:
        the kept lines go to ``rewrite-<batch>.jsonl``, then the old files are deleted. A manifest
        written between the two steps lets a replay finish an interrupted rewrite.
        """
        if not ids_by_patient:
            return 0
        root = self.config.paths.archive_dir.rstrip("/")
        fs, root_path = hadoop_fs(self.spark, root)
        HadoopPath = self.spark._jvm.org.apache.hadoop.fs.Path
        removed = 0
        for patient_id, ids in sorted(ids_by_patient.items()):
            patient_dir = HadoopPath(root_path, f"patient_id={patient_id}")
            work = HadoopPath(root_path, f"_rewrite/batch={batch_id}/patient_id={patient_id}")
            manifest = HadoopPath(work, "manifest.txt")
            if not fs.exists(manifest):
                if not fs.exists(patient_dir):
                    continue
                mine = f"batch-{batch_id:012d}-"
                old = [s.getPath().toString() for s in fs.listStatus(patient_dir)
                       if s.getPath().getName().endswith(".jsonl") and not s.getPath().getName().startswith(mine)]
                if not old:
                    continue
                lines_df = self.spark.read.text(old)
                keep_df = lines_df.where(~F.get_json_object("value", "$.id").isin(*sorted(ids)))
                total, kept = lines_df.count(), keep_df.count()
                if total == kept:
                    continue
                removed += total - kept
                keep_df.coalesce(1).write.mode("overwrite").text(HadoopPath(work, "data").toString())
                self._write_text(fs, manifest, "\n".join(old))
            self._finish_rewrite(fs, work, manifest, patient_dir, batch_id)
        fs.delete(HadoopPath(root_path, f"_rewrite/batch={batch_id}"), True)
        return removed

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
        target = HadoopPath(patient_dir, f"rewrite-{batch_id:012d}.jsonl")
        for part in fs.globStatus(HadoopPath(work, "data/part-*")) or []:
            if fs.exists(target):
                fs.delete(target, False)
            fs.rename(part.getPath(), target)
        for name in old:
            fs.delete(HadoopPath(name), False)
        fs.delete(work, True)
