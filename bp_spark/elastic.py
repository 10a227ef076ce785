"""Talking to Elasticsearch: the Python client, a start-up probe, and the Spark connector's options."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from elasticsearch import Elasticsearch
from elasticsearch import exceptions as es_exceptions
from elastic_transport import TlsError, TransportError
from pyspark.sql import DataFrame, Row

from bp_spark.config import Config, env_name
from bp_spark.connections import AccessRefused
from bp_spark.outages import SinkFailure
from bp_spark.versions import elasticsearch_version


class ElasticsearchUnavailable(RuntimeError):
    """Elasticsearch cannot be reached or is not a version this build supports."""


class ElasticsearchUnreachable(ElasticsearchUnavailable):
    """Elasticsearch did not answer (down, hung, starting): worth waiting for."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the connector needs to know about the cluster."""

    name: str
    uuid: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def make_client(config: Config, request_timeout: float = 30.0) -> Elasticsearch:
    """A client of the configured cluster (HTTPS with the CA and credentials in TLS mode) that
    retries on timeouts and overload."""
    es, security = config.elasticsearch, config.security
    options: dict = {"request_timeout": request_timeout, "retry_on_timeout": True, "max_retries": 3}
    if security.tls:
        if es.api_key:
            options["api_key"] = es.api_key.reveal()
        else:
            options["basic_auth"] = (es.username, es.password.reveal())
        if security.ca_file:
            options["ca_certs"] = security.ca_file
    return Elasticsearch(es.url, **options)


def probe_cluster(client: Elasticsearch, config: Config, expected_major: int | None = None) -> ClusterInfo:
    """Check that the cluster answers, accepts our credentials and runs ``expected_major``
    (default: the pinned version's major); say what to do when it does not."""
    url = config.elasticsearch.url
    if expected_major is None:
        expected_major = int(elasticsearch_version().split(".")[0])
    try:
        main = client.info()
    except es_exceptions.AuthenticationException:
        who = "the API key" if config.elasticsearch.api_key else f"user {config.elasticsearch.username!r}"
        raise AccessRefused(
            f"Elasticsearch at {url} refused authentication as {who} (HTTP 401): check elasticsearch.username "
            f"and the password ({env_name('elasticsearch.password')} or elasticsearch.password_file), or the API key."
        ) from None
    except es_exceptions.AuthorizationException:
        raise AccessRefused(
            f"Elasticsearch at {url} accepted user {config.elasticsearch.username!r} but refused it the cluster's "
            "monitor privilege (HTTP 403): grant the role of docs/security.md."
        ) from None
    except TlsError as exc:
        raise AccessRefused(
            f"Elasticsearch at {url}: the TLS handshake failed, its certificate is not trusted "
            f"({str(exc.message)[:160]}). security.ca_file ({config.security.ca_file or 'empty: the system trust store'}) "
            "must hold the CA that signed the node's certificate."
        ) from None
    except (TransportError, es_exceptions.ApiError) as exc:
        raise ElasticsearchUnreachable(
            f"Elasticsearch at {url} did not answer ({exc}). Start the local stack with `make up`, "
            "or point --es-url / BP_ELASTICSEARCH_URL at a running cluster."
        ) from exc
    info = ClusterInfo(name=main["cluster_name"], uuid=main["cluster_uuid"], version=main["version"]["number"])
    if info.major != expected_major:
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {url} is version {info.version}, but this build's connector and client are "
            f"for {expected_major}.x. Use a {expected_major}.x cluster, or change ES_VERSION in .env."
        )
    return info


def connector_options(config: Config) -> dict[str, str]:
    """Options for ``format("org.elasticsearch.spark.sql")`` that reach the cluster directly.

    ``wan.only`` keeps the connector on the given address: node discovery would hand out
    publish addresses that a client outside the cluster's network may not reach. In TLS mode the
    connector trusts ``security.truststore_file`` (it does not read PEM) and sends the user and
    password, or the API key as an ``Authorization`` header. These are per-write options, never
    SparkConf: they do not reach the Spark UI's Environment tab, and the plans that show options
    are redacted (``bp_spark.session.REDACTION_CONF``).
    """
    es, security = config.elasticsearch, config.security
    parsed = urlparse(es.url)
    options = {
        "es.nodes": parsed.hostname or "localhost",
        "es.port": str(parsed.port or (443 if parsed.scheme == "https" else 9200)),
        "es.nodes.wan.only": "true",
        "es.net.ssl": str(parsed.scheme == "https").lower(),
    }
    if security.tls:
        if security.truststore_file:
            options["es.net.ssl.truststore.location"] = Path(security.truststore_file).expanduser().resolve().as_uri()
            options["es.net.ssl.truststore.pass"] = security.truststore_password.reveal()
        if es.api_key:
            options["es.net.http.header.Authorization"] = f"ApiKey {es.api_key.reveal()}"
        else:
            options["es.net.http.auth.user"] = es.username
            options["es.net.http.auth.pass"] = es.password.reveal()
    return options


def count_documents(client: Elasticsearch, index: str, query: dict | None = None) -> int:
    """Documents of ``index`` matching ``query`` (all by default); 0 when the index does not exist yet."""
    if not client.indices.exists(index=index):
        return 0
    return client.count(index=index, query=query or {"match_all": {}})["count"]


def distinct_count(client: Elasticsearch, index: str, field: str, query: dict | None = None) -> int:
    """Distinct values of ``field`` (Elasticsearch's cardinality) among the matching documents; 0 without the index."""
    if not client.indices.exists(index=index):
        return 0
    result = client.search(index=index, size=0, query=query or {"match_all": {}},
                           aggs={"n": {"cardinality": {"field": field}}})
    return result["aggregations"]["n"]["value"]


def refresh_indices(client: Elasticsearch, config: Config, kinds: tuple[str, ...] = ()) -> None:
    """Make what the stream job wrote searchable now (indices refresh every 1-30 s otherwise): in
    the indices of ``kinds`` (default: all of them)."""
    indices = pipeline_indices(config)
    client.indices.refresh(index=",".join(indices[kind] for kind in kinds or indices), ignore_unavailable=True,
                           allow_no_indices=True)


TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "conf" / "elasticsearch"


def load_template(kind: str, index: str, replicas: int) -> dict:
    """The index template ``conf/elasticsearch/<kind>.json``, aimed at ``index``."""
    body = json.loads((TEMPLATE_DIR / f"{kind}.json").read_text())
    body["index_patterns"] = [index]
    body["template"]["settings"]["number_of_replicas"] = replicas
    return body


def index_time(value: int | float | str | None) -> datetime | None:
    """A date as the index returns it: epoch milliseconds (as the connector writes dates) or ISO 8601."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def epoch_ms(moment: datetime) -> int:
    """A moment in epoch milliseconds, as the indices keep dates (the inverse of :func:`index_time`);
    a naive one is UTC, as Spark hands timestamps to Python in the session's zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * 1000)


# Every index the jobs write, by template kind (conf/elasticsearch/<kind>.json, elasticsearch.<kind>_index).
INDEX_KINDS = ("anomalies", "alerts", "deadletter", "trends", "metrics", "pending", "archive", "versions", "goals",
               "episodes", "alert_state")


def pipeline_indices(config: Config) -> dict[str, str]:
    """``{template kind: index}`` for every index the stream job writes."""
    return {kind: getattr(config.elasticsearch, f"{kind}_index") for kind in INDEX_KINDS}


def install_templates(client: Elasticsearch, indices: dict[str, str], replicas: int) -> list[str]:
    """Install each ``{kind: index}`` template that is missing or older than ours, and bring an
    index that already exists up to it; return the templates written.

    A template only shapes indices created after it, so an index made by an older version of
    bp-monitor gets the new fields added to its mapping here (adding fields is always allowed);
    a field whose type changed cannot be, and the error says so.
    """
    written = []
    for kind, index in indices.items():
        body = load_template(kind, index, replicas)
        name = f"bp-monitor-{index}"
        try:
            existing = client.indices.get_index_template(name=name)["index_templates"][0]["index_template"]
        except es_exceptions.NotFoundError:
            existing = None
        if existing is None or existing.get("version", 0) < body["version"]:
            client.indices.put_index_template(name=name, **body)
            written.append(name)
        if client.indices.exists(index=index):
            mappings = body["template"]["mappings"]
            try:
                client.indices.put_mapping(index=index, dynamic=mappings["dynamic"], properties=mappings["properties"])
            except es_exceptions.BadRequestError as exc:
                raise ElasticsearchUnavailable(
                    f"index {index} has a mapping that conflicts with conf/elasticsearch/{kind}.json ({exc.message}). "
                    f"Reindex it into a new index, or delete it if its documents can be rebuilt from Kafka."
                ) from exc
            settings = body["template"]["settings"]
            client.indices.put_settings(index=index, settings={
                "refresh_interval": settings["refresh_interval"], "number_of_replicas": replicas})
    return written


# Ids a multi-get asks for at once, in a task's lookup (:func:`lookup_in_tasks`).
TASK_MGET_CHUNK = 5_000


def found_documents(client: Elasticsearch, index: str, ids: list[str], chunk: int, **options) -> list[dict]:
    """The documents of ``ids`` that ``index`` holds (none if the index does not exist), by
    multi-get, ``chunk`` ids a request; ``options`` go to each request (``source_includes``). A
    document whose shard cannot answer (a node just restarted, its shards still recovering) comes
    back with an error, not as missing: taking it for missing would route a repeat again or miss
    the archived line a correction must remove (make chaos), so it raises :class:`SinkFailure`,
    for the caller to try again as a whole. The message never quotes an id."""
    if not ids or not client.indices.exists(index=index):
        return []
    found = []
    for start in range(0, len(ids), chunk):
        docs = client.mget(index=index, ids=ids[start:start + chunk], **options)["docs"]
        errors = [doc["error"] for doc in docs if doc.get("error")]
        if errors:
            first = errors[0] if isinstance(errors[0], dict) else {"type": str(errors[0])}
            raise SinkFailure(f"{index}: {len(errors)} of {len(docs)} documents could not be read "
                              f"({first.get('type', 'error')})")
        found += [doc for doc in docs if doc.get("found")]
    return found


def lookup_in_tasks(df: DataFrame, config: Config, index: str, fields: list[str],
                    answer: Callable[[Row, dict | None], tuple | None], schema: str) -> DataFrame:
    """``df``'s rows, each with what ``index`` holds under its ``observation_id``, read in Spark's
    tasks: each task opens a client of its own and asks for its partition's ids by multi-get
    (``fields`` of each document, :func:`found_documents`), so the lookup runs on every core and
    every worker and the driver sees none of the ids. ``answer(row, source)`` (``source`` None:
    not there) gives the output row of ``schema``, or None to leave the row out. A document whose
    shard cannot answer fails the task, and the Spark action with it: the caller retries that
    action as a whole (:func:`bp_spark.outages.with_retries`), never taking it for missing."""

    def read(rows: Iterator[Row]) -> Iterator[tuple]:
        rows = list(rows)
        if not rows:
            return
        client = make_client(config)
        try:
            found = {doc["_id"]: doc.get("_source") or {} for doc in found_documents(
                client, index, [row.observation_id for row in rows], TASK_MGET_CHUNK, source_includes=fields)}
        finally:
            client.close()
        for row in rows:
            out = answer(row, found.get(row.observation_id))
            if out is not None:
                yield out

    return df.rdd.mapPartitions(read).toDF(schema)
