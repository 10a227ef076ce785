#!/usr/bin/env python3
"""Run bp-monitor's local stack, Kafka (KRaft) and Elasticsearch, as plain processes.

Usage::

    python3 stack/localstack.py up       # download once, start both, wait until both answer
    python3 stack/localstack.py down     # stop both
    python3 stack/localstack.py status   # what runs, where it listens, where it logs

No Docker: Kafka comes from the ``org.apache.kafka`` artifacts and Elasticsearch from
the ``integ-test-zip`` distribution, both fetched from Maven Central with Maven and run
with this machine's Java. Versions come from ``.env``. Downloads, data and logs live under
one git-ignored folder, ``.stack/`` (or ``$BP_STACK_DIR``); a second ``up`` reuses them.

Elasticsearch refuses to run as root, so under root it runs as the system user
``bpmonitor`` (created on first use). Only the standard library is used: this script
runs before the project's virtual environment exists.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import re
import shutil
import signal
import socket
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
        return self.downloads / f"elasticsearch-{self.es_version}"

    @property
    def es_dir(self) -> Path:
        return self.base / "elasticsearch"

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


# --------------------------------------------------------------------------- Kafka


def kafka_pid_file(layout: Layout) -> Path:
    return layout.kafka_dir / "kafka.pid"


def kafka_properties(layout: Layout) -> str:
    return "\n".join([
        "# written by stack/localstack.py: single-node KRaft broker and controller",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{layout.controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{layout.kafka_port},CONTROLLER://127.0.0.1:{layout.controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{layout.kafka_port}",
        "inter.broker.listener.name=PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
    layout.kafka_dir.mkdir(parents=True, exist_ok=True)
    props = layout.kafka_dir / "server.properties"
    props.write_text(kafka_properties(layout))
    if not (layout.kafka_dir / "data" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        result = subprocess.run(
            kafka_java_cmd(layout, java, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                           "-c", str(props), "--ignore-formatted"),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"Formatting Kafka's storage failed:\n{result.stdout}{result.stderr}")
    with open(layout.kafka_log, "ab") as log:
        proc = subprocess.Popen(
            kafka_java_cmd(layout, java, "kafka.Kafka", str(props)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    seconds = wait_until(lambda: port_open(layout.kafka_port) and kafka_started(layout),
                         START_TIMEOUT_S, pid_file, layout.kafka_log, "Kafka")
    say(f"Kafka up in {seconds:.0f} s")


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
    return f"http://127.0.0.1:{layout.es_port}{path}"


def es_healthy(layout: Layout) -> bool:
    # The stripped distribution has no handler on "/", so health is asked of the cluster API.
    try:
        with urllib.request.urlopen(es_url(layout, "/_cluster/health"), timeout=2) as resp:
            return json.load(resp).get("status") in ("green", "yellow")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def es_config(layout: Layout) -> str:
    return "\n".join([
        "# written by stack/localstack.py: one local node, security off on loopback",
        "cluster.name: bp-monitor",
        "node.name: bp-monitor-local",
        f"path.data: {layout.es_dir / 'data'}",
        f"path.logs: {layout.es_dir / 'logs'}",
        "network.host: 127.0.0.1",
        f"http.port: {layout.es_port}",
        f"transport.port: {layout.es_transport_port}",
        "discovery.type: single-node",
        "xpack.security.enabled: false",
        # A development disk may be nearly full; the default watermarks would then turn
        # every index read-only and the pipeline would stall for no reason of its own.
        "cluster.routing.allocation.disk.threshold_enabled: false",
        "",
    ])


def ensure_es_downloaded(layout: Layout) -> None:
    if (layout.es_home / "bin" / "elasticsearch").exists():
        return
    if not layout.es_zip.exists():
        say(f"downloading Elasticsearch {layout.es_version} (first run only, ~100 MB)")
        mvn(layout, ["dependency:copy",
                     f"-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:{layout.es_version}:zip",
                     f"-DoutputDirectory={layout.downloads}"], f"Elasticsearch {layout.es_version}")
    staging = layout.downloads / f".unzip-{layout.es_version}"
    shutil.rmtree(staging, ignore_errors=True)
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
    """Let the service user reach and own Elasticsearch's files."""
    for path in (layout.es_home, layout.es_dir):
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)
    # Every parent folder must be traversable (x) by the service user; /root often is not.
    for parent in reversed(layout.es_dir.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            say(f"allowing other users to traverse {parent} (chmod o+x; no listing, no reading)")
            parent.chmod(mode | 0o001)


def start_es(layout: Layout, java: Path) -> None:
    pid_file = es_pid_file(layout)
    if read_pid(pid_file) is not None and es_healthy(layout):
        say(f"Elasticsearch already running (pid {read_pid(pid_file)})")
        return
    check_port_free(layout.es_port, "Elasticsearch", pid_file)
    check_port_free(layout.es_transport_port, "Elasticsearch (transport)", pid_file)
    ensure_es_downloaded(layout)
    install_root_info_plugin(layout, java)
    conf = layout.es_dir / "config"
    for sub in ("data", "logs", "tmp"):
        (layout.es_dir / sub).mkdir(parents=True, exist_ok=True)
    if not conf.exists():
        shutil.copytree(layout.es_home / "config", conf)
    (conf / "elasticsearch.yml").write_text(es_config(layout))
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
    say(f"Elasticsearch up ({seconds:.0f} s after the launcher returned)")


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
    layout.downloads.mkdir(parents=True, exist_ok=True)
    start_kafka(layout, java)
    start_es(layout, java)
    cmd_status(layout)


def cmd_down(layout: Layout) -> None:
    stop(kafka_pid_file(layout), "Kafka")
    stop(es_pid_file(layout), "Elasticsearch")


def cmd_status(layout: Layout) -> bool:
    kafka_ok = read_pid(kafka_pid_file(layout)) is not None and port_open(layout.kafka_port)
    es_ok = read_pid(es_pid_file(layout)) is not None and es_healthy(layout)
    state = {True: "running", False: "stopped"}
    say(f"Kafka {layout.kafka_version:<8} {state[kafka_ok]:<8} bootstrap 127.0.0.1:{layout.kafka_port}   log {layout.kafka_log}")
    say(f"Elasticsearch {layout.es_version:<8} {state[es_ok]:<8} http://127.0.0.1:{layout.es_port}   log {layout.es_log}")
    return kafka_ok and es_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        layout = layout_from_env()
        if args.command == "up":
            cmd_up(layout)
        elif args.command == "down":
            cmd_down(layout)
        else:
            return 0 if cmd_status(layout) else 1
    except StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
