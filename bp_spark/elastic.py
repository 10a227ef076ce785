"""Talking to Elasticsearch: the Python client, a start-up probe, and the Spark connector's options."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from elasticsearch import Elasticsearch
from elasticsearch import exceptions as es_exceptions
from elastic_transport import TransportError

from bp_spark.config import Config
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


def make_client(url: str, request_timeout: float = 30.0) -> Elasticsearch:
    """A client for ``url`` that retries on timeouts and overload."""
    return Elasticsearch(url, request_timeout=request_timeout, retry_on_timeout=True, max_retries=3)


def probe_cluster(client: Elasticsearch, url: str, expected_major: int | None = None) -> ClusterInfo:
    """Check that the cluster answers and runs ``expected_major`` (default: the pinned version's
    major); say what to do when it does not."""
    if expected_major is None:
        expected_major = int(elasticsearch_version().split(".")[0])
    try:
        main = client.info()
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


def connector_options(url: str) -> dict[str, str]:
    """Options for ``format("org.elasticsearch.spark.sql")`` that reach ``url`` directly.

    ``wan.only`` keeps the connector on the given address: node discovery would hand out
    publish addresses that a client outside the cluster's network may not reach.
    """
    parsed = urlparse(url)
    return {
        "es.nodes": parsed.hostname or "localhost",
        "es.port": str(parsed.port or (443 if parsed.scheme == "https" else 9200)),
        "es.nodes.wan.only": "true",
        "es.net.ssl": str(parsed.scheme == "https").lower(),
    }


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


def refresh_indices(client: Elasticsearch, config: Config) -> None:
    """Make everything the stream job wrote searchable now (indices refresh every 5 s otherwise)."""
    client.indices.refresh(index=",".join(pipeline_indices(config).values()), ignore_unavailable=True,
                           allow_no_indices=True)


TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "conf" / "elasticsearch"


def load_template(kind: str, index: str, replicas: int) -> dict:
    """The index template ``conf/elasticsearch/<kind>.json``, aimed at ``index``."""
    body = json.loads((TEMPLATE_DIR / f"{kind}.json").read_text())
    body["index_patterns"] = [index]
    body["template"]["settings"]["number_of_replicas"] = replicas
    return body


def pipeline_indices(config: Config) -> dict[str, str]:
    """``{template kind: index}`` for every index the stream job writes."""
    e = config.elasticsearch
    return {"anomalies": e.anomalies_index, "alerts": e.alerts_index, "deadletter": e.deadletter_index,
            "trends": e.trends_index, "metrics": e.metrics_index}


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
