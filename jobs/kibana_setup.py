"""Put the dashboard and the alert rule into Kibana: waits for Kibana, imports the saved objects
of conf/kibana/ (data views, visualisations, the "Blood pressure monitoring" dashboard) and
creates or updates the Elasticsearch query rule on the alerts index. Idempotent: run it again
and the same objects and the same rule are overwritten in place.

    python jobs/kibana_setup.py [--kibana-url http://localhost:5601] [--timeout 300]

With security on, it signs in as ``BP_KIBANA_USERNAME`` (a user allowed to manage saved objects
and rules, such as ``elastic``) with the password of ``BP_KIBANA_PASSWORD`` or of the file
``BP_KIBANA_PASSWORD_FILE``; ``BP_KIBANA_CA_FILE`` trusts a Kibana served over HTTPS.

The data views and the rule point at the indices the configuration names (conf/pipeline.toml,
BP_ELASTICSEARCH_*_INDEX).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bp_spark.config import Config, ConfigError, Secret, load_config, read_secret  # noqa: E402
from bp_spark.dashboards import (ALERT_RULE, DASHBOARD_ID, PATIENT_DASHBOARD_ID, data_view_indices,  # noqa: E402
                                 load_saved_objects)

RULE_ID = "bp-monitor-critical-alerts"
HEADERS = {"kbn-xsrf": "bp-monitor"}


class KibanaError(RuntimeError):
    """Kibana did not come up or refused a request."""


def import_payload(config: Config) -> bytes:
    """The saved objects as NDJSON, with each data view aimed at the configured index."""
    indices = data_view_indices(config)
    lines = []
    for obj in load_saved_objects():
        if obj["type"] == "index-pattern" and obj["id"] in indices:
            obj = {**obj, "attributes": {**obj["attributes"], "title": indices[obj["id"]]}}
        lines.append(json.dumps(obj, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def rule_body(config: Config) -> dict:
    """The alert rule of conf/kibana/alert_rule.json on the configured alert episodes index."""
    rule = json.loads(ALERT_RULE.read_text())
    rule["params"]["index"] = [config.elasticsearch.episodes_index]
    return rule


def kibana_credentials(env=os.environ) -> tuple[str, Secret]:
    """The user and password kibana-setup signs in with (none: Kibana without security): the
    password from BP_KIBANA_PASSWORD, else the file BP_KIBANA_PASSWORD_FILE names."""
    password = read_secret("kibana.password", "BP_KIBANA_PASSWORD_FILE", env.get("BP_KIBANA_PASSWORD_FILE", ""), env)
    return env.get("BP_KIBANA_USERNAME", ""), password


class Kibana:
    def __init__(self, url: str, user: str = "", password: Secret = Secret(), ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.auth = urllib3.make_headers(basic_auth=f"{user}:{password.reveal()}") if user else {}
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), retries=False,
                                        ca_certs=ca_file)

    def request(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        headers = {**HEADERS, **self.auth, **kwargs.pop("headers", {})}
        response = self.http.request(method, self.url + path, headers=headers, **kwargs)
        try:
            body = json.loads(response.data or b"{}")
        except ValueError:
            body = {"raw": response.data[:300].decode(errors="replace")}
        return response.status, body

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status, body = self.request("GET", "/api/status")
                level = body.get("status", {}).get("overall", {}).get("level")
                if status == 200 and level == "available":
                    return
                if status == 401:
                    raise KibanaError(f"Kibana at {self.url} refused authentication (HTTP 401): set BP_KIBANA_USERNAME "
                                      "and BP_KIBANA_PASSWORD or BP_KIBANA_PASSWORD_FILE")
                last = f"HTTP {status}, status {level}"
            except urllib3.exceptions.HTTPError as exc:
                last = str(exc)
            print(f"kibana-setup: waiting for Kibana at {self.url} ({last})", flush=True)
            time.sleep(max(0.0, min(5.0, deadline - time.monotonic())))  # not past the deadline
        raise KibanaError(f"Kibana at {self.url} was not available after {timeout_s:.0f} s (last: {last}). "
                          "Is it running and pointed at Elasticsearch? See its log.")

    def import_objects(self, ndjson: bytes) -> int:
        fields = {"file": ("bp-monitor.ndjson", ndjson, "application/ndjson")}
        body, content_type = urllib3.encode_multipart_formdata(fields)
        status, result = self.request("POST", "/api/saved_objects/_import?overwrite=true", body=body,
                                      headers={"Content-Type": content_type})
        if status != 200 or not result.get("success"):
            raise KibanaError(f"importing the saved objects failed: HTTP {status} {json.dumps(result)[:800]}")
        return result.get("successCount", 0)

    def put_rule(self, rule: dict) -> str:
        path = f"/api/alerting/rule/{RULE_ID}"
        status, _ = self.request("GET", path)
        if status == 404:
            status, result = self.request("POST", path, body=json.dumps(rule), headers={"Content-Type": "application/json"})
            done = "created"
        else:  # update: the type and consumer of a rule cannot change
            update = {k: v for k, v in rule.items() if k not in ("rule_type_id", "consumer")}
            status, result = self.request("PUT", path, body=json.dumps(update), headers={"Content-Type": "application/json"})
            done = "updated"
        if status != 200:
            raise KibanaError(f"the alert rule {RULE_ID} could not be {done}: HTTP {status} {json.dumps(result)[:800]}")
        return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kibana-url", default=os.environ.get("BP_KIBANA_URL", "http://localhost:5601"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Kibana (default 300)")
    args = parser.parse_args(argv)
    try:
        config = load_config()
        user, password = kibana_credentials()
        kibana = Kibana(args.kibana_url, user, password, os.environ.get("BP_KIBANA_CA_FILE") or None)
        kibana.wait(args.timeout)
        imported = kibana.import_objects(import_payload(config))
        done = kibana.put_rule(rule_body(config))
    except (ConfigError, KibanaError) as exc:
        print(f"kibana-setup: {exc}", file=sys.stderr)
        return 1
    print(f"kibana-setup: {imported} saved objects imported; alert rule {RULE_ID} {done}; dashboard: "
          f"{kibana.url}/app/dashboards#/view/{DASHBOARD_ID}; one patient's: "
          f"{kibana.url}/app/dashboards#/view/{PATIENT_DASHBOARD_ID}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
