"""The stream job: FHIR blood-pressure Observations from Kafka to Elasticsearch, the archive and a dead letter.

    spark-submit $(python -m bp_spark.versions) jobs/stream.py [--trigger available-now] [--checkpoint-dir DIR] ...

    python jobs/stream.py --trigger available-now     # the same; sets the packages itself (local[*])

Defaults come from conf/pipeline.toml; BP_* environment variables and the flags below override
them. Abnormal readings go to the anomaly index (critical ones to the alert index too),
normal readings to ``<archive-dir>/patient_id=<id>/`` as JSON Lines, unusable messages to the
dead-letter index. Restarted on the same checkpoint, it resumes where it stopped, and every
sink holds every observation exactly once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# The driver uses the checkout's bp_spark (conf/ lies beside it), also when spark-submit's
# --py-files puts the executors' copy (dist/bp_spark.zip) first on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.errors import StreamingQueryException

from bp_spark.logs import configure_logging
from bp_spark.config import ConfigError, add_config_flags, load_config_from_args
from bp_spark.elastic import ElasticsearchUnavailable, install_templates, make_client, pipeline_indices, probe_cluster
from bp_spark.pipeline import CheckpointLayoutError, await_queries, start_pipeline
from bp_spark.session import build_session
from bp_spark.sinks import Sinks

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
    try:
        config = load_config_from_args(args)
        es = make_client(config.elasticsearch.url)
        probe_cluster(es, config.elasticsearch.url)
        written = install_templates(es, pipeline_indices(config), config.elasticsearch.number_of_replicas)
        for name in written:
            log.info("installed index template %s", name)
    except (ConfigError, ElasticsearchUnavailable) as exc:
        print(f"stream: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1

    spark = build_session(config.stream.app_name, {"spark.driver.memory": config.stream.driver_memory})
    log.info("Spark master %s; Spark UI: %s (Structured Streaming tab; Prometheus: /metrics/prometheus)",
             spark.sparkContext.master, spark.sparkContext.uiWebUrl)
    try:
        pipeline = start_pipeline(spark, config, None if args.no_sinks else Sinks(spark, config, es))
    except CheckpointLayoutError as exc:
        print(f"stream: {exc}", file=sys.stderr)
        spark.stop()
        return 2
    log.info("reading %s from %s; queries %s; checkpoints under %s", config.kafka.topic,
             config.kafka.bootstrap_servers, ", ".join(q.name for q in pipeline.queries), config.paths.checkpoint_dir)
    try:
        await_queries(pipeline.queries)
    except StreamingQueryException as exc:
        print(f"stream: the query stopped: {str(exc).splitlines()[0]}\n"
              "Restart on the same checkpoint to resume; nothing acknowledged was lost.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        pipeline.stop()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
