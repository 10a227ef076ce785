"""Latency of the stream job on a live feed: from publication to the anomaly being searchable.

    .venv/bin/python bench/latency_bench.py [--rate 1000] [--seconds 120] [--warmup-seconds 30] [--trigger T]
                                            [--seed-versions N] [--goals SHARE]

On the local stack (`make up` first), over its TLS and authentication:

1. starts the stream job as users start it, `python jobs/stream.py`, with its defaults (trends
   on, default trigger unless --trigger), on a fresh topic, indices, archive and checkpoint;
2. publishes a live feed with `jobs/generate.py --live --rate R` (readings taken now, one
   patient at most once a second, so --patients is at least R);
3. polls Elasticsearch every 100 ms for anomalies and alerts not seen before; an anomaly's
   latency is the moment it was first found minus its Kafka timestamp (the producer's clock:
   publication); the first --warmup-seconds of the feed are not counted (Spark's start-up);
4. prints p50, p95 and max of the anomalies' latency, how many came, and whether each critical
   alert was searchable no later than its anomaly; and, from the routing query's health records
   after the warm-up, its batch duration and the seconds of its repeats lookup and versions record.

``--goals SHARE`` gives that share of the feed's patients a target (a FHIR Goal published before
the readings): every batch then holds its readings to the patients' targets.

``--seed-versions N`` fills the versions index with N observations seen before the job starts
(what a week of a feed leaves there): the repeats lookup must cost the same with a million.

Figures go in docs, not in tests: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from elasticsearch import ApiError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bp_spark.config import env_name, load_config  # noqa: E402
from bp_spark.connections import kafka_settings  # noqa: E402
from bp_spark.elastic import install_templates, make_client, pipeline_indices  # noqa: E402
from bp_spark.monitoring import ROUTING_QUERY  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Watcher:
    """First sight of each document of an index, by id, polling Elasticsearch."""

    def __init__(self, es, index: str) -> None:
        self.es, self.index = es, index
        self.first_seen: dict[str, float] = {}
        self.published_ms: dict[str, int] = {}
        self.observation: dict[str, str] = {}

    def poll(self) -> None:
        try:
            result = self.es.search(index=self.index, size=10_000, sort=[{"processed_at": "desc"}],
                                    query={"range": {"processed_at": {"gte": "now-60s"}}},
                                    source=["kafka.timestamp", "observation_id"], ignore_unavailable=True)
        except ApiError:  # the index is being created: its shard is not searchable yet
            return
        now = time.time()
        for hit in result["hits"]["hits"]:
            if hit["_id"] not in self.first_seen:
                self.first_seen[hit["_id"]] = now
                stamp = hit["_source"].get("kafka", {}).get("timestamp")
                if stamp is not None:
                    self.published_ms[hit["_id"]] = _epoch_ms(stamp)
                self.observation[hit["_id"]] = hit["_source"].get("observation_id", "")


def _epoch_ms(value) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


def seed_versions(es, index: str, count: int) -> None:
    """``count`` observations seen in the last hours, as the stream job records them."""
    from elasticsearch.helpers import streaming_bulk
    now_ms = int(time.time() * 1000)
    actions = ({"_index": index, "_id": f"seed-{i}", "_source": {
        "hashes": [i * 7919], "added": [i * 7919], "tag": "seed", "batch_id": i // 1000,
        "seen_at": now_ms - (count - i) * 10}} for i in range(count))
    started = time.monotonic()
    for done, (ok, item) in enumerate(streaming_bulk(es, actions, chunk_size=5000, raise_on_error=True), 1):
        if done % 200_000 == 0:
            print(f"seeded {done:,} versions ({time.monotonic() - started:.0f} s)", flush=True)
    es.indices.refresh(index=index)
    print(f"versions index seeded with {count:,} observations in {time.monotonic() - started:.0f} s", flush=True)


def routing_health(es, index: str, since_ms: float) -> list[dict]:
    """The routing query's health records of batches with rows, started after ``since_ms``."""
    try:
        es.indices.refresh(index=index)
        hits = es.search(index=index, size=10_000, query={"bool": {"filter": [
            {"term": {"query": ROUTING_QUERY}}, {"range": {"input_rows": {"gt": 0}}},
            {"range": {"timestamp": {"gte": int(since_ms)}}}]}})["hits"]["hits"]
    except ApiError:
        return []
    return [hit["_source"] for hit in hits]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="observations per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=120, help="how long the feed runs (default 120)")
    parser.add_argument("--warmup-seconds", type=float, default=30, help="feed not counted at first (default 30)")
    parser.add_argument("--trigger", default=None, help="the job's --trigger (default: its configuration's)")
    parser.add_argument("--goals", type=float, default=0.0,
                        help="share of the feed's patients with a target (a FHIR Goal published first; default 0)")
    parser.add_argument("--seed-versions", type=int, default=0,
                        help="observations in the versions index before the job starts (default 0)")
    args = parser.parse_args()

    name = f"bench_latency_{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="bp-latency-"))
    indices = {kind: f"{name}_{kind}" for kind in pipeline_indices(load_config())}
    config = load_config(overrides={"kafka.topic": name,
                                    **{f"elasticsearch.{kind}_index": index for kind, index in indices.items()}})
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "BP_KAFKA_TOPIC": name,
           "BP_PATHS_ARCHIVE_DIR": str(workdir / "archive"), "BP_PATHS_CHECKPOINT_DIR": str(workdir / "checkpoint"),
           **{env_name(f"elasticsearch.{kind}_index"): index for kind, index in indices.items()}}
    admin = AdminClient(kafka_settings(config))
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(30)
    es = make_client(config)
    anomalies, alerts = Watcher(es, indices["anomalies"]), Watcher(es, indices["alerts"])
    if args.seed_versions:
        install_templates(es, {"versions": indices["versions"]}, 0)
        seed_versions(es, indices["versions"], args.seed_versions)
    job_log = workdir / "job.log"
    command = [sys.executable, str(ROOT / "jobs" / "stream.py")] + (["--trigger", args.trigger] if args.trigger else [])
    job = subprocess.Popen(command, env=env, stdout=open(job_log, "wb"), stderr=subprocess.STDOUT)
    feed = None
    try:
        deadline = time.monotonic() + 180
        while "reading " + name not in job_log.read_text(errors="replace"):
            if job.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the job did not start:\n{job_log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        feed_started = time.time()
        feed = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "generate.py"), "--live", "--rate", str(args.rate),
                                 "--patients", str(max(args.rate, 200)), "--topic", name, "--goals", str(args.goals)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while time.time() - feed_started < args.seconds:
            anomalies.poll()
            alerts.poll()
            time.sleep(0.1)
        feed.terminate()
        feed.wait(30)
        drain_until = time.time() + 30  # what was published last comes in the next batches
        while time.time() < drain_until:
            anomalies.poll()
            alerts.poll()
            time.sleep(0.1)
    finally:
        if feed is not None and feed.poll() is None:
            feed.kill()
        job.terminate()
        job.wait(120)
        health = routing_health(es, indices["metrics"], (feed_started + args.warmup_seconds) * 1000
                                if feed is not None else 0)
        admin.delete_topics([name])
        for index in es.indices.get(index=f"{name}_*", allow_no_indices=True):
            es.indices.delete(index=index)
        for template in es.indices.get_index_template(name=f"bp-monitor-{name}_*")["index_templates"]:
            es.indices.delete_index_template(name=template["name"])

    counted_from = (feed_started + args.warmup_seconds) * 1000
    latency = [anomalies.first_seen[i] - anomalies.published_ms[i] / 1000
               for i in anomalies.first_seen if anomalies.published_ms.get(i, 0) >= counted_from]
    if not latency:
        raise SystemExit(f"no anomaly was counted; the job's log:\n{job_log.read_text(errors='replace')[-3000:]}")
    by_observation = {obs: seen for i, seen in anomalies.first_seen.items() for obs in [anomalies.observation[i]]}
    late_alerts = [i for i, seen in alerts.first_seen.items()
                   if alerts.observation[i] in by_observation and seen > by_observation[alerts.observation[i]] + 0.15]
    batch_lines = [line for line in job_log.read_text(errors="replace").splitlines() if " rows in " in line]
    print(f"live feed {args.rate:,} obs/s for {args.seconds:.0f} s, job trigger "
          f"{args.trigger or config.stream.trigger!r}, trends {'on' if config.trends.enabled else 'off'}")
    print(f"anomalies counted: {len(latency):,} (after the first {args.warmup_seconds:.0f} s)")
    print(f"publication -> anomaly searchable: p50 {percentile(latency, 0.5):.2f} s, "
          f"p95 {percentile(latency, 0.95):.2f} s, max {max(latency):.2f} s, mean {statistics.mean(latency):.2f} s")
    print(f"critical alerts: {len(alerts.first_seen):,}; searchable after their anomaly (>0.15 s): {len(late_alerts)}")
    if health:
        durations = [h["batch_duration_ms"] / 1000 for h in health]
        steps = {step: [h["sinks"].get("steps_s", {}).get(step, 0.0) for h in health]
                 for step in ("repeats", "versions", "elasticsearch")}
        print(f"routing batches after the warm-up: {len(health)}, duration p50 {percentile(durations, 0.5):.2f} s, "
              f"p95 {percentile(durations, 0.95):.2f} s; repeats lookup p50 {percentile(steps['repeats'], 0.5):.3f} s, "
              f"p95 {percentile(steps['repeats'], 0.95):.3f} s; versions record p50 "
              f"{percentile(steps['versions'], 0.5):.3f} s, p95 {percentile(steps['versions'], 0.95):.3f} s "
              f"(versions index seeded with {args.seed_versions:,}); Elasticsearch step p50 "
              f"{percentile(steps['elasticsearch'], 0.5):.3f} s, p95 {percentile(steps['elasticsearch'], 0.95):.3f} s")
    print("last batches of the job:")
    for line in batch_lines[-6:]:
        print("  " + line.split(" - ")[-1][:220])
    print(f"job log: {job_log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
