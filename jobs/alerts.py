"""The care team's alerts: list them, acknowledge one, resolve one.

    python jobs/alerts.py list [--status open|acknowledged|resolved|active] [--patient ID] [--limit N]
    python jobs/alerts.py ack ALERT_ID --by NAME [--note TEXT]
    python jobs/alerts.py resolve ALERT_ID --by NAME [--note TEXT]

``list`` shows the active alerts first (open, then acknowledged), the most severe and the oldest
first, with their escalation level and how many readings joined them. ``ack`` keeps an alert
quiet for ``alerts.snooze`` and stops its escalation; ``resolve`` closes it (a new episode can
open with the next readings). Each change is written only over the version of the alert it read
(Elasticsearch's ``if_seq_no``), so a person's change and the stream job's update of the same
alert never overwrite each other (this tool reads again and retries); the job honours it in its
next batch. Each change is also sent to ``kafka.alerts_topic`` as a FHIR DetectedIssue.

Exit status: 0 done; 1 Elasticsearch or Kafka unreachable; 2 an unknown alert, a resolved one,
or a bad argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bp_spark.alerts.episodes import ACKNOWLEDGED, OPEN, RESOLVED, acknowledge, resolve, triage_rank  # noqa: E402
from bp_spark.alerts.fhir import detected_issue  # noqa: E402
from bp_spark.config import ConfigError, add_config_flags, load_config_from_args  # noqa: E402
from bp_spark.elastic import ElasticsearchUnavailable, make_client  # noqa: E402
from bp_spark.outages import SinkUnavailable  # noqa: E402
from bp_spark.sinks.alert_topic import AlertTopic  # noqa: E402
from bp_spark.sinks.es import ElasticsearchSink  # noqa: E402

ATTEMPTS = 5
GIVE_UP_AFTER = "1 minute"


class AlertError(ValueError):
    """An alert that is not there, or cannot take the change asked."""


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    minutes = max(0, (now_ms - ms) // 60_000)
    return f"{minutes // 1440}d{minutes % 1440 // 60:02d}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60:02d}m"


def ordered(alerts: list[dict]) -> list[dict]:
    """Active first (open, then acknowledged), then by severity, then the oldest page first: the
    dashboards' order (``triage_rank``, ``paged_at``)."""
    return sorted(alerts, key=lambda a: (triage_rank(a), a.get("paged_at") or a.get("opened_at") or 0))


def list_alerts(sink: ElasticsearchSink, index: str, status: str, patient: str | None, limit: int) -> list[dict]:
    filters = []
    if status == "active":
        filters.append({"terms": {"status": [OPEN, ACKNOWLEDGED]}})
    elif status != "all":
        filters.append({"term": {"status": status}})
    if patient:
        filters.append({"term": {"patient_id": patient}})
    found = sink.search(index, {"bool": {"filter": filters}}, limit, "listing alerts",
                        sort=[{"opened_at": "desc"}])
    return ordered(list(found.values()))


def table(alerts: list[dict], now_ms: int) -> str:
    header = ("ALERT", "STATUS", "SEVERITY", "KIND", "PATIENT", "OPENED (UTC)", "AGE", "READINGS", "ESC", "REASON")
    rows = [header] + [(a["alert_id"], a["status"] + (" (confirmed)" if a.get("confirmed") else ""), a["severity"],
                        a["kind"], a["patient_id"], _when(a.get("opened_at")), _age(a.get("paged_at"), now_ms),
                        str(a.get("readings_count", 0)), str(a.get("escalation_level", 0)), a.get("reason", ""))
                       for a in alerts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(r, widths)) + "  " + r[-1] for r in rows)


def change(sink: ElasticsearchSink, topic: AlertTopic, index: str, alert_id: str, action, by: str, note: str) -> dict:
    """Apply ``action`` (acknowledge or resolve) over the alert's current version; read again and
    retry when the job wrote it meanwhile. Returns the alert as written."""
    for _ in range(ATTEMPTS):
        found = sink.versioned(index, [alert_id], f"reading alert {alert_id}")
        if alert_id not in found:
            raise AlertError(f"no alert {alert_id}: `python jobs/alerts.py list` shows the alerts and their ids")
        source, seq_no, term = found[alert_id]
        now = int(time.time() * 1000)
        try:
            alert, event = action(source, by, note, now)
        except ValueError as exc:
            raise AlertError(str(exc)) from None
        written = {**alert, "updated_at": now, "triage_rank": triage_rank(alert)}
        if not sink.put_versioned(index, {alert_id: (written, seq_no, term)},
                                  f"writing alert {alert_id}"):
            topic.send([(alert["patient_id"].encode(), orjson.dumps(detected_issue(event)))],
                       f"alert {alert_id}: sending its {event.kind} event")
            return alert
    raise AlertError(f"alert {alert_id} kept changing while being written ({ATTEMPTS} attempts); try again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List, acknowledge and resolve alerts.")
    add_config_flags(parser, ["es-url"])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the alerts, active first")
    listing.add_argument("--status", default="active", choices=["active", OPEN, ACKNOWLEDGED, RESOLVED, "all"])
    listing.add_argument("--patient", default=None)
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="one JSON document per line")
    for name, helptext in (("ack", "acknowledge an alert: quiet for alerts.snooze, no escalation"),
                           ("resolve", "resolve an alert")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("alert_id")
        sub.add_argument("--by", required=True, help="who (a name or a user id)")
        sub.add_argument("--note", default="")
    args = parser.parse_args(argv)
    try:
        config = load_config_from_args(args)
        # A person is waiting: an outage is waited out for a minute, not forever as the job does.
        config = dataclasses.replace(config, outages=dataclasses.replace(
            config.outages, give_up_after=GIVE_UP_AFTER, max_backoff_s=min(config.outages.max_backoff_s, 10.0)))
        sink = ElasticsearchSink(config, make_client(config), {})
        index = config.elasticsearch.episodes_index
        if args.command == "list":
            alerts = list_alerts(sink, index, args.status, args.patient, args.limit)
            if args.json:
                for alert in alerts:
                    print(orjson.dumps(alert).decode())
            else:
                print(table(alerts, int(time.time() * 1000)) if alerts else f"no {args.status} alerts")
            return 0
        if not args.by.strip():
            raise AlertError("--by must name who acknowledges or resolves")
        action = acknowledge if args.command == "ack" else resolve
        alert = change(sink, AlertTopic(config, {}), index, args.alert_id, action, args.by.strip(), args.note)
        print(f"alert {alert['alert_id']} {alert['status']} by {args.by.strip()}")
        return 0
    except (ConfigError, AlertError) as exc:
        print(f"alerts: {exc}", file=sys.stderr)
        return 2
    except (ElasticsearchUnavailable, SinkUnavailable) as exc:
        print(f"alerts: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
