"""The retention rules (bp_spark/sinks/retention.py), as data: which index, which documents,
which setting. Applied on the real Elasticsearch in test_elastic.py and test_repeats.py."""

from __future__ import annotations

from bp_spark.config import load_config
from bp_spark.sinks.retention import retention_rules, rules_for


def test_each_rule_deletes_only_what_its_setting_let_go() -> None:
    rules = retention_rules(deadletter_index="dl", pending_index="pe", metrics_index="me", versions_index="ve",
                            deadletter_s=86_400, metrics_s=3_600, versions_s=600, deadletter_after="1 day")
    by_index = {rule.index: rule for rule in rules}
    assert list(by_index) == ["dl", "pe", "me", "ve"]
    assert by_index["dl"].query == {"range": {"processed_at": {"lt": "now-86400s"}}}
    assert by_index["dl"].what == "dead letters older than 1 day (elasticsearch.deadletter_retention)"
    # a paired or waiting half stays whatever its age: a correction of its partner needs it
    assert by_index["pe"].query == {"bool": {"filter": [{"range": {"processed_at": {"lt": "now-86400s"}}},
                                                        {"terms": {"state": ["expired", "superseded"]}}]}}
    assert by_index["me"].query == {"range": {"timestamp": {"lt": "now-3600s"}}}
    assert by_index["ve"].query == {"range": {"seen_at": {"lt": "now-600s"}}}


def test_a_retention_of_zero_keeps_everything_but_the_versions_horizon_always_applies() -> None:
    rules = retention_rules(deadletter_index="dl", pending_index="pe", metrics_index="me", versions_index="ve",
                            deadletter_s=0, metrics_s=0, versions_s=600)
    assert [rule.index for rule in rules] == ["ve"]


def test_the_configured_rules() -> None:
    config = load_config(env={}, overrides={"elasticsearch.deadletter_retention": "30 days",
                                            "elasticsearch.metrics_retention": "0", "stream.dedup_horizon": "2 days"})
    rules = rules_for(config)
    assert [rule.index for rule in rules] == [config.elasticsearch.deadletter_index, config.elasticsearch.pending_index,
                                              config.elasticsearch.versions_index]
    assert [rule.page for rule in rules] == [1000, 1000, 5000]
    assert rules[2].what.endswith("none new for 2 days (stream.dedup_horizon)")
