"""The soak run: the stream job for an hour (or as long as you say) on a remote-monitoring feed.

    python jobs/soak.py                         # `make soak`: 60 minutes at 200 readings/s, 1,000 patients
    python jobs/soak.py --minutes 3 --check     # the short run: exit 1 unless every check holds

On the local stack (`make up`), with a topic, indices and folders of its own, it starts the
stream job the documented way (``spark-submit $(python -m bp_spark.versions) jobs/stream.py``,
every default kept) and publishes a feed as home devices send it: each patient's device syncs
now and then and sends its readings since the last sync in a burst; 5% of readings arrive late
(one hour to three days); about 1% of messages are corrections of an earlier reading, 0.5%
retract one (``entered-in-error``) and 2% repeat an earlier message byte for byte. Every
``--report-every`` seconds it prints the routing batches' duration (p50/p95 of the period) and
their first job (reading and parsing the batch, and looking up its repeats in the versions index; p95), the trend step's partial windows and its
merges into the trends index (p95 ms), the archive's files and bytes, the documents of each index and the job's resident memory. At the end it stops the feed, lets the job catch up,
stops it with SIGTERM, reconciles every sink by id (lost, doubled, stale, unexpected), and
prints the table and the checks:

- archive files within the bound: one per patient and day the readings fall on (a part more
  only once a file holds ``archive.max_file_mb``), none left staged;
- the last 10 minutes' batch p95 against the first 10 after warm-up (at most 1.2x), and the
  job's resident memory over the same periods (at most 10% more) (runs of 25 minutes or more).

The job's log is kept under ``var/soak/<run>/``; a run whose checks hold drops its topic,
indices and archive.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))

import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bp_spark.archive.layout import file_count  # noqa: E402
from bp_spark.config import Config, load_config  # noqa: E402
from bp_spark.connections import kafka_settings  # noqa: E402
from bp_spark.elastic import INDEX_KINDS, count_documents, make_client  # noqa: E402
from bp_spark.generator import _reading, encode, make_patients  # noqa: E402
from bp_spark.monitoring import ROUTING_QUERY  # noqa: E402
from bp_spark.versions import submit_args  # noqa: E402
from chaos import (QUIET, RETRACTED, Feed, _versioned, archive_bound, clean, job_env, print_table, reconcile,  # noqa: E402
                   remove_run)

MIX = {"normotensive": 0.55, "elevated": 0.15, "stage_1": 0.15, "stage_2": 0.10, "hypotensive": 0.05}
WARM_UP_S = 180
PERIOD_S = 600


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


class RemoteFeed(threading.Thread):
    """Publishes the feed at ``rate`` messages a second for ``seconds``; keeps what every sink must hold."""

    def __init__(self, config: Config, patients: int, rate: float, seconds: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.config, self.rate, self.seconds = config, rate, seconds
        self.rng = random.Random(seed)
        self.patients = make_patients(patients, seed, MIX)
        self.last_sync = {p.patient_id: time.time() - self.rng.uniform(3600, 12 * 3600) for p in self.patients}
        self.feed = Feed()
        self.sent: list[tuple[bytes, bytes]] = []  # every message, for repeats and corrections
        self.ids: list[str] = []
        self.failures: list[str] = []
        self.stop_now = threading.Event()

    def _reading(self, patient, epoch: int) -> tuple[bytes, bytes]:
        while f"bp-{patient.patient_id}-{epoch}" in self.feed.last:  # one id per patient and second
            epoch -= 1
        key, value = encode(_reading(patient, epoch, self.rng, 0.003, 0.005))
        self.feed.last[f"bp-{patient.patient_id}-{epoch}"] = value
        self.ids.append(f"bp-{patient.patient_id}-{epoch}")
        self.feed.counts["readings"] += 1
        return key, value

    def burst(self) -> list[tuple[bytes, bytes]]:
        """One device sync: a patient's readings since the last sync, then the odd extra message."""
        patient = self.rng.choice(self.patients)
        now = time.time()
        since = self.last_sync[patient.patient_id]
        self.last_sync[patient.patient_id] = now
        count = self.rng.choice([1, 1, 2, 2, 3, 4, 6])
        messages = []
        for _ in range(count):
            if self.rng.random() < 0.05:  # late: one hour to three days
                epoch = int(now - self.rng.uniform(3600, 3 * 86400))
                self.feed.counts["late"] += 1
            else:
                epoch = int(self.rng.uniform(min(since, now - 60), now - 1))
            messages.append(self._reading(patient, epoch))
        extra = self.rng.random()
        if extra < 0.01 * count:
            messages.append(self._correction())
        elif extra < 0.015 * count:
            messages.append(self._retraction())
        elif extra < 0.035 * count and self.sent:
            messages.append(self.rng.choice(self.sent[-50_000:]))
            self.feed.counts["repeats"] += 1
        return [m for m in messages if m is not None]

    def _earlier(self) -> tuple[str, bytes] | None:
        for _ in range(5):
            obs_id = self.rng.choice(self.ids)
            if self.feed.last[obs_id] is not RETRACTED:
                return obs_id, self.feed.last[obs_id]
        return None

    def _correction(self) -> tuple[bytes, bytes] | None:
        earlier = self._earlier()
        if earlier is None:
            return None
        obs_id, value = earlier
        amended = _versioned(value, self.rng.choice(["amended", "corrected"]), self.rng)
        self.feed.last[obs_id] = amended
        self.feed.counts["corrections"] += 1
        return orjson.loads(value)["subject"]["reference"].split("/")[1].encode(), amended

    def _retraction(self) -> tuple[bytes, bytes] | None:
        earlier = self._earlier()
        if earlier is None:
            return None
        obs_id, value = earlier
        self.feed.last[obs_id] = RETRACTED
        self.feed.counts["retractions"] += 1
        return (orjson.loads(value)["subject"]["reference"].split("/")[1].encode(),
                orjson.dumps({**orjson.loads(value), "status": "entered-in-error"}))

    def run(self) -> None:
        producer = Producer({**kafka_settings(self.config), "enable.idempotence": True, "linger.ms": 20,
                             "logger": QUIET})
        topic = self.config.kafka.topic

        def delivered(err, msg) -> None:
            if err is not None:
                self.failures.append(str(err))
        started = time.monotonic()
        published = 0
        while not self.stop_now.is_set() and time.monotonic() - started < self.seconds:
            for key, value in self.burst():
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                self.sent.append((key, value))
                published += 1
            producer.poll(0)
            ahead = started + published / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while producer.flush(5) > 0:
            pass


def job_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (the spark-submit driver's Python and JVM)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def job_driver_pid(pid: int) -> int:
    """The Python process running jobs/stream.py under spark-submit's JVM ``pid`` (``pid`` itself if none)."""
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            argv = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name.startswith("python") and any(a.endswith(b"jobs/stream.py") for a in argv):
                return current
            todo += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return pid


def records(es, config: Config, query: str, since: datetime, until: datetime | None = None) -> list[dict]:
    """The job's health records of one query between two moments."""
    index = config.elasticsearch.metrics_index
    if not es.indices.exists(index=index):
        return []
    moments = {"gte": since.isoformat()} | ({"lt": until.isoformat()} if until else {})
    hits = es.search(index=index, size=10_000, sort=[{"timestamp": "asc"}],
                     query={"bool": {"filter": [{"term": {"query": query}}, {"range": {"timestamp": moments}}]}})
    return [hit["_source"] for hit in hits["hits"]["hits"]]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(es, config: Config, job: subprocess.Popen, since: datetime, elapsed_s: float, published: int) -> dict:
    """One line of figures for the period since ``since``; returns them."""
    routing = [r for r in records(es, config, ROUTING_QUERY, since) if r["input_rows"]]
    seconds = [r["batch_duration_ms"] / 1000 for r in routing]
    lookups = [r["sinks"].get("steps_s", {}).get("repeats", 0.0) for r in routing]
    steps = [r["sinks"].get("steps_s", {}) for r in routing]
    merges = [step["trends_merge"] for step in steps if "trends_merge" in step]
    published_files, staged_files, size = file_count(Path(config.paths.archive_dir))
    docs = {kind: count_documents(es, getattr(config.elasticsearch, f"{kind}_index"))
            for kind in ("anomalies", "alerts", "archive", "deadletter", "metrics", "versions")}
    figures = {"elapsed_min": elapsed_s / 60, "published": published, "batches": len(seconds),
               "p50": statistics.median(seconds) if seconds else 0.0, "p95": percentile(seconds, 0.95),
               "lookup_ms": percentile(lookups, 0.95) * 1000,
               "trends_ms": percentile([step.get("trends", 0.0) for step in steps], 0.95) * 1000,
               "merge_ms": percentile(merges, 0.95) * 1000,
               "files": published_files, "staged": staged_files, "mb": size / 1e6, "docs": docs,
               "rss_mb": job_rss_mb(job.pid)}
    say(f"{figures['elapsed_min']:5.1f} min, {published:,} published; routing batches {len(seconds)}: "
        f"p50 {figures['p50']:.2f} s, p95 {figures['p95']:.2f} s, read, parse and repeats lookup p95 {figures['lookup_ms']:.0f} ms; trends step p95 {figures['trends_ms']:.0f} ms, "
        f"merge p95 {figures['merge_ms']:.0f} ms; archive {published_files:,} files + {staged_files:,} staged, "
        f"{figures['mb']:.1f} MB; " + ", ".join(f"{k} {n:,}" for k, n in docs.items())
        + f"; job RSS {figures['rss_mb']:,.0f} MB")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200, help="messages a second")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--report-every", type=float, default=300, help="seconds between two lines of figures")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 unless the reconciliation and the file bound hold")
    args = parser.parse_args(argv)
    run = f"bp_soak_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
    folder = ROOT / "var" / "soak" / run
    folder.mkdir(parents=True)
    config = load_config(overrides={
        "kafka.topic": run, "paths.archive_dir": str(folder / "archive"), "paths.checkpoint_dir": str(folder / "checkpoint"),
        **{f"elasticsearch.{kind}_index": f"{run}_{kind}" for kind in INDEX_KINDS}})
    admin = AdminClient(kafka_settings(config))  # held: a client destroyed at once fails its futures
    admin.create_topics([NewTopic(run, num_partitions=3, replication_factor=1)])[run].result(30)
    es = make_client(config)
    env = job_env(config)
    for key in ("BP_OUTAGES_BACKOFF_S", "BP_OUTAGES_MAX_BACKOFF_S"):  # chaos's shorter waits: every default kept
        env.pop(key, None)
    command = [str(ROOT / ".venv" / "bin" / "spark-submit"), *submit_args(), str(ROOT / "jobs" / "stream.py")]
    say(f"run {run}: {args.minutes:g} minutes at {args.rate:g} messages/s from {args.patients:,} patients; "
        f"the job: spark-submit $(python -m bp_spark.versions) jobs/stream.py")
    log = open(folder / "job.log", "wb")
    job = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    feed = RemoteFeed(config, args.patients, args.rate, args.minutes * 60, args.seed)
    try:
        return soak(args, config, es, job, feed, folder)
    finally:
        feed.stop_now.set()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def soak(args, config: Config, es, job: subprocess.Popen, feed: RemoteFeed, folder: Path) -> int:
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    feed.start()
    last_report = started_at
    periods = []
    while feed.is_alive():
        feed.join(timeout=min(args.report_every, 5))
        if job.poll() is not None:
            say(f"the job exited by itself with status {job.returncode}: see {folder}/job.log")
            return 1
        now = datetime.now(timezone.utc)
        if (now - last_report).total_seconds() >= args.report_every or not feed.is_alive():
            periods.append(report(es, config, job, last_report, time.monotonic() - started, len(feed.sent)))
            last_report = now
    if feed.failures:
        say(f"{len(feed.failures)} messages could not be published: {feed.failures[0]}")
        return 1
    ended_at = datetime.now(timezone.utc)
    say(f"feed done: {len(feed.sent):,} messages (" + ", ".join(f"{n:,} {k}" for k, n in feed.feed.counts.items())
        + "); waiting for the job to catch up")
    deadline = time.monotonic() + 900
    table = reconcile(config, feed.feed, set())
    while not clean(table) and time.monotonic() < deadline:
        time.sleep(10)
        table = reconcile(config, feed.feed, set())
    first = [r["batch_duration_ms"] / 1000 for r in records(
        es, config, ROUTING_QUERY, started_at + timedelta(seconds=WARM_UP_S),
        started_at + timedelta(seconds=WARM_UP_S + PERIOD_S)) if r["input_rows"]]
    last = [r["batch_duration_ms"] / 1000 for r in records(
        es, config, ROUTING_QUERY, ended_at - timedelta(seconds=PERIOD_S), ended_at) if r["input_rows"]]
    rss_end = job_rss_mb(job.pid)
    # The job's own Python process, not spark-submit's JVM above it: a SIGTERM to the JVM ends both
    # at once (status 143, the first soak) before the job's stop can roll what is staged.
    os.kill(job_driver_pid(job.pid), signal.SIGTERM)
    status = job.wait(180)
    table = reconcile(config, feed.feed, set(), exact=True)
    published_files, staged_files, size = file_count(Path(config.paths.archive_dir))
    bound = archive_bound(feed.feed, config)
    print("\nfigures every period")
    print(f"{'minutes':>7} {'batches':>7} {'p50 s':>6} {'p95 s':>6} {'lookup ms':>9} {'versions':>9} "
          f"{'trends ms':>9} {'merge ms':>8} {'files':>7} {'staged':>6} {'MB':>7} {'RSS MB':>7}")
    for p in periods:
        print(f"{p['elapsed_min']:>7.1f} {p['batches']:>7} {p['p50']:>6.2f} {p['p95']:>6.2f} {p['lookup_ms']:>9.0f} "
              f"{p['docs']['versions']:>9,} {p['trends_ms']:>9.0f} "
              f"{p['merge_ms']:>8.0f} {p['files']:>7,} {p['staged']:>6} {p['mb']:>7.1f} {p['rss_mb']:>7.0f}")
    print_table(table)
    checks = {"every sink reconciled by id": clean(table),
              f"archive files {published_files:,} <= {bound:,} patient-days, none staged ({staged_files})":
                  published_files <= bound and staged_files == 0,
              f"the job stopped on SIGTERM with status {status}": status == 0}
    if args.minutes >= 25 and first and last:
        ratio = percentile(last, 0.95) / max(percentile(first, 0.95), 1e-9)
        checks[f"batch p95: last 10 min {percentile(last, 0.95):.2f} s / first 10 after warm-up "
               f"{percentile(first, 0.95):.2f} s = {ratio:.2f} (<= 1.2)"] = ratio <= 1.2
        rss_first = next((p["rss_mb"] for p in periods if p["elapsed_min"] * 60 >= WARM_UP_S + PERIOD_S), periods[0]["rss_mb"])
        growth = rss_end / rss_first - 1
        checks[f"job RSS {rss_first:,.0f} MB after warm-up -> {rss_end:,.0f} MB at the end ({growth:+.1%}, <= 10%)"] = \
            growth <= 0.10
    print()
    for what, ok in checks.items():
        print(f"{'ok    ' if ok else 'FAILED'} {what}")
    passed = all(checks.values())
    print(f"\n{'OK' if passed else 'FAILED'}: {len(feed.sent):,} messages, {size / 1e6:.1f} MB archived; "
          f"job log: {folder}/job.log")
    if passed:
        remove_run(config, folder)
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
