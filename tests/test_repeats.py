"""The versions index (bp_spark/routing/repeats.py) on the real Elasticsearch node: which rows of a
batch are repeats, a replayed batch that is not its own repeat, and the horizon's end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from pyspark.sql import SparkSession

from bp_spark.elastic import install_templates, pipeline_indices
from bp_spark.sinks.es import ElasticsearchSink
from bp_spark.routing.repeats import VersionLedger
from bp_spark.sinks.retention import apply_retention, rules_for
from streams import ids_in, stream_config

ROWS = "observation_id string, error string, content_hash long, raw string, kafka_topic string, " \
       "kafka_partition int, kafka_offset long, bundle_entry int"


def row(observation_id, content_hash, offset, entry=None, error=None, raw="{}"):
    return observation_id, error, content_hash, raw, "t", 0, offset, entry


def routed(ledger: VersionLedger, spark: SparkSession, rows: list[tuple], batch_id: int) -> tuple[list[int], int]:
    """The offsets (and entries) of the rows ``ledger`` keeps for ``batch_id``, and how many it
    left out; the batch's versions recorded, as the router does once every sink has the rows."""
    kept_df, seen = ledger.drop_repeats(spark.createDataFrame(rows, ROWS), batch_id, len(rows))
    kept = sorted((r.kafka_offset, r.bundle_entry or 0) for r in kept_df.collect())
    ledger.record(seen)
    return kept, seen.repeats


@pytest.mark.parametrize("driver_max", [2000, 0], ids=["a live batch, on the driver", "a big batch, in Spark's tasks"])
def test_repeats_are_dropped_by_id_and_version_but_not_a_replayed_batchs_own_rows(
    spark: SparkSession, es: Elasticsearch, unique_name: str, tmp_path: Path, driver_max: int
) -> None:
    """The same answers whether the driver asks (a live batch's few rows) or Spark's tasks do."""
    config = stream_config(unique_name, tmp_path, **{"stream.dedup_horizon": "2 seconds",
                                                     "elasticsearch.driver_write_max_docs": driver_max})
    install_templates(es, pipeline_indices(config), 0)
    ledger = VersionLedger(spark, config, ElasticsearchSink(config, es, {}), lambda: "job1")
    first = [row("o1", 11, 0), row("o1", 11, 1),  # the same message twice in one batch
             row("o2", 21, 2, entry=0), row("o2", 21, 2, entry=1),  # one Bundle, the same entry twice
             row(None, None, 3, error="not JSON", raw="{x"), row(None, None, 4, error="not JSON", raw="{x"),
             row("x" * 5000, None, 5, error="Observation id too long", raw="{}"),  # no valid id: its place names it
             row("o3", None, 6, error="no systolic", raw='{"id": "o3"}'),
             row("o3", None, 7, error="no systolic", raw='{"id": "o3"}')]
    assert routed(ledger, spark, first, 0) == ([(0, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0)], 3)
    # Batch 0 again (a crash after its versions were recorded, before Spark's commit): its rows
    # are routed again, not taken for repeats of themselves.
    assert routed(ledger, spark, first, 0) == ([(0, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0)], 3)

    second = [row("o1", 11, 10), row("o1", 12, 11),  # a repeat, and a new version (a correction)
              row("o2", 21, 12), row("o3", None, 13, error="no systolic", raw='{"id": "o3"}'),
              row("o4", 41, 14)]
    assert routed(ledger, spark, second, 1) == ([(11, 0), (14, 0)], 3)
    docs = ids_in(es, config.elasticsearch.versions_index)
    assert set(docs) == {"o1", "o2", "o3", "o4"}  # nothing for a row without a valid id
    assert (docs["o1"]["hashes"], docs["o1"]["added"], docs["o1"]["batch_id"]) == ([11, 12], [12], 1)
    assert (docs["o2"]["hashes"], docs["o2"]["batch_id"]) == ([21], 0)

    # The earlier version of o1 delivered late, after its correction: left out.
    assert routed(ledger, spark, [row("o1", 11, 20), row("o1", 12, 21)], 2) == ([], 2)

    # Past stream.dedup_horizon with no new version, an id's versions are forgotten.
    time.sleep(2.5)
    assert routed(ledger, spark, [row("o4", 42, 30)], 3) == ([(30, 0)], 0)  # o4 seen anew: kept
    es.indices.refresh(index=config.elasticsearch.versions_index)
    versions_rule = [rule for rule in rules_for(config) if rule.index == config.elasticsearch.versions_index]
    assert list(apply_retention(ElasticsearchSink(config, es, {}), versions_rule).values()) == [3]
    assert set(ids_in(es, config.elasticsearch.versions_index)) == {"o4"}
    assert routed(ledger, spark, [row("o1", 11, 40)], 4) == ([(40, 0)], 0)
