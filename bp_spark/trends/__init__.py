"""Trend windows from the routing batch's readings.

- :mod:`bp_spark.trends.windows`: a batch's readings as partial windows (Spark column functions);
- :mod:`bp_spark.trends.merge`: partials merged into window documents, sustained windows summed
  from daily ones, onsets (pure Python, tested without Spark);
- :mod:`bp_spark.trends.step`: the step of the routing batch that keeps partials and merges them
  into the trends index.
"""
