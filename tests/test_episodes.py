"""Alert episodes (bp_spark/alerts/episodes.py), as a nurse triaging alerts would check them:
one alert per patient and problem, pages only when something new needs someone."""

from __future__ import annotations

from bp_spark.alerts.episodes import (ABOVE_TARGET, ACKNOWLEDGED, CRITICAL_READING, ESCALATED, JOINED, NO_READINGS,
                                      OPEN, OPENED, RESOLVED, PatientState, Reading, Settings, acknowledge, advance,
                                      escalations, recorded, resolve, silences, sustained_onset, triage_rank)
from bp_spark.alerts.store import merged

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_780_000_000_000  # a moment in 2026
SETTINGS = Settings()


def critical(obs_id: str, at_ms: int, systolic: float = 190, diastolic: float = 125) -> Reading:
    return Reading(obs_id, at_ms, systolic, diastolic, "critical", frozenset({CRITICAL_READING, ABOVE_TARGET}),
                   "hypertensive_crisis")


def high(obs_id: str, at_ms: int, systolic: float = 150, diastolic: float = 92) -> Reading:
    return Reading(obs_id, at_ms, systolic, diastolic, "warning", frozenset({ABOVE_TARGET}), "hypertension_stage_2")


def normal(obs_id: str, at_ms: int) -> Reading:
    return Reading(obs_id, at_ms, 118, 76, "none", frozenset(), "normal")


def test_three_critical_readings_within_an_hour_are_one_confirmed_alert_that_pages_once() -> None:
    state, written, events = advance(PatientState("p1"), [critical("c1", T0), critical("c2", T0 + 20 * MINUTE, 200, 130),
                                                          critical("c3", T0 + 50 * MINUTE)], T0 + HOUR, 1, SETTINGS)
    alert = state.episodes[CRITICAL_READING]
    assert [(e.kind, e.page) for e in events if e.alert["kind"] == CRITICAL_READING] == [(OPENED, True)]
    assert (alert["readings_count"], alert["reading_ids"], alert["confirmed"]) == (3, ["c1", "c2", "c3"], True)
    assert (alert["worst_systolic"], alert["worst_diastolic"], alert["status"]) == (200, 130, OPEN)
    assert alert["reason"] == "hypertensive crisis: 190/125 mmHg"
    # three readings above the limits within a week: the persistent kind opens too, at the third
    above = state.episodes[ABOVE_TARGET]
    assert (above["readings_count"], above["reading_ids"]) == (1, ["c3"])
    assert above["reason"] == "3 of the last 4 readings within 7 days above the limits"


def test_a_critical_reading_alone_is_not_confirmed_and_one_an_hour_later_does_not_confirm_it() -> None:
    state, _, _ = advance(PatientState("p1"), [critical("c1", T0), critical("c2", T0 + HOUR)], T0 + HOUR, 1, SETTINGS)
    assert state.episodes[CRITICAL_READING]["confirmed"] is False


def test_the_same_batch_again_changes_nothing_and_a_repeated_reading_does_not_count_twice() -> None:
    first, written, events = advance(PatientState("p1"), [critical("c1", T0)], T0, 7, SETTINGS)
    assert advance(first, [critical("c1", T0)], T0, 7, SETTINGS) == (first, [], [])  # a replay of batch 7
    again, written, events = advance(first, [critical("c1", T0)], T0, 8, SETTINGS)
    assert again.episodes[CRITICAL_READING]["readings_count"] == 1 and events == []


def test_persistence_needs_n_of_the_last_m_readings_within_the_period() -> None:
    readings = [high("h1", T0), normal("n1", T0 + HOUR), high("h2", T0 + 2 * HOUR), normal("n2", T0 + 3 * HOUR),
                high("h3", T0 + 4 * HOUR)]  # never 3 of the last 4
    state, written, events = advance(PatientState("p1"), readings, T0 + 5 * HOUR, 1, SETTINGS)
    assert ABOVE_TARGET not in state.episodes and events == []
    state, written, events = advance(state, [high("h4", T0 + 5 * HOUR)], T0 + 5 * HOUR, 2, SETTINGS)
    assert [(e.kind, e.alert["kind"]) for e in events] == [(OPENED, ABOVE_TARGET)]  # h2, n2, h3, h4
    assert written[0]["reading_ids"] == ["h4"]
    # readings spread over more than the period do not add up
    spread = [high(f"s{i}", T0 + i * 4 * DAY) for i in range(3)]
    state, _, events = advance(PatientState("p2"), spread, T0 + 9 * DAY, 1, SETTINGS)
    assert events == [] and state.recent[ABOVE_TARGET] == [[T0, 1], [T0 + 4 * DAY, 1], [T0 + 8 * DAY, 1]]


def test_an_acknowledged_alert_is_quiet_for_the_snooze_then_a_reading_pages_again() -> None:
    state, _, _ = advance(PatientState("p1"), [critical("c1", T0)], T0, 1, SETTINGS)
    alert, event = acknowledge(state.episodes[CRITICAL_READING], "nurse.a", "called the patient", T0 + 10 * MINUTE)
    assert (alert["status"], alert["acknowledged_by"], event.kind, event.page) == (ACKNOWLEDGED, "nurse.a", "acknowledged", False)
    state.episodes[CRITICAL_READING] = alert
    state, _, events = advance(state, [critical("c2", T0 + 2 * HOUR)], T0 + 2 * HOUR, 2, SETTINGS)
    assert [e for e in events if e.alert["kind"] == CRITICAL_READING] == []  # quiet, but it joined
    assert state.episodes[CRITICAL_READING]["readings_count"] == 2
    later = T0 + 10 * MINUTE + SETTINGS.snooze_s * 1000 + MINUTE
    state, _, events = advance(state, [critical("c3", later)], later, 3, SETTINGS)
    (event,) = [e for e in events if e.alert["kind"] == CRITICAL_READING]
    assert (event.kind, event.page, event.alert["status"]) == (JOINED, True, OPEN)


def test_a_more_severe_reading_pages_again_even_when_acknowledged_but_not_twice_for_one_reading() -> None:
    state, _, _ = advance(PatientState("p1"), [high(f"h{i}", T0 + i * HOUR) for i in range(3)], T0 + 3 * HOUR, 1, SETTINGS)
    alert, _ = acknowledge(state.episodes[ABOVE_TARGET], "nurse.a", "", T0 + 3 * HOUR)
    state.episodes[ABOVE_TARGET] = alert
    # a critical reading: its own alert pages; the persistent one takes its level quietly
    crisis, _, events = advance(state, [critical("c1", T0 + 4 * HOUR)], T0 + 4 * HOUR, 2, SETTINGS)
    assert [(e.alert["kind"], e.kind) for e in events if e.page] == [(CRITICAL_READING, OPENED)]
    assert (crisis.episodes[ABOVE_TARGET]["severity"], crisis.episodes[ABOVE_TARGET]["status"]) == ("critical", ACKNOWLEDGED)
    # a level above the alert's, with no other alert to page for it, pages through this one
    worse = Reading("x1", T0 + 4 * HOUR, 185, 100, "critical", frozenset({ABOVE_TARGET}), "stage_2")
    state, _, events = advance(state, [worse], T0 + 4 * HOUR, 2, SETTINGS)
    assert [(e.kind, e.page, e.alert["severity"], e.alert["status"]) for e in events] == [(JOINED, True, "critical", OPEN)]


def test_readings_back_in_range_resolve_it_after_the_auto_resolve_time_and_a_new_episode_can_open() -> None:
    state, _, _ = advance(PatientState("p1"), [critical("c1", T0)], T0, 1, SETTINGS)
    first_id = state.episodes[CRITICAL_READING]["alert_id"]
    state, written, events = advance(state, [normal("n1", T0 + HOUR)], T0 + HOUR, 2, SETTINGS)
    assert CRITICAL_READING in state.episodes and events == []  # in range, not for long enough
    state, written, events = advance(state, [normal("n2", T0 + DAY + HOUR)], T0 + DAY + HOUR, 3, SETTINGS)
    assert CRITICAL_READING not in state.episodes
    (resolved,) = written
    assert (resolved["alert_id"], resolved["status"], resolved["resolved_by"]) == (first_id, RESOLVED, "bp-monitor")
    assert [e.kind for e in events] == ["resolved"]
    state, written, events = advance(state, [critical("c9", T0 + 2 * DAY)], T0 + 2 * DAY, 4, SETTINGS)
    assert [e.kind for e in events if e.alert["kind"] == CRITICAL_READING] == [OPENED]
    assert state.episodes[CRITICAL_READING]["alert_id"] != first_id


def test_a_person_resolves_and_a_resolved_alert_cannot_be_acknowledged_or_resolved_again() -> None:
    state, _, _ = advance(PatientState("p1"), [critical("c1", T0)], T0, 1, SETTINGS)
    alert, event = resolve(state.episodes[CRITICAL_READING], "dr.b", "medication changed", T0 + HOUR)
    assert (alert["status"], alert["resolved_by"], event.kind) == (RESOLVED, "dr.b", "resolved")
    for action in (lambda: acknowledge(alert, "nurse.a", "", T0), lambda: resolve(alert, "nurse.a", "", T0)):
        try:
            action()
        except ValueError as exc:
            assert "is resolved" in str(exc)
        else:
            raise AssertionError("a resolved alert was changed")


def test_escalation_one_level_per_period_unacknowledged_each_level_once() -> None:
    state, _, _ = advance(PatientState("p1"), [critical("c1", T0)], T0, 1, SETTINGS)
    alert = state.episodes[CRITICAL_READING]
    assert escalations(alert, T0 + 14 * MINUTE, SETTINGS) == (alert, [])
    alert, events = escalations(alert, T0 + 16 * MINUTE, SETTINGS)
    assert [(e.kind, e.event_id.rsplit("|", 1)[1], e.page) for e in events] == [(ESCALATED, "1.1", True)]
    assert escalations(alert, T0 + 20 * MINUTE, SETTINGS) == (alert, [])  # level 1 sent: not again
    alert, events = escalations(alert, T0 + 46 * MINUTE, SETTINGS)  # missed a sweep: levels 2 and 3, each once
    assert [e.alert["escalation_level"] for e in events] == [2, 3]
    acked, _ = acknowledge(alert, "nurse.a", "", T0 + 47 * MINUTE)
    assert escalations(acked, T0 + 3 * HOUR, SETTINGS) == (acked, [])


def test_silence_opens_a_no_readings_alert_once_and_the_next_reading_resolves_it() -> None:
    state, _, _ = advance(PatientState("p1"), [normal("n1", T0)], T0, 1, SETTINGS)
    assert silences(state, T0 + 2 * DAY, SETTINGS)[2] == []
    state, written, events = silences(state, T0 + 3 * DAY + HOUR, SETTINGS)
    assert [(e.kind, e.alert["kind"]) for e in events] == [(OPENED, NO_READINGS)]
    assert written[0]["reason"].startswith("no readings for 3.0 days")
    assert silences(state, T0 + 4 * DAY, SETTINGS)[2] == []  # one alert per silence
    assert silences(PatientState("p2", last_reading_ms=T0), T0 + 30 * DAY, SETTINGS)[2] == []  # long gone: not ours
    state, written, events = advance(state, [normal("n2", T0 + 4 * DAY)], T0 + 4 * DAY, 2, SETTINGS)
    assert NO_READINGS not in state.episodes and [(w["kind"], w["status"]) for w in written] == [(NO_READINGS, RESOLVED)]


def test_an_onset_of_sustained_hypertension_opens_once_and_later_onsets_join() -> None:
    state, written, events = sustained_onset(PatientState("p1"), "w1", T0, 148, 94, 14, "sustained: 148/94", T0, SETTINGS)
    assert [e.kind for e in events] == [OPENED] and written[0]["readings_count"] == 14
    state, written, events = sustained_onset(state, "w2", T0 + DAY, 150, 95, 14, "sustained: 150/95", T0 + DAY, SETTINGS)
    assert events == [] and written[0]["readings_count"] == 15 and written[0]["worst_systolic"] == 150


def test_the_alert_load_of_one_patient_with_a_bad_week() -> None:
    """Four readings a day for a week, every one above the limits and two a day critical: one
    alert of each kind, two pages, where one per qualifying reading made 28 (critical 14)."""
    readings = []
    for day in range(7):
        for slot, hour in enumerate((7, 12, 18, 22)):
            at = T0 + day * DAY + hour * HOUR
            readings.append(critical(f"c{day}{slot}", at) if slot < 2 else high(f"h{day}{slot}", at))
    state, written, events = advance(PatientState("p1"), readings, T0 + 7 * DAY, 1, SETTINGS)
    assert sorted((e.alert["kind"], e.kind) for e in events if e.page) == [(ABOVE_TARGET, OPENED), (CRITICAL_READING, OPENED)]
    assert state.episodes[CRITICAL_READING]["readings_count"] == 14
    assert state.episodes[ABOVE_TARGET]["readings_count"] == 26  # from the third reading on


def test_the_care_teams_list_puts_open_before_acknowledged_before_resolved_and_critical_first() -> None:
    ranks = {(status, severity): triage_rank({"status": status, "severity": severity})
             for status in (OPEN, ACKNOWLEDGED, RESOLVED) for severity in ("critical", "warning")}
    assert sorted(ranks, key=ranks.get) == [(OPEN, "critical"), (OPEN, "warning"), (ACKNOWLEDGED, "critical"),
                                            (ACKNOWLEDGED, "warning"), (RESOLVED, "critical"), (RESOLVED, "warning")]


def test_an_event_the_stored_alert_records_is_not_sent_again_and_each_pages_levels_are_news() -> None:
    """A job stopped after writing an alert and before the patient's state decides again from
    the old state: the events its alert already records are not sent twice."""
    state, written, events = advance(PatientState("p1"), [critical("c1", T0)], T0, 1, SETTINGS)
    (opened,) = events
    assert not recorded(opened, None) and recorded(opened, written[0])
    alert, escalated = escalations(state.episodes[CRITICAL_READING], T0 + 16 * MINUTE, SETTINGS)
    assert not recorded(escalated[0], written[0]) and recorded(escalated[0], alert)
    acked, _ = acknowledge(alert, "nurse.a", "", T0 + 20 * MINUTE)
    state.episodes[CRITICAL_READING] = acked
    later = T0 + 20 * MINUTE + SETTINGS.snooze_s * 1000
    state, (repaged,), events = advance(state, [critical("c2", later)], later, 2, SETTINGS)
    assert [(e.kind, e.event_id.rsplit("|", 1)[1]) for e in events] == [(JOINED, "2")]
    assert not recorded(events[0], alert) and recorded(events[0], repaged)
    again, escalated_again = escalations(repaged, later + 16 * MINUTE, SETTINGS)
    # level 1 of the second page: an id of its own, not the first page's level 1 again
    assert escalated_again[0].event_id != escalated[0].event_id
    assert not recorded(escalated_again[0], alert) and recorded(escalated_again[0], again)


def test_the_stored_alert_keeps_a_level_the_state_missed_and_a_persons_acknowledgement() -> None:
    state, _, _ = advance(PatientState("p1"), [critical("c1", T0)], T0, 1, SETTINGS)
    job_copy = state.episodes[CRITICAL_READING]
    stored, _ = escalations(job_copy, T0 + 31 * MINUTE, SETTINGS)
    assert merged(job_copy, stored)["escalation_level"] == 2  # not escalated again after a restart
    assert escalations(merged(job_copy, stored), T0 + 32 * MINUTE, SETTINGS)[1] == []
    repaged = {**job_copy, "paged_at": T0 + HOUR, "pages": 2}  # a later page starts its levels again
    assert merged(repaged, stored)["escalation_level"] == 0
    acked, _ = acknowledge(stored, "nurse.a", "seen", T0 + 40 * MINUTE)
    assert (merged(job_copy, acked)["status"], merged(job_copy, acked)["acknowledged_by"]) == (ACKNOWLEDGED, "nurse.a")
