"""Explicit Spark schemas: the FHIR pieces as reusable structs, and the Observation read from Kafka.

Only what the pipeline reads is declared; ``from_json`` skips the rest of a resource
(narrative, ``category``, ``display`` texts, ``meta`` ...) without building values for it.
With every field declared and a corrupt-record column, ``from_json`` alone took longer than
the whole parser does now (200,000 of the generator's 954-byte Observations: 3.6 s against
2.6 s, ``bench/parse_bench.py``). Quantity values are read as strings and cast
afterwards, so a non-numeric value becomes a dead-letter reason for that one field instead of
a silently emptied record.

There is no ``_corrupt_record`` column, which Spark fills at a cost on every record: malformed
JSON parses to a struct of nulls, which the parser tells apart from valid JSON only for the
rare record without a ``resourceType``.
"""

from __future__ import annotations

from pyspark.sql import types as T

CODING = T.StructType([
    T.StructField("system", T.StringType()),  # a code counts with its system (LOINC, SNOMED CT)
    T.StructField("code", T.StringType()),
])

CODEABLE_CONCEPT = T.StructType([
    T.StructField("coding", T.ArrayType(CODING)),
])

# A reason for a missing value: its code, or its text (or a coding's display) when it has none.
ABSENT_REASON = T.StructType([
    T.StructField("coding", T.ArrayType(T.StructType([
        T.StructField("code", T.StringType()), T.StructField("display", T.StringType())]))),
    T.StructField("text", T.StringType()),
])

QUANTITY = T.StructType([
    T.StructField("value", T.StringType()),  # a JSON number arrives as its text; cast later
    T.StructField("unit", T.StringType()),
    T.StructField("code", T.StringType()),
])

REFERENCE = T.StructType([
    T.StructField("reference", T.StringType()),
])

PERIOD = T.StructType([
    T.StructField("start", T.StringType()),
])

META = T.StructType([
    T.StructField("versionId", T.StringType()),
    T.StructField("lastUpdated", T.StringType()),
    T.StructField("profile", T.ArrayType(T.StringType())),  # a self-measured (home) reading says so here
])

COMPONENT = T.StructType([
    T.StructField("code", CODEABLE_CONCEPT),
    T.StructField("valueQuantity", QUANTITY),
    T.StructField("dataAbsentReason", ABSENT_REASON),
])

OBSERVATION_SCHEMA = T.StructType([
    T.StructField("resourceType", T.StringType()),
    T.StructField("id", T.StringType()),
    T.StructField("meta", META),
    T.StructField("status", T.StringType()),
    T.StructField("code", CODEABLE_CONCEPT),
    T.StructField("subject", REFERENCE),
    T.StructField("effectiveDateTime", T.StringType()),
    T.StructField("effectivePeriod", PERIOD),
    T.StructField("component", T.ArrayType(COMPONENT)),
])

# A systolic or a diastolic sent alone (a half of a reading, paired by bp_spark/pairing.py):
# its own value, read again from its JSON only for such a half. Declared in OBSERVATION_SCHEMA,
# these two fields made every message's parse a fifth slower (bench/parse_bench.py: the whole
# parser 4.4 s against 3.7 s on 200,000 panels), though a panel has neither.
HALF_VALUE = T.StructType([
    T.StructField("valueQuantity", QUANTITY),
    T.StructField("dataAbsentReason", ABSENT_REASON),
])

# A Bundle's entries: each resource kept as its JSON text (Spark writes an object read as a
# string back out as compact JSON), parsed as an Observation only for a Bundle's messages.
BUNDLE_ENTRY = T.StructType([
    T.StructField("fullUrl", T.StringType()),
    T.StructField("resource", T.StringType()),
])

# What a message is read as: an Observation, or a Bundle of them (its ``type`` and ``entry``);
# the fields of the one are null in the other, and cost nothing to parse.
MESSAGE_SCHEMA = T.StructType([
    *OBSERVATION_SCHEMA.fields,
    T.StructField("type", T.StringType()),
    T.StructField("entry", T.ArrayType(BUNDLE_ENTRY)),
])

# Any JSON object parses to a map; anything else (malformed, an array, a bare value) to null.
JSON_OBJECT = T.MapType(T.StringType(), T.StringType())

# What the Kafka source gives each micro-batch.
KAFKA_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp")
