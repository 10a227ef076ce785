"""Each alert event as a FHIR R4 DetectedIssue, the alert topic's message: an EHR integration
reads it without knowing the job's documents.

- ``id``: the episode's id (the same DetectedIssue, updated event by event); ``identifier``: the
  episode (``alert_id``) and, as a second identifier, the event (``event_id``: consumers drop
  repeats by it; delivery is at-least-once).
- ``status``: ``preliminary`` while the alert is open or acknowledged, ``final`` once resolved.
- ``severity``: ``high`` for a critical alert, ``moderate`` otherwise.
- ``code``: the alert's kind, in the project's code system (:data:`KIND_SYSTEM`); its text says
  the event and the reason.
- ``patient``, ``identifiedDateTime`` (when the job opened it), ``evidence``: the Observations
  that make it (the first ``alerts.max_reading_ids``), ``detail``: the reason.
- ``mitigation``: the acknowledgement and the resolution (action, date, author), once made.
"""

from __future__ import annotations

import html

from bp_spark.alerts.episodes import READING_KINDS, Event
from bp_spark.elastic import index_time

KIND_SYSTEM = "https://github.com/bp-monitor/bp-monitor/fhir/CodeSystem/alert-kind"
ALERT_SYSTEM = "urn:bp-monitor:alert"
EVENT_SYSTEM = "urn:bp-monitor:alert-event"
MITIGATION_SYSTEM = "https://github.com/bp-monitor/bp-monitor/fhir/CodeSystem/alert-action"
KIND_DISPLAY = {"critical_reading": "Critical blood-pressure reading", "above_target": "Blood pressure above target",
                "sustained_hypertension": "Sustained hypertension", "no_readings": "No readings"}


def _instant(ms: int | None) -> str | None:
    moment = index_time(ms)
    return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _mitigation(action: str, display: str, at_ms: int | None, by: str | None, note: str | None) -> dict:
    entry = {"action": {"coding": [{"system": MITIGATION_SYSTEM, "code": action, "display": display}],
                        "text": f"{display}: {note}" if note else display},
             "date": _instant(at_ms)}
    if by:
        entry["author"] = {"display": by}
    return entry


def detected_issue(event: Event) -> dict:
    """The DetectedIssue of one event (its alert as the event left it)."""
    alert = event.alert
    kind = alert["kind"]
    issue = {
        "resourceType": "DetectedIssue",
        "id": alert["alert_id"],
        "identifier": [{"system": ALERT_SYSTEM, "value": alert["alert_id"]},
                       {"system": EVENT_SYSTEM, "value": event.event_id}],
        "status": "final" if alert["status"] == "resolved" else "preliminary",
        "code": {"coding": [{"system": KIND_SYSTEM, "code": kind, "display": KIND_DISPLAY[kind]}],
                 "text": f"{KIND_DISPLAY[kind]} ({event.kind})"},
        "severity": "high" if alert["severity"] == "critical" else "moderate",
        "patient": {"reference": f"Patient/{alert['patient_id']}"},
        "identifiedDateTime": _instant(alert["opened_at"]),
        "detail": alert["reason"],
    }
    summary = f"{KIND_DISPLAY[kind]}, {alert['status']} ({event.kind}): {alert['reason']}"
    issue["text"] = {"status": "generated",
                     "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{html.escape(summary)}</div>'}
    if kind in READING_KINDS and alert.get("reading_ids"):  # a sustained alert's evidence is a trend window
        issue["evidence"] = [{"detail": [{"reference": f"Observation/{obs_id}"} for obs_id in alert["reading_ids"]]}]
    mitigation = []
    if alert.get("acknowledged_at"):
        mitigation.append(_mitigation("acknowledged", "Acknowledged", alert["acknowledged_at"],
                                      alert.get("acknowledged_by"), alert.get("ack_note")))
    if alert.get("resolved_at"):
        mitigation.append(_mitigation("resolved", "Resolved", alert["resolved_at"], alert.get("resolved_by"),
                                      alert.get("resolve_note")))
    if mitigation:
        issue["mitigation"] = mitigation
    return issue
