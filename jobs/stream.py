"""The stream job: FHIR blood-pressure Observations from Kafka to Elasticsearch, the archive and a dead letter.

    spark-submit $(python -m bp_spark.versions) jobs/stream.py [--trigger available-now] [--checkpoint-dir DIR] ...

    python jobs/stream.py --trigger available-now     # the same; sets the packages itself (local[*])

Defaults come from conf/pipeline.toml; BP_* environment variables and the flags below override
them. Abnormal readings go to the anomaly index (critical ones to the alert index too),
normal readings to ``<archive-dir>/patient_id=<id>/`` as JSON Lines, unusable messages to the
dead-letter index. Restarted on the same checkpoint, it resumes where it stopped, and every
sink holds every observation exactly once.

It waits rather than stops: for a topic that does not exist yet, for Kafka or Elasticsearch
while they are down (each attempt logged), and it restarts a query that failed. Set
outages.give_up_after to stop instead after that long. Credentials refused or a certificate not
trusted are not outages: the job stops at start, naming the service. Exit status: 0 done
(available-now) or interrupted (Ctrl-C, SIGTERM); 1 a sink or query given up on; 2 a
configuration problem (a bad setting, authentication refused, a checkpoint or archive another
job holds).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import sys
from pathlib import Path

# The driver uses the checkout's bp_spark (conf/ lies beside it), also when spark-submit's
# --py-files puts the executors' copy (dist/bp_spark.zip) first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bp_spark.logs import configure_logging
from bp_spark.config import ConfigError, add_config_flags, load_config_from_args
from bp_spark.connections import check_kafka
from bp_spark.elastic import ElasticsearchUnavailable, make_client
from bp_spark.ownership import OwnershipError
from bp_spark.pipeline import CheckpointLayoutError, PipelineStopped, start_pipeline
from bp_spark.session import connectors_problem, job_session, stop_session
from bp_spark.sinks import Sinks, SinkUnavailable
from bp_spark.sinks.es import ElasticsearchSink, prepare_indices
from bp_spark.sinks.retention import Expiry, apply_retention, rules_for
from bp_spark.outages import summarise

log = logging.getLogger("stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_config_flags(parser, ["bootstrap-servers", "topic", "es-url", "archive-dir", "checkpoint-dir", "trigger",
                              "starting-offsets", "max-offsets-per-trigger"])
    parser.add_argument("--no-sinks", action="store_true",
                        help="read, parse and classify only; write nothing (measures the machine's ceiling)")
    args = parser.parse_args(argv)
    configure_logging()
    # SIGTERM (docker stop, systemd, kill) stops the job cleanly, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    spark = None
    try:
        config = load_config_from_args(args)
        if "PYSPARK_GATEWAY_PORT" in os.environ:  # spark-submit started the JVM: its class path is known now
            spark = job_session(config, config.stream.app_name)
            problem = connectors_problem(spark, "stream")
            if problem:  # before waiting for any service: a launch without the connectors never works
                print(problem, file=sys.stderr)
                stop_session(spark)
                return 2
        es = make_client(config)
        retention = (ElasticsearchSink(config, es, {}), rules_for(config))
        prepare_indices(es, config, then=lambda: _apply_retention(*retention))
        check_kafka(config)  # a refused login stops the job here; a broker down is waited for later
    except (ConfigError, ElasticsearchUnavailable, SinkUnavailable, KeyboardInterrupt) as exc:
        if spark is not None:
            stop_session(spark)
        if isinstance(exc, KeyboardInterrupt):
            return 0
        print(f"stream: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    spark = spark or job_session(config, config.stream.app_name)
    try:
        problem = connectors_problem(spark, "stream")
        if problem:
            print(problem, file=sys.stderr)
            return 2
        return run(spark, config, None if args.no_sinks else Sinks(spark, config, es))
    finally:
        stop_session(spark)


def _apply_retention(sink: ElasticsearchSink, rules: list[Expiry]) -> None:
    """Apply the retention rules (bp_spark/sinks/retention.py) now, and again every hour."""
    try:
        for what, deleted in apply_retention(sink, rules).items():
            if deleted:
                log.info("deleted %d %s", deleted, what)
    except Exception as exc:  # retention is housekeeping: an outage here must not stop the monitor
        log.warning("could not apply the retention of dead letters, health records and versions seen (%s); trying again in "
                    "an hour", summarise(exc))
    timer = threading.Timer(3600, _apply_retention, (sink, rules))
    timer.daemon = True
    timer.start()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(spark, config, sinks: Sinks | None) -> int:
    """Start the pipeline and supervise it until it ends; return the exit status."""
    log.info("Spark master %s; Spark UI: %s (Structured Streaming tab; Prometheus: /metrics/prometheus)",
             spark.sparkContext.master, spark.sparkContext.uiWebUrl)
    try:
        pipeline = start_pipeline(spark, config, sinks)
    except (CheckpointLayoutError, OwnershipError) as exc:
        print(f"stream: {exc}", file=sys.stderr)
        return 2
    except SinkUnavailable as exc:  # the topic did not come within outages.give_up_after
        print(f"stream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    log.info("reading %s from %s; queries %s; checkpoints under %s", config.kafka.topic,
             config.kafka.bootstrap_servers, ", ".join(q.name for q in pipeline.queries), config.paths.checkpoint_dir)
    try:
        pipeline.await_termination()
    except PipelineStopped as exc:
        print(f"stream: stopped: {exc}\nRestart on the same checkpoint to resume; nothing acknowledged was lost.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted: stopping the queries (a restart on the same checkpoint resumes where they stopped)")
    finally:
        pipeline.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
