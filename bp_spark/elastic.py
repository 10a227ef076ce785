"""Talking to Elasticsearch: the Python client, a start-up probe, and the Spark connector's options.

The probe asks the cluster APIs (``_cluster/health``, ``_nodes``) rather than ``GET /``: those
answer on every distribution, including the stripped one the local stack runs, and they give
what the elasticsearch-spark connector needs to skip its own ``GET /`` discovery.
"""

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
        health = client.cluster.health(timeout="10s")
        nodes = client.nodes.info(node_id="_local", metric="_none")
        state = client.cluster.state(metric="metadata", filter_path="metadata.cluster_uuid")
    except (TransportError, es_exceptions.ApiError) as exc:
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {url} did not answer ({exc}). Start the local stack with `make up`, "
            "or point --es-url / BP_ELASTICSEARCH_URL at a running cluster."
        ) from exc
    versions = {n["version"] for n in nodes["nodes"].values()}
    version = sorted(versions)[0]
    info = ClusterInfo(name=health["cluster_name"], uuid=state["metadata"]["cluster_uuid"], version=version)
    if info.major != expected_major:
        raise ElasticsearchUnavailable(
            f"Elasticsearch at {url} is version {version}, but this build's connector and client are "
            f"for {expected_major}.x. Use a {expected_major}.x cluster, or change ES_VERSION in .env."
        )
    return info


def connector_options(url: str, cluster: ClusterInfo) -> dict[str, str]:
    """Options for ``format("org.elasticsearch.spark.sql")`` that reach ``url`` directly.

    ``wan.only`` keeps the connector on the given address (no node discovery, which would
    hand out publish addresses a client outside the cluster network may not reach). The
    ``es.internal.*`` keys carry the probed cluster identity so the connector does not ask
    ``GET /`` again on every executor.
    """
    parsed = urlparse(url)
    options = {
        "es.nodes": parsed.hostname or "localhost",
        "es.port": str(parsed.port or (443 if parsed.scheme == "https" else 9200)),
        "es.nodes.wan.only": "true",
        "es.net.ssl": str(parsed.scheme == "https").lower(),
        "es.internal.es.version": cluster.version,
        "es.internal.es.cluster.name": cluster.name,
        "es.internal.es.cluster.uuid": cluster.uuid,
    }
    return options
