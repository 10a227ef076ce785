"""From Kafka records to blood-pressure readings, or to the reason they cannot be read.

The JSON is parsed once with the explicit schema; every column is derived from that one
struct. A panel is known by its code: LOINC 85354-9, the older LOINC 55284-4 or SNOMED CT
75367002, each with its system; components by their LOINC or SNOMED CT code and system, not
position; a component that could not be measured (``dataAbsentReason``) is named as such;
a systolic or a diastolic sent as an Observation of its own (LOINC 8480-6 or 8462-4, or their
SNOMED CT codes, with ``valueQuantity``) is a half of a reading (``half``), paired later by
:mod:`bp_spark.pairing`;
units by UCUM code or unit text
(mm[Hg], mmHg, kPa); the effective time from ``effectiveDateTime`` or
``effectivePeriod.start`` in any offset; the patient from ``Patient/123``, an absolute URL
ending so, or a ``urn:uuid:``. A record that cannot be used keeps its raw payload and gets
an ``error`` saying why.

Nothing a message holds can make its row unstorable: the Observation id must be a FHIR id
(at most 64 characters, so it is always a valid Elasticsearch ``_id``); a reason quotes at
most :data:`QUOTE_LIMIT` characters of a bad value; a payload must be exactly one JSON object,
with nothing after it; and an effective time too far in the future (which would move the
trend query's watermark past every later reading) is refused.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from bp_spark.clinical.profiles import SELF_MEASURED_PROFILES
from bp_spark.columns import once_per_jvm
from bp_spark.schema import HALF_VALUE, JSON_OBJECT, MESSAGE_SCHEMA, OBSERVATION_SCHEMA

LOINC = "http://loinc.org"
SNOMED_CT = "http://snomed.info/sct"
# The codings that make an Observation a blood-pressure reading, each (system, code): the vital
# signs panel, the older LOINC panel "Blood pressure systolic and diastolic", and SNOMED CT's
# "Blood pressure (observable entity)"; then each component's, in LOINC and in SNOMED CT.
PANEL_CODINGS = ((LOINC, "85354-9"), (LOINC, "55284-4"), (SNOMED_CT, "75367002"))
SYSTOLIC_CODINGS = ((LOINC, "8480-6"), (SNOMED_CT, "271649006"))
DIASTOLIC_CODINGS = ((LOINC, "8462-4"), (SNOMED_CT, "271650006"))
SYSTOLIC, DIASTOLIC = "systolic", "diastolic"
NOT_A_PANEL = ("not a blood-pressure panel: its code needs LOINC 85354-9 or 55284-4, or SNOMED CT 75367002, "
               "with its system")
KPA_TO_MMHG = 7.50062
GOAL = "Goal"  # a patient's target (bp_spark/clinical/goals.py), read from the same feed
PLAUSIBLE_MIN_MMHG = 20.0
PLAUSIBLE_MAX_MMHG = 300.0

PROCESSED_STATUSES = ("final", "amended", "corrected")
RETRACTED_STATUS = "entered-in-error"
UPDATE_STATUSES = ("amended", "corrected", RETRACTED_STATUS)

_PATIENT_PATH = r"^(?:.*/)?Patient/([A-Za-z0-9\-\.]{1,64})(?:/_history/[^/]+)?$"
_URN_UUID = r"^urn:uuid:([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
_MMHG_UNITS = ("mm[Hg]", "mmHg", "mm Hg")
# FHIR R4 ``id``: letters, digits, '-' and '.', 1 to 64 of them.
FHIR_ID = r"^[A-Za-z0-9\-\.]{1,64}$"
# How much of a bad value a dead-letter reason quotes: enough to recognise it, never enough
# to make the reason itself unstorable (a keyword term) or to carry a payload.
QUOTE_LIMIT = 40
# An effective time may be this far ahead of the message's arrival (clock skew) and no more.
DEFAULT_MAX_FUTURE_S = 3600
# A message may also be a Bundle of these types; each blood-pressure Observation among its
# entries is read as if it had arrived alone, in entry order.
BUNDLE_TYPES = ("transaction", "batch", "collection", "searchset", "history", "message",
                "subscription-notification")
# A Bundle with more entries than this is a dead letter (a subject is looked up among the
# Bundle's Patient entries, a cost that grows with the square of the entries).
DEFAULT_MAX_BUNDLE_ENTRIES = 1000
NOT_ONE_VALUE = ("not exactly one JSON object: a second value, data after the object, "
                 "or a token JSON does not allow (NaN, Infinity)")


def quoted(value: Column, limit: int = QUOTE_LIMIT) -> Column:
    """``value`` for a reason: as is up to ``limit`` characters, else its start and its length."""
    return (F.when(F.length(value) > limit,
                   F.concat(F.substring(value, 1, limit), F.lit("... ("), F.length(value).cast("string"),
                            F.lit(" characters)")))
            .otherwise(value))


def is_single_json_value(raw: Column) -> Column:
    """True when ``raw`` holds one JSON value and nothing after it (whitespace aside).

    ``from_json`` reads the first value and ignores what follows, so ``{...}garbage`` and two
    readings in one message (``{...}\\n{...}``) would both parse. Wrapped as ``[raw]`` the text
    is a one-element array only if nothing follows the value, except text that starts with
    ``]`` (which closes the wrapper early); wrapped as ``{"v": raw}`` it is a one-key object
    only if nothing follows, except text that starts with ``}``. No text passes both. Each
    check only tokenizes (``json_array_length``, ``json_object_keys`` build no values): about
    1.8 us a message each, against about 9 us for the whole parser (bench/parse_bench.py).
    """
    in_array = F.json_array_length(F.concat(F.lit("["), raw, F.lit("]")))
    in_object = F.json_object_keys(F.concat(F.lit('{"v":'), raw, F.lit("}")))
    return F.coalesce((in_array == 1) & (F.size(in_object) == 1), F.lit(False))


def _system_name(system: str) -> str:
    return {LOINC: "LOINC", SNOMED_CT: "SNOMED CT"}[system]


def codings_text(codings: tuple[tuple[str, str], ...]) -> str:
    """``"LOINC 8480-6 or SNOMED CT 271649006"``, for a reason."""
    return " or ".join(f"{_system_name(system)} {code}" for system, code in codings)


def has_coding(concept: Column, codings: tuple[tuple[str, str], ...]) -> Column:
    """True when a CodeableConcept carries one of ``codings`` (system and code) in any of its codings."""
    def matches(coding: Column) -> Column:
        conditions = [(coding["system"] == system) & (coding["code"] == code) for system, code in codings]
        any_of = conditions[0]
        for condition in conditions[1:]:
            any_of = any_of | condition
        return any_of
    return F.coalesce(F.exists(concept["coding"], matches), F.lit(False))


def component_coded(components: Column, codings: tuple[tuple[str, str], ...]) -> Column:
    """The first component coded with one of ``codings`` (null when there is none)."""
    return F.element_at(F.filter(components, lambda c: has_coding(c["code"], codings)), 1)


def absent_reason(concept: Column) -> Column:
    """A ``dataAbsentReason`` for a reason: its first code, else its text, else its first display."""
    first = F.element_at(concept["coding"], 1)
    return F.coalesce(first["code"], concept["text"], first["display"], F.lit(""))


def quantity_in_mmhg(quantity: Column) -> Column:
    """The quantity's value in mmHg: mm[Hg]/mmHg as is, kPa converted; null for other units or non-numbers."""
    value = quantity["value"].cast("double")
    unit = F.coalesce(quantity["code"], quantity["unit"])
    return (
        F.when(unit.isin(*_MMHG_UNITS) | quantity["unit"].isin(*_MMHG_UNITS), value)
        .when((unit == "kPa") | (quantity["unit"] == "kPa"), F.round(value * KPA_TO_MMHG, 1))
    )


def patient_id_from_reference(reference: Column) -> Column:
    """The patient id of ``Patient/123``, ``https://host/fhir/Patient/123`` or ``urn:uuid:...``; else null."""
    from_path = F.regexp_extract(reference, _PATIENT_PATH, 1)
    from_urn = F.regexp_extract(reference, _URN_UUID, 1)
    return F.when(from_path != "", from_path).when(from_urn != "", from_urn)


def _quantity_problem(component: Column, in_mmhg: Column, name: str, codings: tuple[tuple[str, str], ...],
                      part: str = "component") -> Column:
    """Why a component's quantity cannot be used, or null; ``in_mmhg`` is its already converted
    value. ``part``: what holds the quantity (a ``component``, or an ``Observation`` of its own)."""
    quantity = component["valueQuantity"]
    value = quantity["value"]
    absent = component["dataAbsentReason"]
    return (
        F.when(component.isNull(), F.lit(f"no {name} component ({codings_text(codings)}, with its system)"))
        .when(absent.isNotNull() & quantity.isNotNull(),
              F.lit(f"{name} {part} has both a value and a dataAbsentReason (FHIR allows one or the other)"))
        .when(absent.isNotNull(),
              F.concat(F.lit(f"{name} not measured: dataAbsentReason '"), quoted(absent_reason(absent)), F.lit("'")))
        .when(value.isNull(), F.lit(f"{name} {part} has no valueQuantity.value"))
        .when(value.cast("double").isNull(),
              F.concat(F.lit(f"{name} value '"), quoted(value), F.lit("' is not a number")))
        .when(in_mmhg.isNull(),
              F.concat(F.lit(f"{name} unit '"), quoted(F.coalesce(quantity["code"], quantity["unit"], F.lit(""))),
                       F.lit("' is not mm[Hg], mmHg or kPa")))
    )


def _plausibility_problem(systolic: Column, diastolic: Column) -> Column:
    """Why the values cannot be a blood pressure, or null (a half has one of the two: the other
    is null, and so is their comparison)."""
    low, high = PLAUSIBLE_MIN_MMHG, PLAUSIBLE_MAX_MMHG
    return (
        F.when((systolic < low) | (systolic > high),
               F.format_string(f"implausible systolic %s mmHg (allowed {low:g}-{high:g})", systolic))
        .when((diastolic < low) | (diastolic > high),
              F.format_string(f"implausible diastolic %s mmHg (allowed {low:g}-{high:g})", diastolic))
        .when(systolic <= diastolic,
              F.format_string("systolic %s mmHg is not above diastolic %s mmHg", systolic, diastolic))
    )


def half_of(code: Column) -> Column:
    """``systolic`` or ``diastolic`` for an Observation coded as that measurement alone, else null."""
    return (F.when(has_coding(code, SYSTOLIC_CODINGS), F.lit(SYSTOLIC))
            .when(has_coding(code, DIASTOLIC_CODINGS), F.lit(DIASTOLIC)))


def _bundle_entries(bundle: Column) -> Column:
    """A Bundle's entries, each as ``index``, ``full_url``, ``raw`` (its resource's JSON) and ``obs``
    (the resource read as an Observation: a Patient entry gives its ``resourceType`` and ``id``)."""
    return F.transform(bundle["entry"], lambda entry, index: F.struct(
        index.alias("index"), entry["fullUrl"].alias("full_url"), entry["resource"].alias("raw"),
        F.from_json(entry["resource"], OBSERVATION_SCHEMA).alias("obs")))


def is_reading_entry(obs: Column) -> Column:
    """True for a Bundle entry processed as a reading: an Observation coded as a blood-pressure
    panel, or a retraction (which needs only its id); or a patient's Goal (a target, read by
    :mod:`bp_spark.clinical.goals`). Other entries are counted, not read."""
    return F.coalesce(((obs["resourceType"] == "Observation")
                       & (has_coding(obs["code"], PANEL_CODINGS) | half_of(obs["code"]).isNotNull()
                          | (obs["status"] == RETRACTED_STATUS))) | (obs["resourceType"] == GOAL), F.lit(False))


def _bundle_patient(entries: Column, subject: Column) -> Column:
    """The id of the Bundle's Patient entry whose ``fullUrl`` the subject reference names (the
    FHIR way to resolve ``urn:uuid:`` references inside a Bundle), when it is a FHIR id; else null."""
    patient = F.element_at(F.filter(entries, lambda e: (e["obs"]["resourceType"] == "Patient")
                                    & (e["full_url"] == subject)), 1)["obs"]["id"]
    return F.when(subject.isNotNull() & patient.rlike(FHIR_ID), patient)


def _bundle_problem(message: Column, raw: Column, entries: Column, readings: Column, max_entries: int) -> Column:
    """Why a Bundle cannot be read at all (then it is one dead letter), or null."""
    kind = message["type"]
    return (
        F.when(~is_single_json_value(raw), F.lit(NOT_ONE_VALUE))
        .when(kind.isNull(), F.lit("Bundle has no type"))
        .when(~kind.isin(*BUNDLE_TYPES),
              F.concat(F.lit("Bundle type '"), quoted(kind), F.lit(f"' is not processed ({', '.join(BUNDLE_TYPES)} are)")))
        .when(F.coalesce(F.size(entries), F.lit(0)) > max_entries,
              F.format_string(f"Bundle has %d entries, more than stream.max_bundle_entries ({max_entries})",
                              F.size(entries)))
        .when(F.coalesce(F.size(readings), F.lit(0)) <= 0,  # the size of no array is -1
              F.format_string("Bundle holds no blood-pressure Observation among its %d entries",
                              F.greatest(F.size(entries), F.lit(0))))
    )


def parse_observations(kafka_df: DataFrame, max_future_s: int = DEFAULT_MAX_FUTURE_S,
                       max_bundle_entries: int = DEFAULT_MAX_BUNDLE_ENTRIES) -> DataFrame:
    """Kafka records (key, value, topic, partition, offset, timestamp) -> one row per reading with
    the reading's columns and ``error`` (null when usable). Pure: no actions, batch or stream.

    A message is one Observation, or a Bundle: each of its entries that is a blood-pressure
    Observation becomes a row of its own, as if it had arrived alone (``bundle_entry``: its index
    in the Bundle, null for a message on its own; ``raw``: the entry's resource as compact JSON;
    a ``urn:uuid:`` subject resolved to the Bundle's Patient entry). Other entries are counted in
    ``ignored_entries`` (on the Bundle's first row), not read. A Bundle that cannot be read at all
    (another type, no blood-pressure entry, more than ``max_bundle_entries``) is one row with its
    reason. ``content_hash``: a hash of the Observation as read, the same whatever envelope,
    whitespace or number formatting carried it.

    ``max_future_s``: how far an effective time may be ahead of the message's arrival (its
    Kafka timestamp, or now if that is later than now: a replay decides as the first run did).

    Parse the message once (a Bundle's entries once more each); pull out each piece once (the
    components are searched once per reading); then derive values and the error from those
    plain columns. The columns are built once per process and limits
    (:func:`bp_spark.columns.once_per_jvm`).
    """
    df = kafka_df
    for step in _parse_steps(int(max_future_s), int(max_bundle_entries)):
        df = df.select(*step)
    return df


@once_per_jvm
def _parse_steps(max_future_s: int, max_bundle_entries: int) -> tuple[tuple[Column | str, ...], ...]:
    """The parser as successive selects, each a tuple of columns of the one before."""
    steps = []
    raw = F.col("value").cast("string")
    message = F.col("_message")
    steps.append((
        raw.alias("raw"),
        F.from_json(raw, MESSAGE_SCHEMA).alias("_message"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
    ))
    is_bundle = F.coalesce(message["resourceType"] == "Bundle", F.lit(False))
    steps.append(("*", is_bundle.alias("_is_bundle"), F.when(is_bundle, _bundle_entries(message)).alias("_entries")))
    readings = F.filter("_entries", lambda e: is_reading_entry(e["obs"]))
    steps.append((
        "*", readings.alias("_readings"),
        F.when(F.col("_is_bundle"), _bundle_problem(message, F.col("raw"), F.col("_entries"), readings,
                                                    max_bundle_entries)).alias("_bundle_problem")))
    # A Bundle's items: one per reading entry, or the Bundle whole when it cannot be read (its
    # reason set above). A message on its own has none, and stays one row (read from _message).
    whole = F.struct(F.lit(None).cast("int").alias("index"), F.col("raw").alias("raw"),
                     F.lit(None).cast(OBSERVATION_SCHEMA).alias("obs"), F.lit(None).cast("string").alias("patient"))
    entries = F.col("_entries")
    from_entries = F.transform("_readings", lambda e: F.struct(
        e["index"].alias("index"), e["raw"].alias("raw"), e["obs"].alias("obs"),
        _bundle_patient(entries, e["obs"]["subject"]["reference"]).alias("patient")))
    items = F.when(F.col("_bundle_problem").isNotNull(), F.array(whole)).otherwise(from_entries)
    ignored = F.when(F.col("_is_bundle") & F.col("_bundle_problem").isNull(),
                     F.size("_entries") - F.size("_readings")).otherwise(0)
    steps.append((
        "raw", "_message", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "_is_bundle",
        "_bundle_problem", F.posexplode_outer(F.when(F.col("_is_bundle"), items)).alias("_position", "_item"),
        ignored.alias("_ignored")))
    in_bundle = F.col("_is_bundle")
    # Each field of the reading: the Bundle entry's, or the message's own.
    obs = {name: F.when(in_bundle, F.col("_item.obs")[name]).otherwise(message[name])
           for name in OBSERVATION_SCHEMA.fieldNames()}
    alone = F.struct(*[message[name].alias(name) for name in OBSERVATION_SCHEMA.fieldNames()])
    steps.append((
        F.when(in_bundle, F.col("_item.raw")).otherwise(F.col("raw")).alias("raw"),
        "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp",
        F.col("_item.index").alias("bundle_entry"), "_bundle_problem",
        F.when(F.coalesce(F.col("_position"), F.lit(0)) == 0, F.col("_ignored")).otherwise(0).alias("ignored_entries"),
        F.when(~in_bundle, F.xxhash64(alone)).when(F.col("_item.obs").isNull(), F.xxhash64(F.col("_item.raw")))
        .otherwise(F.xxhash64("_item.obs")).alias("content_hash"),
        F.col("_item.patient").alias("_bundle_patient"),
        obs["resourceType"].alias("_resource_type"),
        obs["id"].alias("observation_id"),
        obs["status"].alias("status"),
        obs["meta"]["lastUpdated"].cast("timestamp").alias("version_time"),
        obs["meta"]["versionId"].alias("version_id"),
        F.coalesce(F.exists(obs["meta"]["profile"], lambda p: p.isin(*SELF_MEASURED_PROFILES)),
                   F.lit(False)).alias("self_measured"),
        has_coding(obs["code"], PANEL_CODINGS).alias("_is_panel"),
        obs["code"].alias("_code"),
        obs["subject"]["reference"].alias("_subject"),
        F.coalesce(obs["effectiveDateTime"], obs["effectivePeriod"]["start"]).alias("_effective"),
        component_coded(obs["component"], SYSTOLIC_CODINGS).alias("_systolic_c"),
        component_coded(obs["component"], DIASTOLIC_CODINGS).alias("_diastolic_c"),
    ))
    # A panel's values are in its components; a half's one value is the Observation's own. The
    # codes of a half are looked for only in what is not a panel (each search is a lambda Spark
    # runs without generated code), and a half's own value is read from its JSON only for a half.
    steps.append(("*", F.when(~F.col("_is_panel"), half_of(F.col("_code"))).alias("half")))
    steps.append(("*", F.when(F.col("half").isNotNull(), F.from_json("raw", HALF_VALUE)).alias("_alone")))
    half, alone_value = F.col("half"), quantity_in_mmhg(F.col("_alone")["valueQuantity"])
    steps.append((
        "*",
        F.coalesce(F.col("_bundle_patient"), patient_id_from_reference(F.col("_subject"))).alias("patient_id"),
        F.col("_effective").cast("timestamp").alias("effective_time"),
        F.when(half == SYSTOLIC, alone_value).when(half.isNull(), quantity_in_mmhg(F.col("_systolic_c")["valueQuantity"]))
        .alias("systolic"),
        F.when(half == DIASTOLIC, alone_value)
        .when(half.isNull(), quantity_in_mmhg(F.col("_diastolic_c")["valueQuantity"])).alias("diastolic"),
    ))
    status = F.col("status")
    # Ahead of the arrival: the Kafka timestamp, or now when that is later than now. "Now" is
    # read from the clock as the row is parsed (`reflect`, a call Spark makes at run time), not
    # current_timestamp(): a stream writes its batch's timestamp into the code Spark generates
    # as a constant, so the parser's projection (10,000 lines of Java) would differ, and be
    # compiled again, in every micro-batch: 0.12-0.2 s of a live batch's first task.
    now = F.timestamp_millis(F.expr("reflect('java.lang.System', 'currentTimeMillis')").cast("long"))
    ahead = F.expr(f"INTERVAL {int(max_future_s)} SECONDS")
    ahead_of_now = F.col("effective_time") > now + ahead
    ahead_of_arrival = F.col("effective_time") > F.col("kafka_timestamp") + ahead
    too_far_ahead = ahead_of_arrival | ahead_of_now
    error = (
        F.when(F.col("raw").isNull(), F.lit("empty message"))
        .when(F.col("_bundle_problem").isNotNull(), F.col("_bundle_problem"))
        # Malformed JSON parses to nulls, so only a record without resourceType is parsed again.
        .when(F.col("_resource_type").isNull() & F.from_json("raw", JSON_OBJECT).isNull(), F.lit("not a JSON object"))
        # A Bundle was checked whole (_bundle_problem); its entries are Spark's own compact JSON.
        .when(F.col("bundle_entry").isNull() & ~is_single_json_value(F.col("raw")),
              F.lit(NOT_ONE_VALUE))
        .when(F.col("_resource_type").isNull(), F.lit("not a FHIR resource (no resourceType)"))
        .when(F.col("_resource_type") == GOAL, F.lit(None))  # read by bp_spark.clinical.goals (its own reasons)
        .when(F.col("_resource_type") != "Observation",
              F.concat(F.lit("not an Observation: resourceType "), quoted(F.col("_resource_type"))))
        .when(F.coalesce(F.length("observation_id"), F.lit(0)) == 0, F.lit("Observation has no id"))
        .when(~F.col("observation_id").rlike(FHIR_ID),
              F.concat(F.lit("Observation id '"), quoted(F.col("observation_id")),
                       F.lit("' is not a FHIR id (1-64 letters, digits, '-' or '.')")))
        .when(status.isNull(), F.lit("Observation has no status"))
        .when(~status.isin(*PROCESSED_STATUSES, RETRACTED_STATUS),
              F.concat(F.lit("status '"), quoted(status),
                       F.lit("' is not processed (final, amended, corrected, entered-in-error are)")))
        .when(status == RETRACTED_STATUS, F.lit(None))  # a retraction needs only its id
        .when(~F.col("_is_panel") & F.col("half").isNull(), F.lit(NOT_A_PANEL))
        .when(F.col("_subject").isNull(), F.lit("no subject reference"))
        .when(F.col("patient_id").isNull(),
              F.concat(F.lit("subject '"), quoted(F.col("_subject")), F.lit("' is not a Patient reference")))
        .when(F.col("_effective").isNull(), F.lit("no effectiveDateTime or effectivePeriod.start"))
        .when(F.col("effective_time").isNull(),
              F.concat(F.lit("effective time '"), quoted(F.col("_effective")), F.lit("' is not a FHIR dateTime")))
        .when(too_far_ahead,
              F.format_string(f"effective time %s is more than {int(max_future_s)} s after the message arrived "
                              "(stream.max_future_skew)", F.date_format("effective_time", "yyyy-MM-dd'T'HH:mm:ssXXX")))
        .when(F.col("half") == SYSTOLIC, F.coalesce(
            _quantity_problem(F.col("_alone"), F.col("systolic"), SYSTOLIC, SYSTOLIC_CODINGS, "Observation"),
            _plausibility_problem(F.col("systolic"), F.col("diastolic"))))
        .when(F.col("half") == DIASTOLIC, F.coalesce(
            _quantity_problem(F.col("_alone"), F.col("diastolic"), DIASTOLIC, DIASTOLIC_CODINGS, "Observation"),
            _plausibility_problem(F.col("systolic"), F.col("diastolic"))))
        .otherwise(F.coalesce(
            _quantity_problem(F.col("_systolic_c"), F.col("systolic"), "systolic", SYSTOLIC_CODINGS),
            _quantity_problem(F.col("_diastolic_c"), F.col("diastolic"), "diastolic", DIASTOLIC_CODINGS),
            _plausibility_problem(F.col("systolic"), F.col("diastolic")),
        ))
    )
    is_goal = F.coalesce(F.col("_resource_type") == GOAL, F.lit(False))
    steps.append((
        "raw", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "bundle_entry",
        # A Goal's id is kept apart from the Observations' (FHIR ids are unique per resource type).
        F.when(is_goal, F.concat(F.lit(f"{GOAL}/"), "observation_id")).otherwise(F.col("observation_id"))
        .alias("observation_id"),
        "status", "patient_id", "effective_time", "systolic", "diastolic",
        "version_time", "version_id", error.alias("error"), "ignored_entries", "content_hash", "half",
        "self_measured", is_goal.alias("goal"),
    ))
    return tuple(steps)


def is_retraction(status: Column) -> Column:
    """True for ``entered-in-error``: the observation must be removed wherever it was stored."""
    return status == RETRACTED_STATUS


def is_update(status: Column) -> Column:
    """True for statuses that replace or remove an earlier version under the same id."""
    return status.isin(*UPDATE_STATUSES)
