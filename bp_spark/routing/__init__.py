"""The routing query and its batch plan.

- :mod:`bp_spark.routing.plan`: a batch's decisions as lazy frames (which rows go to which
  sink), pure, tested on static frames;
- :mod:`bp_spark.routing.query`: the query (Kafka source, parse, classify) and its foreachBatch
  executor, which reads what the plan needs of earlier state and applies the writes in order.
"""
