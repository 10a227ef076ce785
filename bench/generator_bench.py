"""Benchmark of the generator job against the local broker (`make up` first).

    .venv/bin/python bench/generator_bench.py [--observations 200000] [--repeats 3]

Times jobs/generate.py's own run() from the first message to the last delivery report,
with --validate sample and --validate all, and the prototype's way of publishing the same
observations: one produce and one flush per message. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import statistics
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bp_spark.config import load_config
from bp_spark.connections import kafka_settings
from bp_spark.generator import encode, make_patients, readings, window

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("generate_job", ROOT / "jobs" / "generate.py")
generate_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_job)

END = "2026-03-01T00:00:00+00:00"


def timed_job(observations: int, validate: str, topics: list[str]) -> float:
    """Observations per second of one run of the generator job on a fresh topic."""
    topic = f"bench_gen_{uuid.uuid4().hex[:8]}"
    topics.append(topic)
    patients = 1000
    days = -(-observations // (patients * 4))
    config = load_config(overrides={"kafka.topic": topic, "generator.patients": patients, "generator.days": days,
                                    "generator.count": observations, "generator.validate": validate,
                                    "generator.end": END})
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        status = generate_job.run(config, dry_run=False, live=False)
    elapsed = time.perf_counter() - started
    assert status == 0, "deliveries failed"
    return observations / elapsed


def timed_flush_per_message(observations: int, config, topics: list[str]) -> float:
    """The prototype's way: produce, then flush, for every message."""
    topic = f"bench_flush_{uuid.uuid4().hex[:8]}"
    topics.append(topic)
    start, end = window("", END, 1)
    messages = [encode(r) for r in readings(make_patients(observations // 4 + 1, 42, {"normotensive": 1.0}),
                                            start, end, 4, 42, 0, 0)][:observations]
    producer = Producer(kafka_settings(config))
    producer.produce(topic, b"warm-up")
    producer.flush(30)
    started = time.perf_counter()
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
        producer.flush()
    return len(messages) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--all-observations", type=int, default=20_000, help="workload for --validate all")
    parser.add_argument("--flush-observations", type=int, default=2_000, help="workload for flush-per-message")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config()
    bootstrap = config.kafka.bootstrap_servers
    topics: list[str] = []
    try:
        sample = [timed_job(args.observations, "sample", topics) for _ in range(args.repeats)]
        every = [timed_job(args.all_observations, "all", topics) for _ in range(args.repeats)]
        flush = [timed_flush_per_message(args.flush_observations, config, topics) for _ in range(args.repeats)]
    finally:
        AdminClient(kafka_settings(config)).delete_topics(topics)
    rows = [
        (f"generator, --validate sample ({args.observations:,} obs)", sample),
        (f"generator, --validate all ({args.all_observations:,} obs)", every),
        (f"flush after every message ({args.flush_observations:,} obs)", flush),
    ]
    print(f"generator benchmark, {args.repeats} runs each, local broker {bootstrap}")
    for label, rates in rows:
        print(f"  {label:<48} median {statistics.median(rates):>10,.0f} obs/s   runs: "
              + ", ".join(f"{r:,.0f}" for r in rates))
    print(f"  ratio, sample vs flush-per-message: {statistics.median(sample) / statistics.median(flush):,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
