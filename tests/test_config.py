"""Tests of bp_spark/config.py: defaults, precedence, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bp_spark.config import ConfigError, Secret, add_config_flags, env_name, load_config, load_config_from_args


def test_defaults_match_the_design_contracts() -> None:
    config = load_config(env={"BP_SECURITY_MODE": "plain"}, stack_env=None)
    assert config.kafka.bootstrap_servers == "localhost:9092"
    assert config.kafka.topic == "fhir_observations"
    assert config.elasticsearch.url == "https://localhost:9200"
    assert config.elasticsearch.anomalies_index == "fhir_observations_anomalies"
    assert config.elasticsearch.alerts_index == "fhir_observations_alerts"
    assert config.elasticsearch.trends_index == "fhir_observations_trends"
    assert config.elasticsearch.deadletter_index == "fhir_observations_deadletter"
    t = config.thresholds
    assert (t.systolic_high, t.systolic_low, t.diastolic_high, t.diastolic_low) == (140.0, 90.0, 90.0, 60.0)
    assert isinstance(t.systolic_high, float)
    assert config.kafka.max_offsets_per_trigger == 500_000
    assert config.stream.driver_memory == "1536m"


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.kafka.topic = "other"  # type: ignore[misc]


def test_environment_overrides_file_and_flags_override_environment() -> None:
    env = {"BP_KAFKA_TOPIC": "from_env", "BP_THRESHOLDS_SYSTOLIC_HIGH": "150", "BP_STREAM_TRIGGER": "available-now"}
    config = load_config(env=env)
    assert config.kafka.topic == "from_env"
    assert config.thresholds.systolic_high == 150.0
    assert config.stream.trigger == "available-now"
    config = load_config(env=env, overrides={"kafka.topic": "from_flag"})
    assert config.kafka.topic == "from_flag"


def test_env_name() -> None:
    assert env_name("elasticsearch.url") == "BP_ELASTICSEARCH_URL"


@pytest.mark.parametrize(
    ("env", "key", "hint"),
    [
        ({"BP_KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "kafka.bootstrap_servers", "host:port"),
        ({"BP_KAFKA_TOPIC": "bad topic!"}, "kafka.topic", "letters, digits"),
        ({"BP_KAFKA_STARTING_OFFSETS": "yesterday"}, "kafka.starting_offsets", "earliest"),
        ({"BP_KAFKA_MAX_OFFSETS_PER_TRIGGER": "-5"}, "kafka.max_offsets_per_trigger", ">= 0"),
        ({"BP_KAFKA_MAX_OFFSETS_PER_TRIGGER": "many"}, "kafka.max_offsets_per_trigger", "expected int"),
        ({"BP_ELASTICSEARCH_URL": "localhost:9200"}, "elasticsearch.url", "http://"),
        ({"BP_ELASTICSEARCH_ANOMALIES_INDEX": "Anomalies"}, "elasticsearch.anomalies_index", "lowercase"),
        ({"BP_THRESHOLDS_SYSTOLIC_HIGH": "900"}, "thresholds.systolic_high", "between 20 and 300"),
        ({"BP_THRESHOLDS_DIASTOLIC_LOW": "low"}, "thresholds.diastolic_low", "expected float"),
        ({"BP_STREAM_TRIGGER": "sometimes"}, "stream.trigger", "available-now"),
        ({"BP_PATHS_ARCHIVE_DIR": "  "}, "paths.archive_dir", "non-empty"),
        ({"BP_TRENDS_WINDOWS": "hourly=1 hour, daily"}, "trends.windows", "label=duration"),
        ({"BP_TRENDS_WINDOWS": "h=1 hour, h=2 hours"}, "trends.windows", "each window label once"),
        ({"BP_TRENDS_SUSTAINED_WINDOW": "soon"}, "trends.sustained_window", "duration"),
        ({"BP_TRENDS_ENABLED": "maybe"}, "trends.enabled", "expected bool"),
        ({"BP_KAFKA_ALERTS_TOPIC": "bad topic!"}, "kafka.alerts_topic", "letters, digits"),
        ({"BP_KAFKA_MIN_PARTITIONS": "-1"}, "kafka.min_partitions", ">= 0"),
        ({"BP_STREAM_DRIVER_MEMORY": "3 GB"}, "stream.driver_memory", "'3g'"),
    ],
)
def test_bad_value_names_key_source_and_what_is_allowed(env: dict[str, str], key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    message = str(err.value)
    assert key in message
    assert hint in message
    assert f"environment variable {env_name(key)}" in message


def test_relations_between_thresholds_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"systolic_low \(150.0\) must be below thresholds.systolic_high \(140.0\)"):
        load_config(env={"BP_THRESHOLDS_SYSTOLIC_LOW": "150"})
    with pytest.raises(ConfigError, match="crisis_diastolic"):
        load_config(env={"BP_THRESHOLDS_CRISIS_DIASTOLIC": "85"})


def test_trend_settings() -> None:
    config = load_config(env={"BP_TRENDS_WINDOWS": "quarter=15 minutes, weekly=1 week", "BP_TRENDS_ENABLED": "false"})
    assert config.trends.window_list == [("quarter", "15 minutes"), ("weekly", "1 week")]
    assert config.trends.enabled is False
    with pytest.raises(ConfigError, match=r"trends.sustained_window \(7 days\) must be a whole number of trends.sustained_slide \(5 days\)"):
        load_config(env={"BP_TRENDS_SUSTAINED_SLIDE": "5 days"})


def test_a_retired_key_is_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    earlier = tmp_path / "earlier.toml"
    earlier.write_text(Path("conf/pipeline.toml").read_text().replace("[trends]\n", '[trends]\nwatermark = "1 day"\n'))
    with caplog.at_level("WARNING", logger="bp_spark.config"):
        config = load_config(earlier)
    assert config.trends.enabled
    assert [r.getMessage() for r in caplog.records] == [
        f"trends.watermark in {earlier} is no longer read: trends are merged from the routing query's readings, and "
        "a late reading joins its windows whenever it arrives (there is no watermark to drop it)"]


def test_unknown_key_and_section_in_file_are_refused(tmp_path: Path) -> None:
    text = Path("conf/pipeline.toml").read_text()
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("topic = ", "topik = "))
    with pytest.raises(ConfigError, match=r"kafka.topik .* is not a known key; allowed in \[kafka\]: .*topic"):
        load_config(typo, env={})
    extra = tmp_path / "extra.toml"
    extra.write_text(text + "\n[kibana]\nurl = 'x'\n")
    with pytest.raises(ConfigError, match=r"\[kibana\] .* is not a known section"):
        load_config(extra, env={})


def test_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.delenv("BP_KAFKA_TOPIC", raising=False)
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ["topic", "es-url", "trigger"])
    args = parser.parse_args(["--topic", "vitals", "--es-url", "https://es:9200", "--trigger", "available-now"])
    config = load_config_from_args(args)
    assert (config.kafka.topic, config.elasticsearch.url, config.stream.trigger) == (
        "vitals", "https://es:9200", "available-now")


def test_outage_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="outages.give_up_after = 'soon'"):
        load_config(env={}, overrides={"outages.give_up_after": "soon"})
    with pytest.raises(ConfigError, match=r"outages.max_backoff_s \(1.0\) must not be below outages.backoff_s \(2.0\)"):
        load_config(env={}, overrides={"outages.max_backoff_s": 1.0})
    assert load_config(env={}).outages.give_up_after_s == 0  # never: wait out any outage
    assert load_config(env={}, overrides={"outages.give_up_after": "2 minutes"}).outages.give_up_after_s == 120


# --------------------------------------------------------------------------- security settings

PLAIN_ENV = {"BP_SECURITY_MODE": "plain"}


def test_secure_by_default_refuses_to_start_without_credentials() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={}, stack_env=None)
    message = str(err.value)
    assert "Elasticsearch credentials are not set" in message and "BP_ELASTICSEARCH_PASSWORD" in message
    assert "make up" in message and "security.mode" in message
    with pytest.raises(ConfigError, match=r"elasticsearch.url = 'http://es:9200' is plain HTTP but security.mode is 'tls'"):
        load_config(env={"BP_ELASTICSEARCH_URL": "http://es:9200"}, stack_env=None)


def test_passwords_come_from_the_environment_or_files_and_never_print(tmp_path: Path) -> None:
    password_file = tmp_path / "kafka-password"
    password_file.write_text("from-a-file\n")
    env = {"BP_ELASTICSEARCH_USERNAME": "pipeline", "BP_ELASTICSEARCH_PASSWORD": "from-the-env",
           "BP_KAFKA_USERNAME": "pipeline", "BP_KAFKA_PASSWORD_FILE": str(password_file)}
    config = load_config(env=env, stack_env=None)
    assert config.elasticsearch.password.reveal() == "from-the-env"
    assert config.kafka.password.reveal() == "from-a-file"  # stripped of its line break
    shown = repr(config) + str(config)
    assert "from-the-env" not in shown and "from-a-file" not in shown and "Secret('***')" in shown
    assert config.elasticsearch.password == Secret("from-the-env")
    with pytest.raises(ConfigError, match=r"kafka.password_file = '.*nope' cannot be read"):
        load_config(env={**env, "BP_KAFKA_PASSWORD_FILE": str(tmp_path / "nope")}, stack_env=None)


def test_a_password_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    text = Path("conf/pipeline.toml").read_text()
    leaky = tmp_path / "leaky.toml"
    leaky.write_text(text.replace('username = ""\npassword_file = ""', 'username = ""\npassword = "hunter2"', 1))
    with pytest.raises(ConfigError) as err:
        load_config(leaky, env=PLAIN_ENV, stack_env=None)
    assert "kafka.password is a secret and is not read from" in str(err.value)
    assert "BP_KAFKA_PASSWORD" in str(err.value) and "hunter2" not in str(err.value)


def test_the_stack_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    stack_env = tmp_path / "env"
    stack_env.write_text("# comment\nBP_SECURITY_MODE=plain\nBP_KAFKA_TOPIC=from_stack\nBP_KAFKA_USERNAME=stack-user\n")
    config = load_config(env={}, stack_env=stack_env)
    assert (config.security.mode, config.kafka.topic, config.kafka.username) == ("plain", "from_stack", "stack-user")
    assert load_config(env={"BP_KAFKA_TOPIC": "from_env"}, stack_env=stack_env).kafka.topic == "from_env"


def test_archive_umask_must_keep_other_users_out() -> None:
    assert load_config(env=PLAIN_ENV, stack_env=None).paths.archive_umask_bits == 0o077
    assert load_config(env={**PLAIN_ENV, "BP_PATHS_ARCHIVE_UMASK": "027"}, stack_env=None).paths.archive_umask_bits == 0o027
    with pytest.raises(ConfigError, match="paths.archive_umask = '022'.*keeps other users out"):
        load_config(env={**PLAIN_ENV, "BP_PATHS_ARCHIVE_UMASK": "022"}, stack_env=None)
