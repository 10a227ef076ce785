"""Tests of bp_spark/parse.py: what real FHIR feeds send, and every kind of bad input."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from bp_spark.parse import NOT_A_PANEL, NOT_ONE_VALUE, parse_observations

BASE = {
    "resourceType": "Observation",
    "id": "bp-1",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-01-01T08:30:00+00:00",
    "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
    ],
}

KAFKA_SCHEMA = T.StructType([
    T.StructField("key", T.BinaryType()),
    T.StructField("value", T.BinaryType()),
    T.StructField("topic", T.StringType()),
    T.StructField("partition", T.IntegerType()),
    T.StructField("offset", T.LongType()),
    T.StructField("timestamp", T.TimestampType()),
])
RESULT_SCHEMA = T.StructType([
    T.StructField("kafka_offset", T.LongType()),
    T.StructField("observation_id", T.StringType()),
    T.StructField("status", T.StringType()),
    T.StructField("patient_id", T.StringType()),
    T.StructField("effective_time", T.TimestampType()),
    T.StructField("systolic", T.DoubleType()),
    T.StructField("diastolic", T.DoubleType()),
    T.StructField("error", T.StringType()),
])
ARRIVED = datetime(2026, 1, 2, tzinfo=timezone.utc)


def variant(**changes) -> dict:
    obs = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = obs
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if value is ...:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return obs


def kafka_df(spark: SparkSession, payloads: list) -> DataFrame:
    rows = []
    for offset, payload in enumerate(payloads):
        text = payload if isinstance(payload, str) or payload is None else json.dumps(payload)
        rows.append((b"k", None if text is None else text.encode(), "t", 0, offset, ARRIVED))
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def parsed(spark: SparkSession, payloads: list) -> DataFrame:
    return kafka_df(spark, payloads).transform(parse_observations).select(*RESULT_SCHEMA.fieldNames())


def utc(*args) -> datetime:
    return datetime(*args)  # the session's time zone is UTC


def test_variants_real_feeds_send(spark: SparkSession) -> None:
    reversed_components = variant()
    reversed_components["component"].reverse()
    kpa = variant(component__0__valueQuantity={"value": 16, "unit": "kPa", "system": "http://unitsofmeasure.org", "code": "kPa"},
                  component__1__valueQuantity={"value": 10.7, "unit": "kPa"})
    payloads = [
        variant(),
        reversed_components,
        variant(component__0__valueQuantity__value=120.5, component__1__valueQuantity__value=79.5),
        variant(component__0__valueQuantity={"value": 131, "unit": "mmHg"}, component__1__valueQuantity={"value": 85, "unit": "mmHg"}),
        kpa,
        variant(effectiveDateTime=..., effectivePeriod={"start": "2026-01-01T03:30:00-05:00", "end": "2026-01-01T03:35:00-05:00"}),
        variant(effectiveDateTime="2026-01-01T09:30:00.250+01:00"),
        variant(subject={"reference": "https://fhir.example.org/r4/Patient/p9"}),
        variant(subject={"reference": "urn:uuid:0f7c1a52-7e2f-4a55-9d3e-1a2b3c4d5e6f"}),
        variant(status="amended"),
        variant(status="corrected"),
        variant(status="entered-in-error", component=...),
        variant(code={"coding": [{"system": "http://snomed.info/sct", "code": "75367002"},
                                  {"system": "http://loinc.org", "code": "85354-9"}]}),
        # The older LOINC panel, "Blood pressure systolic and diastolic".
        variant(code={"coding": [{"system": "http://loinc.org", "code": "55284-4"}]}),
        # SNOMED CT "Blood pressure (observable entity)" alone, and after the LOINC code.
        variant(code={"coding": [{"system": "http://snomed.info/sct", "code": "75367002"}], "text": "BP"}),
        variant(code={"coding": [{"system": "http://loinc.org", "code": "85354-9"},
                                  {"system": "http://snomed.info/sct", "code": "75367002"}]}),
        # Components coded in SNOMED CT ("Systolic/Diastolic blood pressure"), diastolic first.
        variant(component=[
            {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "271650006"}]},
             "valueQuantity": {"value": 81, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]},
             "valueQuantity": {"value": 121, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]),
        # A component that could not be measured beside two that were: the measured ones count.
        variant(component=[*BASE["component"], {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                             "code": "not-performed"}]}}]),
    ]
    at = utc(2026, 1, 1, 8, 30)
    expected = [
        (0, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (1, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (2, "bp-1", "final", "p1", at, 120.5, 79.5, None),
        (3, "bp-1", "final", "p1", at, 131.0, 85.0, None),
        (4, "bp-1", "final", "p1", at, 120.0, 80.3, None),
        (5, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (6, "bp-1", "final", "p1", utc(2026, 1, 1, 8, 30, 0, 250000), 120.0, 80.0, None),
        (7, "bp-1", "final", "p9", at, 120.0, 80.0, None),
        (8, "bp-1", "final", "0f7c1a52-7e2f-4a55-9d3e-1a2b3c4d5e6f", at, 120.0, 80.0, None),
        (9, "bp-1", "amended", "p1", at, 120.0, 80.0, None),
        (10, "bp-1", "corrected", "p1", at, 120.0, 80.0, None),
        (11, "bp-1", "entered-in-error", "p1", at, None, None, None),
        (12, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (13, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (14, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (15, "bp-1", "final", "p1", at, 120.0, 80.0, None),
        (16, "bp-1", "final", "p1", at, 121.0, 81.0, None),
        (17, "bp-1", "final", "p1", at, 120.0, 80.0, None),
    ]
    assert_df_equality(parsed(spark, payloads), spark.createDataFrame(expected, RESULT_SCHEMA), ignore_row_order=True)


BAD = [
    ("{not json", "not a JSON object"),
    # Cut short by one byte: every field is there, but the document is not JSON.
    (json.dumps(BASE)[:-1], "not a JSON object"),
    ('{"resourceType": "Observation", "status": final}', "not a JSON object"),
    (None, "empty message"),
    ({}, "not a FHIR resource (no resourceType)"),
    ([1, 2], "not a JSON object"),
    ({"resourceType": "Patient", "id": "p1"}, "not an Observation: resourceType Patient"),
    (variant(id=...), "Observation has no id"),
    (variant(id=""), "Observation has no id"),
    (variant(status=...), "Observation has no status"),
    (variant(status="preliminary"), "status 'preliminary' is not processed (final, amended, corrected, entered-in-error are)"),
    (variant(code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}), NOT_A_PANEL),
    # Codes count with their system, not by their text alone.
    (variant(code={"coding": [{"code": "85354-9"}]}), NOT_A_PANEL),
    (variant(code={"coding": [{"system": "http://snomed.info/sct", "code": "85354-9"}]}), NOT_A_PANEL),
    (variant(code={"coding": [{"system": "http://loinc.org", "code": "75367002"}]}), NOT_A_PANEL),
    (variant(code={"text": "Blood pressure"}), NOT_A_PANEL),
    (variant(component__0__code={"coding": [{"code": "8480-6"}]}),
     "no systolic component (LOINC 8480-6 or SNOMED CT 271649006, with its system)"),
    # A value that could not be measured (FHIR's dataAbsentReason) is named, not taken for a missing one.
    (variant(component__1__valueQuantity=..., component__1__dataAbsentReason={"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}),
     "diastolic not measured: dataAbsentReason 'error'"),
    (variant(component__0__valueQuantity=..., component__0__dataAbsentReason={"text": "patient moved"}),
     "systolic not measured: dataAbsentReason 'patient moved'"),
    (variant(component__0__dataAbsentReason={"coding": [{"code": "unknown"}]}),
     "systolic component has both a value and a dataAbsentReason (FHIR allows one or the other)"),
    (variant(subject=...), "no subject reference"),
    (variant(subject={"reference": "Group/g1"}), "subject 'Group/g1' is not a Patient reference"),
    (variant(effectiveDateTime=...), "no effectiveDateTime or effectivePeriod.start"),
    (variant(effectiveDateTime="yesterday"), "effective time 'yesterday' is not a FHIR dateTime"),
    (variant(component=[BASE["component"][0]]), "no diastolic component (LOINC 8462-4 or SNOMED CT 271650006, with its system)"),
    (variant(component=...), "no systolic component (LOINC 8480-6 or SNOMED CT 271649006, with its system)"),
    (variant(component__0__valueQuantity__value="high"), "systolic value 'high' is not a number"),
    (variant(component__1__valueQuantity__value=...), "diastolic component has no valueQuantity.value"),
    (variant(component__0__valueQuantity={"value": 12, "unit": "cm", "code": "cm"}), "systolic unit 'cm' is not mm[Hg], mmHg or kPa"),
    (variant(component__0__valueQuantity__value=80, component__1__valueQuantity__value=90),
     "systolic 80.0 mmHg is not above diastolic 90.0 mmHg"),
    (variant(component__0__valueQuantity__value=350), "implausible systolic 350.0 mmHg (allowed 20-300)"),
    (variant(component__1__valueQuantity__value=10), "implausible diastolic 10.0 mmHg (allowed 20-300)"),
    # Hostile input: nothing a message holds may make its dead letter unstorable or pass as a reading.
    (json.dumps(BASE) + "\x00garbage", NOT_ONE_VALUE),
    (json.dumps(BASE) + "\n" + json.dumps(BASE), NOT_ONE_VALUE),  # two readings: neither is taken silently
    (json.dumps(BASE) + json.dumps(BASE), NOT_ONE_VALUE),
    (json.dumps(BASE) + ", " + json.dumps(BASE), NOT_ONE_VALUE),
    (json.dumps(BASE) + "] [" + json.dumps(BASE), NOT_ONE_VALUE),  # closes a [...] wrapper early
    (json.dumps(BASE) + "} {" + json.dumps(BASE)[1:], NOT_ONE_VALUE),  # closes a {...} wrapper early
    (json.dumps(BASE).replace('"value": 120', '"value": NaN'), NOT_ONE_VALUE),
    ('{"resourceType": "Observation", "deep": ' + "[" * 5000 + "]" * 5000 + "}", "not a JSON object"),
    (variant(resourceType="X" * 40_000), "not an Observation: resourceType " + "X" * 40 + "... (40000 characters)"),
    (variant(id="a" * 600), "Observation id '" + "a" * 40 + "... (600 characters)' is not a FHIR id (1-64 letters, digits, '-' or '.')"),
    (variant(id="a/b"), "Observation id 'a/b' is not a FHIR id (1-64 letters, digits, '-' or '.')"),
    (variant(subject={"reference": "Group/" + "9" * 40_000}), "subject 'Group/" + "9" * 34 + "... (40006 characters)' is not a Patient reference"),
    (variant(component__0__valueQuantity__value="x" * 10_000), "systolic value '" + "x" * 40 + "... (10000 characters)' is not a number"),
    # Arrived 2026-01-02T00:00Z: an hour of clock skew is allowed, no more.
    (variant(effectiveDateTime="2099-01-01T00:00:00Z"),
     "effective time 2099-01-01T00:00:00Z is more than 3600 s after the message arrived (stream.max_future_skew)"),
    (variant(effectiveDateTime="2026-01-02T01:00:01Z"),
     "effective time 2026-01-02T01:00:01Z is more than 3600 s after the message arrived (stream.max_future_skew)"),
]


def rows_by_offset(spark: SparkSession, payloads: list, **limits) -> dict[int, list]:
    """Every payload parsed in one Spark job (one message per offset), the rows of each offset in
    order: a case per message, checked by its own test, without a Spark job each."""
    found: dict[int, list] = {offset: [] for offset in range(len(payloads))}
    for row in parsed_bundle_rows(spark, payloads, **limits):
        found[row.kafka_offset].append(row)
    return found


@pytest.fixture(scope="module")
def bad_rows(spark: SparkSession) -> dict[int, list]:
    return rows_by_offset(spark, [payload for payload, _ in BAD])


@pytest.mark.parametrize(("offset", "reason"), enumerate(reason for _, reason in BAD),
                         ids=[reason for _, reason in BAD])
def test_each_kind_of_bad_input_gets_its_reason(bad_rows: dict[int, list], offset: int, reason: str) -> None:
    [row] = bad_rows[offset]
    assert row.error == reason
    payload = BAD[offset][0]
    expected_raw = payload if isinstance(payload, str) or payload is None else json.dumps(payload)
    assert row.raw == expected_raw  # the raw payload travels to the dead letter unchanged
    assert (row.kafka_topic, row.kafka_partition) == ("t", 0)


def test_clock_skew_within_the_limit_and_trailing_whitespace_are_accepted(spark: SparkSession) -> None:
    rows = parsed(spark, [variant(effectiveDateTime="2026-01-02T00:59:59Z"), json.dumps(BASE) + " \n\t "]).collect()
    assert [(r.error, r.effective_time) for r in rows] == [(None, utc(2026, 1, 2, 0, 59, 59)), (None, utc(2026, 1, 1, 8, 30))]


def test_the_future_limit_is_a_parameter(spark: SparkSession) -> None:
    row = kafka_df(spark, [variant(effectiveDateTime="2026-01-02T00:00:10Z")]).transform(
        lambda df: parse_observations(df, max_future_s=5)).first()
    assert row.error == ("effective time 2026-01-02T00:00:10Z is more than 5 s after the message arrived "
                         "(stream.max_future_skew)")


def test_a_kafka_timestamp_ahead_of_the_clock_does_not_vouch_for_a_future_reading(spark: SparkSession) -> None:
    """A producer whose clock runs ahead stamps its messages in the future: the arrival is then
    now, so a reading far ahead of now is refused even within the limit of its Kafka timestamp;
    one taken now is read. "Now" is read from the clock at run time, not written into the code
    Spark generates (with generated code, as under `make test`: a new plan, as each micro-batch's,
    compiles nothing again)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    stamp = now + timedelta(days=30)
    when = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    rows = spark.createDataFrame(
        [(b"k", json.dumps(variant(id=f"x{i}", effectiveDateTime=when(t))).encode(), "t", 0, i, stamp)
         for i, t in enumerate([now + timedelta(days=29, hours=23), now])], KAFKA_SCHEMA)
    compiled = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    first = parse_observations(rows).orderBy("kafka_offset").collect()
    before = compiled.getCount()
    again = parse_observations(rows).orderBy("kafka_offset").collect()
    assert [r.error for r in first] == [
        f"effective time {when(now + timedelta(days=29, hours=23))} is more than 3600 s after the "
        "message arrived (stream.max_future_skew)", None]
    assert [r.error for r in again] == [r.error for r in first] and compiled.getCount() == before


# --- Bundles: each blood-pressure entry read as if it had arrived alone -----------------------

PATIENT_URN = "urn:uuid:4f1c3a2e-8d7b-4c6a-9e5f-0a1b2c3d4e5f"


def bundle(*resources, kind: str = "transaction", full_urls: dict[int, str] | None = None) -> dict:
    full_urls = full_urls or {}
    return {"resourceType": "Bundle", "type": kind,
            "entry": [{**({"fullUrl": full_urls[i]} if i in full_urls else {}), "resource": resource}
                      for i, resource in enumerate(resources)]}


def parsed_bundle_rows(spark: SparkSession, payloads: list, **limits) -> list:
    return (kafka_df(spark, payloads).transform(lambda df: parse_observations(df, **limits))
            .orderBy("kafka_offset", "bundle_entry").collect())


def test_a_bundles_entries_are_read_as_if_each_had_arrived_alone(spark: SparkSession) -> None:
    heart_rate = variant(id="hr-1", code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]})
    by_urn = variant(id="bp-urn", subject={"reference": PATIENT_URN})
    elsewhere = variant(id="bp-other", subject={"reference": "Patient/p2"},
                        component__0__valueQuantity__value=150)
    no_diastolic = variant(id="bp-broken", component=[BASE["component"][0]])
    message = bundle({"resourceType": "Patient", "id": "p77"}, by_urn, heart_rate, elsewhere, no_diastolic,
                     variant(id="bp-gone", status="entered-in-error", component=..., code=...),
                     full_urls={0: PATIENT_URN})
    rows = parsed_bundle_rows(spark, [message])
    assert [(r.bundle_entry, r.observation_id, r.patient_id, r.systolic, r.error) for r in rows] == [
        (1, "bp-urn", "p77", 120.0, None),  # the urn:uuid subject is the Bundle's Patient entry
        (3, "bp-other", "p2", 150.0, None),
        (4, "bp-broken", "p1", 120.0, "no diastolic component (LOINC 8462-4 or SNOMED CT 271650006, with its system)"),
        (5, "bp-gone", "p1", None, None),  # a retraction needs only its id (and no code), in a Bundle too
    ]
    # The Patient and the heart rate are counted, once, on the Bundle's first row.
    assert [r.ignored_entries for r in rows] == [2, 0, 0, 0]
    # Each row carries its entry's resource (as compact JSON), for the archive and the dead letter.
    assert [orjson.loads(r.raw) for r in rows] == [by_urn, elsewhere, no_diastolic,
                                                   message["entry"][5]["resource"]]
    assert {(r.kafka_topic, r.kafka_partition, r.kafka_offset) for r in rows} == {("t", 0, 0)}


def test_an_observation_reads_the_same_alone_and_in_a_bundle(spark: SparkSession) -> None:
    alone = json.dumps(variant(), indent=2)  # other whitespace, same observation
    rows = parsed_bundle_rows(spark, [alone, bundle(variant(), kind="collection")])
    assert [r.bundle_entry for r in rows] == [None, 0]
    first, second = rows
    assert (first.observation_id, first.patient_id, first.effective_time, first.systolic, first.diastolic) == (
        second.observation_id, second.patient_id, second.effective_time, second.systolic, second.diastolic)
    assert first.content_hash == second.content_hash  # one observation, whatever envelope: a duplicate


def test_every_bundle_type_a_feed_sends_is_read(spark: SparkSession) -> None:
    kinds = ["transaction", "batch", "collection", "searchset", "history", "message", "subscription-notification"]
    rows = parsed_bundle_rows(spark, [bundle(variant(id=f"bp-{i}"), kind=kind) for i, kind in enumerate(kinds)])
    assert [(r.observation_id, r.error) for r in rows] == [(f"bp-{i}", None) for i in range(len(kinds))]


A_READING = variant()
BAD_BUNDLES = [
    (bundle(A_READING, kind="document"),
     "Bundle type 'document' is not processed (transaction, batch, collection, searchset, history, message, "
     "subscription-notification are)"),
    ({"resourceType": "Bundle", "entry": [{"resource": A_READING}]}, "Bundle has no type"),
    (bundle({"resourceType": "Patient", "id": "p1"}), "Bundle holds no blood-pressure Observation among its 1 entries"),
    ({"resourceType": "Bundle", "type": "batch"}, "Bundle holds no blood-pressure Observation among its 0 entries"),
    (bundle(5, [1], {"resourceType": "Observation"}, kind="batch"),
     "Bundle holds no blood-pressure Observation among its 3 entries"),
    (json.dumps(bundle(A_READING)) + "garbage", NOT_ONE_VALUE),
    (json.dumps(bundle(A_READING)) + json.dumps(bundle(A_READING)), NOT_ONE_VALUE),
    (bundle(*[variant(id=f"bp-{i}") for i in range(4)]),
     "Bundle has 4 entries, more than stream.max_bundle_entries (3)"),
    # Hostile shapes: entries that are not a list, a type that is not a string, nesting too deep to read.
    ({"resourceType": "Bundle", "type": "batch", "entry": "x"},
     "Bundle holds no blood-pressure Observation among its 0 entries"),
    ({"resourceType": "Bundle", "type": 5, "entry": [{"resource": A_READING}]},
     "Bundle type '5' is not processed (transaction, batch, collection, searchset, history, message, "
     "subscription-notification are)"),
    ('{"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Observation", "x": '
     + "[" * 3000 + "]" * 3000 + '}}, {"resource": ' + json.dumps(A_READING) + "}]}", "not a JSON object"),
    (bundle(A_READING, kind="x" * 5000), "Bundle type '" + "x" * 40 + "... (5000 characters)' is not processed "
     "(transaction, batch, collection, searchset, history, message, subscription-notification are)"),
]


@pytest.fixture(scope="module")
def bad_bundle_rows(spark: SparkSession) -> dict[int, list]:
    return rows_by_offset(spark, [payload for payload, _ in BAD_BUNDLES], max_bundle_entries=3)


@pytest.mark.parametrize(("offset", "reason"), enumerate(reason for _, reason in BAD_BUNDLES),
                         ids=[reason[:60] for _, reason in BAD_BUNDLES])
def test_a_bundle_that_cannot_be_read_is_one_dead_letter_with_its_reason(bad_bundle_rows: dict[int, list],
                                                                         offset: int, reason: str) -> None:
    rows, payload = bad_bundle_rows[offset], BAD_BUNDLES[offset][0]
    assert [(r.bundle_entry, r.error, r.ignored_entries) for r in rows] == [(None, reason, 0)]
    assert rows[0].raw == (payload if isinstance(payload, str) else json.dumps(payload))  # the whole message


def test_hostile_patient_entries_do_not_lend_their_id(spark: SparkSession) -> None:
    """A Patient entry whose id is not a FHIR id, or two entries with one fullUrl: the reference
    is read as it would be alone (the uuid), or from the first entry; a null entry, or a fullUrl
    that is a number, is counted or ignored; nothing fails."""
    bad_id = bundle({"resourceType": "Patient", "id": "a/b" * 100}, variant(subject={"reference": PATIENT_URN}),
                    full_urls={0: PATIENT_URN})
    twice = bundle({"resourceType": "Patient", "id": "first"}, {"resourceType": "Patient", "id": "second"},
                   variant(subject={"reference": PATIENT_URN}), full_urls={0: PATIENT_URN, 1: PATIENT_URN})
    null_entry = {"resourceType": "Bundle", "type": "batch", "entry": [None, {"fullUrl": 5, "resource": variant()}]}
    rows = parsed_bundle_rows(spark, [bad_id, twice, null_entry])
    assert [(r.patient_id, r.error) for r in rows] == [(PATIENT_URN.removeprefix("urn:uuid:"), None), ("first", None),
                                                       ("p1", None)]
    assert [r.ignored_entries for r in rows] == [1, 2, 1]  # the Patient entries; the null entry


def half(code: str, system: str = "http://loinc.org", **changes) -> dict:
    """A systolic or a diastolic sent alone, as device gateways do: the code of the measurement
    (not of the panel) and its own valueQuantity."""
    obs = {key: value for key, value in copy.deepcopy(BASE).items() if key != "component"}
    obs.update(id=f"half-{code}", code={"coding": [{"system": system, "code": code}]},
               valueQuantity={"value": 121, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"})
    obs.update(changes)
    return obs


def test_a_systolic_or_a_diastolic_sent_alone_is_a_half_of_a_reading(spark: SparkSession) -> None:
    rows = kafka_df(spark, [half("8480-6"), half("8462-4", valueQuantity={"value": 10.7, "code": "kPa"}),
                          half("271649006", "http://snomed.info/sct"),
                          half("8462-4", valueQuantity=None, dataAbsentReason={"coding": [{"code": "error"}]}),
                          half("8480-6", valueQuantity={"value": 121, "code": "kg"}),
                          half("8480-6", valueQuantity={"value": 500, "code": "mm[Hg]"}),
                          half("8480-6", system="http://snomed.info/sct")]).transform(parse_observations)\
        .orderBy("kafka_offset").collect()
    assert [(r.half, r.systolic, r.diastolic, r.error) for r in rows] == [
        ("systolic", 121.0, None, None),
        ("diastolic", None, 80.3, None),
        ("systolic", 121.0, None, None),
        ("diastolic", None, None, "diastolic not measured: dataAbsentReason 'error'"),
        ("systolic", None, None, "systolic unit 'kg' is not mm[Hg], mmHg or kPa"),
        ("systolic", 500.0, None, "implausible systolic 500.0 mmHg (allowed 20-300)"),
        (None, None, None, NOT_A_PANEL),  # a code under the wrong system is no half either
    ]
    assert rows[0].patient_id == "p1" and rows[0].effective_time == utc(2026, 1, 1, 8, 30)
    # The panel reads as before: not a half.
    assert kafka_df(spark, [BASE]).transform(parse_observations).first().half is None


def test_the_halves_of_a_reading_in_a_bundle_are_read_as_halves(spark: SparkSession) -> None:
    """A gateway's Bundle of a systolic and a diastolic (and a heart rate, not read)."""
    heart_rate = half("8867-4", id="hr", valueQuantity={"value": 72, "unit": "/min"})
    rows = kafka_df(spark, [bundle(half("8480-6"), half("8462-4", valueQuantity={"value": 79, "code": "mm[Hg]"}),
                                   heart_rate)]).transform(parse_observations).orderBy("bundle_entry").collect()
    assert [(r.bundle_entry, r.half, r.systolic, r.diastolic, r.error) for r in rows] == [
        (0, "systolic", 121.0, None, None), (1, "diastolic", None, 79.0, None)]
    assert rows[0].ignored_entries == 1


def test_a_reading_that_names_the_self_measured_profile_is_marked_so(spark: SparkSession) -> None:
    """HL7 CardX's self-measured blood pressure profile in meta.profile (alone, beside another, or
    in a Bundle's entry) marks a home reading; any other profile, or none, does not."""
    smbp = "http://hl7.org/fhir/uv/cardx-htn-mng/StructureDefinition/self-measured-bp"
    vitals = "http://hl7.org/fhir/StructureDefinition/bp"
    payloads = [variant(meta={"profile": [smbp]}), variant(meta={"profile": [vitals, smbp]}),
                variant(meta={"profile": [vitals]}), variant(), variant(meta={"profile": "not-a-list"}),
                bundle(variant(meta={"profile": [smbp]}))]
    rows = parsed_bundle_rows(spark, payloads)
    assert [(r.self_measured, r.error) for r in rows] == [(True, None), (True, None), (False, None), (False, None),
                                                          (False, None), (True, None)]


def test_a_goal_alone_or_in_a_bundle_is_passed_on_as_a_goal(spark: SparkSession) -> None:
    """A patient's Goal (their target) is read by bp_spark/clinical/goals.py: the parser passes it
    on, alone or as a Bundle's entry, with its id kept apart from the Observations'."""
    goal = {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active", "subject": {"reference": "Patient/p1"}}
    rows = parsed_bundle_rows(spark, [goal, bundle(goal), bundle(variant(), goal)])
    assert [(r.kafka_offset, r.bundle_entry, r.goal, r.observation_id, r.error) for r in rows] == [
        (0, None, True, "Goal/g1", None), (1, 0, True, "Goal/g1", None),
        (2, 0, False, "bp-1", None), (2, 1, True, "Goal/g1", None)]
