"""Where alert episodes live, and how the job and people share them.

- ``elasticsearch.alert_state_index``, one document per patient (``_id`` = patient id): the job's
  own copy of the patient's active alerts, their recent readings (for persistence), their last
  reading's time (for silence) and the last batch applied. Only the job writes it, under a lock
  shared by its batches and its sweep, so it is the truth of everything the job decides.
- ``elasticsearch.episodes_index``, one document per alert (``_id`` = ``alert_id``): what the care
  team sees and changes. People acknowledge and resolve there (``jobs/alerts.py``); the job reads
  those changes back before each decision (:func:`merged`) and writes each alert only over the
  version it read (``if_seq_no``): a person's acknowledgement and the job's update of one alert
  never overwrite each other; a conflict makes the job read the alert again and decide again.

Order, so that a crash at any point loses nothing: the events are sent, then the alerts are
written, then the patient's state with the batch's id. A batch replayed after a crash before the
state was written decides the same again from the same state: the alerts' ids are the same, and
an event the written alert records already is not sent again (``episodes.recorded``); once the
state is written, a replay of the batch changes nothing. Only a crash between the send and the
alerts' write sends an event twice, with the same ``event_id`` (consumers keep the first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bp_spark.alerts.episodes import ACKNOWLEDGED, JOB, RESOLVED, PatientState, triage_rank

# What people change on an alert; everything else is the job's.
PERSON_FIELDS = ("acknowledged_by", "acknowledged_at", "ack_note", "resolved_by", "resolved_at", "resolve_note")


def merged(job_copy: dict, stored: dict | None) -> dict:
    """The job's copy of an alert with what people did to it since (the stored document): a
    resolution by a person wins; so does a later acknowledgement of an alert still active."""
    if stored is None:
        return job_copy
    alert = dict(job_copy)
    person_resolved = stored.get("resolved_at") and stored.get("resolved_by") != JOB
    if person_resolved and not job_copy.get("resolved_at"):
        alert.update({k: stored.get(k) for k in PERSON_FIELDS if stored.get(k) is not None}, status=RESOLVED)
    elif (stored.get("acknowledged_at") or 0) > (job_copy.get("acknowledged_at") or 0) and alert["status"] != RESOLVED:
        alert.update({k: stored.get(k) for k in ("acknowledged_by", "acknowledged_at", "ack_note")}, status=ACKNOWLEDGED)
    # A level the job recorded on the alert but not yet in its state (stopped between the two):
    # escalated once, not again.
    if (stored.get("paged_at") == job_copy.get("paged_at")
            and (stored.get("escalation_level") or 0) > (job_copy.get("escalation_level") or 0)):
        alert.update(escalation_level=stored["escalation_level"], escalated_at=stored.get("escalated_at"))
    return alert


@dataclass
class Loaded:
    """Patients' states as read, with the version of each of their alerts."""

    states: dict[str, PatientState] = field(default_factory=dict)
    versions: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # alert id -> (seq_no, term)
    stored: dict[str, dict | None] = field(default_factory=dict)  # alert id -> the alert as its index held it


def state_of(patient_id: str, doc: dict | None) -> PatientState:
    if doc is None:
        return PatientState(patient_id)
    return PatientState(patient_id, dict(doc.get("episodes") or {}), {k: [list(f) for f in v] for k, v in
                                                                      (doc.get("recent") or {}).items()},
                        doc.get("last_reading_ms"), doc.get("batch_id"))


class EpisodeStore:
    """The two indices, through the job's Elasticsearch sink (its one door)."""

    def __init__(self, elasticsearch, episodes_index: str, state_index: str) -> None:
        self.es = elasticsearch
        self.episodes_index = episodes_index
        self.state_index = state_index

    def load(self, patient_ids, what: str) -> Loaded:
        """The patients' states, their alerts merged with what people did to them; an alert a
        person resolved leaves the active ones."""
        docs = self.es.documents(self.state_index, patient_ids, f"{what}: reading the patients' alert state")
        loaded = Loaded()
        for patient_id in patient_ids:
            loaded.states[patient_id] = state_of(patient_id, docs.get(patient_id))
        alert_ids = {a["alert_id"] for st in loaded.states.values() for a in st.episodes.values()}
        stored = self.es.versioned(self.episodes_index, alert_ids, f"{what}: reading {len(alert_ids)} active alerts")
        for state in loaded.states.values():
            for kind, alert in list(state.episodes.items()):
                source, seq_no, term = stored.get(alert["alert_id"], (None, None, None))
                loaded.versions[alert["alert_id"]], loaded.stored[alert["alert_id"]] = (seq_no, term), source
                alert = merged(alert, source)
                if alert["status"] == RESOLVED:
                    del state.episodes[kind]
                else:
                    state.episodes[kind] = alert
        return loaded

    def look_up(self, loaded: Loaded, alerts: dict[str, list[dict]], what: str) -> None:
        """Read the alerts new to the patients' state: one may be in the index already, written by
        an attempt that stopped before the state (a replayed batch, a sweep killed midway)."""
        unknown = {a["alert_id"] for written in alerts.values() for a in written if a["alert_id"] not in loaded.versions}
        found = self.es.versioned(self.episodes_index, unknown, f"{what}: reading {len(unknown)} new alerts") if unknown else {}
        for alert_id in unknown:
            source, seq_no, term = found.get(alert_id, (None, None, None))
            loaded.versions[alert_id], loaded.stored[alert_id] = (seq_no, term), source

    def save(self, loaded: Loaded, states: dict[str, PatientState], alerts: dict[str, list[dict]], now_ms: int,
             what: str) -> set[str]:
        """Write the patients' alerts over the versions read (:meth:`look_up` first), then the
        states of the patients whose alerts all went in. Returns the patients to read again and
        redo (a person changed one of their alerts meanwhile)."""
        docs, owner = {}, {}
        for patient_id, written in alerts.items():
            for alert in written:
                # Written over the version read, keeping what people did to it (an alert the state
                # held was merged so when loaded; merging again changes nothing).
                alert = merged(alert, loaded.stored.get(alert["alert_id"]))
                seq_no, term = loaded.versions.get(alert["alert_id"], (None, None))
                docs[alert["alert_id"]] = ({**alert, "updated_at": now_ms, "triage_rank": triage_rank(alert)}, seq_no, term)
                owner[alert["alert_id"]] = patient_id
        # No refresh per batch: the job and jobs/alerts.py read alerts back by id (a multi-get sees
        # them at once); searches (the dashboards, the sweep) see them within the 1 s refresh.
        conflicts = self.es.put_versioned(self.episodes_index, docs, f"{what}: writing {len(docs)} alerts",
                                          refresh=False)
        redo = {owner[alert_id] for alert_id in conflicts}
        kept = {pid: {**st.as_document(), "episodes": st.episodes, "updated_at": now_ms}
                for pid, st in states.items() if pid not in redo}
        self.es.put(self.state_index, kept, f"{what}: writing {len(kept)} patients' alert state", refresh=False)
        return redo

    def active(self, query: dict, size: int, what: str) -> dict[str, dict]:
        """Alerts of the episodes index matching ``query`` (the sweep's look for escalations)."""
        return self.es.search(self.episodes_index, query, size, what)

    def states_matching(self, query: dict, size: int, what: str) -> dict[str, dict]:
        return self.es.search(self.state_index, query, size, what)
