"""Synthetic FHIR R4 blood-pressure Observations with realistic physiology (plain Python, no Spark).

Each patient gets a baseline from a population mix (normotensive, elevated, stage 1, stage 2,
hypotensive), readings follow a diurnal curve with a morning peak plus measurement noise,
and rare episodes (hypertensive crisis, hypotension) strike at configurable rates. Output is
deterministic for a seed: the same seed, window and sizes give the same bytes.

Readings come out in event-time order across patients, interleaved as a real feed arrives.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import orjson

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PANEL_CODE = "85354-9"
SYSTOLIC_CODE = "8480-6"
DIASTOLIC_CODE = "8462-4"

GROUPS = ("normotensive", "elevated", "stage_1", "stage_2", "hypotensive")
# Baseline (mean, sd) of systolic and diastolic per group, mmHg.
BASELINES = {
    "normotensive": ((112.0, 5.0), (72.0, 4.0)),
    "elevated": ((124.0, 2.5), (74.0, 3.0)),
    "stage_1": ((134.0, 3.0), (84.0, 3.0)),
    "stage_2": ((152.0, 7.0), (96.0, 5.0)),
    "hypotensive": ((88.0, 3.0), (56.0, 3.0)),
}
# Patients' wall-clock offsets: a regional feed with a few sites abroad.
OFFSETS = (timezone.utc, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30)))
DIURNAL_SYSTOLIC = 7.0   # mmHg, half the day-night swing
DIURNAL_DIASTOLIC = 4.5
PEAK_HOUR = 9.0          # morning surge, local time
NOISE_SYSTOLIC = 5.0
NOISE_DIASTOLIC = 3.5


@dataclass(frozen=True)
class Patient:
    """One synthetic patient: id, baseline group and values, local offset."""

    patient_id: str
    group: str
    systolic: float
    diastolic: float
    tz: timezone
    offset_s: int  # the tz's offset in seconds, kept beside it for the hot loop


class Reading(NamedTuple):
    """One generated reading: whose, when (epoch seconds, shown in the patient's offset), the values.

    A NamedTuple, not a frozen dataclass: it is built 100,000 times a second, and a frozen
    dataclass's constructor costs several times more.
    """

    patient: Patient
    epoch: int
    systolic: int
    diastolic: int
    episode: str | None

    @property
    def effective(self) -> datetime:
        return datetime.fromtimestamp(self.epoch, self.patient.tz)


def aha_category(systolic: float, diastolic: float, systolic_low: float = 90, diastolic_low: float = 60) -> str:
    """AHA/ACC 2017 category of one reading (the higher of the two decides); for the generator's summary."""
    if systolic > 180 or diastolic > 120:
        return "hypertensive_crisis"
    if systolic >= 140 or diastolic >= 90:
        return "hypertension_stage_2"
    if systolic >= 130 or diastolic >= 80:
        return "hypertension_stage_1"
    if systolic >= 120:
        return "elevated"
    if systolic < systolic_low or diastolic < diastolic_low:
        return "hypotension"
    return "normal"


def make_patients(count: int, seed: int, mix: dict[str, float]) -> list[Patient]:
    """Draw ``count`` patients from the population ``mix`` (weights per group)."""
    rng = random.Random(f"patients/{seed}")
    groups = list(mix)
    weights = [mix[g] for g in groups]
    patients = []
    for i in range(count):
        group = rng.choices(groups, weights)[0]
        (s_mean, s_sd), (d_mean, d_sd) = BASELINES[group]
        patients.append(Patient(
            patient_id=f"patient-{i + 1:05d}",
            group=group,
            systolic=rng.gauss(s_mean, s_sd),
            diastolic=rng.gauss(d_mean, d_sd),
            tz=(tz := OFFSETS[rng.randrange(len(OFFSETS))]),
            offset_s=int(tz.utcoffset(None).total_seconds()),
        ))
    return patients


def _reading(patient: Patient, epoch: int, rng: random.Random, crisis_rate: float, hypotension_rate: float) -> Reading:
    local_hour = ((epoch + patient.offset_s) % 86400) / 3600
    wave = math.cos(2 * math.pi * (local_hour - PEAK_HOUR) / 24)
    systolic = patient.systolic + DIURNAL_SYSTOLIC * wave + rng.gauss(0, NOISE_SYSTOLIC)
    diastolic = patient.diastolic + DIURNAL_DIASTOLIC * wave + rng.gauss(0, NOISE_DIASTOLIC)
    episode = None
    draw = rng.random()
    if draw < crisis_rate:
        episode = "hypertensive_crisis"
        systolic = max(systolic, rng.uniform(182, 225))
        diastolic = max(diastolic, rng.uniform(100, 128))
    elif draw < crisis_rate + hypotension_rate:
        episode = "hypotension"
        systolic = min(systolic, rng.uniform(72, 88))
        diastolic = min(diastolic, rng.uniform(42, 58))
    systolic = min(260, max(60, round(systolic)))
    diastolic = min(150, max(35, round(diastolic)))
    diastolic = min(diastolic, systolic - 15)  # a pulse pressure below 15 mmHg is not physiological
    return Reading(patient, epoch, systolic, diastolic, episode)


def readings(
    patients: list[Patient],
    start: datetime,
    end: datetime,
    per_day: int,
    seed: int,
    crisis_rate: float,
    hypotension_rate: float,
) -> Iterator[Reading]:
    """Readings of every patient at ``per_day`` slots a day in ``[start, end)``, in event-time order.

    Each patient measures near each slot (within a quarter of the slot, varying per reading),
    so the feed interleaves patients as a real one does and stays time-ordered across slots.
    """
    rng = random.Random(f"readings/{seed}")
    slot_s = 86400 / per_day
    jitter_s = slot_s / 4
    start_s, end_s = start.timestamp(), int(end.timestamp())
    n = 0
    while (slot_start := start_s + n * slot_s) < end_s:
        batch = [
            _reading(patient, int(slot_start + rng.uniform(0, jitter_s)), rng, crisis_rate, hypotension_rate)
            for patient in patients
        ]
        batch.sort(key=lambda r: r.epoch)  # stable: patients in id order within a second
        yield from (r for r in batch if r.epoch < end_s)
        n += 1


def live_reading(patient: Patient, rng: random.Random, crisis_rate: float, hypotension_rate: float) -> Reading:
    """One reading of ``patient`` taken now, for the live mode."""
    return _reading(patient, int(time.time()), rng, crisis_rate, hypotension_rate)


def observation_id(reading: Reading) -> str:
    """A FHIR id unique per patient and moment, and the same on every run of the same workload."""
    return f"bp-{reading.patient.patient_id}-{reading.epoch}"


def _component(code: str, display: str) -> str:
    return ('{"code":{"coding":[{"system":"%s","code":"%s","display":"%s"}]},'
            '"valueQuantity":{"value":%%d,"unit":"mmHg","system":"%s","code":"mm[Hg]"}}') % (LOINC, code, display, UCUM)


# The Observation as a format string: building it with % is several times faster than a dict
# through a JSON encoder, which matters at 100k messages a second. Tests parse every message
# and validate it with fhir.resources, so the template cannot drift from valid FHIR unnoticed.
_TEMPLATE = (
    '{"resourceType":"Observation","id":"%s",'
    '"meta":{"profile":["http://hl7.org/fhir/StructureDefinition/bp"]},'
    # A short narrative, as FHIR's best practice asks of every resource (dom-6).
    '"text":{"status":"generated","div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\">'
    'Blood pressure %d/%d mmHg, measured by the patient at home on %s</div>"},'
    '"status":"final",'
    '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category",'
    '"code":"vital-signs","display":"Vital Signs"}]}],'
    f'"code":{{"coding":[{{"system":"{LOINC}","code":"{PANEL_CODE}",'
    '"display":"Blood pressure panel with all children optional"}],"text":"Blood pressure"},'
    '"subject":{"reference":"Patient/%s"},'
    '"effectiveDateTime":"%s",'
    # Home readings: the patient took them.
    '"performer":[{"reference":"Patient/%s"}],'
    '"component":[' + _component(SYSTOLIC_CODE, "Systolic blood pressure") + ","
    + _component(DIASTOLIC_CODE, "Diastolic blood pressure") + "]}"
)


def encode(reading: Reading) -> tuple[bytes, bytes]:
    """The Kafka key (patient id) and value (FHIR R4 Observation JSON) of one reading."""
    patient = reading.patient
    taken = datetime.fromtimestamp(reading.epoch, patient.tz).isoformat()
    value = _TEMPLATE % (
        f"bp-{patient.patient_id}-{reading.epoch}",
        reading.systolic, reading.diastolic, taken,
        patient.patient_id,
        taken,
        patient.patient_id,
        reading.systolic,
        reading.diastolic,
    )
    return patient.patient_id.encode(), value.encode()


GOAL_TEMPLATES = ((130, 80), (150, 90))  # "below 130/80"; "below 150/90" (e.g. at 80 and over)


def goal_for(patient: Patient, start: datetime, rng: random.Random) -> tuple[bytes, bytes]:
    """The Kafka key and value (FHIR R4 Goal JSON) of a patient's blood-pressure target: systolic
    at most S (a range's high), diastolic below D (a quantity with comparator), from ``start``'s
    date. Most patients get 130/80; one in four 150/90."""
    systolic, diastolic = GOAL_TEMPLATES[0] if rng.random() < 0.75 else GOAL_TEMPLATES[1]
    quantity = {"unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    goal = {
        "resourceType": "Goal", "id": f"goal-{patient.patient_id}", "lifecycleStatus": "active",
        "description": {"text": f"Blood pressure below {systolic}/{diastolic} mmHg"},
        "subject": {"reference": f"Patient/{patient.patient_id}"}, "startDate": start.date().isoformat(),
        "target": [
            {"measure": {"coding": [{"system": LOINC, "code": SYSTOLIC_CODE, "display": "Systolic blood pressure"}]},
             "detailRange": {"high": {"value": systolic, **quantity}}},
            {"measure": {"coding": [{"system": LOINC, "code": DIASTOLIC_CODE, "display": "Diastolic blood pressure"}]},
             "detailQuantity": {"value": diastolic, "comparator": "<", **quantity}},
        ],
    }
    return patient.patient_id.encode(), orjson.dumps(goal)


def patients_with_goals(patients: list[Patient], share: float, seed: int) -> list[Patient]:
    """The ``share`` of ``patients`` (drawn with ``seed``) whose clinician set them a target."""
    rng = random.Random(f"goals/{seed}")
    return [p for p in patients if rng.random() < share]


class Validator:
    """Checks Observations (and Goals) with fhir.resources' R4B models: every one, a sample, or none."""

    SAMPLE_HEAD = 100
    SAMPLE_EVERY = 1000

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.checked = 0
        self._seen = 0
        self._model = None
        if mode != "none":
            from fhir.resources.R4B.observation import Observation  # slow import: only when used
            self._model = Observation

    def __call__(self, value: bytes) -> None:
        """Raise ``ValueError`` naming the observation when the JSON ``value`` is not valid R4."""
        self._seen += 1
        if self._model is None:
            return
        if self.mode == "sample" and self._seen > self.SAMPLE_HEAD and self._seen % self.SAMPLE_EVERY:
            return
        observation = orjson.loads(value)
        try:
            if observation.get("resourceType") == "Goal":
                from fhir.resources.R4B.goal import Goal
                Goal.model_validate(observation)
            else:
                self._model.model_validate(observation)
        except ValueError as exc:
            raise ValueError(f"observation {observation.get('id')} is not valid FHIR R4: {exc}") from exc
        self.checked += 1


@dataclass
class Tally:
    """Counts for the final summary; ``limits`` is (systolic_low, systolic_high, diastolic_low, diastolic_high)."""

    limits: tuple[float, float, float, float] = (90, 140, 60, 90)
    total: int = 0
    abnormal: int = 0
    by_category: Counter = field(default_factory=Counter)
    episodes: Counter = field(default_factory=Counter)

    def add(self, reading: Reading) -> None:
        s_low, s_high, d_low, d_high = self.limits
        s, d = reading.systolic, reading.diastolic
        self.total += 1
        self.abnormal += s > s_high or s < s_low or d > d_high or d < d_low
        self.by_category[aha_category(s, d, s_low, d_low)] += 1
        if reading.episode:
            self.episodes[reading.episode] += 1


def window(start: str, end: str, days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The generation window: explicit bounds, or ``days`` ending now rounded down to the hour."""
    if end:
        end_at = datetime.fromisoformat(end)
    else:
        end_at = (now or datetime.now(timezone.utc)).replace(minute=0, second=0, microsecond=0)
    start_at = datetime.fromisoformat(start) if start else end_at - timedelta(days=days)
    return start_at, end_at
