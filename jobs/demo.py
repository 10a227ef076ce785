"""The end-to-end demo that ``make demo`` runs on the local stack, ending with a summary.

    python jobs/demo.py

1. checks Kafka and Elasticsearch;
2. publishes the reference workload with the generator job (200 patients x 30 days x 4
   readings), three FHIR Bundles as an EHR interface sends them (a Patient, two readings whose
   subject is the Patient's ``urn:uuid:``, a heart rate that is not read), two readings sent as
   separate systolic and diastolic Observations (as device gateways send them, paired by the
   job), and three unreadable messages, to show the dead letter;
3. runs the stream job with ``--trigger available-now`` on ``var/checkpoints`` (routing and trends);
4. writes the HTML report ``var/report.html`` (jobs/report.py: the dashboard's panels);
5. prints what each sink holds: counts per sink, per category, per alert type and trend scope.

Each step is a line of its own, with the job's progress while it runs; what the jobs, Spark,
Ivy and the JVM print goes to ``var/demo.log``, whose tail a failing step quotes.

Run it again and the stream job resumes from its checkpoint: the same observations (same id,
same bytes) are not stored twice.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from elasticsearch import Elasticsearch

from bp_spark.alerts.step import settings_for
from bp_spark.config import Config, ConfigError, load_config
from bp_spark.connections import check_kafka, kafka_settings
from bp_spark.elastic import (ElasticsearchUnavailable, count_documents, distinct_count, make_client, probe_cluster,
                              refresh_indices)
from bp_spark.generator import aha_category
from bp_spark.archive.layout import archived_lines, file_count, patient_ids
from bp_spark.patient_view import archived_readings

JOBS = Path(__file__).resolve().parent
LOG = Path("var/demo.log")
DEMO_GOALS = 0.1  # the share of the reference workload's patients with a target (FHIR Goal)
# The lines of the jobs' output shown as progress: the generator's count, each batch of each query.
PROGRESS = re.compile(r"(observations [\d,]+ in .*|batch \d+: \d+ rows in [\d.]+ s|trends: merged the partial windows of \d+ batches)")
UNREADABLE = [
    b'{"resourceType": "Observation", "id": "demo-broken", "status": "final"',
    b'{"resourceType": "Observation", "id": "demo-preliminary", "status": "preliminary"}',
    b'{"resourceType": "Patient", "id": "demo-patient"}',
]


def demo_bundles() -> list[tuple[bytes, bytes]]:
    """Three transaction Bundles, each of one patient: the Patient entry, two blood-pressure
    readings referring to it by ``urn:uuid:``, and a heart rate (counted, not read). The same
    on every run: a second demo stores them once."""
    loinc = "http://loinc.org"

    def quantity(value: int, unit: str = "mmHg", code: str = "mm[Hg]") -> dict:
        return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": code}

    bundles = []
    for i, (morning, evening) in enumerate([((128, 82), (146, 94)), ((118, 76), (121, 79)), ((184, 121), (152, 97))]):
        patient, urn = f"demo-bundle-{i}", f"urn:uuid:00000000-0000-4000-8000-00000000000{i}"
        entries = [{"fullUrl": urn, "resource": {"resourceType": "Patient", "id": patient}}]
        for hour, (systolic, diastolic) in ((7, morning), (19, evening)):
            entries.append({"resource": {
                "resourceType": "Observation", "id": f"{patient}-bp-{hour:02d}", "status": "final",
                "code": {"coding": [{"system": loinc, "code": "85354-9"}]}, "subject": {"reference": urn},
                "effectiveDateTime": f"2026-01-0{i + 1}T{hour:02d}:00:00+00:00",
                "component": [
                    {"code": {"coding": [{"system": loinc, "code": "8480-6"}]}, "valueQuantity": quantity(systolic)},
                    {"code": {"coding": [{"system": loinc, "code": "8462-4"}]}, "valueQuantity": quantity(diastolic)}]}})
        entries.append({"resource": {
            "resourceType": "Observation", "id": f"{patient}-hr", "status": "final",
            "code": {"coding": [{"system": loinc, "code": "8867-4"}]}, "subject": {"reference": urn},
            "effectiveDateTime": f"2026-01-0{i + 1}T07:00:00+00:00",
            "valueQuantity": quantity(72, "beats/minute", "/min")}})
        bundles.append((patient.encode(), orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                                         "entry": entries})))
    return bundles


def demo_split_readings() -> list[tuple[bytes, bytes]]:
    """Two readings as a device gateway sends them: a systolic and a diastolic Observation each,
    of one patient and one effective time (the stream job pairs them into one reading)."""
    messages = []
    for i, (systolic, diastolic) in enumerate([(162, 98), (124, 80)]):
        patient, when = f"demo-device-{i}", f"2026-01-0{i + 4}T07:30:00+00:00"
        for kind, code, value in (("sys", "8480-6", systolic), ("dia", "8462-4", diastolic)):
            messages.append((patient.encode(), orjson.dumps({
                "resourceType": "Observation", "id": f"{patient}-{kind}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}})))
    return messages


def step(message: str) -> None:
    print(f"== demo: {message}", flush=True)


class StepFailed(RuntimeError):
    """A step's command failed; the message quotes the tail of the log."""


def run_step(what: str, command: list[str]) -> None:
    """Run ``command`` with its output appended to :data:`LOG`, printing its progress lines as
    they come; raise :class:`StepFailed` quoting the log's tail when it fails."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    LOG.touch()
    LOG.chmod(0o600)  # the jobs log no patient data; the owner's alone all the same, as var/ is
    started = time.monotonic()
    with LOG.open("ab") as log:
        start = log.tell()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    seen = start
    while True:
        done = proc.poll() is not None
        with LOG.open("rb") as log:
            log.seek(seen)
            chunk = log.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        seen += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            match = PROGRESS.search(line)
            if match:
                print(f"     {match.group(0)}", flush=True)
        if done:
            break
        time.sleep(0.5)
    if proc.returncode != 0:
        tail = LOG.read_bytes()[start:].decode(errors="replace").splitlines()[-15:]
        raise StepFailed(f"{what} failed (exit {proc.returncode}); the last lines of {LOG}:\n"
                         + "\n".join(f"    {line}" for line in tail))
    print(f"     done in {time.monotonic() - started:.0f} s", flush=True)


def topic_census(config: Config) -> tuple[int, int, int, int]:
    """The messages on the topic now; how many are Bundles, the blood-pressure readings those
    hold, and how many are Goals (read once from the start: the demo's topic is small)."""
    consumer = Consumer({**kafka_settings(config), "group.id": "bp-demo-census", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(config.kafka.topic, timeout=10).topics[config.kafka.topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(config.kafka.topic, p), timeout=10)
            if high > low:
                ends[p] = (low, high)
        consumer.assign([TopicPartition(config.kafka.topic, p, low) for p, (low, _) in ends.items()])
        messages = bundles = readings = goals = 0
        left = dict(ends)
        while left:
            for msg in consumer.consume(num_messages=5000, timeout=5):
                if msg.error() or msg.partition() not in left:
                    continue
                messages += 1
                value = msg.value() or b""
                goals += value.startswith(b'{"resourceType":"Goal"')
                if value.startswith(b'{"resourceType":"Bundle"'):
                    bundles += 1
                    readings += sum(1 for entry in orjson.loads(value).get("entry", [])
                                    if entry.get("resource", {}).get("code", {}).get("coding", [{}])[0].get("code")
                                    == "85354-9")
                if msg.offset() + 1 >= left[msg.partition()][1]:
                    del left[msg.partition()]
        return messages, bundles, readings, goals
    finally:
        consumer.close()


def terms(es: Elasticsearch, index: str, field: str) -> list[tuple[str, int]]:
    if not es.indices.exists(index=index):
        return []
    result = es.search(index=index, size=0, aggs={"t": {"terms": {"field": field, "size": 20}}})
    return [(b["key"], b["doc_count"]) for b in result["aggregations"]["t"]["buckets"]]


def breakdown(counts: Iterable[tuple[str, int]]) -> None:
    """One indented line per (name, count) under a summary line."""
    for name, n in counts:
        print(f"      {name:<28} {n:>8,}")


def alert_load(es: Elasticsearch, index: str, qualifying_readings: int, patients: int, days: float) -> dict[str, float]:
    """Alerts and pages per patient per week under the episodes, and alerts at one per qualifying
    reading: the figure docs/alerts.md quotes."""
    result = es.search(index=index, size=0, aggs={"pages": {"sum": {"field": "pages"}},
                                                  "escalations": {"sum": {"field": "escalation_level"}}})
    episodes = result["hits"]["total"]["value"]
    pages = (result["aggregations"]["pages"]["value"] or 0) + (result["aggregations"]["escalations"]["value"] or 0)
    patient_weeks = patients * max(days, 1.0) / 7
    return {"episodes_per_patient_week": episodes / patient_weeks, "pages_per_patient_week": pages / patient_weeks,
            "readings_per_patient_week": qualifying_readings / patient_weeks}


def summary(config: Config, es: Elasticsearch, started: float) -> None:
    e = config.elasticsearch
    archive = Path(config.paths.archive_dir)
    patients = patient_ids(archive)
    lines = sum(1 for _ in archived_lines(archive))
    published, staged, _ = file_count(archive)
    # Each normal reading once, a reading sent as two Observations put back together (two lines).
    normals = [r for patient in patients for r in archived_readings(archive, patient)]
    normal_categories = Counter(aha_category(systolic, diastolic) for _, systolic, diastolic in normals)
    split = lines - len(normals)
    refresh_indices(es, config)
    anomalies, alerts = count_documents(es, e.anomalies_index), count_documents(es, e.alerts_index)
    dead = count_documents(es, e.deadletter_index)
    # A reading paired from two Observations is one anomaly document for two messages.
    paired = count_documents(es, e.anomalies_index, {"exists": {"field": "paired_observation_id"}})
    on_topic, bundles, in_bundles, goals = topic_census(config)
    targets = count_documents(es, e.goals_index)
    held = count_documents(es, e.anomalies_index, {"exists": {"field": "goal_id"}})
    # Anomalies only by the patient's own target: none of the profile's findings.
    alone = {"bool": {"filter": [{"exists": {"field": "goal_id"}}], "must_not": [{"terms": {"anomaly_types": [
        "systolic_high", "systolic_low", "diastolic_high", "diastolic_low"]}}]}}
    by_target_alone = count_documents(es, e.anomalies_index, alone)
    alone_patients = distinct_count(es, e.anomalies_index, "patient_id", alone)

    print("\nsummary")
    print(f"  topic {config.kafka.topic}: {on_topic:,} messages")
    print(f"  {e.anomalies_index:<32} {anomalies:>8,}  abnormal readings")
    breakdown(terms(es, e.anomalies_index, "category"))
    breakdown((f"rule {kind}", n) for kind, n in terms(es, e.anomalies_index, "anomaly_types"))
    if targets:
        print(f"      {'of patients with a target (FHIR Goal)':<36} {held:>8,}")
        print(f"      {'  flagged by their target alone':<36} {by_target_alone:>8,}  (normal by the profile; "
              f"{alone_patients} patients)")
    print(f"  {e.alerts_index:<32} {alerts:>8,}  alerting readings (critical readings, sustained-hypertension onsets)")
    breakdown(terms(es, e.alerts_index, "alert_type"))
    episodes = count_documents(es, e.episodes_index)
    if episodes:
        print(f"  {e.episodes_index:<32} {episodes:>8,}  alerts a care team works (one per patient and problem "
              f"while it lasts: docs/alerts.md)")
        breakdown(terms(es, e.episodes_index, "kind"))
        breakdown((f"status {status}", n) for status, n in terms(es, e.episodes_index, "status"))
        # One alert per qualifying reading: every critical reading and sustained onset, and every
        # other reading above the limits or the patient's target (what above_target counts).
        # Over the days alerts look at: the workload's, or alerts.max_age's (older readings are history).
        days = config.generator.days
        max_age_s = settings_for(config).max_age_s
        recent = []
        if max_age_s and max_age_s < days * 86400:
            days = max_age_s / 86400
            recent = [{"range": {"effective_time": {"gte": f"now-{max_age_s}s"}}}]
        alerting = count_documents(es, e.alerts_index, {"bool": {"filter": recent}})
        above = count_documents(es, e.anomalies_index, {"bool": {
            "filter": [{"terms": {"anomaly_types": ["systolic_high", "diastolic_high", "above_target"]}}, *recent],
            "must_not": [{"term": {"severity": "critical"}}]}})
        load = alert_load(es, e.episodes_index, alerting + above, max(1, len(patients)), days)
        print(f"      alert load: {load['episodes_per_patient_week']:.2f} alerts and {load['pages_per_patient_week']:.2f} "
              f"pages per patient per week, against {load['readings_per_patient_week']:.2f} at one alert per "
              f"qualifying reading ({alerting + above:,}: {alerting:,} alerting, {above:,} above the limits or a "
              f"target), over the last {days:g} days (readings older than alerts.max_age are history: no alert)")
    print(f"  {str(archive) + '/':<32} {lines:>8,}  normal Observations, {len(patients)} patients"
          + (f" ({2 * split} of them the two halves of {split} reading{'s' * (split != 1)})" if split else "")
          + f", in {published + staged:,} files (one per patient and {config.archive.period})")
    breakdown(normal_categories.most_common())
    print(f"  {e.deadletter_index:<32} {dead:>8,}  unreadable messages")
    for reason, n in terms(es, e.deadletter_index, "reason"):
        print(f"      {n:>6,}  {reason}")  # in full: a reason is what to fix
    if goals or targets:
        print(f"  {e.goals_index:<32} {targets:>8,}  patient targets, from {goals:,} FHIR Goals on the topic")
    print(f"  {e.trends_index:<32} {count_documents(es, e.trends_index):>8,}  trend windows")
    breakdown(terms(es, e.trends_index, "scope"))
    sustained = distinct_count(es, e.trends_index, "patient_id", {"term": {"is_sustained": True}})
    print(f"      {'patients with sustained hypertension':<36} {sustained:>8,}")
    stored = anomalies + paired + lines + dead
    readings = on_topic - bundles + in_bundles - goals  # a Bundle's readings count one each; Goals are no reading
    pairs = f" + {paired:,} (the second Observation of each paired anomaly)" if paired else ""
    print(f"  reconciliation: {anomalies:,}{pairs} + {lines:,} + {dead:,} = {stored:,} stored for {readings:,} "
          f"Observations ({on_topic:,} messages, {bundles:,} of them Bundles holding {in_bundles:,} readings"
          + (f", {goals:,} Goals" if goals else "") + ")"
          + (f"; {readings - stored:,} duplicates of stored readings dropped" if readings > stored else ""))
    print(f"  elapsed {time.monotonic() - started:.0f} s")


def main() -> int:
    started = time.monotonic()
    try:
        config = load_config()
        es = make_client(config)
        cluster = probe_cluster(es, config)
        check_kafka(config)  # a refused login or certificate says so, rather than "did not answer"
        producer = Producer(kafka_settings(config))
        producer.list_topics(timeout=15)
    except (ConfigError, ElasticsearchUnavailable) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:
        print(f"demo: Kafka at {config.kafka.bootstrap_servers} did not answer ({exc}); run `make up`.", file=sys.stderr)
        return 1
    how = (f"TLS, signed in as {config.kafka.username} / {config.elasticsearch.username or 'an API key'}"
           if config.security.tls else "plain: no TLS, no credentials")
    print(f"demo: Kafka at {config.kafka.bootstrap_servers}, Elasticsearch {cluster.version} at {config.elasticsearch.url} ({how})")

    print(f"demo: the jobs' own output goes to {LOG.resolve()}")
    try:
        return _steps(config, es, producer, started)
    except StepFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


def _steps(config: Config, es: Elasticsearch, producer: Producer, started: float) -> int:
    step(f"publishing the reference workload to topic {config.kafka.topic}")
    # A tenth of the patients with a target their clinician set (a FHIR Goal, published first).
    run_step("the generator", [sys.executable, str(JOBS / "generate.py"), "--goals", str(DEMO_GOALS)])
    bundles = demo_bundles()
    for key, value in bundles:
        producer.produce(config.kafka.topic, key=key, value=value)
    split = demo_split_readings()
    for key, value in split:
        producer.produce(config.kafka.topic, key=key, value=value)
    for i, value in enumerate(UNREADABLE):
        producer.produce(config.kafka.topic, key=f"demo-bad-{i}", value=value)
    producer.flush(30)
    print(f"     and {len(bundles)} FHIR Bundles (a Patient, two readings, a heart rate each), "
          f"{len(split) // 2} readings sent as separate systolic and diastolic Observations, "
          f"and {len(UNREADABLE)} unreadable messages", flush=True)

    step("running the stream job until the topic is drained (--trigger available-now; Spark UI on :4040)")
    run_step("the stream job", [sys.executable, str(JOBS / "stream.py"), "--trigger", "available-now"])

    step("writing the HTML report (the dashboard's panels, for machines without Kibana)")
    run_step("the report", [sys.executable, str(JOBS / "report.py"), "--output", "var/report.html"])

    summary(config, es, started)
    print(f"  report: {Path('var/report.html').resolve()}  (open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
