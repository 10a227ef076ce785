"""Watching the running queries: a StreamingQueryListener that reads each batch's progress.

Spark reports, per micro-batch, what every stateful operator did; readings that arrived later
than the trend query's watermark are dropped there and counted in ``numRowsDroppedByWatermark``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from pyspark.sql.streaming import StreamingQueryListener

log = logging.getLogger("bp_spark.monitoring")

TRENDS_QUERY = "bp_monitor_trends"


def late_rows(progress: dict[str, Any]) -> int:
    """Readings of this batch left out as later than the watermark. Each branch of the trend
    query (one per aggregation) drops the same late readings, so the count is their maximum."""
    return max((op.get("numRowsDroppedByWatermark", 0) for op in progress.get("stateOperators", [])), default=0)


class ProgressLog(StreamingQueryListener):
    """Logs readings left out of trends for being late, and keeps running totals per query."""

    def __init__(self) -> None:
        super().__init__()
        self.late: Counter[str] = Counter()

    def onQueryStarted(self, event: Any) -> None:
        log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

    def onQueryProgress(self, event: Any) -> None:
        progress = json.loads(event.progress.json)
        late = late_rows(progress)
        if late and progress.get("name") == TRENDS_QUERY:
            self.late[progress["name"]] += late
            log.warning("trends batch %s: %d readings arrived later than the watermark (%s) and were left out of "
                        "trends; they are still in the anomaly index or the archive (total so far: %d)",
                        progress.get("batchId"), late, progress.get("eventTime", {}).get("watermark", "none"),
                        self.late[progress["name"]])

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        if event.exception:
            log.error("query %s stopped with an error: %s", event.id, event.exception.splitlines()[0])
