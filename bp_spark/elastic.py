"""Talking to Elasticsearch: the Python client, a start-up probe, and the Spark connector's options."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from elasticsearch import Elasticsearch
from elasticsearch import exceptions as es_exceptions
from elastic_transport import TransportError


class ElasticsearchUnavailable(RuntimeError):
    """Elasticsearch cannot be reached or is not a version this build supports."""


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


def probe_cluster(client: Elasticsearch, url: str, expected_major: int) -> ClusterInfo:
    """Check that the cluster answers and runs ``expected_major``; say what to do when it does not."""
    try:
        main = client.info()
    except (TransportError, es_exceptions.ApiError) as exc:
        raise ElasticsearchUnavailable(
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
