"""Tests of stack/localstack.py's failure paths: each says what went wrong and what to do."""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("localstack", ROOT / "stack" / "localstack.py")
localstack = importlib.util.module_from_spec(_spec)
sys.modules["localstack"] = localstack
_spec.loader.exec_module(localstack)


@pytest.fixture
def layout(tmp_path: Path):
    return dataclasses.replace(localstack.layout_from_env(), base=tmp_path / "stack")


def test_no_java_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(localstack.StackError, match=r"No Java found.*apt-get install -y openjdk-17-jdk-headless"):
        localstack.find_java()


def test_port_taken_by_a_stranger_is_named(layout) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(localstack.StackError, match=rf"Port {port}, needed by Kafka, is already taken.*BP_KAFKA_PORT"):
            localstack.check_port_free(port, "Kafka", layout.base / "kafka.pid")


def test_failed_download_reports_maven_output_and_next_step(layout) -> None:
    bad = dataclasses.replace(layout, kafka_version="0.0.0-does-not-exist")
    with pytest.raises(localstack.StackError) as err:
        localstack.ensure_kafka_downloaded(bad)
    message = str(err.value)
    assert "Download of Kafka 0.0.0-does-not-exist failed" in message
    assert "0.0.0-does-not-exist" in message.split("failed", 1)[1]  # Maven's own words follow
    assert "run `make up` again" in message


def test_service_that_dies_while_starting_shows_its_log(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("starting\nERROR: address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pid_file = tmp_path / "service.pid"
    pid_file.write_text(str(proc.pid))
    with pytest.raises(localstack.StackError, match=r"(?s)Kafka exited while starting.*address already in use"):
        localstack.wait_until(lambda: False, 5, pid_file, log, "Kafka")


def test_service_that_never_answers_times_out_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("waiting for quorum\n")
    pid_file = tmp_path / "service.pid"
    pid_file.write_text(str(subprocess.os.getpid()))  # alive: this very process
    with pytest.raises(localstack.StackError, match=r"(?s)did not answer within 1 s.*waiting for quorum"):
        localstack.wait_until(lambda: False, 1, pid_file, log, "Elasticsearch")


@pytest.mark.integration
def test_status_reports_the_running_stack() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "stack" / "localstack.py"), "status"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Kafka" in result.stdout and "running" in result.stdout
    assert "https://localhost:9200" in result.stdout


def test_node_folders_of_stacks_that_are_gone_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under root the node's data lives outside the checkout: deleting the checkout, or making its
    .stack anew (a fresh clone at the same path), must not leave patient data behind or hand the
    old indices to the new stack."""
    import json

    service_home = tmp_path / "service"
    monkeypatch.setattr(localstack, "SERVICE_HOME", service_home)
    monkeypatch.setattr(localstack.os, "geteuid", lambda: 0)

    def stack(name: str, instance: str) -> Path:
        base = tmp_path / name / ".stack"
        base.mkdir(parents=True)
        (base / "instance-id").write_text(instance)
        return base

    def node(folder: str, base: Path, instance: str) -> Path:
        path = service_home / folder
        (path / "elasticsearch").mkdir(parents=True)
        (path / "owner.json").write_text(json.dumps({"stack": str(base), "instance": instance}))
        return path

    mine = dataclasses.replace(localstack.layout_from_env(), base=stack("mine", "new"))
    neighbour = stack("neighbour", "n1")
    kept = [node("neighbour", neighbour, "n1"), mine.es_base]
    mine.es_base.mkdir(parents=True)
    removed = [node("deleted-checkout", tmp_path / "deleted" / ".stack", "d1"),
               node("my-old-stack", mine.base, "old"), service_home / "no-owner"]
    (service_home / "no-owner").mkdir()
    localstack.remove_orphaned_nodes(mine)
    assert all(path.exists() for path in kept)
    assert not any(path.exists() for path in removed)


def test_kafka_storage_formats_whatever_the_random_cluster_id(layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """One random id in 64 starts with '-', which the storage tool's parser took for an option
    (``--cluster-id: expected one argument``): a first ``make up`` failed at random. The id is
    drawn again, as Kafka's own Uuid.randomUuid does, and passed as ``--cluster-id=ID``; the real
    tool formats with it."""
    import base64
    import uuid

    dash_first = uuid.UUID(bytes=base64.urlsafe_b64decode("-" + "A" * 21 + "=="))
    drawn = iter([dash_first, uuid.UUID(int=7)])
    monkeypatch.setattr(localstack.uuid, "uuid4", lambda: next(drawn))
    assert localstack.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAABw"

    real = localstack.layout_from_env()
    if not real.kafka_libs.exists():
        pytest.fail(f"Kafka's libraries are not under {real.kafka_libs}: run `make up` first")
    layout.base.mkdir(parents=True)
    (layout.base / "downloads").symlink_to(real.downloads)
    layout.secrets.mkdir()
    for name in ("kafka-admin", "kafka-pipeline"):
        localstack.write_private(localstack.secret_file(layout, name), "not-a-real-password")
    layout.kafka_dir.mkdir()
    props = layout.kafka_dir / "server.properties"
    props.write_text(localstack.kafka_properties(layout))
    drawn = iter([dash_first, uuid.UUID(int=7)])
    localstack.format_kafka_storage(layout, localstack.find_java()[0], props)
    meta = (layout.kafka_dir / "data" / "meta.properties").read_text()
    assert "cluster.id=AAAAAAAAAAAAAAAAAAAABw" in meta

    args = localstack.storage_format_args("-" + "A" * 21, props, {"admin": "x"})
    assert '"--cluster-id=-AAAAAAAAAAAAAAAAAAAAA"' in args.splitlines()
