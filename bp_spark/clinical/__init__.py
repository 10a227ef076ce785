"""Clinical rules: what a reading means.

- :mod:`bp_spark.clinical.profiles`: the guideline profiles (``classification.profile``), each a
  reviewed table of limits with its source;
- :mod:`bp_spark.clinical.classify`: those tables as Spark column expressions (category,
  anomaly types, severity, HL7 interpretation codes), applied to every reading.
"""
