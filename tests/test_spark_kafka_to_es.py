"""Integration test: a tiny Structured Streaming query from the real broker, through the
spark-sql-kafka source, into the real Elasticsearch through the elasticsearch-spark connector."""

from __future__ import annotations

import json

from confluent_kafka import Producer
from elasticsearch import Elasticsearch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from bp_spark.config import Config
from bp_spark.connections import kafka_settings, spark_kafka_options
from bp_spark.elastic import ClusterInfo, connector_options

READING = T.StructType([
    T.StructField("id", T.StringType()),
    T.StructField("systolic", T.DoubleType()),
    T.StructField("diastolic", T.DoubleType()),
])


def test_stream_from_kafka_into_elasticsearch(
    spark: SparkSession, config: Config, es_cluster: tuple[Elasticsearch, ClusterInfo],
    unique_name: str, tmp_path,
) -> None:
    es, _ = es_cluster
    readings = [{"id": f"obs-{i}", "systolic": 100.0 + 10 * i, "diastolic": 70.0 + i} for i in range(6)]
    producer = Producer(kafka_settings(config))
    for reading in readings:
        producer.produce(unique_name, key=reading["id"], value=json.dumps(reading))
    assert producer.flush(30) == 0

    es.indices.create(index=unique_name, settings={"number_of_replicas": 0})
    options = {**connector_options(config), "es.mapping.id": "id"}

    def write_batch(batch_df: DataFrame, batch_id: int) -> None:
        (batch_df.withColumn("batch_id", F.lit(batch_id))
         .write.format("org.elasticsearch.spark.sql").options(**options).mode("append").save(unique_name))

    source_df = (
        spark.readStream.format("kafka")
        .options(**spark_kafka_options(config))
        .option("subscribe", unique_name)
        .option("startingOffsets", "earliest")
        .load()
    )
    parsed_df = (
        source_df.select(F.from_json(F.col("value").cast("string"), READING).alias("r"), "partition", "offset")
        .select("r.*", "partition", "offset")
        .where(F.col("systolic") > 120)
    )
    query = (
        parsed_df.writeStream.foreachBatch(write_batch)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination(180)
        assert query.exception() is None, query.exception()
    finally:
        query.stop()

    try:
        es.indices.refresh(index=unique_name)
        hits = es.search(index=unique_name, size=20, sort=[{"systolic": "asc"}])["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["obs-3", "obs-4", "obs-5"]
        assert [h["_source"]["systolic"] for h in hits] == [130.0, 140.0, 150.0]
        assert [h["_source"]["diastolic"] for h in hits] == [73.0, 74.0, 75.0]
        assert all(h["_source"]["partition"] in (0, 1, 2) for h in hits)
    finally:
        es.indices.delete(index=unique_name)
