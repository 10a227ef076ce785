#!/usr/bin/env python3
"""docker compose's one-shot setup of a secured stack, in two steps (services of their own):

    python stack/compose_setup.py certs    # before Kafka and Elasticsearch start
    python stack/compose_setup.py users    # once both answer

``certs`` fills the ``bp-secrets`` volume, mounted at ``/bp``: random passwords
(``/bp/secrets``), a private CA and a server certificate for ``elasticsearch``, ``kafka`` and
``localhost`` (``/bp/certs``, made as ``make up`` makes the local stack's), Kafka's
configuration with a SASL_SSL listener, and the argument file that formats its storage with
the SCRAM users (``/bp/kafka``). Files are 0600 and folders 0700, owned by uid 1000, the user
Elasticsearch, Kafka and Kibana run as. A second run keeps what exists.

``users`` gives Elasticsearch the pipeline's role and user and Kibana its service token, and
grants the pipeline's Kafka user its topics (ACLs). Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import urllib.error
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localstack import (KAFKA_ADMIN_USER, PIPELINE_USER, RESOURCE_PREFIXES, StackError,  # noqa: E402
                        admin_client_properties, https_json, make_certificates, new_cluster_id, password_file,
                        pipeline_role, private_dir, scram_jaas, storage_format_args, write_private)

BASE = Path(os.environ.get("BP_SECRETS_DIR", "/bp"))
SERVICE_UID = 1000  # elasticsearch, kafka (appuser) and kibana in their official images
ES_URL = os.environ.get("BP_SETUP_ES_URL", "https://elasticsearch:9200")
KAFKA_INTERNAL = "kafka:29092"


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def secret(name: str) -> str:
    return password_file(BASE / "secrets", name).read_text().strip()


def kafka_properties() -> str:
    jaas = scram_jaas(KAFKA_ADMIN_USER, secret("kafka-admin"))
    return "\n".join([
        "# written by stack/compose_setup.py: one KRaft node; clients over SASL_SSL only, with ACLs",
        "process.roles=broker,controller",
        "node.id=1",
        "controller.quorum.voters=1@localhost:9093",
        "listeners=INTERNAL://:29092,EXTERNAL://:9092,CONTROLLER://localhost:9093",
        f"advertised.listeners=INTERNAL://{KAFKA_INTERNAL},EXTERNAL://localhost:9092",
        "listener.security.protocol.map=INTERNAL:SASL_SSL,EXTERNAL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=INTERNAL",
        "controller.listener.names=CONTROLLER",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.internal.scram-sha-512.sasl.jaas.config={jaas}",
        f"listener.name.external.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={BASE}/certs/server.pem",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={BASE}/certs/ca.crt",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{KAFKA_ADMIN_USER};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found=false",
        "log.dirs=/var/lib/kafka/data",
        "num.partitions=3",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ])


def cmd_certs() -> None:
    private_dir(BASE)
    for name in ("elastic", "es-pipeline", "kafka-admin", "kafka-pipeline", "truststore"):
        password_file(BASE / "secrets", name)
    key = BASE / "secrets" / "kibana-encryption-key"
    if not key.exists():
        write_private(key, uuid.uuid4().hex + uuid.uuid4().hex)
    certs = BASE / "certs"
    if not (certs / "truststore.p12").exists():
        keytool = shutil.which("keytool") or "keytool"
        make_certificates(certs, BASE / "secrets" / "truststore", Path(keytool),
                          dns=["elasticsearch", "kafka", "localhost"], ips=["127.0.0.1"])
        say("made a private CA and a server certificate for elasticsearch, kafka and localhost")
    kafka = private_dir(BASE / "kafka")
    write_private(kafka / "server.properties", kafka_properties())
    # For kafka-topics.sh, the health check, as the broker's own user.
    write_private(kafka / "admin.properties", admin_client_properties(secret("kafka-admin"), BASE / "certs" / "ca.crt"))
    cluster_id = kafka / "cluster-id"
    if not cluster_id.exists():
        write_private(cluster_id, new_cluster_id())
    passwords = {KAFKA_ADMIN_USER: secret("kafka-admin"), PIPELINE_USER: secret("kafka-pipeline")}
    args = storage_format_args(cluster_id.read_text().strip(), kafka / "server.properties", passwords)
    write_private(kafka / "format.args", args)
    for path in [BASE, *BASE.rglob("*")]:
        if os.geteuid() == 0:  # in the container; run by hand as a user, the files stay theirs
            os.chown(path, SERVICE_UID, 0)
        path.chmod(0o700 if path.is_dir() else 0o600)
    data = os.environ.get("BP_KAFKA_DATA_DIR")
    if data and os.geteuid() == 0:  # a new volume is root's: the broker runs as uid 1000
        os.chown(data, SERVICE_UID, 0)
        Path(data).chmod(0o700)
    say(f"secrets, certificates and Kafka's configuration are in {BASE} (owner uid {SERVICE_UID}, 0600)")


def es_request(method: str, path: str, body: dict | None = None) -> dict:
    return https_json(ES_URL + path, BASE / "certs" / "ca.crt", "elastic", secret("elastic"), method, body, timeout=30)


def wait_for_elasticsearch(timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            es_request("GET", "/_cluster/health?wait_for_status=yellow&timeout=10s")
            return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"Elasticsearch at {ES_URL} did not answer within {timeout_s:.0f} s ({exc})") from exc
            time.sleep(3)


def cmd_users() -> None:
    wait_for_elasticsearch()
    es_request("PUT", "/_security/role/bp_pipeline", pipeline_role())
    es_request("PUT", f"/_security/user/{PIPELINE_USER}",
               {"password": secret("es-pipeline"), "roles": ["bp_pipeline"], "full_name": "bp-monitor pipeline"})
    token_path = "/_security/service/elastic/kibana/credential/token/bp-monitor"
    try:
        es_request("DELETE", token_path)  # a new value each run: the old one is not kept anywhere
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    token = es_request("POST", token_path)["token"]["value"]
    write_private(BASE / "secrets" / "kibana-service-token", token)
    if os.geteuid() == 0:
        os.chown(BASE / "secrets" / "kibana-service-token", SERVICE_UID, 0)
    say(f"Elasticsearch: role bp_pipeline, user {PIPELINE_USER}, Kibana's service token")
    grant_kafka_acls()
    say(f"Kafka: {PIPELINE_USER} may use the topics {', '.join(p + '*' for p in RESOURCE_PREFIXES)}")


def grant_kafka_acls() -> None:
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType,
                                       ResourceType)

    admin = AdminClient({
        "bootstrap.servers": KAFKA_INTERNAL, "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": KAFKA_ADMIN_USER, "sasl.password": secret("kafka-admin"),
        "ssl.ca.location": str(BASE / "certs" / "ca.crt"),
    })
    principal = f"User:{PIPELINE_USER}"
    bindings = [AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, principal, "*",
                           AclOperation.ALL, AclPermissionType.ALLOW) for prefix in RESOURCE_PREFIXES]
    bindings += [AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, principal, "*",
                            operation, AclPermissionType.ALLOW) for operation in (AclOperation.READ, AclOperation.DESCRIBE)]
    for future in admin.create_acls(bindings, request_timeout=60).values():
        future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["certs", "users"])
    args = parser.parse_args(argv)
    os.umask(0o077)
    try:
        if args.step == "certs":
            cmd_certs()
        else:
            cmd_users()
    except StackError as exc:
        print(f"[setup] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
