"""docker-compose.yaml stays valid for Docker users, though these machines run no Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from bp_spark.versions import read_env_file

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yaml"


def _has_compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def _interpolate(text: str, env: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in env, f"docker-compose.yaml uses ${{{name}}}, which .env does not define"
        return env[name]
    return re.sub(r"\$\{([A-Z0-9_]+)\}", value, text)


def test_compose_file_is_a_self_contained_full_stack() -> None:
    if _has_compose_plugin():
        result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                                capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
    # Without the compose plugin (as here), the same file is checked as YAML after the
    # interpolation compose would do from .env.
    doc = yaml.safe_load(_interpolate(COMPOSE.read_text(), read_env_file()))
    services = doc["services"]
    assert {"kafka", "elasticsearch", "kibana", "kibana-setup", "generator", "spark-master", "spark-worker",
            "stream"} <= set(services)
    assert "jobs/kibana_setup.py" in services["kibana-setup"]["command"]
    submit = services["stream"]["command"]
    assert submit[submit.index("--master") + 1] == "spark://spark-master:7077"
    assert submit[submit.index("--py-files") + 1] == "dist/bp_spark.zip"
    assert "--port" in services["spark-master"]["command"] and "7077" in services["spark-master"]["command"]
    env = read_env_file()
    assert services["elasticsearch"]["image"].endswith(f":{env['ES_VERSION']}")
    assert services["kibana"]["image"].endswith(f":{env['ES_VERSION']}")
    assert services["kafka"]["image"].endswith(f":{env['KAFKA_VERSION']}")
    assert services["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"] == 3
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for network in service.get("networks", []):
            assert network in (doc.get("networks") or {}), f"{name} uses undeclared network {network}"
    for name, network in (doc.get("networks") or {}).items():
        assert not (network or {}).get("external"), f"network {name} is external; the stack must be self-contained"
    assert services["stream"]["command"][0] == "spark-submit"
    assert "jobs/stream.py" in services["stream"]["command"]
    assert (ROOT / services["generator"]["build"] / "Dockerfile").is_file()


def test_compose_stream_job_gets_the_same_connectors_as_the_jobs() -> None:
    from bp_spark.versions import connector_conf

    doc = yaml.safe_load(_interpolate(COMPOSE.read_text(), read_env_file()))
    command = doc["services"]["stream"]["command"]
    confs = dict(arg.split("=", 1) for arg in command if arg.startswith("spark.jars."))
    assert confs == connector_conf()


def test_services_restart_when_they_fail() -> None:
    services = yaml.safe_load(_interpolate(COMPOSE.read_text(), read_env_file()))["services"]
    for name in ("kafka", "elasticsearch", "kibana", "spark-master", "spark-worker", "stream"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["generator"]["restart"] == "on-failure"
    assert services["kibana-setup"]["restart"] == "no"
