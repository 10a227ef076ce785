"""Secure by default, tried by breaking it: the local stack refuses clients without credentials,
with a wrong password or without its CA; the pipeline user reaches only its own indices and
topics; a job given a wrong password stops at start naming the service; no secret and no patient
id leaves the job in its output, its process list or its Spark UI; the stack's files are private.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import certifi
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from elasticsearch import Elasticsearch

from bp_spark.config import Config, default_stack_env, load_config, read_env_file
from bp_spark.connections import AccessRefused, check_kafka, kafka_settings, spark_kafka_options
from bp_spark.elastic import connector_options, make_client, probe_cluster
from streams import ROOT, ids_in, job_env, publish, reading, stream_config

STACK = default_stack_env().parent


def es_status(config: Config, path: str, user: str | None = None, password: str | None = None,
              method: str = "GET") -> int:
    """The HTTP status the local node answers, trusting the stack's CA."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(config.elasticsearch.url + path, headers=headers, method=method)
    context = ssl.create_default_context(cafile=config.security.ca_file)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_elasticsearch_refuses_requests_without_the_right_credentials(config: Config) -> None:
    assert config.security.mode == "tls" and config.elasticsearch.url.startswith("https://")
    user, password = config.elasticsearch.username, config.elasticsearch.password.reveal()
    assert es_status(config, "/_cluster/health") == 401  # no credentials
    assert es_status(config, "/_cluster/health", user, "not-" + password) == 401
    assert es_status(config, "/_cluster/health", user, password) == 200
    # the pipeline's user holds its own indices only
    assert es_status(config, "/someone_elses_index", user, password, method="PUT") == 403


def test_elasticsearch_with_a_certificate_of_an_unknown_ca_is_refused(config: Config) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(config.elasticsearch.url, timeout=10, context=ssl.create_default_context())
    public_cas = load_config(env={"BP_SECURITY_CA_FILE": certifi.where()})
    with pytest.raises(AccessRefused, match=r"Elasticsearch at https://localhost:9200: the TLS handshake failed"):
        probe_cluster(make_client(public_cas), public_cas)
    wrong = load_config(env={"BP_ELASTICSEARCH_PASSWORD": "wrong-password"})
    with pytest.raises(AccessRefused, match=r"refused authentication as user 'bp-pipeline' \(HTTP 401\)") as err:
        probe_cluster(make_client(wrong), wrong)
    assert "wrong-password" not in str(err.value)


def test_kafka_refuses_clients_without_the_right_credentials(config: Config) -> None:
    # A plaintext client gets no metadata from the SASL_SSL listener.
    plaintext = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers, "socket.timeout.ms": 3000})
    with pytest.raises(Exception, match="Failed to get metadata|Timed out|transport"):
        plaintext.list_topics(timeout=5)
    wrong = load_config(env={"BP_KAFKA_PASSWORD": "wrong-password"})
    with pytest.raises(AccessRefused, match=r"Kafka at localhost:9092 refused authentication as user 'bp-pipeline'") as err:
        check_kafka(wrong, timeout_s=10)
    assert "wrong-password" not in str(err.value)
    public_cas = load_config(env={"BP_SECURITY_CA_FILE": certifi.where()})
    with pytest.raises(AccessRefused, match="Kafka at localhost:9092: the TLS handshake failed"):
        check_kafka(public_cas, timeout_s=10)
    check_kafka(config)  # the right ones pass


def test_the_pipeline_user_reaches_only_its_own_topics(config: Config, kafka_admin, unique_name: str) -> None:
    errors: list[KafkaError] = []
    producer = Producer({**kafka_settings(config), "message.timeout.ms": 10000})
    producer.produce(f"someone_elses_{unique_name}", b"{}", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(20)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    kafka_admin.create_topics([NewTopic(unique_name, 1, 1)])[unique_name].result(30)  # its own: allowed


@pytest.mark.parametrize(("variable", "service"), [
    ("BP_ELASTICSEARCH_PASSWORD", "Elasticsearch"),
    ("BP_KAFKA_PASSWORD", "Kafka"),
])
def test_the_stream_job_with_a_wrong_password_stops_at_start_naming_the_service(
    variable: str, service: str, unique_name: str, tmp_path: Path
) -> None:
    config = stream_config(unique_name, tmp_path)
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "stream.py")], capture_output=True, text=True,
                            env={**job_env(config), variable: "wrong-password"}, timeout=120)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]  # configuration, not an outage to wait out
    assert f"stream: {service} at" in result.stderr and "refused authentication" in result.stderr
    assert "wrong-password" not in output
    assert took < 60, f"the job took {took:.0f} s to give up"


def test_the_stack_files_are_private_and_the_env_file_names_no_password() -> None:
    def mode(path: Path) -> int:
        return path.lstat().st_mode & 0o777
    assert mode(STACK) == 0o700
    assert mode(STACK / "env") == 0o600
    assert mode(STACK / "secrets") == 0o700 and mode(STACK / "certs") == 0o700
    assert {mode(p) for p in (STACK / "secrets").iterdir()} == {0o600}
    assert {mode(p) for p in (STACK / "certs").iterdir()} == {0o600}
    settings = read_env_file(STACK / "env")
    assert settings["BP_SECURITY_MODE"] == "tls"
    assert not [key for key in settings if key.endswith(("PASSWORD", "API_KEY"))]  # files hold them
    for key in ("BP_KAFKA_PASSWORD_FILE", "BP_ELASTICSEARCH_PASSWORD_FILE"):
        assert Path(settings[key]).parent == STACK / "secrets"
    if os.geteuid() == 0:  # Elasticsearch runs as another user, from a folder of its own
        assert (STACK / "elasticsearch").is_symlink()
        assert str((STACK / "elasticsearch").resolve()).startswith("/var/lib/bp-monitor/")


def _secrets(config: Config) -> list[str]:
    return [s.reveal() for s in (config.kafka.password, config.elasticsearch.password,
                                 config.security.truststore_password) if s]


def _command_lines() -> str:
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(lines)


def _spark_ui(output: str) -> str:
    """Everything the running job's Spark UI tells about its environment and its SQL plans."""
    ui = next(line.split("Spark UI: ", 1)[1].split(" ")[0] for line in output.splitlines() if "Spark UI: " in line)
    with urllib.request.urlopen(f"{ui}/api/v1/applications", timeout=10) as response:
        app = json.load(response)[0]["id"]
    texts = []
    for path in ("environment", "sql?details=true&planDescription=true&length=1000"):
        with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/{path}", timeout=30) as response:
            texts.append(response.read().decode())
    return "\n".join(texts)


def test_no_secret_and_no_patient_data_leave_the_job_after_a_failing_write(
    config: Config, es: Elasticsearch, kafka_admin, unique_name: str, tmp_path: Path
) -> None:
    """The job runs as users start it, over TLS with credentials, and a write fails under it:
    Spark's own lines quoted the documents the connector could not write (ids, values), and
    conf/spark-log4j2.properties withholds them. Its output, its process list and its Spark UI
    (environment and SQL plans, which show the connectors' options) hold no password."""
    # Through the connector, whose failing write logs Spark's error sample (a batch this small
    # would go from the driver otherwise).
    job_config = stream_config(unique_name, tmp_path, **{"stream.trigger": "1 second",
                                                         "elasticsearch.driver_write_max_docs": 0})
    secrets = _secrets(job_config)
    assert len(secrets) == 3
    log_path = tmp_path / "job.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "stream.py")], env=job_env(job_config),
                               stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "waiting for Kafka topic" not in log_path.read_text(errors="replace"):
                assert job.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            # changed under the running job (at start it would refuse the conflicting mapping)
            es.indices.create(index=job_config.elasticsearch.anomalies_index,
                              mappings={"properties": {"patient_id": {"type": "long"}}})
            kafka_admin.create_topics([NewTopic(unique_name, 1, 1)])[unique_name].result(30)
            publish(job_config, [reading("pq-secret", f"2026-01-0{d}T08:00:00Z", 161, 97) for d in range(1, 4)])
            while len(ids_in(es, job_config.elasticsearch.deadletter_index)) < 3:
                assert job.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(1)
            processes = _command_lines()
            ui = _spark_ui(log_path.read_text(errors="replace"))
        finally:
            job.send_signal(signal.SIGTERM)
            job.wait(120)
    output = log_path.read_text(errors="replace")
    assert "Elasticsearch refused 3 of 3 documents for what they hold (document_parsing_exception x3)" in output
    assert "Error sample withheld: it quotes documents" in output  # Spark's own line, without the documents
    assert "pq-secret" not in output and "Preview of field's value" not in output
    # the plans of the connector's writes name its options, redacted
    assert "es.net.http.auth.pass=*********(redacted)" in ui and "es.net.ssl.truststore.pass=*********(redacted)" in ui
    for secret in secrets:
        assert secret not in output and secret not in processes and secret not in ui
    assert job.returncode == 0


def test_client_settings_in_each_mode() -> None:
    """TLS mode: SASL_SSL with the CA for confluent-kafka and for Spark's Kafka clients (whose JAAS line
    quotes the password safely); plain mode, the one switch for services without security: neither."""
    env = {"BP_KAFKA_USERNAME": "pipe", "BP_KAFKA_PASSWORD": 'pa"ss\\word', "BP_ELASTICSEARCH_USERNAME": "pipe",
           "BP_ELASTICSEARCH_PASSWORD": "pw", "BP_SECURITY_CA_FILE": certifi.where()}
    tls = load_config(env=env, stack_env=None)
    settings = kafka_settings(tls)
    assert (settings["security.protocol"], settings["sasl.mechanism"], settings["ssl.ca.location"]) == (
        "SASL_SSL", "SCRAM-SHA-512", certifi.where())
    options = spark_kafka_options(tls)
    assert options["kafka.security.protocol"] == "SASL_SSL" and options["kafka.ssl.truststore.type"] == "PEM"
    assert options["kafka.sasl.jaas.config"] == ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                                                 'username="pipe" password="pa\\"ss\\\\word";')
    plain = load_config(env={"BP_SECURITY_MODE": "plain", "BP_ELASTICSEARCH_URL": "http://es:9200"}, stack_env=None)
    assert kafka_settings(plain) == {"bootstrap.servers": "localhost:9092"}
    assert spark_kafka_options(plain) == {"kafka.bootstrap.servers": "localhost:9092"}
    assert "es.net.http.auth.user" not in connector_options(plain)
