"""Riding out a sink that fails: wait with capped exponential backoff, log each attempt, go on.

A sink that fails as a whole (Elasticsearch down, overloaded or read-only, the archive's storage,
the alert topic's broker) is tried again, first after ``outages.backoff_s``, then twice as long
each time up to ``outages.max_backoff_s``, for as long as it takes, unless
``outages.give_up_after`` says when to stop. Log lines say which sink, what failed and for how
long; they never quote a document, whose content may be a patient's.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone
from collections.abc import Callable
from typing import TypeVar

from elastic_transport import TransportError
from elasticsearch import exceptions as es_exceptions
from elasticsearch.helpers import BulkIndexError
from py4j.protocol import Py4JError
from pyspark.errors import AnalysisException, PySparkException

from bp_spark.config import OutagesConfig

log = logging.getLogger("bp_spark.sinks")
# The health records' logger (bp_spark/monitoring.py): while a sink is down no batch ends, so no
# batch record is written; each attempt writes a record of its own there, saying which sink.
health_log = logging.getLogger("bp_spark.metrics")

T = TypeVar("T")


class SinkUnavailable(RuntimeError):
    """A sink kept failing for longer than ``outages.give_up_after``; the batch was not completed."""


class SinkFailure(RuntimeError):
    """A sink answered, but did not take everything (429, 5xx, a write block): worth another try."""


RETRYABLE = (Py4JError, PySparkException, es_exceptions.ApiError, TransportError, BulkIndexError, OSError,
             SinkFailure)
# A query plan Spark cannot analyse is a bug of ours: no amount of waiting mends it.
NOT_RETRYABLE = (AnalysisException,)

_ES_REFUSAL = re.compile(r"EsHadoopRemoteException: (\w+)")
_CAUSES = (
    re.compile(r"(EsHadoop\w*Exception: [^\n]{0,160})"),
    re.compile(r"Caused by: ([\w.$]+: [^\n]{0,160})"),
)


def summarise(exc: BaseException) -> str:
    """What went wrong, in words that never carry a document: Elasticsearch's error type where it
    refused something (its message quotes the document), else the line that names the cause."""
    text = str(exc)
    refusal = _ES_REFUSAL.search(text)
    if refusal:
        return f"Elasticsearch answered {refusal.group(1)}"
    for pattern in _CAUSES:
        match = pattern.search(text)
        if match:
            return match.group(1).strip()
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:160]


def backoff_s(policy: OutagesConfig, attempt: int) -> float:
    """The wait before attempt ``attempt + 1``: ``backoff_s`` doubled each time, capped."""
    return min(policy.backoff_s * 2 ** min(attempt, 30), policy.max_backoff_s)


def with_retries(action: Callable[[], T], what: str, sink: str, policy: OutagesConfig,
                 waits: dict[str, float] | None = None, also_retry: tuple[type[BaseException], ...] = ()) -> T:
    """Run ``action`` until it succeeds, waiting out failures of ``sink`` (:data:`RETRYABLE`, and
    ``also_retry``); ``waits[sink]`` adds up the seconds waited. Raise :class:`SinkUnavailable`
    once ``policy.give_up_after`` has passed."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            result = action()
        except NOT_RETRYABLE:
            raise
        except RETRYABLE + also_retry as exc:
            failing_s = time.monotonic() - started
            summary = summarise(exc)
            give_up_s = policy.give_up_after_s
            if give_up_s and failing_s >= give_up_s:
                raise SinkUnavailable(
                    f"{what}: {sink} kept failing for {failing_s:.0f} s (outages.give_up_after = "
                    f"{policy.give_up_after}); last error: {summary}. The batch was not completed; fix the cause and "
                    "restart the job on the same checkpoint to resume where it stopped."
                ) from exc
            delay = backoff_s(policy, attempt)
            if give_up_s:
                delay = min(delay, give_up_s - failing_s)
            log.warning("%s is unavailable: %s failed (attempt %d, failing for %.0f s): %s; trying again in %.1f s",
                        sink, what, attempt + 1, failing_s, summary, delay)
            health_log.info(json.dumps({"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                        "event": "sink_unavailable", "sink": sink, "what": what, "attempt": attempt + 1,
                                        "failing_s": round(failing_s, 1), "next_attempt_in_s": round(delay, 1)},
                                       separators=(",", ":")))
            if waits is not None:
                waits[sink] = waits.get(sink, 0.0) + delay
            time.sleep(delay)
            attempt += 1
            continue
        if attempt:
            log.warning("%s is back: %s succeeded after %d failed attempts over %.0f s", sink, what, attempt,
                        time.monotonic() - started)
        return result
