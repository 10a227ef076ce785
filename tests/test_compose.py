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
    assert "--add-scram" not in " ".join(services["kafka"]["command"])  # passwords come from an argument file
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
    assert (ROOT / services["setup"]["build"] / "Dockerfile").is_file()


def test_compose_stream_job_gets_the_same_connectors_as_the_jobs() -> None:
    from bp_spark.versions import package_conf

    doc = yaml.safe_load(_interpolate(COMPOSE.read_text(), read_env_file()))
    command = doc["services"]["stream"]["command"]
    confs = dict(arg.split("=", 1) for arg in command if arg.startswith("spark.jars."))
    assert confs == package_conf()  # the image resolves them at start (no make install in it)


def test_services_restart_when_they_fail() -> None:
    services = yaml.safe_load(_interpolate(COMPOSE.read_text(), read_env_file()))["services"]
    for name in ("kafka", "elasticsearch", "kibana", "spark-master", "spark-worker", "stream"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["generator"]["restart"] == "on-failure"
    assert services["kibana-setup"]["restart"] == "no"


def test_compose_is_secure_as_the_local_stack() -> None:
    """Security on everywhere, certificates and passwords made by a setup service, ports on loopback."""
    services = yaml.safe_load(_interpolate(COMPOSE.read_text(), read_env_file()))["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "TOKEN" in key or "KEY" in key.split("_")[-1:]:
                assert key.endswith("_FILE"), f"{name} sets {key} in the clear"
    es = services["elasticsearch"]["environment"]
    assert es["xpack.security.enabled"] == "true" and es["xpack.security.http.ssl.enabled"] == "true"
    assert es["ELASTIC_PASSWORD_FILE"].startswith("/usr/share/elasticsearch/config/bp/secrets/")
    assert "ELASTICSEARCH_SERVICEACCOUNTTOKEN" in " ".join(services["kibana"]["command"])
    assert services["kibana"]["environment"]["ELASTICSEARCH_HOSTS"] == '["https://elasticsearch:9200"]'
    for name in ("kafka", "elasticsearch"):
        assert services[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    for name in ("kibana", "generator", "stream"):
        assert services[name]["depends_on"]["setup-users"]["condition"] == "service_completed_successfully"
    for name in ("generator", "stream", "kibana-setup"):
        env = services[name]["environment"]
        assert env["BP_SECURITY_MODE"] == "tls" and env["BP_ELASTICSEARCH_URL"].startswith("https://")
        assert env["BP_KAFKA_PASSWORD_FILE"].startswith("/bp/secrets/")


def test_compose_setup_makes_private_certificates_and_a_sasl_ssl_kafka(tmp_path: Path) -> None:
    """The setup service's first step, run here as the container runs it."""
    import os
    import sys

    base = tmp_path / "bp"
    result = subprocess.run([sys.executable, str(ROOT / "stack" / "compose_setup.py"), "certs"],
                            env={**os.environ, "BP_SECRETS_DIR": str(base)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
    assert {"certs/ca.crt", "certs/server.pem", "certs/truststore.p12", "secrets/elastic", "secrets/kafka-pipeline",
            "kafka/server.properties", "kafka/format.args", "kafka/admin.properties"} <= names
    assert {p.stat().st_mode & 0o777 for p in base.rglob("*") if p.is_file()} == {0o600}
    san = subprocess.run(["openssl", "x509", "-in", str(base / "certs" / "server.crt"), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True).stdout
    assert "DNS:elasticsearch" in san and "DNS:kafka" in san and "DNS:localhost" in san
    properties = (base / "kafka" / "server.properties").read_text()
    assert "listener.security.protocol.map=INTERNAL:SASL_SSL,EXTERNAL:SASL_SSL,CONTROLLER:PLAINTEXT" in properties
    assert "allow.everyone.if.no.acl.found=false" in properties
    password = (base / "secrets" / "kafka-pipeline").read_text().strip()
    assert f"name=bp-pipeline,password={password}]" in (base / "kafka" / "format.args").read_text()
    assert password not in result.stdout + result.stderr
