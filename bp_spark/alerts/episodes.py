"""Alert episodes: one alert per patient and kind while the problem lasts, not one per reading.

Pure Python, no Spark and no request: :func:`advance` takes a patient's state (their open
episodes and, per kind that must persist, their recent readings) and the patient's new readings
in time order, and returns the new state and the events to send. The same readings applied twice
to the state they were first applied to give the same result, so a replayed batch (a crash before
Spark's commit) changes nothing once its first attempt was recorded (:mod:`bp_spark.alerts.store`
keeps the batch id that last advanced each patient).

Kinds:

- ``critical_reading``: a reading in the profile's critical category. Opens at once; a second
  critical reading within ``confirm_within`` of the one before marks it ``confirmed`` (guidelines
  ask for a repeat measurement).
- ``above_target``: a reading above the patient's own target (FHIR Goal), or, for a patient
  without one, above the profile's limits (its anomaly rule). Opens only when the readings
  persist: ``persistence_n`` of the patient's last ``persistence_m`` readings within
  ``persistence_period`` (default 3 of the last 4 within 7 days), said in the reason.
- ``sustained_hypertension``: an onset of the 7-day mean above the home limits (the trends step):
  already a persistence rule of its own, so it opens at once.
- ``no_readings``: silence (:func:`silences`); the patient's next reading resolves it.

At most one alert of a kind is open per patient. A later qualifying reading joins it
(``readings_count``, ``last_reading_time``, the worst values, the first ``max_reading_ids`` reading
ids) without paging; a more severe level than the alert holds pages again. ``status``: ``open`` ->
``acknowledged`` (by a person: ``jobs/alerts.py``) -> ``resolved`` (by a person, or here once the
patient's readings are back in range for ``auto_resolve_after``). An acknowledged alert is quiet
for ``snooze``; a qualifying reading after that pages again and opens it. After it resolves, a
new episode can open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

CRITICAL_READING = "critical_reading"
ABOVE_TARGET = "above_target"
SUSTAINED = "sustained_hypertension"
NO_READINGS = "no_readings"
# Kinds opened by readings, in the order a reading is applied to them.
READING_KINDS = (CRITICAL_READING, ABOVE_TARGET)

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
# Events, as the alert topic and the DetectedIssue carry them.
OPENED, JOINED, ESCALATED, ACKNOWLEDGED_EVENT, RESOLVED_EVENT = "opened", "joined", "escalated", "acknowledged", "resolved"
# Severity levels: a reading more severe than its alert holds pages again.
LEVELS = {"info": 0, "warning": 1, "critical": 2}
JOB = "bp-monitor"  # who the job resolves as


@dataclass(frozen=True)
class Settings:
    """``alerts.*``, in seconds where a duration."""

    persistence_n: int = 3
    persistence_m: int = 4
    persistence_period_s: int = 7 * 86400
    confirm_within_s: int = 30 * 60
    snooze_s: int = 8 * 3600
    auto_resolve_after_s: int = 24 * 3600
    escalate_after_s: int = 15 * 60
    silence_after_s: int = 3 * 86400
    silence_window_s: int = 14 * 86400
    max_reading_ids: int = 20
    max_age_s: int = 7 * 86400  # older readings (and onsets) open and join no alert; 0: no limit


@dataclass(frozen=True)
class Reading:
    """A patient's reading as the episodes see it; ``kinds``: those it qualifies for."""

    observation_id: str
    time_ms: int
    systolic: float
    diastolic: float
    severity: str  # the reading's: none, warning, critical
    kinds: frozenset[str]
    category: str = ""


@dataclass(frozen=True)
class Event:
    """Something to tell the care team's systems about one alert (a DetectedIssue on the alert
    topic); ``page``: whether it asks for someone's attention now."""

    event_id: str
    kind: str  # opened, joined, escalated, acknowledged, resolved
    alert: dict
    page: bool


@dataclass
class PatientState:
    """What the episodes keep of one patient between batches."""

    patient_id: str
    episodes: dict[str, dict] = field(default_factory=dict)  # kind -> the active (open or acknowledged) alert
    recent: dict[str, list[list[int]]] = field(default_factory=dict)  # kind -> [[time_ms, qualifies], ...]
    last_reading_ms: int | None = None
    batch_id: int | None = None  # the last batch applied: a replay of it changes nothing

    def as_document(self) -> dict:
        return {"patient_id": self.patient_id, "recent": {k: v for k, v in self.recent.items() if v},
                "last_reading_ms": self.last_reading_ms, "batch_id": self.batch_id,
                "open_kinds": sorted(self.episodes)}


def triage_rank(alert: dict) -> int:
    """Where an alert stands in the care team's list: open before acknowledged before resolved,
    then critical before warning (then the oldest page first, by ``paged_at``)."""
    status = {OPEN: 0, ACKNOWLEDGED: 1}.get(alert.get("status"), 2)
    return status * 10 + (2 - LEVELS.get(alert.get("severity"), 0))


def alert_id(kind: str, patient_id: str, opened_by: str) -> str:
    """An episode's id: the same whenever the same reading (or window) opens it, so that a replay
    writes the same alert. A FHIR-id-safe digest (64 characters at most), as the DetectedIssue's id."""
    digest = hashlib.sha256(f"{kind}|{patient_id}|{opened_by}".encode()).hexdigest()[:40]
    return f"{kind.replace('_', '-')}-{digest}"


def _level(severity: str) -> int:
    return LEVELS.get(severity, 0)


def _reason(kind: str, reading: Reading, settings: Settings) -> str:
    """Why a reading opened an alert of ``kind`` (critical_reading or above_target)."""
    if kind == CRITICAL_READING:
        return f"{reading.category.replace('_', ' ') or 'critical reading'}: {reading.systolic:g}/{reading.diastolic:g} mmHg"
    return (f"{settings.persistence_n} of the last {settings.persistence_m} readings within "
            f"{settings.persistence_period_s // 86400 or 1} days above the limits")


def _event(alert: dict, kind: str, serial: int | str, page: bool) -> Event:
    return Event(f"{alert['alert_id']}|{kind}|{serial}", kind, dict(alert), page)


def _open(kind: str, patient_id: str, reading: Reading, now_ms: int, settings: Settings, reason: str) -> dict:
    return {
        "alert_id": alert_id(kind, patient_id, reading.observation_id), "patient_id": patient_id, "kind": kind,
        "status": OPEN, "severity": reading.severity if reading.severity in LEVELS else "warning",
        "reason": reason, "opened_at": now_ms, "paged_at": now_ms, "first_reading_time": reading.time_ms,
        "last_reading_time": reading.time_ms, "readings_count": 1, "reading_ids": [reading.observation_id],
        "worst_systolic": reading.systolic, "worst_diastolic": reading.diastolic, "confirmed": False,
        "escalation_level": 0, "pages": 1,
    }


def _worse(reading: Reading, alert: dict) -> bool:
    """Whether ``reading`` is worse than the alert's worst: more severe, or further from normal."""
    level, held = _level(reading.severity), _level(alert["severity"])
    if level != held:
        return level > held
    low = reading.systolic < 90 or reading.diastolic < 60
    if low:
        return reading.systolic < alert["worst_systolic"]
    return reading.systolic > alert["worst_systolic"] or (
        reading.systolic == alert["worst_systolic"] and reading.diastolic > alert["worst_diastolic"])


def _join(alert: dict, reading: Reading, now_ms: int, settings: Settings, events: list[Event],
          may_page: bool = True) -> dict:
    """``reading`` joins ``alert``; pages again when more severe than the alert, or when the
    alert's snooze is over (unless ``may_page`` is false: another alert pages for this reading)."""
    alert = dict(alert)
    previous_ms = alert["last_reading_time"]
    if reading.observation_id in alert["reading_ids"]:
        return alert  # the same reading again (a repeat the versions index let through): nothing new
    alert["readings_count"] += 1
    alert["last_reading_time"] = max(previous_ms, reading.time_ms)
    if len(alert["reading_ids"]) < settings.max_reading_ids:
        alert["reading_ids"] = [*alert["reading_ids"], reading.observation_id]
    if alert["kind"] == CRITICAL_READING and abs(reading.time_ms - previous_ms) <= settings.confirm_within_s * 1000:
        alert["confirmed"] = True
    more_severe = _level(reading.severity) > _level(alert["severity"])
    if _worse(reading, alert):
        alert["worst_systolic"], alert["worst_diastolic"] = reading.systolic, reading.diastolic
    snoozed_out = alert["status"] == ACKNOWLEDGED and now_ms >= (alert.get("acknowledged_at") or 0) + settings.snooze_s * 1000
    if more_severe:
        alert["severity"] = reading.severity
    if may_page and (more_severe or snoozed_out):
        alert["status"], alert["paged_at"], alert["escalation_level"] = OPEN, now_ms, 0
        alert["pages"] = alert.get("pages", 1) + 1
        events.append(_event(alert, JOINED, alert["pages"], page=True))
    return alert


def _resolve(alert: dict, now_ms: int, by: str, note: str, events: list[Event]) -> dict:
    alert = {**alert, "status": RESOLVED, "resolved_at": now_ms, "resolved_by": by, "resolve_note": note}
    events.append(_event(alert, RESOLVED_EVENT, 0, page=False))
    return alert


def _persists(flags: list[list[int]], time_ms: int, settings: Settings) -> bool:
    """Whether ``persistence_n`` of the last ``persistence_m`` readings (within the period) qualify."""
    recent = [f for f in flags if f[0] > time_ms - settings.persistence_period_s * 1000][-settings.persistence_m:]
    return sum(q for _, q in recent) >= settings.persistence_n


def advance(state: PatientState, readings: list[Reading], now_ms: int, batch_id: int | None,
            settings: Settings) -> tuple[PatientState, list[dict], list[Event]]:
    """Apply a patient's new readings (any order: they are sorted by time) to their state. Returns
    the new state, every alert written (opened, joined, resolved: each once, its latest version),
    and the events to send. A batch the state already holds (``batch_id`` not newer) changes nothing."""
    if batch_id is not None and state.batch_id is not None and batch_id <= state.batch_id:
        return state, [], []
    state = PatientState(state.patient_id, dict(state.episodes), {k: [list(f) for f in v] for k, v in state.recent.items()},
                         state.last_reading_ms, batch_id if batch_id is not None else state.batch_id)
    events: list[Event] = []
    written: dict[str, dict] = {}
    for reading in sorted(readings, key=lambda r: (r.time_ms, r.observation_id)):
        if state.last_reading_ms is None or reading.time_ms > state.last_reading_ms:
            state.last_reading_ms = reading.time_ms
        silent = state.episodes.pop(NO_READINGS, None)
        if silent is not None:  # the patient measures again
            written[silent["alert_id"]] = _resolve(silent, now_ms, JOB, "a reading arrived", events)
        for kind in READING_KINDS:
            qualifies = kind in reading.kinds
            alert = state.episodes.get(kind)
            if kind != CRITICAL_READING:
                flags = state.recent.setdefault(kind, [])
                flags.append([reading.time_ms, int(qualifies)])
                flags.sort()
                del flags[:-settings.persistence_m]
            if qualifies and alert is not None:
                # A critical reading pages through its own alert, not again through this one.
                quiet = kind != CRITICAL_READING and CRITICAL_READING in reading.kinds
                alert = state.episodes[kind] = _join(alert, reading, now_ms, settings, events, may_page=not quiet)
                written[alert["alert_id"]] = alert
            elif qualifies and (kind == CRITICAL_READING or _persists(state.recent[kind], reading.time_ms, settings)):
                alert = state.episodes[kind] = _open(kind, state.patient_id, reading, now_ms, settings,
                                                     _reason(kind, reading, settings))
                if kind != CRITICAL_READING:
                    alert["severity"] = "warning" if _level(reading.severity) < LEVELS["critical"] else reading.severity
                written[alert["alert_id"]] = alert
                events.append(_event(alert, OPENED, 1, page=True))
            elif not qualifies and alert is not None and \
                    reading.time_ms - alert["last_reading_time"] >= settings.auto_resolve_after_s * 1000:
                resolved = _resolve(alert, now_ms, JOB, "readings back in range", events)
                del state.episodes[kind]
                written[resolved["alert_id"]] = resolved
    return state, list(written.values()), events


def sustained_onset(state: PatientState, trend_id: str, window_end_ms: int, systolic_mean: float,
                    diastolic_mean: float, readings: int, reason: str, now_ms: int,
                    settings: Settings) -> tuple[PatientState, list[dict], list[Event]]:
    """An onset of sustained hypertension (a window of the trends step): opens the patient's
    ``sustained_hypertension`` alert, or joins the open one (no page)."""
    reading = Reading(trend_id, window_end_ms, systolic_mean, diastolic_mean, "warning", frozenset({SUSTAINED}))
    state = replace(state, episodes=dict(state.episodes))
    events: list[Event] = []
    alert = state.episodes.get(SUSTAINED)
    if alert is not None:
        alert = _join(alert, reading, now_ms, settings, events)
    else:
        alert = _open(SUSTAINED, state.patient_id, reading, now_ms, settings, reason)
        alert["readings_count"] = readings
        events.append(_event(alert, OPENED, 1, page=True))
    state.episodes[SUSTAINED] = alert
    return state, [alert], events


def acknowledge(alert: dict, by: str, note: str, now_ms: int) -> tuple[dict, Event]:
    """A person saw it: quiet for ``snooze``, no escalation. Raises ValueError for a resolved alert."""
    if alert["status"] == RESOLVED:
        raise ValueError(f"alert {alert['alert_id']} is resolved (by {alert.get('resolved_by')}); nothing to acknowledge")
    alert = {**alert, "status": ACKNOWLEDGED, "acknowledged_by": by, "acknowledged_at": now_ms, "ack_note": note}
    return alert, _event(alert, ACKNOWLEDGED_EVENT, now_ms, page=False)


def resolve(alert: dict, by: str, note: str, now_ms: int) -> tuple[dict, Event]:
    """A person closed it. Raises ValueError for an alert resolved already."""
    if alert["status"] == RESOLVED:
        raise ValueError(f"alert {alert['alert_id']} is resolved already (by {alert.get('resolved_by')})")
    events: list[Event] = []
    alert = _resolve(alert, now_ms, by, note, events)
    return alert, events[0]


def escalations(alert: dict, now_ms: int, settings: Settings) -> tuple[dict, list[Event]]:
    """An open critical alert nobody acknowledged: one level more per ``escalate_after`` since it
    paged, each level once (the level is in the alert, so a restart does not send it again)."""
    if alert["status"] != OPEN or alert["kind"] != CRITICAL_READING or settings.escalate_after_s <= 0:
        return alert, []
    due = (now_ms - alert["paged_at"]) // (settings.escalate_after_s * 1000)
    if due <= alert.get("escalation_level", 0):
        return alert, []
    events = []
    for level in range(alert.get("escalation_level", 0) + 1, due + 1):
        alert = {**alert, "escalation_level": level, "escalated_at": now_ms}
        # Levels start again at each page: the event's id names both (page 2's level 1 is news).
        events.append(_event(alert, ESCALATED, f"{alert.get('pages', 1)}.{level}", page=True))
    return alert, events


def recorded(event: Event, stored: dict | None) -> bool:
    """Whether ``stored`` (the alert as its index holds it) records ``event`` already: an earlier
    attempt sent it and then wrote the alert, and stopped before the patient's state (``kill -9``
    between the two). Deciding again from the old state makes the event again; it is not sent
    twice. (Events are sent before the alert is written, so a stored alert's events went out.)"""
    if stored is None:
        return False
    alert = event.alert
    if event.kind == RESOLVED_EVENT:
        return stored.get("status") == RESOLVED
    if event.kind in (OPENED, JOINED):
        return stored.get("pages", 1) >= alert.get("pages", 1)
    if event.kind == ESCALATED:
        return (stored.get("pages", 1) == alert.get("pages", 1)
                and stored.get("escalation_level", 0) >= alert["escalation_level"])
    return False


def silences(state: PatientState, now_ms: int, settings: Settings) -> tuple[PatientState, list[dict], list[Event]]:
    """A patient who measured within ``silence_window`` and not for ``silence_after`` gets a
    ``no_readings`` alert (once per silence: its id names the last reading's time)."""
    last = state.last_reading_ms
    if last is None or NO_READINGS in state.episodes or settings.silence_after_s <= 0:
        return state, [], []
    quiet_ms = now_ms - last
    if not settings.silence_after_s * 1000 <= quiet_ms <= settings.silence_window_s * 1000:
        return state, [], []
    reading = Reading(f"silence-since-{last}", last, 0.0, 0.0, "info", frozenset({NO_READINGS}))
    days = quiet_ms / 86_400_000
    alert = _open(NO_READINGS, state.patient_id, reading, now_ms, settings,
                  f"no readings for {days:.1f} days (alerts.silence_after {settings.silence_after_s // 3600} h)")
    alert.update(readings_count=0, reading_ids=[], worst_systolic=None, worst_diastolic=None, severity="warning")
    state = replace(state, episodes={**state.episodes, NO_READINGS: alert})
    return state, [alert], [_event(alert, OPENED, 1, page=True)]
