"""Tests of bp_spark/elastic.py against the real Elasticsearch node."""

from __future__ import annotations

import pytest
from elasticsearch import Elasticsearch

from bp_spark.config import load_config
from bp_spark.elastic import ElasticsearchUnavailable, connector_options, install_templates, load_template
from bp_spark.sinks.es import ElasticsearchSink
from bp_spark.sinks.retention import apply_retention, rules_for


def test_templates_are_installed_and_older_indices_brought_up_to_them(es: Elasticsearch, unique_name: str) -> None:
    anomalies, alerts = f"{unique_name}_anomalies", f"{unique_name}_alerts"
    # An index made by an earlier version: strict, without the Kafka arrival time.
    es.indices.create(index=anomalies, settings={"number_of_replicas": 0}, mappings={
        "dynamic": "strict", "properties": {"observation_id": {"type": "keyword"},
                                            "kafka": {"properties": {"offset": {"type": "long"}}}}})
    written = install_templates(es, {"anomalies": anomalies, "alerts": alerts}, 0)
    assert written == [f"bp-monitor-{anomalies}", f"bp-monitor-{alerts}"]
    mapping = es.indices.get_mapping(index=anomalies)[anomalies]["mappings"]
    assert mapping["properties"]["kafka"]["properties"]["timestamp"] == {"type": "date"}
    assert mapping["properties"]["anomaly_types"] == {"type": "keyword", "ignore_above": 1024}  # bounded: no term can be refused
    es.index(index=anomalies, id="o1", document={"observation_id": "o1", "kafka": {"offset": 1, "timestamp": 0}})
    # a second start changes nothing and writes no template
    assert install_templates(es, {"anomalies": anomalies, "alerts": alerts}, 0) == []
    # an index created after the template takes its mapping and settings
    es.index(index=alerts, id="a1", document={"alert_type": "critical_reading", "observation_id": "o1"})
    settings = es.indices.get_settings(index=alerts)[alerts]["settings"]["index"]
    assert settings["number_of_replicas"] == "0"
    with pytest.raises(Exception, match="strict_dynamic_mapping_exception"):
        es.index(index=alerts, id="a2", document={"no_such_field": 1})
    for name in written:
        es.indices.delete_index_template(name=name)


def test_conflicting_older_index_gets_a_clear_error(es: Elasticsearch, unique_name: str) -> None:
    index = f"{unique_name}_deadletter"
    es.indices.create(index=index, settings={"number_of_replicas": 0},
                      mappings={"properties": {"reason": {"type": "long"}}})
    with pytest.raises(ElasticsearchUnavailable, match=rf"index {index} has a mapping that conflicts with conf/elasticsearch/deadletter.json"):
        install_templates(es, {"deadletter": index}, 0)
    es.indices.delete_index_template(name=f"bp-monitor-{index}")


def test_template_and_connector_options() -> None:
    body = load_template("anomalies", "x_anomalies", 2)
    assert body["index_patterns"] == ["x_anomalies"]
    assert body["template"]["settings"]["number_of_replicas"] == 2
    assert body["template"]["mappings"]["dynamic"] == "strict"
    plain = {"BP_SECURITY_MODE": "plain"}
    assert connector_options(load_config(env={**plain, "BP_ELASTICSEARCH_URL": "https://es.example:9243"}, stack_env=None)) == {
        "es.nodes": "es.example", "es.port": "9243", "es.nodes.wan.only": "true", "es.net.ssl": "true"}
    assert connector_options(load_config(env={**plain, "BP_ELASTICSEARCH_URL": "http://localhost"}, stack_env=None))[
        "es.port"] == "9200"


def test_connector_options_carry_the_trust_store_and_credentials(tmp_path) -> None:
    store = tmp_path / "trust.p12"
    store.write_bytes(b"not read here")
    env = {"BP_ELASTICSEARCH_URL": "https://es.example:9243", "BP_ELASTICSEARCH_USERNAME": "pipeline",
           "BP_ELASTICSEARCH_PASSWORD": "pw-1", "BP_KAFKA_USERNAME": "pipeline", "BP_KAFKA_PASSWORD": "pw-2",
           "BP_SECURITY_TRUSTSTORE_FILE": str(store), "BP_SECURITY_TRUSTSTORE_PASSWORD": "pw-3"}
    options = connector_options(load_config(env=env, stack_env=None))
    assert options["es.net.ssl"] == "true"
    assert options["es.net.ssl.truststore.location"] == store.as_uri()  # the connector wants a URL
    assert (options["es.net.ssl.truststore.pass"], options["es.net.http.auth.user"], options["es.net.http.auth.pass"]) == (
        "pw-3", "pipeline", "pw-1")
    assert "es.net.ssl.cert.allow.self.signed" not in options  # it would turn verification off
    with_key = connector_options(load_config(env={**env, "BP_ELASTICSEARCH_API_KEY": "a2V5"}, stack_env=None))
    assert with_key["es.net.http.header.Authorization"] == "ApiKey a2V5" and "es.net.http.auth.pass" not in with_key


def test_dead_letters_older_than_the_retention_are_deleted(es: Elasticsearch, unique_name: str) -> None:
    """They hold raw payloads: elasticsearch.deadletter_retention bounds how long; so do the
    halves of split readings that no longer wait or pair (a paired one stays: a correction needs it)."""
    indices = {"deadletter": f"{unique_name}_deadletter", "pending": f"{unique_name}_pending"}
    config = load_config(overrides={**{f"elasticsearch.{kind}_index": index for kind, index in indices.items()},
                                    "elasticsearch.deadletter_retention": "30 days"})
    index, pending = indices["deadletter"], indices["pending"]
    install_templates(es, indices, 0)
    for doc_id, processed_at in (("old-1", "2026-01-01T00:00:00Z"), ("old-2", "2026-10-01T00:00:00Z"),
                                 ("recent", "2099-01-01T00:00:00Z")):
        es.index(index=index, id=doc_id, document={"reason": "r", "raw": "{}", "processed_at": processed_at})
    for state in ("expired", "superseded", "paired", "pending"):
        es.index(index=pending, id=state, document={"state": state, "raw": "{}", "processed_at": "2026-01-01T00:00:00Z"})
    es.indices.refresh(index=f"{index},{pending}")
    deleted = apply_retention(ElasticsearchSink(config, es, {}), rules_for(config), page=1)  # page by page
    assert [n for what, n in deleted.items() if "deadletter_retention" in what] == [2, 2]
    assert [hit["_id"] for hit in es.search(index=index)["hits"]["hits"]] == ["recent"]
    assert sorted(hit["_id"] for hit in es.search(index=pending)["hits"]["hits"]) == ["paired", "pending"]
    kept = load_config(overrides={**{f"elasticsearch.{kind}_index": index for kind, index in indices.items()},
                                  "elasticsearch.deadletter_retention": "0"})
    assert not any("deadletter_retention" in rule.what for rule in rules_for(kept))
    for name in indices.values():
        es.indices.delete_index_template(name=f"bp-monitor-{name}")
