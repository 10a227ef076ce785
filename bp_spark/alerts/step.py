"""The alert episodes in the stream job: a step of each routing batch, and a sweep that ticks
without data.

- **The batch step** (:meth:`EpisodeStep.apply`): the batch's readings, a few columns each, come
  to the driver grouped by patient; each patient's state is read (:mod:`bp_spark.alerts.store`),
  advanced by the pure rules of :mod:`bp_spark.alerts.episodes`, its events sent to
  ``kafka.alerts_topic`` as FHIR DetectedIssues (:mod:`bp_spark.alerts.fhir`), then its alerts
  and state written. The trends step hands in its onsets of sustained hypertension the same way.
- **The sweep** (:meth:`EpisodeStep.sweep`), every ``alerts.sweep_every`` on a timer of the
  driver, with or without readings: an open critical alert nobody acknowledged escalates (one
  level per ``alerts.escalate_after``), and a patient silent for ``alerts.silence_after`` gets a
  ``no_readings`` alert. Levels and silences are in the state, so a restart (or ``kill -9``)
  sends none twice and loses none.

Batches and the sweep take one lock: the job is the only writer of the patients' state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone

import orjson
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from bp_spark.alerts.episodes import (ABOVE_TARGET, CRITICAL_READING, NO_READINGS, OPEN, Event, PatientState, Reading,
                                      Settings, advance, escalations, recorded, silences,
                                      sustained_onset)
from bp_spark.alerts.fhir import detected_issue
from bp_spark.alerts.store import EpisodeStore
from bp_spark.clinical.classify import CRITICAL, DIASTOLIC_HIGH, SYSTOLIC_HIGH
from bp_spark.config import Config, duration_seconds, seconds_or_never
from bp_spark.elastic import epoch_ms

log = logging.getLogger("bp_spark.alerts")

# Patients whose alerts a person changed while the job decided: decided again, at most this often.
REDO_ROUNDS = 5
SWEEP_PAGE = 10_000


def settings_for(config: Config) -> Settings:
    a = config.alerts
    n, m, period_s = a.persistence_rule
    never = seconds_or_never
    return Settings(persistence_n=n, persistence_m=m, persistence_period_s=period_s,
                    confirm_within_s=duration_seconds(a.confirm_within), snooze_s=duration_seconds(a.snooze),
                    auto_resolve_after_s=duration_seconds(a.auto_resolve_after),
                    escalate_after_s=never(a.escalate_after), silence_after_s=never(a.silence_after),
                    silence_window_s=duration_seconds(a.silence_window), max_reading_ids=a.max_reading_ids,
                    max_age_s=never(a.max_age))


def reading_of(row) -> Reading:
    """A routed reading as the episodes see it: critical when the profile says so; above target
    when above the patient's own target, or, without one, above the profile's limits."""
    kinds = set()
    if row.severity == CRITICAL:
        kinds.add(CRITICAL_READING)
    if row.target_status is not None:
        if row.target_status == "above":
            kinds.add(ABOVE_TARGET)
    elif SYSTOLIC_HIGH in (row.anomaly_types or []) or DIASTOLIC_HIGH in (row.anomaly_types or []):
        kinds.add(ABOVE_TARGET)
    return Reading(row.observation_id, epoch_ms(row.effective_time), float(row.systolic), float(row.diastolic),
                   row.severity, frozenset(kinds), row.category or "")


def now_ms() -> int:
    return int(time.time() * 1000)


class EpisodeStep:
    """Alert episodes for one job: its batches' readings, the trends' onsets, the sweep."""

    def __init__(self, config: Config, elasticsearch, alert_topic) -> None:
        e = config.elasticsearch
        self.settings = settings_for(config)
        self.store = EpisodeStore(elasticsearch, e.episodes_index, e.alert_state_index)
        self.topic = alert_topic
        self.lock = threading.Lock()
        self.sweep_every_s = duration_seconds(config.alerts.sweep_every)

    # ------------------------------------------------------------------ readings

    def apply(self, readings_df: DataFrame, batch_id: int) -> tuple[int, int]:
        """The batch's readings (the plan's, current versions) into the patients' alerts. Returns
        (alerts written, events sent)."""
        target = F.col("target_status") if "target_status" in readings_df.columns else F.lit(None).cast("string")
        recent = F.col("effective_time").isNotNull()
        if self.settings.max_age_s:  # history pages nobody (and a replayed year stays off the driver)
            recent &= F.col("effective_time") >= F.lit(datetime.fromtimestamp(
                (now_ms() - self.settings.max_age_s * 1000) / 1000, tz=timezone.utc))
        rows = (readings_df.where(F.col("observation_id").isNotNull() & F.col("patient_id").isNotNull() & recent)
                .select("patient_id", "observation_id", "effective_time", "systolic", "diastolic", "severity",
                        "category", "anomaly_types", target.alias("target_status")).collect())
        if not rows:
            return 0, 0
        by_patient: dict[str, list[Reading]] = defaultdict(list)
        for row in rows:
            by_patient[row.patient_id].append(reading_of(row))
        return self._decide(sorted(by_patient), lambda state, at: advance(state, by_patient[state.patient_id], at,
                                                                          batch_id, self.settings),
                            f"batch {batch_id}")

    def onsets(self, windows: list[dict], batch_id: int) -> tuple[int, int]:
        """Onsets of sustained hypertension (trend windows) into the patients' alerts."""
        by_patient: dict[str, list[dict]] = defaultdict(list)
        oldest = now_ms() - self.settings.max_age_s * 1000 if self.settings.max_age_s else None
        for window in windows:
            if oldest is None or window["window_end_ms"] >= oldest:
                by_patient[window["patient_id"]].append(window)
        if not by_patient:
            return 0, 0

        def apply(state: PatientState, at: int):
            written, events = [], []
            for w in sorted(by_patient[state.patient_id], key=lambda w: w["window_end_ms"]):
                state, more_written, more_events = sustained_onset(
                    state, w["trend_id"], w["window_end_ms"], w["systolic_mean"], w["diastolic_mean"], w["readings"],
                    w["reason"], at, self.settings)
                written, events = written + more_written, events + more_events
            return state, list({a["alert_id"]: a for a in written}.values()), events
        return self._decide(sorted(by_patient), apply, f"trends batch {batch_id}")

    # ------------------------------------------------------------------ the clock

    def sweep(self, at_ms: int | None = None) -> tuple[int, int]:
        """Escalations and silences as of ``at_ms`` (now). Returns (alerts written, events sent)."""
        at = now_ms() if at_ms is None else at_ms
        s = self.settings
        patients = set()
        if s.escalate_after_s:
            due = self.store.active({"bool": {"filter": [
                {"term": {"status": OPEN}}, {"term": {"kind": CRITICAL_READING}},
                {"range": {"paged_at": {"lte": at - s.escalate_after_s * 1000}}}]}}, SWEEP_PAGE, "looking for escalations")
            patients |= {doc["patient_id"] for doc in due.values()}
        if s.silence_after_s:
            quiet = self.store.states_matching({"bool": {
                "filter": [{"range": {"last_reading_ms": {"lte": at - s.silence_after_s * 1000,
                                                          "gte": at - s.silence_window_s * 1000}}}],
                "must_not": [{"term": {"open_kinds": NO_READINGS}}]}},  # one alert per silence
                SWEEP_PAGE, "looking for patients gone silent")
            patients |= {doc["patient_id"] for doc in quiet.values()}
        if not patients:
            return 0, 0

        def tick(state: PatientState, when: int):
            written, events, episodes = [], [], dict(state.episodes)
            for kind, alert in state.episodes.items():
                alert, escalated = escalations(alert, when, s)
                if escalated:
                    episodes[kind] = alert
                    written.append(alert)
                    events += escalated
            if written:
                state = replace(state, episodes=episodes)
            state, silent, silent_events = silences(state, when, s)
            return state, written + silent, events + silent_events
        return self._decide(sorted(patients), lambda state, _: tick(state, at), "the alert sweep")

    def start_sweeping(self, stopped: threading.Event) -> threading.Thread:
        """Run :meth:`sweep` every ``alerts.sweep_every`` until ``stopped`` is set."""
        def run() -> None:
            while not stopped.wait(self.sweep_every_s):
                try:
                    written, sent = self.sweep()
                    if sent:
                        log.info("alert sweep: %d alerts escalated or opened for silence, %d events sent", written, sent)
                except Exception as exc:  # the next sweep tries again; batches are not held
                    log.warning("alert sweep failed (%s: %s); trying again in %d s", type(exc).__name__,
                                str(exc).splitlines()[0][:200], self.sweep_every_s)
        thread = threading.Thread(target=run, name="bp-alert-sweep", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ decide, send, write

    def _decide(self, patient_ids: list[str], decide, what: str) -> tuple[int, int]:
        written_total = sent_total = 0
        with self.lock:
            pending = list(patient_ids)
            for _ in range(REDO_ROUNDS):
                if not pending:
                    break
                at = now_ms()
                loaded = self.store.load(pending, what)
                states, alerts, events = {}, {}, []
                for patient_id in pending:
                    state = loaded.states[patient_id]
                    new_state, written, patient_events = decide(state, at)
                    if new_state is state and not written:
                        continue
                    states[patient_id], alerts[patient_id] = new_state, written
                    events += patient_events
                self.store.look_up(loaded, alerts, what)
                # Before the writes: a crash between the two sends them again (same event ids),
                # never loses one; those an earlier attempt sent and recorded are not sent again.
                events = [e for e in events if not recorded(e, loaded.stored.get(e.alert["alert_id"]))]
                self._send(events, what)
                pending = sorted(self.store.save(loaded, states, alerts, at, what))
                written_total += sum(len(a) for pid, a in alerts.items() if pid not in pending)
                sent_total += len(events)
            if pending:
                log.warning("%s: %d patients' alerts kept changing while being decided; they are decided with the next "
                            "readings", what, len(pending))
        return written_total, sent_total

    def _send(self, events: list[Event], what: str) -> None:
        if not events:
            return
        self.topic.send([(e.alert["patient_id"].encode(), orjson.dumps(detected_issue(e))) for e in events],
                        f"{what}: sending {len(events)} alert events")
