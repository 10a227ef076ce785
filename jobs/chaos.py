"""Fault injection: try to make the stream job lose, double or leave stale a reading, then count.

    python jobs/chaos.py            # the full scenario (`make chaos`)
    python jobs/chaos.py --short    # the short one `make test` runs

On the local stack (`make up`), with a topic, indices and folders of its own, it publishes a
realistic feed (the generator's readings, with exact duplicates, corrections, retractions, some
by id alone, and fuzzed bad input: random bytes, truncated JSON, deep nesting, huge fields,
tombstones, NaN, wrong types, dates in 2099, data after the JSON, two values in one message)
while the stream job runs with its defaults, trends included. Meanwhile it kills the job with
``kill -9`` several times (restarting it each time), hangs Elasticsearch (SIGSTOP) and later
kills it, and kills the broker; each service is brought back with ``stack/localstack.py up``.
Then it waits for the job to catch up and reconciles every sink, by id, against the last
version of each observation: anomalies, alerts, archive and dead letter, and prints per sink
what was lost, doubled, stale or unexpected. It must print zeros; the exit status is 0 only then.

Alerts are reconciled by episode too (:func:`reconcile_episodes`): every critical reading is on
a ``critical_reading`` alert of its patient (the job keeps every reading id on the alert here),
no reading twice, no second active alert of one kind per patient, the alerts the job's state
holds are those the care team sees; and every event the alerts record (opened, each page, each
escalation level, resolved) is on the alert topic as a DetectedIssue, none that they do not.
Escalation runs every minute meanwhile, so levels are raised across the kills.

The job's own log (no patient data) is kept under ``var/chaos/<run>/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from elasticsearch.helpers import scan  # noqa: E402

from bp_spark.archive.layout import archived_lines, file_count  # noqa: E402
from bp_spark.config import Config, duration_seconds, env_name, load_config  # noqa: E402
from bp_spark.connections import kafka_settings  # noqa: E402
from bp_spark.elastic import INDEX_KINDS, make_client, pipeline_indices  # noqa: E402
from bp_spark.generator import encode, make_patients, readings, window  # noqa: E402
from bp_spark.trends.merge import epoch_ms  # noqa: E402

MIX = {"normotensive": 0.45, "elevated": 0.1, "stage_1": 0.15, "stage_2": 0.2, "hypotensive": 0.1}
STACK = Path(os.environ.get("BP_STACK_DIR", ROOT / ".stack"))
PID_FILES = {"elasticsearch": STACK / "elasticsearch" / "elasticsearch.pid", "kafka": STACK / "kafka" / "kafka.pid"}
RETRACTED = None
# The alerts as the run needs them: the feed's readings are months old (no age limit), every
# reading id kept on its alert (reconciled by id), escalation and the sweep often enough to
# happen across the kills.
ALERT_SETTINGS = {"max_age": "0", "max_reading_ids": 1_000_000, "escalate_after": "1 minute",
                  "sweep_every": "15 seconds"}
QUIET = logging.getLogger("chaos.kafka-client")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


@dataclass(frozen=True)
class Scenario:
    """How much to publish and when to strike, in seconds after the job started."""

    patients: int
    days: int
    publish_s: float
    job_kills: tuple[float, ...]
    es_hang: tuple[float, float]  # (when, how long)
    es_kill: float
    broker_kill: float
    catch_up_s: float


SHORT = Scenario(patients=40, days=10, publish_s=50, job_kills=(20, 45), es_hang=(30, 10), es_kill=60,
                 broker_kill=85, catch_up_s=420)
FULL = Scenario(patients=200, days=120, publish_s=420, job_kills=(40, 130, 230, 330), es_hang=(170, 45),
                es_kill=270, broker_kill=380, catch_up_s=1200)


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- the feed


@dataclass
class Feed:
    """The messages in publish order, and what every sink must hold once they are processed."""

    messages: list[tuple[bytes | None, bytes | None, bool]] = field(default_factory=list)  # key, value, is_bad
    last: dict[str, bytes | None] = field(default_factory=dict)  # id -> last version's bytes (None: retracted)
    first: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (patient, effective time, epoch s)
    counts: Counter = field(default_factory=Counter)


def _versioned(value: bytes, status: str, rng: random.Random) -> bytes:
    obs = orjson.loads(value)
    obs["status"] = status
    systolic = rng.choice([rng.randint(95, 135), rng.randint(141, 200), rng.randint(75, 89)])
    obs["component"][0]["valueQuantity"]["value"] = systolic
    obs["component"][1]["valueQuantity"]["value"] = rng.randint(45, min(systolic - 10, 125))
    return orjson.dumps(obs)


def _fuzz(value: bytes, rng: random.Random) -> bytes | None:
    """A message that cannot be stored as a reading, made from a valid one."""
    obs = orjson.loads(value)
    text = value.decode()
    kind = rng.randrange(15)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    if kind == 1:
        return value[: rng.randint(1, len(value) - 2)]
    if kind == 2:
        return ('{"resourceType":"Observation","deep":' + "[" * 2000 + "]" * 2000 + "}").encode()
    if kind == 3:
        return orjson.dumps({**obs, "resourceType": "X" * rng.randint(20_000, 60_000)})
    if kind == 4:
        return orjson.dumps({**obs, "id": "i" * rng.randint(65, 2000)})
    if kind == 5:
        return None  # a tombstone
    if kind == 6:
        return re.sub(r'"value":\s*[0-9.]+', '"value": NaN', text, count=1).encode()
    if kind == 7:
        return orjson.dumps({**obs, "status": rng.choice([5, True, ["final"]])})
    if kind == 8:
        return orjson.dumps({**obs, "effectiveDateTime": "2099-06-01T08:00:00Z"})
    if kind == 9:
        return (text + "\x00garbage").encode()
    if kind == 10:
        return (text + "\n" + text).encode()
    if kind == 11:
        return orjson.dumps({**obs, "subject": {"reference": "Patient/" + "7" * 50_000}})
    if kind == 12:
        return orjson.dumps({**obs, "component": "x"})
    if kind == 13:
        return orjson.dumps({**obs, "note": "n" * 500_000, "effectiveDateTime": "yesterday"})
    return orjson.dumps({**obs, "id": obs["id"] + "-bad", "status": "preliminary"})


def build_feed(scenario: Scenario, seed: int) -> Feed:
    """Readings in event-time order, with duplicates, corrections, retractions and bad input
    scattered after their originals; every version of an observation keeps its patient's key
    (so its versions share a partition, whose order Kafka keeps)."""
    rng = random.Random(seed)
    start, end = window("", "2026-06-01T00:00:00+00:00", scenario.days)
    base = [encode(r) for r in readings(make_patients(scenario.patients, seed, MIX), start, end, 4, seed, 0.01, 0.02)]
    placed: list[tuple[float, int, bytes | None, bytes | None, bool]] = []
    last_at: dict[str, float] = {}
    feed = Feed()
    for i, (key, value) in enumerate(base):
        obs = orjson.loads(value)
        obs_id = obs["id"]
        feed.first[obs_id] = (key.decode(), int(datetime.fromisoformat(obs["effectiveDateTime"]).timestamp()))
        placed.append((float(i), len(placed), key, value, False))
        feed.last[obs_id] = value
        last_at[obs_id] = float(i)
        feed.counts["readings"] += 1
        if rng.random() < 0.03:  # an exact duplicate, soon or much later
            placed.append((i + rng.uniform(0.1, 3000), len(placed), key, value, False))
            feed.counts["duplicates"] += 1
        current = value
        for _ in range(rng.choice([0] * 17 + [1, 1, 2])):  # corrections
            last_at[obs_id] += rng.uniform(0.1, 800)
            current = _versioned(current, rng.choice(["amended", "corrected"]), rng)
            placed.append((last_at[obs_id], len(placed), key, current, False))
            feed.last[obs_id] = current
            feed.counts["corrections"] += 1
        if rng.random() < 0.02:  # a retraction, by id alone or with the whole resource
            last_at[obs_id] += rng.uniform(0.1, 800)
            retraction = (orjson.dumps({"resourceType": "Observation", "id": obs_id, "status": "entered-in-error"})
                          if rng.random() < 0.5 else orjson.dumps({**orjson.loads(current), "status": "entered-in-error"}))
            placed.append((last_at[obs_id], len(placed), key, retraction, False))
            feed.last[obs_id] = RETRACTED
            feed.counts["retractions"] += 1
        if rng.random() < 0.02:
            placed.append((i + rng.uniform(0.1, 50), len(placed), key, _fuzz(value, rng), True))
            feed.counts["bad input"] += 1
    feed.messages = [(key, value, bad) for _, _, key, value, bad in sorted(placed)]
    return feed


def _critical(config: Config, s: float, d: float) -> bool:
    t = config.thresholds
    return s > t.crisis_systolic or d > t.crisis_diastolic or s < t.critical_low_systolic or d < t.critical_low_diastolic


def expected_sinks(feed: Feed, config: Config) -> tuple[dict[str, bytes], dict[str, bytes], set[str]]:
    """(anomalies by id, archive by id, alert ids) that the last versions call for."""
    t = config.thresholds
    anomalies, archive, alerts = {}, {}, set()
    for obs_id, value in feed.last.items():
        if value is RETRACTED:
            continue
        s, d = (c["valueQuantity"]["value"] for c in orjson.loads(value)["component"])
        if s > t.systolic_high or s < t.systolic_low or d > t.diastolic_high or d < t.diastolic_low:
            anomalies[obs_id] = value
            if _critical(config, s, d):
                alerts.add(obs_id)
        else:
            archive[obs_id] = value
    return anomalies, archive, alerts


def ever_critical(feed: Feed, config: Config) -> set[str]:
    """Ids of the observations one of whose versions is critical: those an alert may hold (a
    version the job routed before its correction arrived)."""
    ids = set()
    for _, value, bad in feed.messages:
        if bad or value is None:
            continue
        obs = orjson.loads(value)
        if len(obs.get("component") or []) == 2 and _critical(config, *(c["valueQuantity"]["value"] for c in obs["component"])):
            ids.add(obs["id"])
    return ids


class Publisher(threading.Thread):
    """Publishes the feed evenly over ``seconds``; keeps the coordinates of the bad messages."""

    def __init__(self, config: Config, feed: Feed, seconds: float) -> None:
        super().__init__(daemon=True)
        self.config, self.feed, self.seconds = config, feed, seconds
        self.bad_coordinates: set[str] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        # Messages wait in the producer while the broker is down (up to 10 minutes), and the
        # idempotent producer never writes one twice when it retries.
        producer = Producer({**kafka_settings(self.config), "enable.idempotence": True,
                             "message.timeout.ms": 600_000, "linger.ms": 20,
                             "logger": QUIET})  # the broker's death is planned: no connection errors on stderr
        topic = self.config.kafka.topic

        def delivered(err, msg, bad: bool) -> None:
            if err is not None:
                self.failures.append(str(err))
            elif bad:
                self.bad_coordinates.add(f"{topic}-{msg.partition()}-{msg.offset()}")
        started = time.monotonic()
        total = len(self.feed.messages)
        for i, (key, value, bad) in enumerate(self.feed.messages):
            producer.produce(topic, key=key, value=value, on_delivery=lambda err, msg, bad=bad: delivered(err, msg, bad))
            producer.poll(0)
            ahead = started + self.seconds * (i + 1) / total - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while producer.flush(5) > 0:
            pass


# --------------------------------------------------------------------------- faults


def stack_up() -> None:
    """Start what is not running, in a session of its own: a service restarted here must outlive this run."""
    subprocess.run([sys.executable, str(ROOT / "stack" / "localstack.py"), "up"], check=True,
                   stdout=subprocess.DEVNULL, start_new_session=True)


def service_pid(name: str) -> int:
    return int(PID_FILES[name].read_text().strip())


class Job:
    """The stream job as a user starts it, in a process group of its own (kill -9 takes its JVM too)."""

    def __init__(self, config: Config, folder: Path) -> None:
        self.config, self.folder = config, folder
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[int] = []  # exit statuses it chose itself

    def start(self) -> None:
        self.starts += 1
        log = open(self.folder / f"job-{self.starts}.log", "wb")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "stream.py")], env=job_env(self.config),
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def check(self) -> None:
        """Restart the job if it ended by itself (which it should never do), counting it."""
        if self.process is not None and self.process.poll() is not None:
            self.exits.append(self.process.returncode)
            say(f"the job exited by itself with status {self.process.returncode}: restarting it")
            self.start()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM to the job, as docker stop or systemd sends it; the job ends its JVM itself."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def job_env(config: Config) -> dict[str, str]:
    # The job's own defaults (trigger, batch bounds), but for a shorter wait between attempts.
    keys = {"kafka.topic": config.kafka.topic, "paths.archive_dir": config.paths.archive_dir,
            "paths.checkpoint_dir": config.paths.checkpoint_dir, "outages.backoff_s": "0.5", "outages.max_backoff_s": "5",
            **{f"alerts.{key}": getattr(config.alerts, key) for key in ALERT_SETTINGS},
            "kafka.alerts_topic": config.kafka.alerts_topic,
            **{f"elasticsearch.{kind}_index": getattr(config.elasticsearch, f"{kind}_index")
               for kind in INDEX_KINDS}}
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **{env_name(key): str(value) for key, value in keys.items()}}


# --------------------------------------------------------------------------- reconciliation


def archive_by_id(config: Config, exact: bool = False) -> dict[str, list[bytes]]:
    """Each archived line by observation id, staged ones too; ``exact``: every line as it lies
    (for an archive no job writes to: a line in two places is then a reading archived twice)."""
    lines: dict[str, list[bytes]] = {}
    for line in archived_lines(Path(config.paths.archive_dir), exact=exact):
        lines.setdefault(orjson.loads(line)["id"], []).append(line)
    return lines


def index_docs(es, index: str) -> dict[str, dict]:
    if not es.indices.exists(index=index):
        return {}
    es.indices.refresh(index=index)
    return {hit["_id"]: hit["_source"] for hit in scan(es, index=index, query={"query": {"match_all": {}}}, size=5000)}


def reconcile(config: Config, feed: Feed, bad: set[str], exact: bool = False) -> dict[str, Counter]:
    """Per sink: expected, stored, lost, doubled, stale, unexpected. ``exact``: the job has
    stopped, and every archived line counts as it lies."""
    es = make_client(config)
    e = config.elasticsearch
    anomalies, archive, alerts = expected_sinks(feed, config)
    table: dict[str, Counter] = {}

    stored = index_docs(es, e.anomalies_index)
    row = table["anomalies"] = Counter(expected=len(anomalies), stored=len(stored))
    for obs_id, value in anomalies.items():
        doc = stored.get(obs_id)
        if doc is None:
            row["lost"] += 1
            continue
        obs = orjson.loads(value)
        s, d = (c["valueQuantity"]["value"] for c in obs["component"])
        if (doc["systolic"], doc["diastolic"], doc["status"]) != (float(s), float(d), obs["status"]):
            row["stale"] += 1
    row["unexpected"] = len(set(stored) - set(anomalies))

    stored_alerts = {i for i, doc in index_docs(es, e.alerts_index).items() if doc.get("alert_type") == "critical_reading"}
    table["alerts"] = Counter(expected=len(alerts), stored=len(stored_alerts), lost=len(alerts - stored_alerts),
                              unexpected=len(stored_alerts - alerts))

    lines = archive_by_id(config, exact)
    row = table["archive"] = Counter(expected=len(archive), stored=sum(len(v) for v in lines.values()))
    for obs_id, value in archive.items():
        found = lines.get(obs_id, [])
        row["lost"] += not found
        row["doubled"] += max(len(found) - 1, 0)
        row["stale"] += bool(found) and found[-1] != value
    row["unexpected"] = len(set(lines) - set(archive))
    row["doubled"] += len(set(lines) & set(anomalies))  # in the archive and the anomaly index both

    dead = set(index_docs(es, e.deadletter_index))
    table["dead letter"] = Counter(expected=len(bad), stored=len(dead), lost=len(bad - dead), unexpected=len(dead - bad))
    table.update(reconcile_trends(config, feed, es))
    table.update(reconcile_episodes(config, feed, index_docs(es, e.episodes_index), index_docs(es, e.alert_state_index),
                                    topic_event_ids(config)))
    return table


def reconcile_trends(config: Config, feed: Feed, es) -> dict[str, Counter]:
    """The trend windows against the readings: every observation counted once, in its patient's
    day and in the cohort's day of its effective time (the version it first came as; a later
    correction or retraction is not counted again, nor subtracted). Per window, a count above
    the expected one is doubled readings, below it lost ones; a window no reading calls for is
    unexpected."""
    t = config.trends
    day_s = 86_400
    daily = next(label for label, duration in t.window_list if duration_seconds(duration) == day_s)
    patient_day = next(label for label, duration in t.patient_window_list if duration_seconds(duration) == day_s)
    expected = {"patient days": Counter(), "cohort days": Counter()}
    for patient, at in feed.first.values():
        start_ms = at // day_s * day_s * 1000
        expected["patient days"][(patient, start_ms)] += 1
        expected["cohort days"][(None, start_ms)] += 1
    stored = {"patient days": Counter(), "cohort days": Counter()}
    for doc in index_docs(es, config.elasticsearch.trends_index).values():
        if doc.get("scope") == "patient" and doc.get("period") == patient_day:
            stored["patient days"][(doc["patient_id"], epoch_ms(doc["window_start"]))] += doc["readings"]
        elif doc.get("scope") == "cohort" and doc.get("period") == daily:
            stored["cohort days"][(None, epoch_ms(doc["window_start"]))] += doc["readings"]
    table = {}
    for name, wanted in expected.items():
        held = stored[name]
        row = table[f"trends ({name})"] = Counter(expected=sum(wanted.values()), stored=sum(held.values()))
        for key, count in wanted.items():
            row["lost"] += max(count - held.get(key, 0), 0)
            row["doubled"] += max(held.get(key, 0) - count, 0)
        row["unexpected"] = sum(count for key, count in held.items() if key not in wanted)
    return table


def topic_event_ids(config: Config) -> Counter:
    """How many times each event id is on the alert topic (the DetectedIssues' second identifier)."""
    consumer = Consumer({**kafka_settings(config), "group.id": f"{config.kafka.alerts_topic}-reconcile",
                         "enable.auto.commit": False, "logger": QUIET})
    try:
        topic = config.kafka.alerts_topic
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in partitions}
        wanted = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, high) in ends.items() if high > low])
        ids: Counter = Counter()
        deadline = time.monotonic() + 120
        while wanted and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            ids[orjson.loads(message.value())["identifier"][1]["value"]] += 1
            if message.offset() + 1 >= wanted.get(message.partition(), 0):
                wanted.pop(message.partition(), None)
        return ids
    finally:
        consumer.close()


def expected_events(alert: dict) -> set[str]:
    """The events an alert records: opened, each page since, each escalation level of its last
    page, and resolved."""
    alert_id, pages = alert["alert_id"], alert.get("pages", 1)
    events = {f"{alert_id}|opened|1", *(f"{alert_id}|joined|{n}" for n in range(2, pages + 1)),
              *(f"{alert_id}|escalated|{pages}.{level}" for level in range(1, alert.get("escalation_level", 0) + 1))}
    if alert["status"] == "resolved":
        events.add(f"{alert_id}|resolved|0")
    return events


def explained(event_id: str, alerts: dict[str, dict]) -> bool:
    """Whether an event on the topic is one its alert records (or an escalation of an earlier page)."""
    alert_id, kind, serial = event_id.split("|")
    alert = alerts.get(alert_id)
    if alert is None:
        return False
    if kind == "escalated":
        page, level = (int(n) for n in serial.split("."))
        return page < alert.get("pages", 1) or (page == alert.get("pages", 1) and level <= alert.get("escalation_level", 0))
    return event_id in expected_events(alert)


def reconcile_episodes(config: Config, feed: Feed, alerts: dict[str, dict], states: dict[str, dict],
                       events: Counter) -> dict[str, Counter]:
    """The alert episodes, by reading id and by event id (see the module's doc)."""
    _, _, critical = expected_sinks(feed, config)
    covered: Counter = Counter()
    active: Counter = Counter()
    row = Counter(expected=len(critical))
    for alert in alerts.values():
        ids = alert.get("reading_ids") or []
        if alert["kind"] == "critical_reading":
            covered.update(set(ids))
            row["doubled"] += alert["readings_count"] - len(set(ids))  # a reading counted twice
        if alert["status"] != "resolved":
            active[(alert["patient_id"], alert["kind"])] += 1
    row["stored"] = sum(covered.values())
    row["lost"] = len(critical - set(covered))
    row["unexpected"] = len(set(covered) - ever_critical(feed, config))
    row["doubled"] += sum(n - 1 for n in covered.values()) + sum(n - 1 for n in active.values())
    # The state the job decides from and the alerts the care team sees hold the same active alerts.
    held = {a["alert_id"]: a for st in states.values() for a in (st.get("episodes") or {}).values()}
    seen = {alert_id for alert_id, a in alerts.items() if a["status"] != "resolved"}
    row["stale"] = len(seen ^ set(held)) + sum(
        1 for alert_id in seen & set(held) if any(alerts[alert_id].get(k) != held[alert_id].get(k)
                                                  for k in ("readings_count", "reading_ids", "pages")))
    table = {"episodes": row}
    wanted = set().union(*(expected_events(a) for a in alerts.values())) if alerts else set()
    table["alert events"] = Counter(expected=len(wanted), stored=len(events), lost=len(wanted - set(events)),
                                    unexpected=sum(1 for i in events if not explained(i, alerts)))
    table["alert events"]["sent again"] = sum(n - 1 for n in events.values())
    return table


def archive_bound(feed: Feed, config: Config) -> int:
    """The archive's file bound: one file per patient and day its normal readings fall on."""
    _, archive, _ = expected_sinks(feed, config)
    days = set()
    for value in archive.values():
        obs = orjson.loads(value)
        when = datetime.fromisoformat(obs["effectiveDateTime"]).astimezone(timezone.utc)
        days.add((obs["subject"]["reference"], when.strftime("%Y-%m-%d")))
    return len(days)


PROBLEMS = ("lost", "doubled", "stale", "unexpected")


def print_table(table: dict[str, Counter]) -> None:
    print(f"\n{'sink':<22} {'expected':>9} {'stored':>9} " + " ".join(f"{p:>10}" for p in PROBLEMS))
    for sink, row in table.items():
        print(f"{sink:<22} {row['expected']:>9,} {row['stored']:>9,} " + " ".join(f"{row[p]:>10,}" for p in PROBLEMS))
    again = table.get("alert events", Counter())["sent again"]
    print(f"\nalert events sent again with the same id (a kill -9 between sending them and writing their "
          f"alerts; a consumer keeps the first): {again:,}")


def clean(table: dict[str, Counter]) -> bool:
    return not any(row[p] for row in table.values() for p in PROBLEMS)


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--short", action="store_true", help="the short scenario (about 3 minutes) make test runs")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    scenario = SHORT if args.short else FULL
    run = f"bp_chaos_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
    folder = ROOT / "var" / "chaos" / run
    folder.mkdir(parents=True)
    config = load_config(overrides={
        "kafka.topic": run, "kafka.alerts_topic": f"{run}_alerts", "paths.archive_dir": str(folder / "archive"),
        "paths.checkpoint_dir": str(folder / "checkpoint"), **{f"alerts.{k}": v for k, v in ALERT_SETTINGS.items()},
        **{f"elasticsearch.{kind}_index": f"{run}_{kind}" for kind in INDEX_KINDS}})
    feed = build_feed(scenario, args.seed)
    say(f"run {run}: {len(feed.messages):,} messages: " + ", ".join(f"{n:,} {k}" for k, n in feed.counts.items()))
    admin = AdminClient(kafka_settings(config))
    for topic in admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)
                                      for name in (run, config.kafka.alerts_topic)]).values():
        topic.result(30)

    job = Job(config, folder)
    job.start()
    try:
        return run_scenario(scenario, config, feed, job, folder)
    finally:
        if job.process is not None and job.process.poll() is None:
            job.stop()


def run_scenario(scenario: Scenario, config: Config, feed: Feed, job: Job, folder: Path) -> int:
    """Publish while striking, wait for the job to catch up, reconcile; return the exit status."""
    publisher = Publisher(config, feed, scenario.publish_s)
    publisher.start()
    started = time.monotonic()
    faults = sorted([(t, "kill the job") for t in scenario.job_kills]
                    + [(scenario.es_hang[0], "hang elasticsearch"), (scenario.es_kill, "kill elasticsearch"),
                       (scenario.broker_kill, "kill the broker")])
    for at, fault in faults:
        while time.monotonic() - started < at:
            job.check()
            time.sleep(0.5)
        say(fault)
        if fault == "kill the job":
            job.kill()
            job.start()
        elif fault == "hang elasticsearch":
            pid = service_pid("elasticsearch")
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(scenario.es_hang[1])
            finally:  # also when this run is interrupted: never leave the stack's node frozen
                os.kill(pid, signal.SIGCONT)
            say(f"elasticsearch resumed after {scenario.es_hang[1]:.0f} s")
        else:
            name = "elasticsearch" if "elasticsearch" in fault else "kafka"
            os.kill(service_pid(name), signal.SIGKILL)
            time.sleep(3)
            stack_up()
            say(f"{name} is back")
    publisher.join()
    if publisher.failures:
        say(f"{len(publisher.failures)} messages could not be published: {publisher.failures[0]}")
        return 1
    say(f"all {len(feed.messages):,} messages published; waiting for the job to catch up")
    deadline = time.monotonic() + scenario.catch_up_s
    table = reconcile(config, feed, publisher.bad_coordinates)
    # The alert events are left to the last count: the sweep keeps escalating while the job runs
    # (and the trends, which the job merges every trends.trigger and when it stops).
    while (not clean({k: v for k, v in table.items() if k != "alert events" and not k.startswith("trends")})
           and time.monotonic() < deadline):
        job.check()
        time.sleep(10)
        table = reconcile(config, feed, publisher.bad_coordinates)
    status = job.stop()
    say(f"the job stopped on SIGTERM with status {status}; it was started {job.starts} times "
        f"({len(scenario.job_kills)} after a kill -9), and exited by itself {len(job.exits)} times")
    table = reconcile(config, feed, publisher.bad_coordinates, exact=True)
    print_table(table)
    published, staged, _ = file_count(Path(config.paths.archive_dir))
    bound = archive_bound(feed, config)
    print(f"\nfiles in the archive: {published:,} for {bound:,} patient-days, {staged:,} staged")
    ok = clean(table) and not job.exits and status == 0 and published <= bound and not staged
    print(f"\n{'OK' if ok else 'FAILED'}: {sum(row['expected'] for row in table.values()):,} expected entries; "
          f"job log: {folder}/job-*.log")
    if ok:  # a failed run keeps its topic, indices and folders to look into
        remove_run(config, folder)
    return 0 if ok else 1


def remove_run(config: Config, folder: Path) -> None:
    """Drop the run's topic and indices, and its folder but the job logs."""
    es = make_client(config)
    names = list(pipeline_indices(config).values())
    es.indices.delete(index=",".join(names), ignore_unavailable=True)
    for name in names:
        es.options(ignore_status=404).indices.delete_index_template(name=f"bp-monitor-{name}")
    AdminClient(kafka_settings(config)).delete_topics([config.kafka.topic, config.kafka.alerts_topic])
    for sub in ("archive", "checkpoint"):
        shutil.rmtree(folder / sub, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
