"""How every client reaches Kafka: one place turns the configuration into the settings of
confluent-kafka (the generator, ``tail``, the topic checks) and of Spark's Kafka source and sink,
TLS and SASL included, and tells a refused login from a broker that is down.

Elasticsearch's clients are built in :mod:`bp_spark.elastic`; Spark's own settings that keep
secrets out of its UI are in :mod:`bp_spark.session`.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from bp_spark.config import Config, ConfigError, env_name


class AccessRefused(ConfigError):
    """A service refused our credentials or we refused its certificate: a configuration problem,
    not an outage, so the job stops at once (exit status 2) instead of waiting."""


def kafka_settings(config: Config) -> dict[str, str]:
    """confluent-kafka (librdkafka) settings that reach the configured brokers."""
    settings = {"bootstrap.servers": config.kafka.bootstrap_servers}
    if config.security.tls:
        settings.update({
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": config.kafka.sasl_mechanism,
            "sasl.username": config.kafka.username,
            "sasl.password": config.kafka.password.reveal(),
            "ssl.endpoint.identification.algorithm": "https",
        })
        if config.security.ca_file:
            settings["ssl.ca.location"] = config.security.ca_file
    return settings


def _jaas_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spark_kafka_options(config: Config) -> dict[str, str]:
    """Options of Spark's Kafka source and sink (``kafka.*``, passed to its kafka-clients).

    They go on each reader and writer, not into the SparkConf, so they never reach the Spark UI's
    Environment tab; plans that show options are redacted (``bp_spark.session.REDACTION_CONF``).
    """
    options = {"kafka.bootstrap.servers": config.kafka.bootstrap_servers}
    if config.security.tls:
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if config.kafka.sasl_mechanism == "PLAIN"
                  else "org.apache.kafka.common.security.scram.ScramLoginModule")
        options.update({
            "kafka.security.protocol": "SASL_SSL",
            "kafka.sasl.mechanism": config.kafka.sasl_mechanism,
            "kafka.sasl.jaas.config": (f"{module} required username={_jaas_quoted(config.kafka.username)} "
                                       f"password={_jaas_quoted(config.kafka.password.reveal())};"),
        })
        if config.security.ca_file:
            options.update({"kafka.ssl.truststore.type": "PEM",
                            "kafka.ssl.truststore.location": config.security.ca_file})
    return options


# librdkafka's error codes for a login refused and for a certificate not trusted.
_AUTH_ERRORS = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_TLS_ERRORS = {KafkaError._SSL}


class KafkaAccess:
    """An admin client that remembers why the broker refused it, if it did."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._refusals: list[KafkaError] = []
        self.admin = AdminClient({**kafka_settings(config), "error_cb": self._record})

    def _record(self, error: KafkaError) -> None:
        if error.code() in _AUTH_ERRORS | _TLS_ERRORS:
            self._refusals.append(error)

    def check(self) -> None:
        """Raise :class:`AccessRefused` if the broker refused our login or its certificate failed."""
        self.admin.poll(0)
        if not self._refusals:
            return
        error = self._refusals[-1]
        where = f"Kafka at {self.config.kafka.bootstrap_servers}"
        if error.code() in _TLS_ERRORS:
            raise AccessRefused(
                f"{where}: the TLS handshake failed, its certificate is not trusted ({_reason(error)}). "
                f"security.ca_file ({self.config.security.ca_file or 'empty: the system trust store'}) must hold "
                "the CA that signed the broker's certificate."
            )
        raise AccessRefused(
            f"{where} refused authentication as user {self.config.kafka.username!r} "
            f"({self.config.kafka.sasl_mechanism}): check kafka.username and the password "
            f"({env_name('kafka.password')} or kafka.password_file)."
        )

    def list_topics(self, timeout: float):
        """All topics' metadata; :class:`AccessRefused` when refused, the client's own error when down."""
        try:
            return self.admin.list_topics(timeout=timeout)
        except Exception:
            self.check()
            raise
        finally:
            self.admin.poll(0)


def _reason(error: KafkaError) -> str:
    """librdkafka's words after the broker's address, short."""
    text = error.str()
    return text.split(": ", 1)[-1][:160]


def check_kafka(config: Config, timeout_s: float = 15.0) -> None:
    """Fail at start, with what to do, when Kafka refuses our credentials or its certificate;
    a broker that merely does not answer is left to the caller's waiting. Asked a second at a
    time: a refused login shows within a second, a silent broker only at the timeout."""
    access = KafkaAccess(config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            access.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except AccessRefused:
            raise
        except Exception:  # down or slow: not a configuration problem
            if time.monotonic() >= deadline:
                return
