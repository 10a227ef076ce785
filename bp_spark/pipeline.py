"""The stream job's wiring and supervision: start the routing query, keep it running, stop it.

- :mod:`bp_spark.routing.query`: the routing query (every reading to its sink, and its trend windows
  kept, then merged: :mod:`bp_spark.trends.step`);
- here: the checks before the start (checkpoint layout, one job per checkpoint and archive, the
  topic), the progress listener, and the supervisor that restarts the query when it failed (Kafka
  down, a deleted topic) after a capped backoff, so that nothing stops the job unless
  ``outages.give_up_after`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from py4j.protocol import Py4JError
from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from bp_spark.config import Config
from bp_spark.monitoring import ROUTING_QUERY, ProgressLog
from bp_spark.ownership import Claim, claim
from bp_spark.routing.query import BatchRouter, start_routing_query
from bp_spark.files import hadoop_fs
from bp_spark.sinks import Sinks
from bp_spark.outages import backoff_s, summarise
from bp_spark.streaming import wait_for_topic
from bp_spark.trends.step import PENDING_FOLDER, TrendStep

log = logging.getLogger("bp_spark.pipeline")


# How long a stop waits for the batch in flight to end; then the batch is stopped half-way and
# routed again by the next start.
STOP_WAIT_S = 90

# The checkpoints of the trend query that earlier versions ran beside the routing query.
EARLIER_TRENDS_CHECKPOINTS = ("trends", "trends-v2", "trends-v3", "trends-v4")


class CheckpointLayoutError(RuntimeError):
    """The checkpoint directory was written by a version with a single query."""


def check_checkpoint_layout(spark: SparkSession, config: Config) -> None:
    """Refuse a checkpoint of the one-query layout (offsets directly under the directory), which
    this version would silently ignore, re-reading the topic from the start; say so when the
    trend query of an earlier version left its checkpoint behind."""
    root = config.paths.checkpoint_dir.rstrip("/")
    if _exists(spark, f"{root}/offsets"):
        raise CheckpointLayoutError(
            f"{root} holds a checkpoint of an earlier bp-monitor, which ran one query. Each query now "
            f"has its own folder: move its contents into {root}/routing (mkdir {root}/routing, then move "
            f"commits, metadata, offsets, sources and state there) to resume where it stopped.")
    earlier = [f"{root}/{name}" for name in EARLIER_TRENDS_CHECKPOINTS if _exists(spark, f"{root}/{name}")]
    if earlier:
        log.warning("%s: the checkpoint of the trend query of an earlier bp-monitor, which this version does not "
                    "run (trends are merged from the routing query's readings into the same documents, from "
                    "this start on). Delete it.", ", ".join(earlier))


def _exists(spark: SparkSession, uri: str) -> bool:
    fs, path = hadoop_fs(spark, uri)
    return fs.exists(path)


class PipelineStopped(RuntimeError):
    """A query failed in a way the job is told not to ride out (``outages.give_up_after``)."""


@dataclass
class Pipeline:
    """The running stream job: its query, its router, the progress listener and the claims."""

    spark: SparkSession
    config: Config
    router: BatchRouter
    listener: ProgressLog
    queries: list[StreamingQuery] = field(default_factory=list)
    starters: dict[str, Callable[[], StreamingQuery]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    sweeping: threading.Event = field(default_factory=threading.Event)  # set: the alert sweep stops

    def start(self, name: str) -> None:
        """Start (or restart) the query ``name``."""
        query = self.starters[name]()
        self.queries = [q for q in self.queries if q.name != name] + [query]

    def await_termination(self, timeout_s: float | None = None) -> None:
        """Supervise the queries until each has finished (``available-now``): a query that fails is
        restarted after a capped backoff, the others running on; a failure the configuration says
        not to ride out stops them all and is raised. ``timeout_s``: give up waiting (the queries
        keep running)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        failing_since: dict[str, float] = {}
        attempts: dict[str, int] = {}
        while True:
            for query in list(self.queries):
                if query.isActive or query.exception() is None:
                    continue
                name = query.name
                if query.lastProgress is not None or name not in failing_since:  # it had run since its last failure
                    failing_since[name], attempts[name] = time.monotonic(), 0
                self._check_fatal(query, time.monotonic() - failing_since[name])
                delay = backoff_s(self.config.outages, attempts[name])
                attempts[name] += 1
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.error("query %s stopped: %s; restarting it in %.0f s (restart %d; the other query runs on)",
                          name, summarise(query.exception()), delay, self.restarts[name])
                time.sleep(delay)
                self.start(name)
            if not any(query.isActive for query in self.queries) and all(
                    query.exception() is None for query in self.queries):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the queries were still running after {timeout_s:.0f} s")
            active = [query for query in self.queries if query.isActive]
            if active:  # a query may end between the checks above and here; then the loop looks again
                try:
                    active[0].awaitTermination(1)
                except StreamingQueryException:
                    pass  # handled above, on the next turn

    def _check_fatal(self, query: StreamingQuery, failing_s: float) -> None:
        give_up_s = self.config.outages.give_up_after_s
        fatal = self.router.fatal if query.name == ROUTING_QUERY else None
        if fatal is not None or (give_up_s and failing_s >= give_up_s):
            self.stop_queries()
            reason = str(fatal) if fatal is not None else (
                f"query {query.name} kept failing for {failing_s:.0f} s (outages.give_up_after = "
                f"{self.config.outages.give_up_after}): {summarise(query.exception())}")
            raise PipelineStopped(reason) from query.exception()

    def stop_queries(self) -> None:
        for query in self.queries:
            if query.isActive:
                query.stop()

    def _roll_archive(self) -> None:
        """Publish what the archive has staged, so that a stopped job leaves no reading unrolled."""
        sinks = self.router.sinks
        if sinks is None:
            return
        try:
            sinks.archive.roll_if_due(force=True)
        except Exception as exc:  # the next start rolls what is left
            log.warning("could not roll the archive's staged readings at stop (%s); the next start will",
                        summarise(exc))

    def _await_commit(self, timeout_s: float = 10.0) -> None:
        """Once the router's last batch has ended, let Spark write its commit (a few milliseconds
        after the batch function returns): a stop then costs no replay."""
        last = self.router.last
        routing = [query for query in self.queries if query.name == ROUTING_QUERY and query.isActive]
        if last is None or not routing:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            progress = routing[0].lastProgress
            if not routing[0].isActive or (progress is not None and progress["batchId"] >= last.batch_id):
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Let the batch in flight end (up to :data:`STOP_WAIT_S`), stop the queries, roll the
        archive, merge the kept trend windows, let the listener record their last batches, remove
        it, release the claims."""
        self.sweeping.set()
        try:
            if not self.router.finish(STOP_WAIT_S):
                log.warning("the batch in flight was still running %d s after the stop was asked; it is stopped, and "
                            "the next start routes it again", STOP_WAIT_S)
            else:
                self._await_commit()
            self.stop_queries()
            self._roll_archive()
            if self.router.trends is not None:
                self.router.merge_trends()
            if not self.listener.wait_for([query.lastProgress for query in self.queries]):
                log.warning("the last progress reports did not reach the monitoring listener in time")
            self.spark.streams.removeListener(self.listener)
        except Py4JError as exc:  # the JVM went first (it was signalled too): nothing left to stop
            log.warning("the Spark JVM ended before the queries were stopped (%s)", summarise(exc))
        finally:
            for held in self.claims:
                held.release()


def start_pipeline(spark: SparkSession, config: Config, sinks: Sinks | None) -> Pipeline:
    """Claim the checkpoint and archive, wait for the topic, then start the routing query (with
    its trend step when trends are on and there are sinks), with a listener that logs (and,
    with sinks, indexes) each batch's health record."""
    check_checkpoint_layout(spark, config)
    claims = [claim(spark, config.paths.checkpoint_dir, "checkpoint", "--checkpoint-dir")]
    try:
        if sinks is not None:
            claims.append(claim(spark, config.paths.archive_dir, "archive", "--archive-dir"))
    except Exception:
        for held in claims:
            if held is not None:
                held.release()
        raise
    trends = None
    if sinks is not None and config.trends.enabled:
        trends = TrendStep(spark, config, sinks, lambda: sinks.archive.tag,
                           f"{config.paths.checkpoint_dir.rstrip('/')}/{PENDING_FOLDER}")
    router = BatchRouter(config, sinks, sinks.repeats if sinks is not None else None, trends)

    def sink_counts(query: str, batch_id: int) -> dict | None:
        return router.counts.get(batch_id) if query == ROUTING_QUERY else None

    health_index = config.elasticsearch.metrics_index
    listener = ProgressLog(sink_counts, (lambda record_id, record: sinks.elasticsearch.index_once(
        health_index, record_id, record)) if sinks is not None else None)
    pipeline = Pipeline(spark, config, router, listener, claims=[held for held in claims if held is not None])
    pipeline.starters[ROUTING_QUERY] = lambda: start_routing_query(spark, config, router, wait_for_topic(config))
    spark.streams.addListener(listener)
    try:
        for name in pipeline.starters:
            pipeline.start(name)
    except BaseException:
        pipeline.stop()
        raise
    if sinks is not None and sinks.episodes is not None:  # escalations and silences, with or without readings
        sinks.episodes.start_sweeping(pipeline.sweeping)
    return pipeline
