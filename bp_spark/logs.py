"""Logging of the jobs: one format, on stderr, without the per-request chatter of the clients."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr; py4j only when it warns, the Elasticsearch transport only on errors:
    its warnings are a traceback per failed request while a node is down, and the sinks already
    log each attempt, with what failed and for how long (bp_spark/outages.py)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line per callback otherwise
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
