"""Logging of the jobs: one format, on stderr, without the per-request chatter of the clients."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr; py4j and the Elasticsearch transport only when they warn."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("py4j", "elastic_transport"):  # a line per callback or request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
