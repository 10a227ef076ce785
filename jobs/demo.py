"""The end-to-end demo that ``make demo`` runs on the local stack, ending with a summary.

    python jobs/demo.py

It checks the broker and Elasticsearch, publishes the reference workload with the
generator job (200 patients x 30 days x 4 readings), starts Spark with the Kafka source and
the Elasticsearch connector, and reports what each sink holds. The stream job joins this run
when it lands.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bp_spark.config import ConfigError, load_config
from bp_spark.elastic import ElasticsearchUnavailable, make_client, probe_cluster
from bp_spark.session import build_session
from bp_spark.versions import elasticsearch_version


def main() -> int:
    started = time.monotonic()
    try:
        config = load_config()
        es = make_client(config.elasticsearch.url)
        cluster = probe_cluster(es, config.elasticsearch.url, int(elasticsearch_version().split(".")[0]))
        admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
        topics = admin.list_topics(timeout=15).topics
    except (ConfigError, ElasticsearchUnavailable) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:
        print(f"demo: Kafka at {config.kafka.bootstrap_servers} did not answer ({exc}); run `make up`.",
              file=sys.stderr)
        return 1

    print(f"demo: Kafka at {config.kafka.bootstrap_servers}: {len(topics)} topics")
    print(f"demo: Elasticsearch {cluster.version} at {config.elasticsearch.url} (cluster {cluster.name})")
    print(f"demo: publishing the reference workload to topic {config.kafka.topic}")
    generator = subprocess.run([sys.executable, str(Path(__file__).with_name("generate.py"))])
    if generator.returncode != 0:
        print("demo: the generator failed (see above)", file=sys.stderr)
        return 1
    print("demo: starting Spark with the Kafka source and the Elasticsearch connector "
          "(the first run downloads them)")
    spark = build_session("bp-monitor-demo", {"spark.master": "local[2]"})
    try:
        loader = spark.sparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        for source in ("org.apache.spark.sql.kafka010.KafkaSourceProvider", "org.elasticsearch.spark.sql.DefaultSource"):
            loader.loadClass(source)  # fails loudly if a connector is missing
        print(f"demo: Spark {spark.version} up, UI at {spark.sparkContext.uiWebUrl}; both connectors loaded")
    finally:
        spark.stop()

    print("\nsummary")
    topic = admin.list_topics(config.kafka.topic, timeout=15).topics[config.kafka.topic]
    print(f"  topic {config.kafka.topic:<32} {len(topic.partitions)} partitions")
    for index in (config.elasticsearch.anomalies_index, config.elasticsearch.alerts_index,
                  config.elasticsearch.trends_index, config.elasticsearch.deadletter_index):
        count = es.count(index=index)["count"] if es.indices.exists(index=index) else 0
        print(f"  index {index:<32} {count} documents")
    print(f"  elapsed {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
