"""Guideline profiles: the tables that classify a blood-pressure reading (mmHg).

``classification.profile`` (environment ``BP_CLASSIFICATION_PROFILE``) chooses one. Each is a
small table, written as its guideline writes it, with the source beside it:

- ``rules``: per setting (``office`` or ``home``), the categories, highest first; a reading takes
  the first whose limits it reaches ("the higher of the two pressures decides"). The last rule
  matches every reading.
- ``high``: per setting, the limits from which a reading is an anomaly (the anomaly index);
  below ``thresholds.systolic_low`` / ``thresholds.diastolic_low`` it is one too (hypotension,
  in every profile).
- ``critical``: the category that is critical (an alert), besides a reading under the
  critically-low limits (``thresholds.critical_low_*``).
- ``sustained``: the home mean from which a week of readings is sustained hypertension.

The ``mission`` profile is the project's first rule, unchanged: its limits are the
``[thresholds]`` settings (strict inequalities) and the AHA/ACC 2017 categories.
Documents keep the profile they were classified under; switching profile is a configuration
change, not a migration (docs/clinical.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from bp_spark.config import Thresholds

HOME, OFFICE = "home", "office"
SETTINGS = (HOME, OFFICE)
# A reading that names this profile in meta.profile was measured by the patient, at home
# (HL7 CardX Hypertension Management IG, STU1: Self-measured Blood Pressure).
SELF_MEASURED_PROFILES = (
    "http://hl7.org/fhir/uv/cardx-htn-mng/StructureDefinition/self-measured-bp",
    "http://hl7.org/fhir/uv/cardx-htn-mng/StructureDefinition/average-self-measured-bp",
)


@dataclass(frozen=True)
class Limit:
    """One pressure's side of a rule: ``op`` (``>=``, ``>`` or ``<``) and the value in mmHg."""

    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def at_least(value: float) -> Limit:
    return Limit(">=", value)


def above(value: float) -> Limit:
    return Limit(">", value)


def below(value: float) -> Limit:
    return Limit("<", value)


@dataclass(frozen=True)
class Rule:
    """A category, reached when the systolic and/or the diastolic reaches its limit (``join``:
    ``or`` as guidelines write "and/or", ``and`` when both must); no limit on a side: that side
    does not count. No limit at all: every reading (the table's last row)."""

    category: str
    systolic: Limit | None = None
    diastolic: Limit | None = None
    join: str = "or"


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    rules: dict[str, tuple[Rule, ...]]
    high: dict[str, tuple[Limit, Limit]]
    critical: str
    sustained: tuple[float, float]


def _both(rules: tuple[Rule, ...]) -> dict[str, tuple[Rule, ...]]:
    return {HOME: rules, OFFICE: rules}


def hypotension(t: Thresholds) -> Rule:
    """Systolic < 90 or diastolic < 60 (``thresholds.systolic_low`` / ``diastolic_low``), every profile."""
    return Rule("hypotension", below(t.systolic_low), below(t.diastolic_low))


def mission(t: Thresholds, sustained: tuple[float, float]) -> Profile:
    """The project's first rule: anomaly when systolic > 140 or < 90, diastolic > 90 or < 60 (the
    ``[thresholds]`` settings); categories of the AHA/ACC 2017 guideline (Whelton et al.,
    Hypertension 2018;71:e13-e115, table 6), crisis above ``thresholds.crisis_*``."""
    rules = (
        Rule("hypertensive_crisis", above(t.crisis_systolic), above(t.crisis_diastolic)),
        Rule("hypertension_stage_2", at_least(140), at_least(90)),
        Rule("hypertension_stage_1", at_least(130), at_least(80)),
        Rule("elevated", at_least(120)),
        hypotension(t),
        Rule("normal"),
    )
    high = (above(t.systolic_high), above(t.diastolic_high))
    return Profile("mission", "AHA/ACC 2017 categories; the project's anomaly rule", _both(rules),
                   {HOME: high, OFFICE: high}, "hypertensive_crisis", sustained)


def esh2023(t: Thresholds) -> Profile:
    """2023 ESH Guidelines for the management of arterial hypertension (Mancia et al., J Hypertens
    2023;41:1874-2071), table 5 (office categories) and table 7 (home: hypertension from 135/85).
    Isolated systolic hypertension (>= 140 with < 90) is its own category, below grade 3, so
    that a grade-3 systolic stays critical."""
    rules = (
        Rule("grade_3", at_least(180), at_least(110)),
        Rule("isolated_systolic", at_least(140), below(90), join="and"),
        Rule("grade_2", at_least(160), at_least(100)),
        Rule("grade_1", at_least(140), at_least(90)),
        hypotension(t),
        Rule("high_normal", at_least(130), at_least(85)),
        Rule("normal", at_least(120), at_least(80)),
        Rule("optimal"),
    )
    return Profile("esh2023", "ESH 2023 (J Hypertens 2023;41:1874-2071), tables 5 and 7", _both(rules),
                   {OFFICE: (at_least(140), at_least(90)), HOME: (at_least(135), at_least(85))}, "grade_3",
                   (135, 85))


def acc_aha2025(t: Thresholds) -> Profile:
    """2025 AHA/ACC/multisociety guideline for high blood pressure in adults (Jones et al.,
    Hypertension 2025): office categories; home readings by its table of corresponding values
    (office 130/80 = home 130/80, office 140/90 = home 135/85; office 160/100 = home 145/90, not a
    category boundary); severe hypertension > 180 and/or > 120 in both settings."""
    def table(stage_2: tuple[float, float]) -> tuple[Rule, ...]:
        return (
            Rule("severe", above(180), above(120)),
            Rule("stage_2", at_least(stage_2[0]), at_least(stage_2[1])),
            Rule("stage_1", at_least(130), at_least(80)),
            hypotension(t),
            Rule("elevated", at_least(120)),
            Rule("normal"),
        )
    stage_1 = (at_least(130), at_least(80))
    return Profile("acc_aha2025", "ACC/AHA 2025 (Hypertension 2025), office categories and home equivalents",
                   {OFFICE: table((140, 90)), HOME: table((135, 85))}, {OFFICE: stage_1, HOME: stage_1},
                   "severe", (130, 80))


def nice_ng136(t: Thresholds) -> Profile:
    """NICE guideline NG136, Hypertension in adults (2019, updated 2023), section 1.2: stage 1 from
    clinic 140/90 or home 135/85, stage 2 from clinic 160/100 or home 150/95, severe from
    systolic 180 or diastolic 120 (clinic)."""
    def table(stage_1: tuple[float, float], stage_2: tuple[float, float]) -> tuple[Rule, ...]:
        return (
            Rule("severe", at_least(180), at_least(120)),
            Rule("stage_2", at_least(stage_2[0]), at_least(stage_2[1])),
            Rule("stage_1", at_least(stage_1[0]), at_least(stage_1[1])),
            hypotension(t),
            Rule("normal"),
        )
    return Profile("nice_ng136", "NICE NG136 (2019, updated 2023), section 1.2",
                   {OFFICE: table((140, 90), (160, 100)), HOME: table((135, 85), (150, 95))},
                   {OFFICE: (at_least(140), at_least(90)), HOME: (at_least(135), at_least(85))}, "severe",
                   (135, 85))


PROFILES = ("mission", "esh2023", "acc_aha2025", "nice_ng136")


def profile(name: str, t: Thresholds, sustained: tuple[float, float]) -> Profile:
    """The profile called ``name``; ``sustained``: the ``trends.sustained_*`` limits, which the
    ``mission`` profile keeps (the others take their guideline's home limits)."""
    if name == "mission":
        return mission(t, sustained)
    return {"esh2023": esh2023, "acc_aha2025": acc_aha2025, "nice_ng136": nice_ng136}[name](t)
