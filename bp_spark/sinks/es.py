"""The Elasticsearch sink: every index the stream job writes, in one pass per batch.

Fast path: the elasticsearch-hadoop connector writes the whole batch (each row names its index
and id). It fails a batch on any document Elasticsearch refuses, and on any outage. Then the
careful path takes over: the same documents through the Python client's ``_bulk``, item by
item. An item refused for what it holds (HTTP 400: a mapping conflict, an immense term, an id
too long) sends its Kafka message to the dead letter with Elasticsearch's reason, and the
observation's other documents are removed, so the message still ends in exactly one sink; an
item that failed for the sink's sake (429, 5xx, a write block) is tried again until it lands
(:mod:`bp_spark.outages`). Every write has a deterministic id, so a replay overwrites.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson
from elasticsearch import Elasticsearch
from elasticsearch import helpers as es_helpers
from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from bp_spark.config import Config
from bp_spark.documents import CREATE, ROUTING_COLUMNS
from bp_spark.elastic import (ElasticsearchUnreachable, connector_options, found_documents, install_templates,
                              pipeline_indices, probe_cluster, refresh_indices)
from bp_spark.parse import QUOTE_LIMIT
from bp_spark.outages import SinkFailure, summarise, with_retries

log = logging.getLogger("bp_spark.sinks")

ES_FORMAT = "org.elasticsearch.spark.sql"
# The indices a batch writes through write(), refreshed once it has written them all (not the
# health records, nor the versions index, which a multi-get reads without a refresh).
WRITTEN_KINDS = ("alerts", "anomalies", "deadletter", "pending", "archive", "trends")
SINK = "elasticsearch"
# Documents per _bulk request of the careful path, and its byte budget.
CAREFUL_CHUNK_DOCS = 2000
CAREFUL_CHUNK_BYTES = 5 << 20
# How much of Elasticsearch's reason a dead letter keeps (it may quote the refused value).
REFUSAL_REASON_LIMIT = 160
# Ids per multi-get request when reading earlier documents back.
MGET_CHUNK = 10_000


@dataclass(frozen=True)
class _Item:
    target: str
    doc_id: str
    source: str
    dead_id: str | None
    dead_source: str | None
    op: str = "index"


@dataclass
class Refused:
    """What a batch's write left out: documents refused per index, and the observations whose
    messages went to the dead letter instead (with how many of them had an alert)."""

    documents: Counter = field(default_factory=Counter)
    observations: set[str] = field(default_factory=set)
    alerts_removed: int = 0


@dataclass(frozen=True)
class Refusal:
    """A document Elasticsearch refused for what it holds."""

    item: _Item
    error_type: str
    reason: str


def _item_result(entry: dict) -> dict:
    return next(iter(entry.values()))


def _status(result: dict) -> str:
    """An item's answer for a log line: its HTTP status and error type, never the document."""
    return f"{result.get('status')} {(result.get('error') or {}).get('type', '')}".strip()


def _union(frames: list[DataFrame]) -> DataFrame:
    """One frame of several indices' documents, every routing column present."""
    union_df = frames[0]
    for more_df in frames[1:]:
        union_df = union_df.unionByName(more_df, allowMissingColumns=True)
    for column in ROUTING_COLUMNS:
        if column not in union_df.columns:
            union_df = union_df.withColumn(column, F.lit(None).cast("string"))
    return union_df


def _by_operation(frames) -> dict[str, list[DataFrame]]:
    """The frames to index and the frames to create (those whose ``_op`` is ``create``)."""
    grouped: dict[str, list[DataFrame]] = {}
    for frame in frames:
        grouped.setdefault(CREATE if "_op" in frame.columns else "index", []).append(frame)
    return grouped


def prepare_indices(es: Elasticsearch, config: Config, then=None) -> list[str]:
    """At a job's start: check the cluster, install the index templates (and bring existing
    indices up to them), then call ``then()`` if given; return the templates written.
    Elasticsearch down or hung is waited for, as it is later; a wrong version is not."""
    def prepare() -> list[str]:
        probe_cluster(es, config)
        written = install_templates(es, pipeline_indices(config), config.elasticsearch.number_of_replicas)
        if then is not None:
            then()
        return written
    written = with_retries(prepare, "connecting at start", SINK, config.outages, also_retry=(ElasticsearchUnreachable,))
    for name in written:
        log.info("installed index template %s", name)
    return written


class ElasticsearchSink:
    """Writes and deletes documents by id; reads back what the trend query needs."""

    def __init__(self, config: Config, es: Elasticsearch, waits: dict[str, float]) -> None:
        self.config = config
        self.es = es
        self.waits = waits  # seconds waited for each sink in the current batch (health record)
        self._options = {
            **connector_options(config),
            # Bulk requests of 5,000 documents / 5 MB: a fifth of the round trips of the defaults.
            "es.batch.size.entries": "5000",
            "es.batch.size.bytes": "5mb",
            # One quick retry of a 429 inside the connector; outages are waited out by the careful path.
            "es.batch.write.retry.count": "1",
            "es.batch.write.retry.wait": "1s",
            # Not a refresh after each task's bulk (of every index of the cluster, under "{_target}"):
            # one refresh of the indices the batch wrote, once it has written them all (write()).
            "es.batch.write.refresh": "false",
            "es.spark.dataframe.write.null": "false",
            "es.mapping.id": "_doc_id",
            "es.mapping.exclude": ",".join(ROUTING_COLUMNS),
        }

    def retry(self, action, what: str):
        """``action`` (a request, or a Spark job whose tasks talk to Elasticsearch) until it
        succeeds, waiting out an outage (``outages.*``)."""
        return with_retries(action, what, SINK, self.config.outages, self.waits)

    def index_frame(self, index: str, docs_df: DataFrame, documents: int, what: str) -> None:
        """Index the documents of ``docs_df`` (``_doc_id`` and the fields) into ``index``, every one
        taken or the whole tried again (they are idempotent: the same ids, the same content): by
        the connector in Spark's tasks, or from the driver in one bulk request when ``documents``
        is at most ``elasticsearch.driver_write_max_docs`` (a live batch's few)."""
        if documents <= self.config.elasticsearch.driver_write_max_docs:
            fields = [c for c in docs_df.columns if c != "_doc_id"]
            self.put(index, {row._doc_id: {f: row[f] for f in fields} for row in docs_df.collect()}, what,
                     refresh=False)
            return
        options = {**self._options, "es.mapping.exclude": "_doc_id", "es.write.operation": "index"}
        self.retry(lambda: docs_df.write.format(ES_FORMAT).options(**options).mode("append").save(index), what)

    # ------------------------------------------------------------------ writes

    def write(self, docs: dict[str, DataFrame], batch_id: int, documents: int | None = None) -> Refused:
        """Write the documents of several indices (``{"anomalies": df, ...}``) in one pass; absent
        fields are left out, not null. Return what Elasticsearch refused (those messages are in
        the dead letter now). ``documents``: how many there are, when the caller knows; at most
        ``elasticsearch.driver_write_max_docs`` (a live batch) they go from the driver in one bulk
        request (one Spark job, no connector task per partition), as the careful path sends them
        (bench/latency_bench.py; docs/performance.md)."""
        if not docs:
            return Refused()
        what = f"batch {batch_id}: writing {', '.join(docs)}"
        if documents is not None and documents <= self.config.elasticsearch.driver_write_max_docs:
            refused = self._write_carefully(_union(list(docs.values())), batch_id, what, collect=True)
        else:
            refused = self._write(docs, batch_id, what)
        # Searchable now, together: an alert no later than its anomaly, a half's new state before
        # the next batch searches the pending index.
        self.retry(lambda: refresh_indices(self.es, self.config, WRITTEN_KINDS), f"{what}: refreshing")
        return refused

    def _write(self, docs: dict[str, DataFrame], batch_id: int, what: str) -> Refused:
        try:
            # Two passes at most: alerts to create, less those a replayed batch finds there already
            # (they stay as they were), and documents to index (a replay overwrites them). Alerts
            # first: a critical alert is never searchable later than its anomaly.
            for op, frames in sorted(_by_operation(docs.values()).items(), key=lambda item: item[0] != CREATE):
                frame = _union(frames)
                if op == CREATE:
                    frame = self._not_yet_written(frame, batch_id)
                (frame.write.format(ES_FORMAT).options(**self._options).option("es.write.operation", op)
                 .mode("append").save("{_target}"))
            return Refused()
        except (Py4JError, PySparkException) as exc:
            log.warning("%s: the connector's bulk write failed (%s); writing the batch through the careful path, "
                        "document by document", what, summarise(exc))
        return self._write_carefully(_union(list(docs.values())), batch_id, what)

    def _not_yet_written(self, create_df: DataFrame, batch_id: int) -> DataFrame:
        """The documents of ``create_df`` (alerts: a few a batch) that their index does not hold yet."""
        wanted: dict[str, list[str]] = {}
        for row in create_df.select("_target", "_doc_id").collect():
            wanted.setdefault(row._target, []).append(row._doc_id)

        def run() -> list[tuple[str, str]]:
            return [(index, doc["_id"]) for index, ids in wanted.items()
                    for doc in self._found(index, ids, source=False)]
        existing = self.retry(run, f"batch {batch_id}: looking for alerts written before") if wanted else []
        if not existing:
            return create_df
        keys = F.concat_ws("\u0000", "_target", "_doc_id")
        return create_df.where(~keys.isin(*[f"{index}\u0000{doc_id}" for index, doc_id in existing]))

    def _write_carefully(self, union_df: DataFrame, batch_id: int, what: str, collect: bool = False) -> Refused:
        """Documents from the driver in bulk requests, each document's refusal known (``collect``:
        few enough to read in one Spark job, not a partition at a time)."""
        refusals: list[Refusal] = []
        written = 0
        alerts: set[str] = set()
        for chunk in self._chunks(union_df, collect):
            refusals.extend(self._bulk_until_taken(chunk, what))
            written += len(chunk)
            alerts.update(item.doc_id for item in chunk if item.target == self.config.elasticsearch.alerts_index)
        if not refusals:
            return Refused()
        log.warning("%s: Elasticsearch refused %d of %d documents for what they hold (%s); their messages go "
                    "to the dead letter", what, len(refusals), written,
                    ", ".join(f"{t} x{n}" for t, n in Counter(r.error_type for r in refusals).items()))
        observations = self._dead_letter(refusals, batch_id)
        return Refused(Counter(r.item.target for r in refusals), observations, len(observations & alerts))

    def _chunks(self, union_df: DataFrame, collect: bool = False) -> Iterator[list[_Item]]:
        fields = [c for c in union_df.columns if c not in ROUTING_COLUMNS]
        dead_json = F.lit(None).cast("string")
        if "kafka" in union_df.columns:  # documents made from one message each (not trend windows)
            dead_fields = [F.col("_raw").alias("raw"), "kafka", "batch_id", "processed_at"]
            if "observation_id" in union_df.columns:
                dead_fields.append(F.substring("observation_id", 1, 64).alias("observation_id"))
            dead_json = F.when(F.col("_dead_id").isNotNull(), F.to_json(F.struct(*dead_fields)))
        rows_df = union_df.select("_target", "_doc_id", "_dead_id", F.to_json(F.struct(*fields)).alias("_json"),
                                  dead_json.alias("_dead_json"), F.coalesce("_op", F.lit("index")).alias("_op"))
        chunk: list[_Item] = []
        size = 0
        for row in rows_df.collect() if collect else rows_df.toLocalIterator(prefetchPartitions=True):
            chunk.append(_Item(row._target, row._doc_id, row._json, row._dead_id, row._dead_json, row._op))
            size += len(row._json)
            if len(chunk) >= CAREFUL_CHUNK_DOCS or size >= CAREFUL_CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def _bulk_until_taken(self, items: list[_Item], what: str) -> list[Refusal]:
        """Index ``items``; return those refused for what they hold; wait out everything else."""
        pending = items
        refusals: list[Refusal] = []

        def attempt() -> None:
            nonlocal pending
            operations: list = []
            for item in pending:
                operations += [{item.op: {"_index": item.target, "_id": item.doc_id}}, item.source]
            response = self.es.bulk(operations=operations, refresh=False)
            again, statuses = [], Counter()
            for item, entry in zip(pending, response["items"]):
                result = _item_result(entry)
                status = result.get("status", 500)
                if status < 300 or (status == 409 and item.op == CREATE):  # created once, by an earlier attempt
                    continue
                error = result.get("error") or {}
                if status == 400:
                    refusals.append(Refusal(item, str(error.get("type", "refused")),
                                            str(error.get("reason", ""))[:REFUSAL_REASON_LIMIT]))
                else:
                    again.append(item)
                    statuses[_status(result)] += 1
            pending = again
            if pending:
                raise SinkFailure(f"{len(pending)} documents not taken: "
                                  + ", ".join(f"{s} x{n}" for s, n in statuses.items()))

        self.retry(attempt, what)
        return refusals

    def _dead_letter(self, refusals: list[Refusal], batch_id: int) -> set[str]:
        """The refused documents' messages to the dead letter; their observations' other documents
        away. Return those observations."""
        e = self.config.elasticsearch
        dead: dict[str, _Item] = {}
        observations = set()
        unrecoverable = Counter()
        for refusal in refusals:
            item = refusal.item
            if item.dead_id is None:  # a trend window: derived data, no message to keep
                unrecoverable[refusal.error_type] += 1
                continue
            if item.target in (e.anomalies_index, e.alerts_index):
                observations.add(item.doc_id)
            source = orjson.loads(item.dead_source)
            if item.target == e.deadletter_index:
                source.pop("observation_id", None)
            source["reason"] = (f"Elasticsearch refused the document for {item.target}: {refusal.error_type}: "
                                f"{refusal.reason}")[:REFUSAL_REASON_LIMIT + QUOTE_LIMIT * 2]
            dead[item.dead_id] = _Item(e.deadletter_index, item.dead_id, orjson.dumps(source).decode(), None, None)
        if unrecoverable:
            log.error("batch %d: Elasticsearch refused %d derived documents that have no message to dead-letter (%s); "
                      "they were left out", batch_id, sum(unrecoverable.values()),
                      ", ".join(f"{t} x{n}" for t, n in unrecoverable.items()))
        still_refused = self._bulk_until_taken(list(dead.values()), f"batch {batch_id}: dead-lettering refused documents")
        if still_refused:
            raise SinkFailure(f"batch {batch_id}: the dead-letter index refused {len(still_refused)} documents "
                              f"({still_refused[0].error_type}); check its mapping against conf/elasticsearch/deadletter.json")
        self.delete(sorted(observations), batch_id)
        return observations

    # ------------------------------------------------------------------ deletes and reads

    def delete(self, ids: Iterable[str], batch_id: int) -> set[str]:
        """Remove observations from the anomaly and alert indices (corrections, retractions); return
        the ids the anomaly index held (whose earlier version was therefore not in the archive)."""
        e = self.config.elasticsearch
        ids = list(ids)
        if not ids:
            return set()
        operations = [{"delete": {"_index": index, "_id": doc_id}}
                      for doc_id in ids for index in (e.anomalies_index, e.alerts_index)]

        def run() -> set[str]:
            # A document that is not there is already where we want it: 404s are not errors.
            results = self._bulk_all_taken(operations, "deletes not done", refresh=False, accepted=(200, 404))
            return {r["_id"] for r in results if r.get("status") == 200 and r.get("_index") == e.anomalies_index}
        return self.retry(run, f"batch {batch_id}: removing {len(ids)} superseded observations")

    def forget(self, index: str, ids: Iterable[str], batch_id: int) -> None:
        """Delete these documents of ``index`` (absent ones are fine)."""
        operations = [{"delete": {"_index": index, "_id": doc_id}} for doc_id in ids]
        if operations:
            self.retry(lambda: self._bulk_all_taken(operations, "deletes not done", refresh=False,
                                                     accepted=(200, 404)),
                        f"batch {batch_id}: removing {len(operations)} documents from {index}")

    def _found(self, index: str, ids: Iterable[str], **options) -> list[dict]:
        """The documents of ``ids`` that ``index`` holds, :data:`MGET_CHUNK` ids a multi-get
        (:func:`~bp_spark.elastic.found_documents`: a document that cannot be read raises). Not
        retried: the caller retries what it is doing as a whole."""
        return found_documents(self.es, index, sorted(set(ids)), MGET_CHUNK, **options)

    def documents(self, index: str, ids: Iterable[str], what: str) -> dict[str, dict]:
        """``{id: source}`` of the documents of ``ids`` that ``index`` holds, waiting out an outage."""
        ids = set(ids)
        if not ids:
            return {}
        return self.retry(lambda: {doc["_id"]: doc["_source"] for doc in self._found(index, ids)}, what)

    def search(self, index: str, query: dict, size: int, what: str, sort: list | None = None) -> dict[str, dict]:
        """``{id: source}`` of at most ``size`` documents of ``index`` matching ``query`` (none if
        the index does not exist), waiting out an outage."""
        def run() -> dict[str, dict]:
            if not self.es.indices.exists(index=index):
                return {}
            result = self.es.search(index=index, query=query, size=size, sort=sort)
            if result["_shards"].get("failed"):  # a shard still recovering: a partial answer is no answer
                raise SinkFailure(f"{index}: {result['_shards']['failed']} shards could not answer a search")
            return {hit["_id"]: hit["_source"] for hit in result["hits"]["hits"]}
        return self.retry(run, what)

    def every_document(self, index: str, what: str) -> dict[str, dict]:
        """``{id: source}`` of every document of a small ``index`` (none if it does not exist),
        read a page at a time, waiting out an outage."""
        def run() -> dict[str, dict]:
            if not self.es.indices.exists(index=index):
                return {}
            return {hit["_id"]: hit["_source"] for hit in
                    es_helpers.scan(self.es, index=index, query={"query": {"match_all": {}}}, size=1000)}
        return self.retry(run, what)

    def versioned(self, index: str, ids: Iterable[str], what: str) -> dict[str, tuple[dict, int, int]]:
        """``{id: (source, seq_no, primary_term)}`` of the documents of ``ids`` that ``index`` holds:
        what :meth:`put_versioned` writes over, waiting out an outage."""
        ids = set(ids)
        if not ids:
            return {}
        return self.retry(lambda: {doc["_id"]: (doc["_source"], doc["_seq_no"], doc["_primary_term"])
                                    for doc in self._found(index, ids)}, what)

    def put_versioned(self, index: str, docs: dict[str, tuple[dict, int | None, int | None]], what: str,
                      refresh: bool = True) -> set[str]:
        """Write each document only over the version it was read at (``if_seq_no`` and
        ``if_primary_term``; a document read as absent: only if it still is), so that two writers
        (the job and a person acknowledging an alert) never overwrite each other. Returns the ids
        that changed meanwhile (409): read them again and redo. Searchable at once with ``refresh``
        (a multi-get, as the next read is, finds them either way)."""
        if not docs:
            return set()
        operations: list = []
        for doc_id, (source, seq_no, primary_term) in docs.items():
            meta = {"_index": index, "_id": doc_id}
            if seq_no is None:
                operations.append({"create": meta})
            else:
                operations.append({"index": {**meta, "if_seq_no": seq_no, "if_primary_term": primary_term}})
            operations.append(source)
        results = self.retry(lambda: self._bulk_all_taken(operations, f"{index}: documents not written", refresh=refresh,
                                                           accepted=(200, 201, 409)), what)
        return {r["_id"] for r in results if r.get("status") == 409}

    def exists(self, index: str) -> bool:
        """Whether ``index`` exists. One attempt: the caller decides what an outage means."""
        return bool(self.es.indices.exists(index=index))

    def index_once(self, index: str, doc_id: str, doc: dict) -> None:
        """Index one document, one attempt, not waited for: for records whose loss costs nothing
        but a gap (the health records: monitoring must never hold the pipeline)."""
        self.es.index(index=index, id=doc_id, document=doc)

    def delete_matching(self, index: str, query: dict, page: int) -> int:
        """Delete every document of ``index`` matching ``query`` (none if the index does not
        exist), ``page`` at a time; return how many. Search and bulk delete: the minimal
        distributions have no delete-by-query. One attempt per page: a retention pass that
        meets an outage is tried again later (:mod:`bp_spark.sinks.retention`)."""
        if not self.exists(index):
            return 0
        deleted = 0
        while True:
            hits = self.es.search(index=index, query=query, size=page, source=False)["hits"]["hits"]
            if not hits:
                return deleted
            self._bulk_all_taken([{"delete": {"_index": index, "_id": hit["_id"]}} for hit in hits],
                                 f"{index}: expired documents not deleted", refresh=True, accepted=(200, 404))
            deleted += len(hits)

    def put(self, index: str, docs: dict[str, dict], what: str, refresh: bool = True) -> None:
        """Index a few documents built by the driver (``{id: source}``), searchable at once
        (``refresh``; a multi-get finds them either way).
        Every item must be taken; a refused one (a 400) is a bug of ours, not an outage: it stops the batch."""
        if not docs:
            return
        # Serialized here, with orjson (the client's json module takes ~5x as long for the trends'
        # hundreds of thousands of windows after a backfill-sized batch).
        operations = [orjson.dumps(op) for doc_id, source in docs.items()
                      for op in ({"index": {"_index": index, "_id": doc_id}}, source)]

        self.retry(lambda: self._bulk_all_taken(operations, f"{index}: documents not written", refresh=refresh,
                                                 accepted=(200, 201)), what)

    def _bulk_all_taken(self, operations: list[dict], failure: str, refresh: bool,
                        accepted: tuple[int, ...]) -> list[dict]:
        """One bulk request whose every item must end with an ``accepted`` status; else
        :class:`SinkFailure` saying ``failure`` and the statuses. Returns the items' results."""
        results = list(map(_item_result, self.es.bulk(operations=operations, refresh=refresh)["items"]))
        failed = Counter(_status(r) for r in results if r.get("status", 500) not in accepted)
        if failed:
            raise SinkFailure(f"{failure}: " + ", ".join(f"{s} x{n}" for s, n in failed.items()))
        return results

    def alerted_before(self, alert_ids: Iterable[str], batch_id: int) -> set[str]:
        """Of ``alert_ids``, those the alert index holds from another batch than ``batch_id`` (an
        alert of this very batch is a replay's: it is sent again, at least once)."""
        ids = set(alert_ids)
        if not ids:
            return set()
        return self.retry(lambda: {doc["_id"] for doc in self._found(self.config.elasticsearch.alerts_index, ids,
                                                                      source_includes=["batch_id"])
                                    if doc["_source"].get("batch_id") != batch_id},
                           f"trends batch {batch_id}: looking for {len(ids)} alerts raised before")

    def trend_windows(self, trend_ids: Iterable[str], batch_id: int) -> list[dict]:
        """The documents of the given trend windows that the trends index holds (absent: left out)."""
        ids = set(trend_ids)
        if not ids:
            return []
        return self.retry(lambda: [doc["_source"] for doc in self._found(self.config.elasticsearch.trends_index, ids)],
                           f"trends batch {batch_id}: reading {len(ids)} earlier trend windows")

    def sustained_states(self, trend_ids: Iterable[str], batch_id: int) -> dict[str, bool]:
        """``is_sustained`` of the given sustained windows as the trends index holds them (absent: left out)."""
        ids = set(trend_ids)
        if not ids:
            return {}
        return self.retry(lambda: {doc["_id"]: bool(doc["_source"].get("is_sustained")) for doc in
                                    self._found(self.config.elasticsearch.trends_index, ids,
                                                source_includes=["is_sustained"])},
                           f"trends batch {batch_id}: reading {len(ids)} earlier sustained windows")
