"""Shared fixtures: one SparkSession and one check of the local stack for the whole run.

The services are real: ``make test`` starts Kafka and Elasticsearch (``make up``) before
pytest. When one cannot be reached, every test that needs it fails with the reason; nothing
is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.config import Config, default_stack_env, load_config
from bp_spark.connections import kafka_settings
from bp_spark.elastic import ClusterInfo, ElasticsearchUnavailable, make_client, probe_cluster
from bp_spark.session import (REDACTION_CONF, SCHEDULER_CONF, local_files_conf, log_conf, private_files_conf,
                              python_workers, stop_session)
from bp_spark.versions import connector_conf

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


# What reaches the local stack: its fixtures, and the modules whose tests start a job (or a
# client) that talks to Kafka or Elasticsearch themselves. `pytest -m "not integration"` runs the rest.
STACK_FIXTURES = {"es", "es_cluster", "kafka_admin"}
STACK_MODULES = {"test_security"}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "chaos: kills and restarts the local stack's services; runs last")
    config.addinivalue_line("markers", "integration: needs the local stack (make up); marked by conftest.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the tests that need the stack; tests that kill its services run after every other test."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in STACK_MODULES \
                or item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


@pytest.fixture(scope="session")
def config() -> Config:
    """The default configuration, as the jobs load it. Without the local stack's settings
    (``.stack/env``: the static lane on a clone where `make up` never ran) it has no credentials
    to read, and the static tests need none: security.mode = plain."""
    return load_config(env={} if default_stack_env().is_file() else {"BP_SECURITY_MODE": "plain"})


@pytest.fixture(scope="session")
def kafka_admin(config: Config) -> AdminClient:
    """An admin client of the real broker; fails the test when the broker does not answer."""
    admin = AdminClient(kafka_settings(config))
    try:
        admin.list_topics(timeout=15)
    except Exception as exc:  # the client raises KafkaException with the librdkafka reason
        pytest.fail(
            f"Kafka at {config.kafka.bootstrap_servers} is not reachable ({exc}). "
            "`make test` starts it; by hand: `make up`, and see .stack/kafka/kafka.log."
        )
    return admin


@pytest.fixture(scope="session")
def es_cluster(config: Config) -> tuple[Elasticsearch, ClusterInfo]:
    """A client of the real Elasticsearch node and what the probe learned of it."""
    client = make_client(config)
    try:
        info = probe_cluster(client, config)
    except ElasticsearchUnavailable as exc:
        pytest.fail(f"{exc} Log: .stack/elasticsearch/logs/bp-monitor.log")
    return client, info


@pytest.fixture(scope="session")
def es(es_cluster: tuple[Elasticsearch, ClusterInfo]) -> Elasticsearch:
    return es_cluster[0]


# The static lane's Spark: expressions interpreted, not compiled. Its tests run hundreds of small
# queries on a few rows each, where compiling each plan's Java costs more than running it
# (tests/test_parse.py, test_plan.py, test_goals.py: 56 s -> 47 s). Spark runs its own suites in
# both modes; `make test` (with the integration tests) keeps the job's compiled code paths.
INTERPRETED_CONF = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}


@pytest.fixture(scope="session")
def spark(request) -> Iterator[SparkSession]:
    """The one SparkSession of the run: local[2], few shuffle partitions, UI off, connectors on;
    interpreted expressions when the run has no integration test (the static lane)."""
    python_workers()
    builder = SparkSession.builder
    conf = {**connector_conf(), **local_files_conf(), **log_conf(), **REDACTION_CONF, **SCHEDULER_CONF,
            **private_files_conf("077")}
    if not any(item.get_closest_marker("integration") for item in request.session.items):
        conf.update(INTERPRETED_CONF)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = (
        builder.master("local[2]")
        .appName("bp-monitor-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    yield session
    stop_session(session)  # and its JVM, also if its shutdown hangs


@pytest.fixture
def unique_name() -> str:
    """A fresh lowercase name for a test's own topic or index, so tests never share state."""
    return f"bp_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def _remove_test_topics_and_indices(config: Config, request) -> Iterator[None]:
    """After the run, drop the bp_test_* topics and indices the tests made, so the stack stays tidy
    (nothing to do when only tests without the stack ran)."""
    yield
    if not any(item.get_closest_marker("integration") for item in request.session.items):
        return
    try:
        admin = AdminClient(kafka_settings(config))
        leftovers = [t for t in admin.list_topics(timeout=5).topics if t.startswith("bp_test_")]
        if leftovers:
            admin.delete_topics(leftovers)
        es = make_client(config)
        names = list(es.indices.get(index="bp_test_*", allow_no_indices=True))
        for start in range(0, len(names), 50):  # by name (Elasticsearch 8 refuses wildcard deletes), 50 a request
            es.indices.delete(index=",".join(names[start:start + 50]))
        templates = es.indices.get_index_template(name="bp-monitor-bp_test_*")["index_templates"]
        for template in templates:
            es.indices.delete_index_template(name=template["name"])
    except Exception:  # cleanup only: a stack that went away has nothing left to tidy
        pass
