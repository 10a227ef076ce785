#!/usr/bin/env python3
"""Run bp-monitor's local stack, Kafka (KRaft) and Elasticsearch, as plain processes.

Usage::

    python3 stack/localstack.py up       # download once, start both, wait until both answer
    python3 stack/localstack.py down     # stop both
    python3 stack/localstack.py status   # what runs, where it listens, where it logs
    python3 stack/localstack.py clean    # stop both and remove all their state

No Docker: Kafka comes from the ``org.apache.kafka`` artifacts and Elasticsearch from
the ``integ-test-zip`` distribution, both fetched from Maven Central with Maven and run
with this machine's Java. Versions come from ``.env``. Downloads, data and logs live under
one git-ignored folder, ``.stack/`` (or ``$BP_STACK_DIR``); a second ``up`` reuses them.

Secure by default: the first ``up`` makes a private CA and a server certificate (OpenSSL,
under ``.stack/certs``) and random passwords (``.stack/secrets``); Elasticsearch serves HTTPS
with security on, Kafka a SASL_SSL listener (SCRAM-SHA-512) with ACLs. Both get a user
``bp-pipeline`` with only the privileges the pipeline needs, and ``.stack/env`` (mode 0600)
holds every client setting as ``BP_*`` variables, which the jobs read by default. Every file
under ``.stack/`` is readable by its owner only.

Elasticsearch refuses to run as root, so under root it runs as the system user
``bpmonitor`` (created on first use), from a folder of its own under ``/var/lib/bp-monitor``
(``.stack/elasticsearch`` links to it): no parent folder of the checkout is opened to other
users. Only the standard library is used: this script runs before the project's virtual
environment exists.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE_USER = "bpmonitor"
# Under root, Elasticsearch's distribution and node live here, owned by SERVICE_USER.
SERVICE_HOME = Path("/var/lib/bp-monitor")
# The user the jobs connect as (Elasticsearch and Kafka), and the Kafka broker's own user.
PIPELINE_USER = "bp-pipeline"
KAFKA_ADMIN_USER = "admin"
# What the pipeline user may touch: its default indices and topics, and the names the tests,
# benches and the chaos run give theirs (bp_test_*, bp_chaos_*, bench_*).
RESOURCE_PREFIXES = ("fhir_observations", "bp_", "bench_")
KAFKA_HEAP = "-Xms256m -Xmx512m"
ES_HEAP = "-Xms512m -Xmx512m"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


class StackError(Exception):
    """A problem that stops the stack from coming up; the message says what to do."""


def read_versions(path: Path = ROOT / ".env") -> dict[str, str]:
    """Read ``KEY=VALUE`` lines of ``.env``; the environment overrides each key."""
    if not path.is_file():
        raise StackError(f"{path} is missing: it holds the service versions. Restore it from git.")
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = os.environ.get(key.strip(), value.strip())
    return versions


@dataclass(frozen=True)
class Layout:
    """Where everything of the local stack lives."""

    base: Path
    kafka_version: str
    es_version: str
    kafka_port: int
    controller_port: int
    es_port: int
    es_transport_port: int

    @property
    def es_base(self) -> Path:
        """Where Elasticsearch's distribution and node live: under ``.stack`` unless we are root,
        then in a folder of the service user that no parent of the checkout has to open."""
        if os.geteuid() != 0:
            return self.base
        return SERVICE_HOME / hashlib.sha256(f"{self.base}|{self.instance}".encode()).hexdigest()[:12]

    @property
    def instance(self) -> str:
        """This stack's random id (``.stack/instance-id``): a new ``.stack`` at the same path (a fresh
        clone where an old one was) gets a node folder of its own, never the old one's data."""
        try:
            return (self.base / "instance-id").read_text().strip()
        except FileNotFoundError:
            return ""

    @property
    def certs(self) -> Path:
        return self.base / "certs"

    @property
    def secrets(self) -> Path:
        return self.base / "secrets"

    @property
    def env_file(self) -> Path:
        return self.base / "env"

    @property
    def downloads(self) -> Path:
        return self.base / "downloads"

    @property
    def maven_repo(self) -> Path:
        return self.downloads / "m2"

    @property
    def kafka_libs(self) -> Path:
        return self.downloads / f"kafka-{self.kafka_version}" / "libs"

    @property
    def kafka_dir(self) -> Path:
        return self.base / "kafka"

    @property
    def kafka_log(self) -> Path:
        return self.kafka_dir / "kafka.log"

    @property
    def es_zip(self) -> Path:
        return self.downloads / f"elasticsearch-{self.es_version}.zip"

    @property
    def es_home(self) -> Path:
        return self.es_base / "downloads" / f"elasticsearch-{self.es_version}"

    @property
    def es_dir(self) -> Path:
        return self.es_base / "elasticsearch"

    @property
    def es_log(self) -> Path:
        return self.es_dir / "logs" / "bp-monitor.log"


def layout_from_env() -> Layout:
    """Build the layout from ``.env`` and the ``BP_*`` environment overrides."""
    versions = read_versions()
    base = Path(os.environ.get("BP_STACK_DIR", ROOT / ".stack")).resolve()
    return Layout(
        base=base,
        kafka_version=versions["KAFKA_VERSION"],
        es_version=versions["ES_VERSION"],
        kafka_port=int(os.environ.get("BP_KAFKA_PORT", "9092")),
        controller_port=int(os.environ.get("BP_KAFKA_CONTROLLER_PORT", "9093")),
        es_port=int(os.environ.get("BP_ES_PORT", "9200")),
        es_transport_port=int(os.environ.get("BP_ES_TRANSPORT_PORT", "9300")),
    )


# --------------------------------------------------------------------------- helpers


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log, indented, for an error message."""
    if not path.is_file():
        return f"    ({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in text)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def read_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process is alive, else None."""
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid


def find_java() -> tuple[Path, int]:
    """The java binary (``$JAVA_HOME`` first, then ``PATH``) and its major version."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is None or not candidate.exists():
        found = shutil.which("java")
        candidate = Path(found) if found else None
    if candidate is None:
        raise StackError(
            "No Java found: Kafka and Elasticsearch need Java 17 or newer. Install it "
            "(Debian/Ubuntu: apt-get install -y openjdk-17-jdk-headless) or set JAVA_HOME."
        )
    out = subprocess.run([str(candidate), "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise StackError(f"Cannot read the Java version from `{candidate} -version`:\n{out}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 17:
        raise StackError(
            f"{candidate} is Java {major}; Kafka 4 and Elasticsearch 8 need Java 17 or newer. "
            "Install openjdk-17-jdk-headless or point JAVA_HOME at a newer JDK."
        )
    return candidate.resolve(), major


def java_home_of(java: Path) -> Path:
    return java.parent.parent


def mvn(layout: Layout, goal_args: list[str], what: str) -> None:
    """Run Maven against stack/pom.xml; a failure becomes a StackError with its output."""
    exe = shutil.which("mvn")
    if exe is None:
        raise StackError(
            "Maven (mvn) is needed to fetch Kafka and Elasticsearch from Maven Central. "
            "Install it (Debian/Ubuntu: apt-get install -y maven) and run `make up` again."
        )
    cmd = [
        exe, "-B", "-q", "-f", str(ROOT / "stack" / "pom.xml"),
        f"-Dmaven.repo.local={layout.maven_repo}",
        f"-Dkafka.version={layout.kafka_version}",
        *goal_args,
    ]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise StackError(
            f"Download of {what} failed (mvn exit {result.returncode}).\n{output}\n"
            "Check that Maven Central is reachable (proxy settings go in ~/.m2/settings.xml) "
            "and that the version in .env exists, then run `make up` again."
        )
    say(f"downloaded {what} in {time.monotonic() - started:.0f} s")


def check_port_free(port: int, service: str, pid_file: Path) -> None:
    """Fail clearly when another process holds a port one of our services needs."""
    if port_open(port) and read_pid(pid_file) is None:
        owner = ""
        if shutil.which("ss"):
            out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
            owner = f" ({out.strip()})" if out.strip() else ""
        raise StackError(
            f"Port {port}, needed by {service}, is already taken by another process{owner}. "
            f"Stop that process (or a stack started from another checkout: `make down` there), "
            "or choose other ports with BP_KAFKA_PORT / BP_ES_PORT."
        )


def wait_until(check, timeout_s: float, pid_file: Path, log: Path, service: str) -> float:
    """Poll ``check`` until it is true; fail with the log's tail if the process dies or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        if read_pid(pid_file) is None and time.monotonic() - started > 2:
            raise StackError(f"{service} exited while starting. Last lines of {log}:\n{tail(log)}")
        time.sleep(0.5)
    raise StackError(f"{service} did not answer within {timeout_s} s. Last lines of {log}:\n{tail(log)}")


# --------------------------------------------------------------------------- secrets and certificates


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def password_file(folder: Path, name: str) -> Path:
    """``folder/name``, a random password made (0600) on first use."""
    path = private_dir(folder) / name
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))
    return path


def secret_file(layout: Layout, name: str) -> Path:
    """The file holding the local stack's password ``name``."""
    return password_file(layout.secrets, name)


def secret(layout: Layout, name: str) -> str:
    return secret_file(layout, name).read_text().strip()


def openssl(*args: str, what: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise StackError("OpenSSL is needed to make the local stack's certificates. Install it "
                         "(Debian/Ubuntu: apt-get install -y openssl) and run `make up` again.")
    result = subprocess.run([exe, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"Making {what} failed (openssl exit {result.returncode}):\n{result.stderr[-2000:]}")


def ensure_certificates(layout: Layout, java: Path) -> None:
    """The local stack's CA and server certificate (for localhost), made once."""
    if not (layout.certs / "truststore.p12").exists():
        started = time.monotonic()
        make_certificates(layout.certs, secret_file(layout, "truststore"), java.parent / "keytool",
                          dns=["localhost"], ips=["127.0.0.1", "::1"])
        say(f"made a private CA and a server certificate for localhost in {time.monotonic() - started:.0f} s "
            f"({layout.certs})")


def make_certificates(certs: Path, truststore_password: Path, keytool: Path, dns: list[str], ips: list[str]) -> None:
    """A private CA and one server certificate for ``dns`` and ``ips`` in ``certs``.

    ``server.key`` is PKCS#8 (Kafka's PEM key store needs it), ``server.pem`` holds key and
    chain for Kafka, and ``truststore.p12`` holds the CA for the Spark Elasticsearch connector,
    which does not take PEM. Used by the local stack and by docker compose's setup service.
    """
    private_dir(certs)
    openssl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-days", "3650", "-subj", "/CN=bp-monitor local CA",
            "-keyout", str(certs / "ca.key"), "-out", str(certs / "ca.crt"), what="the local CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={dns[0]}",
            "-keyout", str(certs / "server.key"), "-out", str(certs / "server.csr"), what="the server key")
    names = ",".join([f"DNS:{name}" for name in dns] + [f"IP:{ip}" for ip in ips])
    extensions = certs / "server.ext"
    extensions.write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", str(certs / "server.csr"), "-CA", str(certs / "ca.crt"),
            "-CAkey", str(certs / "ca.key"), "-CAcreateserial", "-days", "825", "-sha256",
            "-extfile", str(extensions), "-out", str(certs / "server.crt"), what="the server certificate")
    write_private(certs / "server.pem", (certs / "server.key").read_text() + (certs / "server.crt").read_text()
                  + (certs / "ca.crt").read_text())
    (certs / "truststore.p12").unlink(missing_ok=True)
    result = subprocess.run(
        [str(keytool), "-importcert", "-noprompt", "-alias", "bp-monitor-ca", "-storetype", "PKCS12",
         "-file", str(certs / "ca.crt"), "-keystore", str(certs / "truststore.p12"),
         "-storepass:file", str(truststore_password)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(f"Making the trust store failed (keytool exit {result.returncode}):\n{result.stdout}{result.stderr}")
    for leftover in ("server.csr", "server.ext", "ca.srl"):
        (certs / leftover).unlink(missing_ok=True)


def write_client_env(layout: Layout) -> None:
    """``.stack/env``: every setting a client of this stack needs, as the jobs' BP_* variables."""
    lines = [
        "# Written by `make up` (stack/localstack.py): how to reach the local stack. The jobs read it",
        "# by default; the environment overrides each key. Passwords stay in the files named here.",
        "BP_SECURITY_MODE=tls",
        f"BP_SECURITY_CA_FILE={layout.certs / 'ca.crt'}",
        f"BP_SECURITY_TRUSTSTORE_FILE={layout.certs / 'truststore.p12'}",
        f"BP_SECURITY_TRUSTSTORE_PASSWORD_FILE={secret_file(layout, 'truststore')}",
        f"BP_KAFKA_BOOTSTRAP_SERVERS=localhost:{layout.kafka_port}",
        f"BP_KAFKA_USERNAME={PIPELINE_USER}",
        f"BP_KAFKA_PASSWORD_FILE={secret_file(layout, 'kafka-pipeline')}",
        f"BP_ELASTICSEARCH_URL=https://localhost:{layout.es_port}",
        f"BP_ELASTICSEARCH_USERNAME={PIPELINE_USER}",
        f"BP_ELASTICSEARCH_PASSWORD_FILE={secret_file(layout, 'es-pipeline')}",
        "",
    ]
    text = "\n".join(lines)
    if not layout.env_file.exists() or layout.env_file.read_text() != text:
        write_private(layout.env_file, text)


# --------------------------------------------------------------------------- Kafka


def kafka_pid_file(layout: Layout) -> Path:
    return layout.kafka_dir / "kafka.pid"


def scram_jaas(user: str, password: str) -> str:
    """The JAAS line a Kafka client or listener logs in with, by SCRAM."""
    return ("org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";')


def admin_client_properties(password: str, ca_file: Path, bootstrap: str | None = None) -> str:
    """Properties of a Kafka admin tool (kafka-topics.sh, KafkaAcls.java) signed in as the broker's own user."""
    lines = [f"bootstrap.servers={bootstrap}"] if bootstrap else []
    return "\n".join([*lines, "security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512",
                      f"sasl.jaas.config={scram_jaas(KAFKA_ADMIN_USER, password)}",
                      "ssl.truststore.type=PEM", f"ssl.truststore.location={ca_file}", ""])


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
    ``Uuid.randomUuid``, it never starts with '-': the storage tool's argument parser would read
    such an id as an option (``--cluster-id: expected one argument``), one first run in 64."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def storage_format_args(cluster_id: str, props: Path, passwords: dict[str, str]) -> str:
    """A Java argument file that formats Kafka's storage with a SCRAM user per ``{user: password}``:
    the storage tool reads the passwords from it, not from a command line, where ``ps`` shows them."""
    args = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props), "--ignore-formatted"]
    for user, password in passwords.items():
        args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    return "\n".join(f'"{a}"' for a in args) + "\n"


def https_json(url: str, ca_file: Path, user: str, password: str, method: str = "GET", body: dict | None = None,
               timeout: float = 5) -> dict:
    """One HTTPS request with basic auth, trusting only ``ca_file``; its JSON answer."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
        return json.load(resp)


def kafka_properties(layout: Layout) -> str:
    jaas = scram_jaas(KAFKA_ADMIN_USER, secret(layout, "kafka-admin"))
    return "\n".join([
        "# written by stack/localstack.py: single-node KRaft broker and controller. Clients connect",
        "# over SASL_SSL (SCRAM-SHA-512, TLS with the stack's CA) and are authorised by ACLs; the",
        "# controller listener, broker to controller in this one process, stays on loopback.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{layout.controller_port}",
        f"listeners=SASL_SSL://127.0.0.1:{layout.kafka_port},CONTROLLER://127.0.0.1:{layout.controller_port}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{layout.kafka_port}",
        "inter.broker.listener.name=SASL_SSL",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={layout.certs / 'server.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={layout.certs / 'ca.crt'}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # The broker's own user, and the controller listener's unauthenticated loopback peer.
        f"super.users=User:{KAFKA_ADMIN_USER};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found=false",
        f"log.dirs={layout.kafka_dir / 'data'}",
        "num.partitions=3",
        "auto.create.topics.enable=true",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ])


def format_kafka_storage(layout: Layout, java: Path, props: Path) -> None:
    """Format the broker's storage with the SCRAM users in its first metadata.

    The passwords reach the tool through a Java argument file (0600, removed at once), not the
    command line, where ``ps`` would show them.
    """
    data = layout.kafka_dir / "data"
    secured = layout.kafka_dir / "scram-users"
    if (data / "meta.properties").exists() and secured.exists():
        return
    if data.exists():
        say("Kafka's data predates the stack's security (no SCRAM users): removing it and its topics")
        shutil.rmtree(data)
    cluster_id = new_cluster_id()
    passwords = {KAFKA_ADMIN_USER: secret(layout, "kafka-admin"), PIPELINE_USER: secret(layout, "kafka-pipeline")}
    argfile = layout.kafka_dir / "format.args"
    write_private(argfile, storage_format_args(cluster_id, props, passwords))
    try:
        cmd = kafka_java_cmd(layout, java, f"@{argfile}")
        result = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        argfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise StackError(f"Formatting Kafka's storage failed:\n{result.stdout}{result.stderr}")
    secured.write_text(f"{KAFKA_ADMIN_USER}\n{PIPELINE_USER}\n")
    (layout.kafka_dir / "acls-v1").unlink(missing_ok=True)  # new storage: no ACL yet


def grant_kafka_acls(layout: Layout, java: Path) -> None:
    """The pipeline user's ACLs: its topics (by prefix) and consumer groups, nothing on the cluster."""
    marker = layout.kafka_dir / "acls-v1"
    if marker.exists():
        return
    admin_config = layout.kafka_dir / "admin.properties"
    write_private(admin_config, admin_client_properties(secret(layout, "kafka-admin"), layout.certs / "ca.crt",
                                                        bootstrap=f"127.0.0.1:{layout.kafka_port}"))
    source = ROOT / "stack" / "KafkaAcls.java"
    cmd = [str(java), "-cp", f"{layout.kafka_libs}/*", f"-Dlog4j2.configurationFile={ROOT / 'stack' / 'kafka-log4j2.properties'}",
           str(source), str(admin_config), PIPELINE_USER, *RESOURCE_PREFIXES]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    admin_config.unlink(missing_ok=True)
    if result.returncode != 0:
        raise StackError(f"Granting the Kafka ACLs failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    marker.write_text("".join(line + "\n" for line in result.stdout.splitlines() if line.startswith("ResourcePattern")))
    say(f"granted {PIPELINE_USER} its Kafka topics and groups ({', '.join(p + '*' for p in RESOURCE_PREFIXES)})")


def kafka_java_cmd(layout: Layout, java: Path, main: str, *args: str) -> list[str]:
    log_conf = ROOT / "stack" / "kafka-log4j2.properties"
    return [
        str(java), *KAFKA_HEAP.split(), "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_conf}",
        "-cp", f"{layout.kafka_libs}/*", main, *args,
    ]


def ensure_kafka_downloaded(layout: Layout) -> None:
    marker = layout.kafka_libs / ".complete"
    if marker.exists():
        return
    say(f"downloading Kafka {layout.kafka_version} (first run only)")
    if layout.kafka_libs.exists():
        shutil.rmtree(layout.kafka_libs)
    mvn(layout, ["dependency:copy-dependencies", "-DincludeScope=runtime",
                 f"-DoutputDirectory={layout.kafka_libs}"], f"Kafka {layout.kafka_version}")
    marker.touch()


def start_kafka(layout: Layout, java: Path) -> None:
    pid_file = kafka_pid_file(layout)
    if read_pid(pid_file) is not None and port_open(layout.kafka_port):
        say(f"Kafka already running (pid {read_pid(pid_file)})")
        return
    check_port_free(layout.kafka_port, "Kafka", pid_file)
    check_port_free(layout.controller_port, "the Kafka controller", pid_file)
    ensure_kafka_downloaded(layout)
    private_dir(layout.kafka_dir)
    props = layout.kafka_dir / "server.properties"
    write_private(props, kafka_properties(layout))
    format_kafka_storage(layout, java, props)
    with open(layout.kafka_log, "ab") as log:
        proc = subprocess.Popen(
            kafka_java_cmd(layout, java, "kafka.Kafka", str(props)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    seconds = wait_until(lambda: port_open(layout.kafka_port) and kafka_started(layout),
                         START_TIMEOUT_S, pid_file, layout.kafka_log, "Kafka")
    say(f"Kafka up in {seconds:.0f} s (SASL_SSL on 127.0.0.1:{layout.kafka_port})")
    grant_kafka_acls(layout, java)


def kafka_started(layout: Layout) -> bool:
    """The broker logs this once it serves clients; the open port alone comes earlier."""
    try:
        with open(layout.kafka_log, "rb") as log:
            log.seek(max(0, layout.kafka_log.stat().st_size - 200_000))
            return b"Kafka Server started" in log.read()
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- Elasticsearch


def es_pid_file(layout: Layout) -> Path:
    return layout.es_dir / "elasticsearch.pid"


def es_url(layout: Layout, path: str) -> str:
    return f"https://localhost:{layout.es_port}{path}"


def es_request(layout: Layout, method: str, path: str, body: dict | None = None, timeout: float = 5) -> dict:
    """One HTTPS request to the local node as ``elastic``, trusting only the stack's CA."""
    return https_json(es_url(layout, path), layout.certs / "ca.crt", "elastic", secret(layout, "elastic"), method,
                      body, timeout)


def es_healthy(layout: Layout) -> bool:
    # The stripped distribution has no handler on "/", so health is asked of the cluster API.
    try:
        return es_request(layout, "GET", "/_cluster/health", timeout=2).get("status") in ("green", "yellow")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def es_config(layout: Layout) -> str:
    return "\n".join([
        "# written by stack/localstack.py: one local node on loopback, security and HTTPS on",
        "cluster.name: bp-monitor",
        "node.name: bp-monitor-local",
        f"path.data: {layout.es_dir / 'data'}",
        f"path.logs: {layout.es_dir / 'logs'}",
        "network.host: 127.0.0.1",
        f"http.port: {layout.es_port}",
        f"transport.port: {layout.es_transport_port}",
        "discovery.type: single-node",
        "xpack.security.enabled: true",
        "xpack.security.http.ssl.enabled: true",
        "xpack.security.http.ssl.key: certs/server.key",
        "xpack.security.http.ssl.certificate: certs/server.crt",
        "xpack.security.http.ssl.certificate_authorities: certs/ca.crt",
        # One node, transport bound to loopback: no other node to authenticate.
        "xpack.security.transport.ssl.enabled: false",
        "xpack.license.self_generated.type: basic",
        # A development disk may be nearly full; the default watermarks would then turn
        # every index read-only and the pipeline would stall for no reason of its own.
        "cluster.routing.allocation.disk.threshold_enabled: false",
        "",
    ])


def es_tool(layout: Layout, java: Path, tool: str, *args: str, stdin: str | None = None) -> None:
    """Run one of the distribution's command-line tools on the node's config folder."""
    env = dict(os.environ, ES_JAVA_HOME=str(java_home_of(java)), ES_PATH_CONF=str(layout.es_dir / "config"))
    env.pop("JAVA_HOME", None)
    result = subprocess.run([str(layout.es_home / "bin" / tool), *args], env=env, input=stdin,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise StackError(f"{tool} {' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")


def configure_es_security(layout: Layout, java: Path) -> None:
    """Certificates under the node's config folder; the pipeline's role (``roles.yml``) and user
    (file realm); the ``elastic`` user's password in the key store. Passwords reach the tools
    on stdin, never on a command line. (The stripped distribution cannot hold the native realm's
    index, so users live in files.)"""
    conf = layout.es_dir / "config"
    certs = private_dir(conf / "certs")
    for name in ("ca.crt", "server.crt", "server.key"):
        write_private(certs / name, (layout.certs / name).read_text())
    write_private(conf / "roles.yml", "# written by stack/localstack.py\nbp_pipeline: " + json.dumps(pipeline_role()) + "\n")
    stamp = conf / "security.source"
    sources = [secret_file(layout, "elastic"), secret_file(layout, "es-pipeline")]
    fingerprint = " ".join(str(path.stat().st_mtime_ns) for path in sources)
    if stamp.exists() and stamp.read_text() == fingerprint and (conf / "elasticsearch.keystore").exists():
        return
    (conf / "elasticsearch.keystore").unlink(missing_ok=True)
    es_tool(layout, java, "elasticsearch-keystore", "create")
    es_tool(layout, java, "elasticsearch-keystore", "add", "--stdin", "--force", "bootstrap.password",
            stdin=secret(layout, "elastic"))
    for name in ("users", "users_roles"):
        write_private(conf / name, "")
    password = secret(layout, "es-pipeline")
    es_tool(layout, java, "elasticsearch-users", "useradd", PIPELINE_USER, "-r", "bp_pipeline",
            stdin=f"{password}\n{password}\n")
    stamp.write_text(fingerprint)


def pipeline_role() -> dict:
    """The pipeline user's privileges: its indices and their templates, and reading the cluster's health."""
    return {
        "cluster": ["monitor", "manage_index_templates"],
        "indices": [{"names": [f"{prefix}*" for prefix in RESOURCE_PREFIXES], "privileges": ["all"]}],
    }


def ensure_es_downloaded(layout: Layout) -> None:
    if (layout.es_home / "bin" / "elasticsearch").exists():
        return
    if not layout.es_zip.exists():
        say(f"downloading Elasticsearch {layout.es_version} (first run only, ~100 MB)")
        mvn(layout, ["dependency:copy",
                     f"-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:{layout.es_version}:zip",
                     f"-DoutputDirectory={layout.downloads}"], f"Elasticsearch {layout.es_version}")
    staging = layout.es_home.parent / f".unzip-{layout.es_version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(layout.es_zip) as archive:
            archive.extractall(staging)
    except zipfile.BadZipFile as exc:
        layout.es_zip.unlink()
        raise StackError(f"{layout.es_zip} is damaged ({exc}); it was removed: run `make up` again.") from exc
    (staging / f"elasticsearch-{layout.es_version}").rename(layout.es_home)
    staging.rmdir()
    for script in (layout.es_home / "bin").iterdir():
        script.chmod(0o755)


def install_root_info_plugin(layout: Layout, java: Path) -> None:
    """Build and install stack/es-root-plugin, which serves ``GET /`` on the stripped distribution.

    The integ-test zip lacks the module that answers ``GET /``; the Spark connector asks it
    before every write. The plugin is compiled here against the distribution's own jars.
    """
    if (layout.es_home / "modules" / "rest-root").exists():
        return  # a distribution with its own root handler needs nothing
    target = layout.es_home / "plugins" / "bp-root-info"
    jar = target / "bp-root-info.jar"
    if jar.exists():
        return
    javac = java.parent / "javac"
    if not javac.exists():
        raise StackError(
            f"javac not found next to {java}: a JDK (not only a JRE) is needed to build the local "
            "Elasticsearch's root-info plugin. Install openjdk-17-jdk-headless or point JAVA_HOME at a JDK."
        )
    source_dir = ROOT / "stack" / "es-root-plugin"
    build_dir = layout.downloads / "es-root-plugin-build"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    sources = [str(p) for p in (source_dir / "src").rglob("*.java")]
    result = subprocess.run(
        [str(javac), "--release", "17", "-nowarn", "-cp", f"{layout.es_home / 'lib'}/*", "-d", str(build_dir), *sources],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(f"Building the Elasticsearch root-info plugin failed:\n{result.stdout}{result.stderr}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(build_dir.rglob("*.class")):
            archive.write(path, path.relative_to(build_dir).as_posix())
    descriptor = (source_dir / "plugin-descriptor.properties.in").read_text()
    (target / "plugin-descriptor.properties").write_text(descriptor.replace("@ES_VERSION@", layout.es_version))
    shutil.rmtree(build_dir)
    say("built the root-info plugin for the local Elasticsearch")


def service_user() -> pwd.struct_passwd | None:
    """The unprivileged user Elasticsearch runs as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        say(f"creating system user '{SERVICE_USER}' (Elasticsearch refuses to run as root)")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVICE_USER], check=True)
        return pwd.getpwnam(SERVICE_USER)


def hand_over(layout: Layout, user: pwd.struct_passwd) -> None:
    """Give the service user Elasticsearch's files, in a folder of their own: no parent folder of
    the checkout (``/root`` often) is opened to other users."""
    if layout.es_base != layout.base:
        SERVICE_HOME.mkdir(parents=True, exist_ok=True)
        SERVICE_HOME.chmod(0o711)  # ours: the service user may pass through, nobody may list
        layout.es_base.chmod(0o700)
        owned = [layout.es_base]
    else:
        owned = [layout.es_home, layout.es_dir]
    for path in owned:
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)


def link_es_dir(layout: Layout) -> None:
    """Under root: ``.stack/elasticsearch`` points at the node's folder (logs, pid file), and a
    node folder of an older layout, inside ``.stack``, moves there with its data."""
    link = layout.base / "elasticsearch"
    if layout.es_dir == link:
        return
    if link.is_dir() and not link.is_symlink() and not layout.es_dir.exists():
        say(f"moving Elasticsearch's node folder to {layout.es_dir} (owned by {SERVICE_USER})")
        layout.es_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(link), str(layout.es_dir))
    elif link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    if link.is_symlink() and Path(os.readlink(link)) != layout.es_dir:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(layout.es_dir)
    write_private(layout.es_base / "owner.json", json.dumps({"stack": str(layout.base), "instance": layout.instance}))


def remove_orphaned_nodes(layout: Layout) -> None:
    """Delete the node folders under ``/var/lib/bp-monitor`` whose stack is gone (its checkout
    deleted, or its ``.stack`` made anew): they hold patient data nobody can reach any more. A
    folder whose node still runs is left alone."""
    if layout.es_base == layout.base or not SERVICE_HOME.is_dir():
        return
    for folder in SERVICE_HOME.iterdir():
        if folder == layout.es_base or not folder.is_dir():
            continue
        try:
            owner = json.loads((folder / "owner.json").read_text())
            alive = (Path(owner["stack"]) / "instance-id").read_text().strip() == owner["instance"]
        except (OSError, ValueError, KeyError):
            alive = False
        if alive or read_pid(folder / "elasticsearch" / "elasticsearch.pid") is not None:
            continue
        shutil.rmtree(folder)
        say(f"removed {folder}: the Elasticsearch data of a local stack that no longer exists")


def start_es(layout: Layout, java: Path) -> None:
    pid_file = es_pid_file(layout)
    if read_pid(pid_file) is not None and es_healthy(layout):
        say(f"Elasticsearch already running (pid {read_pid(pid_file)})")
        return
    check_port_free(layout.es_port, "Elasticsearch", pid_file)
    check_port_free(layout.es_transport_port, "Elasticsearch (transport)", pid_file)
    private_dir(layout.es_base)
    link_es_dir(layout)
    ensure_es_downloaded(layout)
    install_root_info_plugin(layout, java)
    conf = layout.es_dir / "config"
    for sub in ("data", "logs", "tmp"):
        private_dir(layout.es_dir / sub)
    if not conf.exists():
        shutil.copytree(layout.es_home / "config", conf)
    write_private(conf / "elasticsearch.yml", es_config(layout))
    configure_es_security(layout, java)
    env = dict(os.environ, ES_JAVA_HOME=str(java_home_of(java)), ES_PATH_CONF=str(conf),
               ES_JAVA_OPTS=ES_HEAP, ES_TMPDIR=str(layout.es_dir / "tmp"))
    env.pop("JAVA_HOME", None)  # ES warns when both are set; ES_JAVA_HOME decides
    cmd = [str(layout.es_home / "bin" / "elasticsearch"), "-d", "-p", str(pid_file)]
    user = service_user()
    if user is not None:
        hand_over(layout, user)
        cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *cmd]
    startup_log = layout.es_dir / "logs" / "startup.log"
    with open(startup_log, "ab") as log:
        # With -d the launcher returns once the node started or failed.
        result = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=START_TIMEOUT_S)
    if result.returncode != 0:
        raise StackError(
            f"Elasticsearch failed to start (exit {result.returncode}). Last lines of {startup_log}:\n"
            f"{tail(startup_log)}\nand of {layout.es_log}:\n{tail(layout.es_log)}"
        )
    seconds = wait_until(lambda: es_healthy(layout), START_TIMEOUT_S, pid_file, layout.es_log, "Elasticsearch")
    say(f"Elasticsearch up ({seconds:.0f} s after the launcher returned; HTTPS, security on)")


# --------------------------------------------------------------------------- commands


def stop(pid_file: Path, service: str) -> None:
    pid = read_pid(pid_file)
    if pid is None:
        say(f"{service} is not running")
        pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and read_pid(pid_file) is not None:
        time.sleep(0.3)
    if read_pid(pid_file) is not None:
        say(f"{service} did not stop within {STOP_TIMEOUT_S} s; killing it")
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    say(f"{service} stopped (pid {pid})")


def cmd_up(layout: Layout) -> None:
    java, major = find_java()
    say(f"Java {major} at {java}; state under {layout.base}")
    private_dir(layout.base)
    if not layout.instance:
        write_private(layout.base / "instance-id", uuid.uuid4().hex)
    remove_orphaned_nodes(layout)
    layout.downloads.mkdir(parents=True, exist_ok=True)
    old_home = layout.downloads / f"elasticsearch-{layout.es_version}"
    if layout.es_home != old_home and old_home.is_dir():  # an older layout's copy, now unused
        shutil.rmtree(old_home)
    ensure_certificates(layout, java)
    start_kafka(layout, java)
    start_es(layout, java)
    write_client_env(layout)
    say(f"client settings (TLS, users, password files) in {layout.env_file}; the jobs read it by default")
    cmd_status(layout)


def cmd_down(layout: Layout) -> None:
    stop(kafka_pid_file(layout), "Kafka")
    stop(es_pid_file(layout), "Elasticsearch")


def cmd_status(layout: Layout) -> bool:
    kafka_ok = read_pid(kafka_pid_file(layout)) is not None and port_open(layout.kafka_port)
    es_ok = read_pid(es_pid_file(layout)) is not None and es_healthy(layout)
    state = {True: "running", False: "stopped"}
    say(f"Kafka {layout.kafka_version:<8} {state[kafka_ok]:<8} bootstrap 127.0.0.1:{layout.kafka_port}   log {layout.kafka_log}")
    say(f"Elasticsearch {layout.es_version:<8} {state[es_ok]:<8} {es_url(layout, '')}   log {layout.es_log}")
    return kafka_ok and es_ok


def cmd_clean(layout: Layout) -> None:
    """Stop the stack and remove its state: ``.stack`` and, under root, the node's own folder."""
    cmd_down(layout)
    if layout.es_base != layout.base and layout.es_base.exists():
        shutil.rmtree(layout.es_base)
    if layout.base.exists():
        shutil.rmtree(layout.base)
    say(f"removed {layout.base}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "clean"])
    args = parser.parse_args(argv)
    os.umask(0o077)  # every file and folder the stack makes is its owner's alone
    try:
        layout = layout_from_env()
        if args.command == "up":
            cmd_up(layout)
        elif args.command == "down":
            cmd_down(layout)
        elif args.command == "clean":
            cmd_clean(layout)
        else:
            return 0 if cmd_status(layout) else 1
    except StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
