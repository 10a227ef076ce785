"""Conformance of what the generator publishes: FHIR R4's blood-pressure profile
(http://hl7.org/fhir/StructureDefinition/bp, of the vital signs), checked by the HL7 validator's
logic (HAPI FHIR's, jvm/fhir-validator), offline: the core profiles ship with the validator, so no
terminology server or package download is needed. LOINC cannot be checked offline: its codes give
warnings saying so, the only ones allowed.

Nothing a message holds is printed: a failure names the sampled message by its line, the
validator's location and its text with the patient ids masked.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import orjson
import pytest

from bp_spark.alerts.episodes import (CRITICAL_READING, PatientState, Reading, Settings, acknowledge, advance,
                                      escalations, resolve, silences, sustained_onset)
from bp_spark.alerts.fhir import detected_issue
from bp_spark.versions import ROOT
from tests.streams import generated

VALIDATOR = ROOT / "jvm" / "fhir-validator" / "ValidateObservations.java"
CLASSPATH = ROOT / "build" / "fhir-validator" / "classpath"
# Every message the generator makes has one shape (keys, codes, systems, value types; checked
# below): the sample holds each shape and values spread over the cohort. Each takes the
# validator ~30 ms after its ~5 s start; 200 were validated before, for no more coverage.
SAMPLE = 40


@dataclass(frozen=True)
class Message:
    line: int
    severity: str
    location: str
    text: str

    def __str__(self) -> str:  # the patient ids masked: a failure prints no patient data
        masked = re.sub(r"patient-[0-9A-Za-z]+(-\d+)?", "<patient>", f"{self.location}: {self.text}")
        return f"line {self.line}, {self.severity}: {masked}"


def validate(observations: list[bytes]) -> list[Message]:
    """The validator's messages for each of ``observations`` (one JSON document each)."""
    assert CLASSPATH.is_file(), (
        f"{CLASSPATH} is missing: `make fhir-validator` (which `make test` runs) fetches the HL7 validator "
        "from Maven Central")
    result = subprocess.run(["java", "-cp", CLASSPATH.read_text().strip(), str(VALIDATOR)],
                            input=b"\n".join(observations) + b"\n", capture_output=True, timeout=900)
    out = result.stdout.decode()
    assert result.returncode == 0, f"the validator failed (exit {result.returncode}): {result.stderr.decode()[-2000:]}"
    lines = out.splitlines()
    assert lines and lines[-1] == f"checked {len(observations)}", f"the validator stopped early: {lines[-1:]}"
    return [Message(int(number), severity, location, text)
            for number, severity, location, text in (line.split("\t", 3) for line in lines[:-1])]


def shape(value, key: str = ""):
    """A message's structure: its keys, the codes, systems, units and statuses it names, and the
    type of every other value."""
    if isinstance(value, dict):
        return tuple(sorted((k, shape(v, k)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(shape(v, key) for v in value)
    if isinstance(value, str) and key in ("resourceType", "status", "code", "system", "unit", "profile"):
        return value
    return type(value).__name__


def cohort() -> list[bytes]:
    """The generator's observations for a cohort of every kind of patient and reading (crises and
    hypotension included)."""
    return [value for _, value in generated(patients=50, days=10, seed=11, crisis_rate=0.2)]


def sample(values: list[bytes]) -> list[bytes]:
    """One observation of each shape among ``values``, then others spread over them: SAMPLE in all."""
    firsts = {}
    for value in values:
        firsts.setdefault(shape(orjson.loads(value)), value)
    spread = [value for value in values[::len(values) // SAMPLE] if value not in firsts.values()]
    return [*firsts.values(), *spread][:max(SAMPLE, len(firsts))]


def broken(good: dict) -> list[bytes]:
    """Observations that break the profile: no diastolic, a systolic in cm, no subject."""
    no_diastolic = {**good, "component": good["component"][:1]}
    wrong_unit = orjson.loads(orjson.dumps(good))
    wrong_unit["component"][0]["valueQuantity"].update(unit="cm", code="cm")
    no_subject = {key: value for key, value in good.items() if key != "subject"}
    return [orjson.dumps(no_diastolic), orjson.dumps(wrong_unit), orjson.dumps(no_subject)]


def detected_issues() -> list[bytes]:
    """The alert topic's DetectedIssues for each kind of alert and event: opened (with its
    evidence), escalated, acknowledged, resolved by a person and by the job, no readings, sustained."""
    t0, hour, day = 1_780_000_000_000, 3_600_000, 86_400_000
    crisis = lambda obs_id, at: Reading(obs_id, at, 190, 125, "critical", frozenset({CRITICAL_READING}),  # noqa: E731
                                        "hypertensive_crisis")
    state, _, events = advance(PatientState("patient-00042"), [crisis("bp-patient-00042-1", t0),
                                                             crisis("bp-patient-00042-2", t0 + hour // 4)], t0, 1, Settings())
    alert = state.episodes[CRITICAL_READING]
    escalated, more = escalations(alert, t0 + hour, Settings())
    acked, ack = acknowledge(escalated, "nurse.a", "called the patient", t0 + hour)
    done, closed = resolve(acked, "dr.b", "medication changed", t0 + 2 * hour)
    quiet = PatientState("patient-00043", last_reading_ms=t0)
    _, _, silence = silences(quiet, t0 + 4 * day, Settings())
    _, _, onset = sustained_onset(PatientState("patient-00044"), "patient|daily|x", t0, 148, 94, 14,
                                  "sustained hypertension: mean 148/94 mmHg", t0, Settings())
    return [orjson.dumps(detected_issue(e)) for e in [*events, *more, ack, closed, *silence, *onset]]


@pytest.fixture(scope="module")
def validated() -> tuple[list[bytes], list[Message], list[Message], list[Message]]:
    """The sample, the broken observations and the alert topic's DetectedIssues after it, through
    one run of the validator (its start and the profiles' loading are most of its time): the
    sample, its messages, the broken ones', the DetectedIssues'."""
    observations = sample(cohort())
    bad = broken(orjson.loads(observations[0]))
    issues = detected_issues()
    messages = validate([*observations, *bad, *issues])
    first_issue = len(observations) + len(bad)
    return (observations, [m for m in messages if m.line <= len(observations)],
            [Message(m.line - len(observations), m.severity, m.location, m.text)
             for m in messages if len(observations) < m.line <= first_issue],
            [Message(m.line - first_issue, m.severity, m.location, m.text) for m in messages if m.line > first_issue])


def test_every_sampled_observation_is_valid_against_the_bp_profile(validated) -> None:
    observations, messages, _, _ = validated
    assert len(observations) == SAMPLE
    assert {shape(orjson.loads(v)) for v in cohort()} <= {shape(orjson.loads(v)) for v in observations}
    errors = [m for m in messages if m.severity in ("error", "fatal")]
    assert not errors, f"{len(errors)} errors, first ones:\n" + "\n".join(map(str, errors[:10]))


def test_the_only_warnings_are_the_loinc_codes_that_cannot_be_checked_offline(validated) -> None:
    _, messages, _, _ = validated
    warnings = [m for m in messages if m.severity == "warning"]
    others = [m for m in warnings if "http://loinc.org" not in m.text]
    assert not others, f"{len(others)} warnings besides LOINC's, first ones:\n" + "\n".join(map(str, others[:10]))
    # What best practice asked of home readings is there: no warning on performer or narrative.
    assert not [m for m in messages if re.search(r"performer|narrative|dom-6", f"{m.location} {m.text}", re.I)]


def test_the_validator_catches_a_reading_that_breaks_the_profile(validated) -> None:
    """The check is real: observations that break the profile are refused, each with an error."""
    _, _, messages, _ = validated
    flagged = {m.line for m in messages if m.severity in ("error", "fatal")}
    assert flagged == {1, 2, 3}, "\n".join(map(str, messages))


def test_every_alert_event_is_a_valid_detected_issue(validated) -> None:
    """Opened, escalated, acknowledged, resolved, no readings, sustained: 0 errors against FHIR R4's
    DetectedIssue; the only warnings name the project's own code systems, which no server knows."""
    _, _, _, messages = validated
    assert len(detected_issues()) == 9  # opened, escalated to levels 1-4, acknowledged, resolved, silence, sustained
    errors = [m for m in messages if m.severity in ("error", "fatal")]
    assert not errors, f"{len(errors)} errors, first ones:\n" + "\n".join(map(str, errors[:10]))
    others = [m for m in messages if m.severity == "warning" and "bp-monitor" not in m.text]
    assert not others, "\n".join(map(str, others[:10]))
