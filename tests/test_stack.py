"""Integration tests of the local stack: the real broker and the real Elasticsearch node."""

from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from elasticsearch import Elasticsearch

from bp_spark.config import Config
from bp_spark.connections import kafka_settings
from bp_spark.elastic import ClusterInfo
from bp_spark.versions import elasticsearch_version


def test_kafka_round_trip_on_an_auto_created_three_partition_topic(
    config: Config, kafka_admin: AdminClient, unique_name: str
) -> None:
    sent = {f"patient-{i}": {"id": f"obs-{i}", "systolic": 110 + i} for i in range(30)}
    producer = Producer({**kafka_settings(config), "enable.idempotence": True})
    failures: list[str] = []
    for key, value in sent.items():
        producer.produce(unique_name, key=key, value=json.dumps(value),
                         on_delivery=lambda err, _msg: failures.append(str(err)) if err else None)
    assert producer.flush(30) == 0
    assert failures == []

    topic = kafka_admin.list_topics(unique_name, timeout=10).topics[unique_name]
    assert len(topic.partitions) == 3  # the broker's num.partitions for new topics

    consumer = Consumer({**kafka_settings(config), "group.id": unique_name,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([unique_name])
    received: dict[str, dict] = {}
    partitions = set()
    try:
        for _ in range(60):
            for msg in consumer.consume(num_messages=100, timeout=1.0):
                assert msg.error() is None, msg.error()
                received[msg.key().decode()] = json.loads(msg.value())
                partitions.add(msg.partition())
            if len(received) == len(sent):
                break
    finally:
        consumer.close()
    assert received == sent
    assert len(partitions) > 1  # keys spread over the partitions


def test_elasticsearch_index_and_search(es_cluster: tuple[Elasticsearch, ClusterInfo], unique_name: str) -> None:
    es, info = es_cluster
    assert info.version == elasticsearch_version()
    assert info.name == "bp-monitor"
    es.indices.create(index=unique_name, settings={"number_of_replicas": 0},
                      mappings={"properties": {"patient_id": {"type": "keyword"},
                                               "systolic": {"type": "float"},
                                               "effective_time": {"type": "date"}}})
    try:
        docs = [("a", "p1", 150.0, "2026-01-01T06:00:00Z"), ("b", "p2", 118.0, "2026-01-01T12:00:00Z"),
                ("c", "p1", 182.5, "2026-01-02T06:00:00Z")]
        for doc_id, patient, systolic, when in docs:
            es.index(index=unique_name, id=doc_id,
                     document={"patient_id": patient, "systolic": systolic, "effective_time": when})
        es.indices.refresh(index=unique_name)
        found = es.search(index=unique_name, query={"range": {"systolic": {"gt": 140}}},
                          sort=[{"effective_time": "asc"}],
                          aggs={"patients": {"terms": {"field": "patient_id"}},
                                "peak": {"max": {"field": "systolic"}}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["a", "c"]
        assert found["aggregations"]["peak"]["value"] == 182.5
        assert found["aggregations"]["patients"]["buckets"] == [{"key": "p1", "doc_count": 2}]
    finally:
        es.indices.delete(index=unique_name)
