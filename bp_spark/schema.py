"""Explicit Spark schemas: the FHIR pieces as reusable structs, and the Observation read from Kafka.

Only what the pipeline reads is declared; ``from_json`` ignores the rest of a resource.
Quantity values are read as strings and cast afterwards, so a non-numeric value becomes a
dead-letter reason for that one field instead of a silently emptied record.
"""

from __future__ import annotations

from pyspark.sql import types as T

CORRUPT_RECORD = "_corrupt_record"

CODING = T.StructType([
    T.StructField("system", T.StringType()),
    T.StructField("code", T.StringType()),
    T.StructField("display", T.StringType()),
])

CODEABLE_CONCEPT = T.StructType([
    T.StructField("coding", T.ArrayType(CODING)),
    T.StructField("text", T.StringType()),
])

QUANTITY = T.StructType([
    T.StructField("value", T.StringType()),  # a JSON number arrives as its text; cast later
    T.StructField("unit", T.StringType()),
    T.StructField("system", T.StringType()),
    T.StructField("code", T.StringType()),
])

REFERENCE = T.StructType([
    T.StructField("reference", T.StringType()),
    T.StructField("display", T.StringType()),
])

PERIOD = T.StructType([
    T.StructField("start", T.StringType()),
    T.StructField("end", T.StringType()),
])

COMPONENT = T.StructType([
    T.StructField("code", CODEABLE_CONCEPT),
    T.StructField("valueQuantity", QUANTITY),
])

OBSERVATION_SCHEMA = T.StructType([
    T.StructField("resourceType", T.StringType()),
    T.StructField("id", T.StringType()),
    T.StructField("status", T.StringType()),
    T.StructField("category", T.ArrayType(CODEABLE_CONCEPT)),
    T.StructField("code", CODEABLE_CONCEPT),
    T.StructField("subject", REFERENCE),
    T.StructField("effectiveDateTime", T.StringType()),
    T.StructField("effectivePeriod", PERIOD),
    T.StructField("component", T.ArrayType(COMPONENT)),
    # Filled by from_json (PERMISSIVE) with the input when it is not parseable JSON.
    T.StructField(CORRUPT_RECORD, T.StringType()),
])

# What the Kafka source gives each micro-batch.
KAFKA_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp")
