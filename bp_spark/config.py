"""Configuration: read once into a frozen, typed object, validated before Spark starts.

Defaults live in ``conf/pipeline.toml``. The local stack's client settings (``.stack/env``,
written by ``make up``) override them, the environment overrides both with
``BP_<SECTION>_<KEY>`` (``BP_KAFKA_TOPIC``), and the jobs' flags override all. Passwords are
never read from the TOML file: from ``BP_*_PASSWORD`` (or ``_API_KEY``) variables, or from the
files that ``*_file`` keys name, as container secrets are mounted; they are held as
:class:`Secret`, which never prints its value. A bad value
raises :class:`ConfigError`, whose message names the key, the value, where it came from and
what is allowed. Library code receives plain values from this object; it never reads the
environment itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "conf" / "pipeline.toml"
ENV_PREFIX = "BP_"

log = logging.getLogger("bp_spark.config")


def default_stack_env() -> Path:
    """The local stack's client settings, ``.stack/env`` (``$BP_STACK_DIR/env``)."""
    return Path(os.environ.get("BP_STACK_DIR", PROJECT_ROOT / ".stack")) / "env"


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range."""


class Secret:
    """A password or key: its value is given only by :meth:`reveal`, never by ``str`` or ``repr``,
    so that a logged or printed configuration shows ``'***'``."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class SecurityConfig:
    """How every connection is protected: TLS with a CA, and credentials (in the sections)."""

    mode: str
    ca_file: str
    truststore_file: str
    truststore_password_file: str
    truststore_password: Secret

    @property
    def tls(self) -> bool:
        return self.mode == "tls"


@dataclass(frozen=True)
class KafkaConfig:
    """Where the observations come from."""

    bootstrap_servers: str
    topic: str
    starting_offsets: str
    max_offsets_per_trigger: int
    min_partitions: int
    alerts_topic: str
    username: str
    password_file: str
    password: Secret
    sasl_mechanism: str


@dataclass(frozen=True)
class ElasticsearchConfig:
    """Where abnormal readings, alerts, trends and dead letters go."""

    url: str
    anomalies_index: str
    alerts_index: str
    trends_index: str
    deadletter_index: str
    metrics_index: str
    pending_index: str
    archive_index: str
    versions_index: str
    goals_index: str
    episodes_index: str
    alert_state_index: str
    number_of_replicas: int
    driver_write_max_docs: int
    username: str
    password_file: str
    password: Secret
    api_key_file: str
    api_key: Secret
    deadletter_retention: str
    metrics_retention: str

    @property
    def deadletter_retention_s(self) -> int:
        """Seconds a dead letter is kept; 0: until someone deletes it."""
        return seconds_or_never(self.deadletter_retention)

    @property
    def metrics_retention_s(self) -> int:
        """Seconds a health record is kept; 0: until someone deletes it."""
        return seconds_or_never(self.metrics_retention)


@dataclass(frozen=True)
class OutagesConfig:
    """How the job rides out a sink or a query that fails: it waits and tries again."""

    backoff_s: float
    max_backoff_s: float
    give_up_after: str

    @property
    def give_up_after_s(self) -> int:
        """Seconds after which a sink still failing stops the job; 0: never."""
        return seconds_or_never(self.give_up_after)


@dataclass(frozen=True)
class Thresholds:
    """The anomaly rule and the crisis limits, in mmHg."""

    systolic_high: float
    systolic_low: float
    diastolic_high: float
    diastolic_low: float
    crisis_systolic: float
    crisis_diastolic: float
    critical_low_systolic: float
    critical_low_diastolic: float


@dataclass(frozen=True)
class ClassificationConfig:
    """The guideline profile that classifies readings, and the setting of readings that do not say
    where they were taken (bp_spark/clinical/profiles.py; docs/clinical.md)."""

    profile: str
    setting: str


@dataclass(frozen=True)
class AlertsConfig:
    """Alerts as episodes a care team works (bp_spark/alerts/; docs/alerts.md)."""

    persistence: str
    confirm_within: str
    snooze: str
    auto_resolve_after: str
    escalate_after: str
    silence_after: str
    silence_window: str
    sweep_every: str
    max_reading_ids: int
    max_age: str

    @property
    def persistence_rule(self) -> tuple[int, int, int]:
        """``persistence`` as (n, m, period in seconds): "3 of 4 within 7 days" -> (3, 4, 604800)."""
        match = _PERSISTENCE.match(self.persistence.strip())
        return int(match.group(1)), int(match.group(2)), duration_seconds(match.group(3))


@dataclass(frozen=True)
class PathsConfig:
    """The normal-reading archive and the streaming checkpoint."""

    archive_dir: str
    checkpoint_dir: str
    archive_umask: str

    @property
    def archive_umask_bits(self) -> int:
        return int(self.archive_umask, 8)


@dataclass(frozen=True)
class ArchiveConfig:
    """How the archive's files follow patients and periods (bp_spark/archive/)."""

    period: str
    roll_every: str
    max_file_mb: int


@dataclass(frozen=True)
class StreamConfig:
    """How the stream job runs."""

    trigger: str
    app_name: str
    dedup_horizon: str
    state_partitions: int
    driver_memory: str
    max_future_skew: str
    max_bundle_entries: int
    pair_horizon: str


@dataclass(frozen=True)
class TrendsConfig:
    """Trend windows on event time, merged from the routing batches' readings, and sustained hypertension."""

    enabled: bool
    trigger: str
    windows: str
    patient_windows: str
    sustained_window: str
    sustained_slide: str
    sustained_systolic: float
    sustained_diastolic: float
    sustained_min_readings: int

    @property
    def window_list(self) -> list[tuple[str, str]]:
        """The cohort's ``windows`` as ``[(label, duration), ...]``, e.g. ``[("hourly", "1 hour")]``."""
        return _window_list(self.windows)

    @property
    def patient_window_list(self) -> list[tuple[str, str]]:
        """``patient_windows`` as ``[(label, duration), ...]``."""
        return _window_list(self.patient_windows)


def _window_list(value: str) -> list[tuple[str, str]]:
    return [tuple(part.strip() for part in item.split("=", 1)) for item in value.split(",")]


@dataclass(frozen=True)
class GeneratorConfig:
    """The synthetic workload of jobs/generate.py."""

    patients: int
    days: int
    per_day: int
    start: str
    end: str
    seed: int
    rate: float
    count: int
    validate: str
    mix_normotensive: float
    mix_elevated: float
    mix_stage_1: float
    mix_stage_2: float
    mix_hypotensive: float
    crisis_rate: float
    hypotension_rate: float
    goals: float


@dataclass(frozen=True)
class Config:
    """The whole configuration of bp-monitor."""

    security: SecurityConfig
    kafka: KafkaConfig
    elasticsearch: ElasticsearchConfig
    outages: OutagesConfig
    thresholds: Thresholds
    classification: ClassificationConfig
    alerts: AlertsConfig
    paths: PathsConfig
    archive: ArchiveConfig
    stream: StreamConfig
    trends: TrendsConfig
    generator: GeneratorConfig


# --------------------------------------------------------------------------- validators
# Each returns None when the value is fine, else a sentence saying what is allowed.

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-_\[\]:]+:(\d{1,5})$")
_TOPIC = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")
_INDEX = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,254}$")
_URL = re.compile(r"^https?://[^\s/:]+(:\d{1,5})?/?$")
_INTERVAL = re.compile(
    r"^\d+(\.\d+)?\s*(ms|millisecond|milliseconds|s|sec|second|seconds|min|minute|minutes|h|hour|hours)$"
)
_TRIGGER_WORDS = ("available-now",)
_DURATION = re.compile(r"^(\d+)\s*(second|minute|hour|day|week)s?$")


def _bootstrap_servers(value: str) -> str | None:
    parts = [p.strip() for p in value.split(",")]
    for part in parts:
        match = _HOST_PORT.match(part)
        if not match or not 0 < int(match.group(1)) < 65536:
            return "a comma-separated list of host:port, e.g. localhost:9092"
    return None


def _topic(value: str) -> str | None:
    return None if _TOPIC.match(value) else "1-249 characters of letters, digits, '.', '_' or '-'"


def _starting_offsets(value: str) -> str | None:
    if value in ("earliest", "latest") or value.lstrip().startswith("{"):
        return None
    return "'earliest', 'latest', or Spark's JSON form {\"topic\":{\"0\":42}}"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "a number >= 0"


def _bound(value: int) -> str | None:
    return None if value >= 0 else "an integer >= 0 (0 means no bound)"


def _es_url(value: str) -> str | None:
    return None if _URL.match(value) else "an http:// or https:// URL with host and optional port, e.g. http://localhost:9200"


def _index(value: str) -> str | None:
    return None if _INDEX.match(value) else "a lowercase Elasticsearch index name (letters, digits, '.', '_', '-'; not starting with '_' or '-')"


def _mmhg(value: float) -> str | None:
    return None if 20 <= value <= 300 else "a pressure in mmHg between 20 and 300"


def _memory(value: str) -> str | None:
    return None if re.fullmatch(r"[1-9]\d*[mg]", value) else "a JVM memory size such as '512m' or '3g'"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "a non-empty path or URI"


def _duration(value: str) -> str | None:
    return None if _DURATION.match(value) else "a duration such as '7 days', '12 hours', '30 minutes'"


_PERSISTENCE = re.compile(r"^(\d+) of (\d+) within (.+)$")


def _persistence(value: str) -> str | None:
    match = _PERSISTENCE.match(value.strip())
    if match and 1 <= int(match.group(1)) <= int(match.group(2)) <= 100 and _duration(match.group(3)) is None:
        return None
    return "'N of M within DURATION' with 1 <= N <= M <= 100, e.g. '3 of 4 within 7 days'"


def _never_or_duration(value: str) -> str | None:
    return None if value.strip() in ("0", "") else _duration(value)


def _windows(value: str) -> str | None:
    items = [item.strip() for item in value.split(",")]
    labels = []
    for item in items:
        label, _, duration = (part.strip() for part in item.partition("="))
        if not re.fullmatch(r"[a-z][a-z0-9_]*", label) or _duration(duration):
            return 'a comma-separated list of label=duration, e.g. "hourly=1 hour, daily=1 day"'
        labels.append(label)
    if len(set(labels)) != len(labels):
        return "each window label once"
    return None


def _topic_or_empty(value: str) -> str | None:
    return None if value == "" else _topic(value)


_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def duration_seconds(value: str) -> int:
    """A duration the configuration allows (``"7 days"``, ``"1 hour"``) in seconds."""
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(f"{value!r} is not a duration such as '1 hour' or '7 days'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def seconds_or_never(value: str) -> int:
    """A duration key that may be "0" (or empty) for never, in seconds; 0 for never."""
    return 0 if value.strip() in ("0", "") else duration_seconds(value)


def _trigger(value: str) -> str | None:
    if value in _TRIGGER_WORDS or _INTERVAL.match(value):
        return None
    return "'available-now' or an interval such as '10 seconds', '500 ms', '1 minute'"


def _interval_or_empty(value: str) -> str | None:
    if value == "" or _INTERVAL.match(value):
        return None
    return "empty (the stream's trigger) or an interval such as '1 minute', '30 seconds'"


def _positive(value: int) -> str | None:
    return None if value > 0 else "an integer > 0"


def _iso_or_empty(value: str) -> str | None:
    if value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        return "empty, or an ISO 8601 date-time with an offset, e.g. 2026-01-01T00:00:00+00:00"
    return None


def _weight(value: float) -> str | None:
    return None if value >= 0 else "a weight >= 0"


def _probability(value: float) -> str | None:
    return None if 0 <= value <= 1 else "a probability between 0 and 1"


def _validate_mode(value: str) -> str | None:
    return None if value in ("all", "sample", "none") else "'all', 'sample' or 'none'"


def _security_mode(value: str) -> str | None:
    return None if value in ("tls", "plain") else ("'tls' (TLS and credentials on every connection) or 'plain' "
                                                   "(neither: only for services on a trusted network)")


def _sasl_mechanism(value: str) -> str | None:
    return None if value in ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN") else "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"


def _period(value: str) -> str | None:
    return None if value in ("hour", "day", "month") else "'hour', 'day' or 'month'"


def _umask(value: str) -> str | None:
    return None if re.fullmatch(r"0?[0-7]{3}", value) and int(value, 8) & 0o007 == 0o007 else (
        "an octal umask that keeps other users out, such as '077' (files 0600, folders 0700) or '027'")


VALIDATORS: dict[str, Callable[[Any], str | None]] = {
    "security.mode": _security_mode,
    "kafka.sasl_mechanism": _sasl_mechanism,
    "paths.archive_umask": _umask,
    "elasticsearch.deadletter_retention": _never_or_duration,
    "kafka.bootstrap_servers": _bootstrap_servers,
    "kafka.topic": _topic,
    "kafka.starting_offsets": _starting_offsets,
    "kafka.max_offsets_per_trigger": _bound,
    "kafka.min_partitions": _non_negative,
    "kafka.alerts_topic": _topic_or_empty,
    "elasticsearch.url": _es_url,
    "elasticsearch.anomalies_index": _index,
    "elasticsearch.alerts_index": _index,
    "elasticsearch.trends_index": _index,
    "elasticsearch.deadletter_index": _index,
    "elasticsearch.metrics_index": _index,
    "elasticsearch.pending_index": _index,
    "thresholds.systolic_high": _mmhg,
    "thresholds.systolic_low": _mmhg,
    "thresholds.diastolic_high": _mmhg,
    "thresholds.diastolic_low": _mmhg,
    "thresholds.crisis_systolic": _mmhg,
    "thresholds.crisis_diastolic": _mmhg,
    "thresholds.critical_low_systolic": _mmhg,
    "thresholds.critical_low_diastolic": _mmhg,
    "elasticsearch.number_of_replicas": _non_negative,
    "elasticsearch.driver_write_max_docs": _non_negative,
    "outages.backoff_s": _non_negative,
    "outages.max_backoff_s": _non_negative,
    "outages.give_up_after": _never_or_duration,
    "stream.dedup_horizon": _duration,
    "alerts.persistence": _persistence,
    "alerts.confirm_within": _duration,
    "alerts.snooze": _duration,
    "alerts.auto_resolve_after": _duration,
    "alerts.escalate_after": _never_or_duration,
    "alerts.silence_after": _never_or_duration,
    "alerts.silence_window": _duration,
    "alerts.sweep_every": _duration,
    "alerts.max_reading_ids": _positive,
    "alerts.max_age": _never_or_duration,
    "elasticsearch.episodes_index": _index,
    "elasticsearch.alert_state_index": _index,
    "archive.period": _period,
    "archive.roll_every": _duration,
    "archive.max_file_mb": _positive,
    "elasticsearch.metrics_retention": _never_or_duration,
    "elasticsearch.archive_index": _index,
    "elasticsearch.versions_index": _index,
    "elasticsearch.goals_index": _index,
    "stream.max_future_skew": _duration,
    "stream.max_bundle_entries": _positive,
    "stream.pair_horizon": _duration,
    "stream.state_partitions": _positive,
    "stream.driver_memory": _memory,
    "paths.archive_dir": _non_empty,
    "paths.checkpoint_dir": _non_empty,
    "stream.trigger": _trigger,
    "stream.app_name": _non_empty,
    "trends.windows": _windows,
    "trends.patient_windows": _windows,
    "trends.trigger": _interval_or_empty,
    "trends.sustained_window": _duration,
    "trends.sustained_slide": _duration,
    "classification.profile": lambda v: None if v in ("mission", "esh2023", "acc_aha2025", "nice_ng136") else (
        "one of mission, esh2023, acc_aha2025, nice_ng136 (docs/clinical.md)"),
    "classification.setting": lambda v: None if v in ("home", "office") else "home or office",
    "trends.sustained_systolic": _mmhg,
    "trends.sustained_diastolic": _mmhg,
    "trends.sustained_min_readings": _positive,
    "generator.patients": _positive,
    "generator.days": _positive,
    "generator.per_day": _positive,
    "generator.start": _iso_or_empty,
    "generator.end": _iso_or_empty,
    "generator.rate": _non_negative,
    "generator.count": _bound,
    "generator.validate": _validate_mode,
    "generator.mix_normotensive": _weight,
    "generator.mix_elevated": _weight,
    "generator.mix_stage_1": _weight,
    "generator.mix_stage_2": _weight,
    "generator.mix_hypotensive": _weight,
    "generator.crisis_rate": _probability,
    "generator.hypotension_rate": _probability,
    "generator.goals": _probability,
}

# Keys earlier versions read, and why they are ignored now (a configuration naming one still loads).
RETIRED_KEYS: dict[str, str] = {
    "trends.watermark": "trends are merged from the routing query's readings, and a late reading joins its "
                        "windows whenever it arrives (there is no watermark to drop it)",
}

# Flags the jobs offer, and the key each sets.
CLI_FLAGS: dict[str, str] = {
    "bootstrap-servers": "kafka.bootstrap_servers",
    "topic": "kafka.topic",
    "starting-offsets": "kafka.starting_offsets",
    "max-offsets-per-trigger": "kafka.max_offsets_per_trigger",
    "es-url": "elasticsearch.url",
    "archive-dir": "paths.archive_dir",
    "checkpoint-dir": "paths.checkpoint_dir",
    "trigger": "stream.trigger",
    "patients": "generator.patients",
    "days": "generator.days",
    "per-day": "generator.per_day",
    "start": "generator.start",
    "end": "generator.end",
    "seed": "generator.seed",
    "rate": "generator.rate",
    "count": "generator.count",
    "validate": "generator.validate",
    "goals": "generator.goals",
}


# --------------------------------------------------------------------------- loading


def env_name(key: str) -> str:
    """The environment variable that overrides ``key`` (``kafka.topic`` -> ``BP_KAFKA_TOPIC``)."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _coerce(key: str, raw: Any, kind: type, source: str) -> Any:
    """Turn a TOML value or an environment string into ``kind``, or fail naming the key."""
    if kind is str:
        if isinstance(raw, str):
            return raw
    elif kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.strip().lower() in ("true", "1", "yes")
    elif kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            return int(raw)
    elif kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
    raise ConfigError(f"{key} = {raw!r} (from {source}): expected {kind.__name__}")


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def read_env_file(path: Path | None) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file such as ``.stack/env``; {} when there is none."""
    if path is None or not Path(path).is_file():
        return {}
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def read_secret(key: str, file_key: str, file_path: str, env: Mapping[str, str]) -> Secret:
    """A secret from its environment variable, else from the file its ``*_file`` key names."""
    if env.get(env_name(key)):
        return Secret(env[env_name(key)])
    if not file_path:
        return Secret()
    try:
        return Secret(Path(file_path).expanduser().read_text().strip())
    except OSError as exc:
        raise ConfigError(f"{file_key} = {file_path!r} cannot be read ({exc.strerror}): it must name a file "
                          f"holding {key.split('.')[1].replace('_', ' ')} of {key.split('.')[0]}") from exc


def load_config(
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    stack_env: Path | None | str = "default",
) -> Config:
    """Load the configuration from ``path`` (default ``conf/pipeline.toml``), then the local stack's
    client settings (``stack_env``, default ``.stack/env``; None for none), then the environment,
    then ``overrides`` (``{"kafka.topic": "vitals"}``), and validate it."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    env = os.environ if env is None else env
    env = {**read_env_file(default_stack_env() if stack_env == "default" else stack_env), **env}
    overrides = dict(overrides or {})
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} not found; pass --config or restore conf/pipeline.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc

    for key, why in RETIRED_KEYS.items():
        section, name = key.split(".")
        if name in (data.get(section) or {}):
            log.warning("%s in %s is no longer read: %s", key, path, why)
            del data[section][name]
    sections = _sections()
    known = {f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)}
    secret_keys = {f"{s}.{f.name}" for s, cls in sections.items()
                   for f in dataclasses.fields(cls) if typing.get_type_hints(cls)[f.name] is Secret}
    for section, values in data.items():
        if section not in sections or not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {path} is not a known section; allowed: {', '.join(sections)}")
        for name in values:
            if f"{section}.{name}" in secret_keys:
                raise ConfigError(f"{section}.{name} is a secret and is not read from {path}: set "
                                  f"{env_name(section + '.' + name)}, or {section}.{name}_file to a file holding it")
            if f"{section}.{name}" not in known:
                raise ConfigError(f"{section}.{name} in {path} is not a known key; allowed in [{section}]: "
                                  + ", ".join(f.name for f in dataclasses.fields(sections[section])))
    for key in overrides:
        if key not in known or key in secret_keys:
            raise ConfigError(f"override {key!r} is not a known key")

    built = {}
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if key in secret_keys:  # after its *_file key, declared before it
                values[f.name] = read_secret(key, f"{key}_file", values[f"{f.name}_file"], env)
                continue
            if key in overrides and overrides[key] is not None:
                raw, source = overrides[key], "the command line"
            elif env_name(key) in env:
                raw, source = env[env_name(key)], f"environment variable {env_name(key)}"
            elif f.name in data.get(section, {}):
                raw, source = data[section][f.name], str(path)
            else:
                raise ConfigError(f"{key} is not set: add it to {path} or set {env_name(key)}")
            value = _coerce(key, raw, hints[f.name], source)
            problem = VALIDATORS[key](value) if key in VALIDATORS else None
            if problem:
                raise ConfigError(f"{key} = {value!r} (from {source}) is not allowed: expected {problem}")
            values[f.name] = value
        built[section] = cls(**values)
    config = Config(**built)
    _check_consistency(config)
    return _with_profile_limits(config)


def _with_profile_limits(config: Config) -> Config:
    """Under a guideline profile, sustained hypertension starts at its home limits; the
    ``trends.sustained_*`` settings are the ``mission`` profile's (a warning says when they differ)."""
    if config.classification.profile == "mission":
        return config
    from bp_spark.clinical.profiles import profile  # the profiles' tables read Thresholds from here
    systolic, diastolic = profile(config.classification.profile, config.thresholds, (0, 0)).sustained
    t = config.trends
    if (t.sustained_systolic, t.sustained_diastolic) not in ((135, 85), (systolic, diastolic)):
        log.warning("trends.sustained_systolic/diastolic (%g/%g) apply under the mission profile only; %s uses its "
                    "guideline's home limits, %g/%g", t.sustained_systolic, t.sustained_diastolic,
                    config.classification.profile, systolic, diastolic)
    return dataclasses.replace(config, trends=dataclasses.replace(t, sustained_systolic=float(systolic),
                                                                   sustained_diastolic=float(diastolic)))


def _check_consistency(config: Config) -> None:
    """Rules that relate several keys."""
    t = config.thresholds
    if not t.systolic_low < t.systolic_high:
        raise ConfigError(f"thresholds.systolic_low ({t.systolic_low}) must be below thresholds.systolic_high ({t.systolic_high})")
    if not t.diastolic_low < t.diastolic_high:
        raise ConfigError(f"thresholds.diastolic_low ({t.diastolic_low}) must be below thresholds.diastolic_high ({t.diastolic_high})")
    if not t.crisis_systolic > t.systolic_high:
        raise ConfigError(f"thresholds.crisis_systolic ({t.crisis_systolic}) must be above thresholds.systolic_high ({t.systolic_high})")
    if not t.crisis_diastolic > t.diastolic_high:
        raise ConfigError(f"thresholds.crisis_diastolic ({t.crisis_diastolic}) must be above thresholds.diastolic_high ({t.diastolic_high})")
    if not t.critical_low_systolic < t.systolic_low:
        raise ConfigError(f"thresholds.critical_low_systolic ({t.critical_low_systolic}) must be below thresholds.systolic_low ({t.systolic_low})")
    if not t.critical_low_diastolic < t.diastolic_low:
        raise ConfigError(f"thresholds.critical_low_diastolic ({t.critical_low_diastolic}) must be below thresholds.diastolic_low ({t.diastolic_low})")
    g = config.generator
    mix = (g.mix_normotensive, g.mix_elevated, g.mix_stage_1, g.mix_stage_2, g.mix_hypotensive)
    if sum(mix) <= 0:
        raise ConfigError("generator.mix_* weights must not all be 0")
    if g.start and g.end and datetime.fromisoformat(g.start) >= datetime.fromisoformat(g.end):
        raise ConfigError(f"generator.start ({g.start}) must be before generator.end ({g.end})")
    o = config.outages
    if o.max_backoff_s < o.backoff_s:
        raise ConfigError(f"outages.max_backoff_s ({o.max_backoff_s}) must not be below outages.backoff_s ({o.backoff_s})")
    tr = config.trends
    window_s, slide_s = duration_seconds(tr.sustained_window), duration_seconds(tr.sustained_slide)
    if window_s % slide_s:
        raise ConfigError(f"trends.sustained_window ({tr.sustained_window}) must be a whole number of "
                          f"trends.sustained_slide ({tr.sustained_slide})")
    if not any(duration_seconds(duration) == slide_s for _, duration in tr.patient_window_list):
        raise ConfigError(f"trends.patient_windows ({tr.patient_windows}) must hold a window as long as "
                          f"trends.sustained_slide ({tr.sustained_slide}): the sustained windows are summed "
                          f"from it (e.g. \"daily=1 day\" for a slide of 1 day)")
    _check_security(config)
    es = config.elasticsearch
    names = [es.anomalies_index, es.alerts_index, es.trends_index, es.deadletter_index, es.metrics_index]
    if len(set(names)) != len(names):
        raise ConfigError(f"elasticsearch.*_index must be five different indices, got {names}")


def _check_security(config: Config) -> None:
    """In TLS mode every connection is encrypted and authenticated; say what is missing."""
    sec, kafka, es = config.security, config.kafka, config.elasticsearch
    for key, value in (("security.ca_file", sec.ca_file), ("security.truststore_file", sec.truststore_file)):
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"{key} = {value!r}: no such file")
    if not sec.tls:
        return
    hint = ("; `make up` writes the local stack's settings to .stack/env, which the jobs read, or set "
            "security.mode = \"plain\" for services without security")
    if not es.url.startswith("https://"):
        raise ConfigError(f"elasticsearch.url = {es.url!r} is plain HTTP but security.mode is 'tls': use https://{hint}")
    if not (es.username and es.password) and not es.api_key:
        raise ConfigError("Elasticsearch credentials are not set: elasticsearch.username with "
                          f"{env_name('elasticsearch.password')} or elasticsearch.password_file, or "
                          f"{env_name('elasticsearch.api_key')} / elasticsearch.api_key_file{hint}")
    if not (kafka.username and kafka.password):
        raise ConfigError(f"Kafka credentials are not set: kafka.username with {env_name('kafka.password')} or "
                          f"kafka.password_file{hint}")
    if sec.truststore_file and not sec.truststore_password:
        raise ConfigError(f"security.truststore_file is set but its password is not: "
                          f"{env_name('security.truststore_password')} or security.truststore_password_file")


def add_config_flags(parser: Any, flags: list[str]) -> None:
    """Add the named configuration flags (see :data:`CLI_FLAGS`) and ``--config`` to an argparse parser."""
    parser.add_argument("--config", default=None, help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    for flag in flags:
        key = CLI_FLAGS[flag]
        parser.add_argument(f"--{flag}", dest=key, default=None, metavar=key.split(".")[1].upper(),
                            help=f"overrides {key} (environment: {env_name(key)})")


def load_config_from_args(args: Any) -> Config:
    """Load the configuration with the flags of :func:`add_config_flags` as overrides."""
    overrides = {key: getattr(args, key) for key in CLI_FLAGS.values() if getattr(args, key, None) is not None}
    return load_config(getattr(args, "config", None), overrides=overrides)
