"""Backfill: load a FHIR Bulk Data export (ndjson) into the same sinks as the stream job.

    python jobs/backfill.py --input PATH [--chunk-lines N] [--publish-alerts]

    spark-submit $(python -m bp_spark.versions) jobs/backfill.py --input PATH     # the same

PATH is a local path or any Hadoop URI (hdfs://, s3a://): one file, or the folder of an export,
whose *.ndjson (and *.ndjson.gz) files are read at any depth. A line is an Observation or a
Bundle, as a message on the topic would be; each is parsed, classified and routed exactly as
the stream job routes it, under the same ids: abnormal readings to the anomaly index (critical
ones to the alert index), normal readings to the archive, unusable lines to the dead letter
(id backfill:<file>-0-<line>). Then the trend windows of the whole export are written.

Run it twice, or run the stream job afterwards on a feed that replays the same observations, and
each is stored once. Stop the stream job while it runs: both write the archive, which one job at a
time holds. Historical readings open no alert episode and send nothing to kafka.alerts_topic
unless --publish-alerts: a backfill of last year must not page anybody today.

Exit status: 0 done; 1 a sink given up on (outages.give_up_after); 2 a configuration problem (a
bad setting or input, authentication refused, an archive another job holds).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bp_spark.backfill import DEFAULT_CHUNK_LINES, BackfillInputError, archive_tag_for, run_backfill
from bp_spark.config import ConfigError, add_config_flags, load_config_from_args
from bp_spark.connections import check_kafka
from bp_spark.elastic import ElasticsearchUnavailable, make_client
from bp_spark.logs import configure_logging
from bp_spark.ownership import OwnershipError, claim
from bp_spark.session import connectors_problem, job_session, stop_session
from bp_spark.sinks import Sinks, SinkUnavailable
from bp_spark.sinks.es import prepare_indices

log = logging.getLogger("backfill")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of lines")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an ndjson file, or the folder of a Bulk Data export (local path or Hadoop URI)")
    parser.add_argument("--chunk-lines", type=positive, default=DEFAULT_CHUNK_LINES, metavar="N",
                        help=f"route about this many lines at a time, whole file blocks (default {DEFAULT_CHUNK_LINES:,})")
    parser.add_argument("--publish-alerts", action="store_true",
                        help="also open alert episodes for the backfill's readings and send their events to "
                             "kafka.alerts_topic (off: they are history)")
    add_config_flags(parser, ["es-url", "archive-dir"])
    args = parser.parse_args(argv)
    configure_logging()
    signal.signal(signal.SIGTERM, _interrupt)
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", args.input) and not Path(args.input).exists():
        print(f"backfill: --input {args.input}: no such file or folder", file=sys.stderr)  # before Spark starts
        return 2
    try:
        config = load_config_from_args(args)
        if not args.publish_alerts:
            config = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, alerts_topic=""))
        es = make_client(config)
        prepare_indices(es, config)
        if config.kafka.alerts_topic:
            check_kafka(config)
    except (ConfigError, ElasticsearchUnavailable, SinkUnavailable) as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    spark = job_session(config, "bp-monitor-backfill")
    try:
        problem = connectors_problem(spark, "backfill")
        if problem:
            print(problem, file=sys.stderr)
            return 2
        return run(spark, config, es, args)
    finally:
        stop_session(spark)


def run(spark, config, es, args) -> int:
    try:
        held = claim(spark, config.paths.archive_dir, "archive", "--archive-dir")
    except OwnershipError as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    try:
        sinks = Sinks(spark, config, es, archive_tag=archive_tag_for(args.input, datetime.now(timezone.utc)),
                      alert_episodes=args.publish_alerts)  # history's alerting readings are documents, not pages
        summary = run_backfill(spark, config, sinks, args.input, args.chunk_lines,
                               progress=lambda line: print(line, flush=True))
    except BackfillInputError as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    except SinkUnavailable as exc:
        print(f"backfill: {exc}\nRun it again: what was stored is not stored twice.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backfill: interrupted. Run it again: what was stored is not stored twice.", file=sys.stderr)
        return 130
    finally:
        if held is not None:
            held.release()
    print("\n".join(summary.lines_out(config, args.input)), flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
