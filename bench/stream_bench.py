"""Benchmark of the stream job on the local stack (`make up` first).

    .venv/bin/python bench/stream_bench.py [--observations 1000000] [--repeats 3]

1. publishes N generator observations to a fresh topic; then runs the job once, untimed, on
   --warmup-observations others (with trends), so that Elasticsearch and Kafka, long-running
   services in any deployment, serve the timed runs with their JIT-compiled code warm, as
   they would after minutes of uptime (the first run otherwise pays for their warm-up; Spark
   still starts cold in every timed run);
2. runs the job the README's way, `spark-submit $(python -m bp_spark.versions) jobs/stream.py
   --trigger available-now`, on them, each run on a fresh
   checkpoint, archive and indices: end-to-end observations/s (process start to exit, Spark
   start-up included), the rate inside the routing query's batches, the seconds outside them
   (the JVM's and the session's start, the queries' start and stop; trends off), and the peak
   memory (the proportional set size of the job's process tree: Python driver plus JVM), with
   trends off (routing only);
   then the same with trends on, as the job runs by default;
3. the same job with --no-sinks (Kafka read + parse + classify + de-duplicate, nothing
   written): the machine's ceiling;
4. a plain Python consumer doing the prototype's work (json.loads, if/else, one Elasticsearch
   call per anomaly, one file append per normal reading) on the same topic, for
   --prototype-seconds, and its rate;
5. a reference consumer as a user would write one (confluent-kafka batches of 5,000, orjson,
   one `_bulk` per batch, one append per patient per batch) over the whole topic, and the job's
   ratio to it.

Prints medians of the repeats and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from bp_spark import versions
from bp_spark.config import env_name, load_config
from bp_spark.connections import kafka_settings
from bp_spark.elastic import INDEX_KINDS, make_client

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("generate_job", ROOT / "jobs" / "generate.py")
generate_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_job)
BATCH_LINE = re.compile(r"batch \d+: (\d+) rows in ([\d.]+) s")
# What the job does after its last batch: publish the archive's staged batches, merge the kept trend windows.
ROLL_LINE = re.compile(r"archive roll: .* in ([\d.]+) s")
MERGE_LINE = re.compile(r"trends: merged .*; ([\d.]+) s")


def publish(topic: str, observations: int) -> None:
    patients = 200  # the reference workload's cohort, over as many days as it takes
    config = load_config(overrides={"kafka.topic": topic, "generator.patients": patients,
                                    "generator.days": -(-observations // (patients * 4)),
                                    "generator.count": observations, "generator.end": "2026-03-01T00:00:00+00:00"})
    with contextlib.redirect_stderr(io.StringIO()):
        assert generate_job.run(config, dry_run=False, live=False) == 0


def tree_memory_bytes(pid: int) -> int:
    """Memory of ``pid`` and all its descendants: the sum of their proportional set sizes (PSS),
    in which a page two processes share counts half in each. (A sum of RSS counted the JVM twice
    for the instant a child it forks exists, before the child's exec: peaks of 4.4 GB for a job
    whose JVM held 2.1 GB.)"""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _pss_bytes(p)
        stack.extend(children.get(p, []))
    return total


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def event_log_figures(folder: Path) -> dict:
    """Spark's own figures from the job's event log (``spark.eventLog.enabled``): the application's
    wall time, the tasks' time summed, the cores, and the seconds in which no task ran at all
    (only the driver worked: planning, collecting, its own Python), from each task's launch and
    finish times."""
    logs = sorted(folder.glob("*"))
    if not logs:
        return {}
    start = end = None
    cores, intervals = 0, []
    with logs[0].open("rb") as f:
        for line in f:
            event = orjson.loads(line)
            kind = event.get("Event")
            if kind == "SparkListenerApplicationStart":
                start = event["Timestamp"]
            elif kind == "SparkListenerApplicationEnd":
                end = event["Timestamp"]
            elif kind == "SparkListenerExecutorAdded":
                cores += event["Executor Info"]["Total Cores"]
            elif kind == "SparkListenerTaskEnd":
                info = event["Task Info"]
                intervals.append((info["Launch Time"], info["Finish Time"]))
    if start is None or end is None:
        return {}
    busy, reach = 0, start
    for launched, finished in sorted(intervals):  # the union of the tasks' intervals
        if finished > reach:
            busy += finished - max(launched, reach)
            reach = finished
    task_s = sum(finished - launched for launched, finished in intervals) / 1000
    wall_s = (end - start) / 1000
    cores = cores or 1
    return {"wall_s": wall_s, "task_s": task_s, "cores": cores, "tasks": len(intervals),
            "driver_only_s": wall_s - busy / 1000, "idle_core_s": wall_s - task_s / cores}


def sink_costs(es, name: str, observations: int, archive: Path) -> dict:
    """What the run left and did, per reading: documents indexed and read (multi-get items and
    gets, from each index's statistics) per index kind, and the archive's files and bytes."""
    stats = es.indices.stats(index=f"{name}_*", metric="indexing,get")["indices"]
    per_kind = {}
    for index, figures in stats.items():
        kind = index[len(name) + 1:]
        total = figures["total"]
        per_kind[kind] = {"written": total["indexing"]["index_total"] / observations,
                          "read": total["get"]["total"] / observations}
    files = [f for f in archive.glob("patient_id=*/*.jsonl")]
    return {"per_kind": per_kind, "files": len(files), "archive_bytes": sum(f.stat().st_size for f in files)}


def run_job(topic: str, observations: int, no_sinks: bool, workdir: Path, trends: bool = False) -> dict:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "BP_KAFKA_TOPIC": topic, "PYSPARK_PYTHON": sys.executable,
           **{env_name(f"elasticsearch.{kind}_index"): f"{name}_{kind}" for kind in INDEX_KINDS},
           "BP_PATHS_ARCHIVE_DIR": str(workdir / name / "archive"),
           "BP_PATHS_CHECKPOINT_DIR": str(workdir / name / "checkpoint"),
           "BP_TRENDS_ENABLED": str(trends).lower()}
    spark_submit = Path(sys.executable).parent / "spark-submit"
    events = workdir / name / "events"
    events.mkdir(parents=True)
    command = [str(spark_submit), *versions.submit_args(), "--conf", "spark.eventLog.enabled=true",
               "--conf", f"spark.eventLog.dir={events.as_uri()}",
               str(ROOT / "jobs" / "stream.py"), "--trigger", "available-now"]
    if no_sinks:
        command.append("--no-sinks")
    log_path = workdir / f"{name}.log"
    peak = 0
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, tree_memory_bytes(proc.pid))
            time.sleep(0.2)
    elapsed = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"stream job failed:\n{text[-3000:]}")
    batches = [(int(rows), float(seconds)) for rows, seconds in BATCH_LINE.findall(text)]
    rows = sum(r for r, _ in batches)
    assert rows == observations, f"the job saw {rows} rows, expected {observations}"
    in_batches = sum(s for r, s in batches if r)
    es = make_client(load_config())
    stored = 0
    if not no_sinks:
        es.indices.refresh(index=f"{name}_anomalies")
        stored = es.count(index=f"{name}_anomalies")["count"]
        stored += sum(1 for f in (workdir / name / "archive").glob("patient_id=*/*.jsonl")
                      for _ in f.open("rb"))
        assert stored == observations, f"sinks hold {stored}, expected {observations}"
    costs = sink_costs(es, name, observations, workdir / name / "archive") if not no_sinks else {}
    spark_figures = event_log_figures(events)
    names = [n for n in es.indices.get(index=f"{name}_*", allow_no_indices=True)]
    if names:
        es.indices.delete(index=",".join(names))
    shutil.rmtree(workdir / name, ignore_errors=True)
    after_last = text[text.rfind(" rows in "):]
    return {"e2e": observations / elapsed, "in_batches": rows / in_batches, "peak_mb": peak / 2**20, "seconds": elapsed,
            "outside_s": elapsed - sum(s for _, s in batches),
            "roll_at_stop_s": sum(float(s) for s in ROLL_LINE.findall(after_last)),
            "merge_at_stop_s": sum(float(s) for s in MERGE_LINE.findall(after_last)),
            "costs": costs, "spark": spark_figures, "batches": len(batches), "steps": step_seconds(text)}


STEP = re.compile(r"([a-z+ ]+) ([\d.]+)")


def step_seconds(text: str) -> dict[str, float]:
    """The seconds of each step summed over the job's batches (their log lines' ``seconds per step``)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if " rows in " not in line or "seconds per step:" not in line:
            continue
        for step, took in STEP.findall(line.split("seconds per step:", 1)[1]):
            totals[step.strip()] = totals.get(step.strip(), 0.0) + float(took)
    return totals


def print_costs(label: str, run: dict) -> None:
    """One run's cost model: Spark's time against the wall, the documents and files per reading."""
    spark = run.get("spark") or {}
    if spark:
        print(f"  {label}: wall {spark['wall_s']:.0f} s on {spark['cores']} cores, {spark['tasks']:,} tasks "
              f"{spark['task_s']:.0f} s (cores busy {spark['task_s'] / spark['cores'] / spark['wall_s']:.0%}); "
              f"only the driver working (no task running) {spark['driver_only_s']:.0f} s "
              f"({spark['driver_only_s'] / spark['wall_s']:.0%}); wall minus task time per core "
              f"{spark['idle_core_s']:.0f} s ({spark['idle_core_s'] / spark['wall_s']:.0%})")
    costs = run.get("costs") or {}
    if costs:
        kinds = ", ".join(f"{kind} {c['written']:.2f} written / {c['read']:.2f} read"
                          for kind, c in sorted(costs["per_kind"].items()) if c["written"] or c["read"])
        print(f"    Elasticsearch documents per reading: {kinds}")
        print(f"    archive: {costs['files']:,} files, {costs['archive_bytes'] / 1e6:,.1f} MB "
              f"({costs['archive_bytes'] / max(costs['files'], 1) / 1e3:,.1f} kB a file); {run['batches']} batches")
    if run.get("steps"):
        print("    seconds per step, all batches: " + ", ".join(f"{k} {v:.1f}" for k, v in run["steps"].items()))


@contextlib.contextmanager
def consumer_run(topic: str, prefix: str, workdir: Path, **settings):
    """A consumer of ``topic`` from its start, an index and a folder of its own; all removed after."""
    config = load_config()
    es = make_client(config)
    index = f"{prefix}_{uuid.uuid4().hex[:8]}"
    out = workdir / index
    out.mkdir()
    consumer = Consumer({**kafka_settings(config), "group.id": index, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, **settings})
    consumer.subscribe([topic])
    try:
        yield consumer, es, index, out
    finally:
        consumer.close()
        with contextlib.suppress(Exception):
            es.indices.delete(index=index)
        shutil.rmtree(out, ignore_errors=True)


def prototype_consumer(topic: str, seconds: float, workdir: Path) -> float:
    """The prototype's way: one Elasticsearch call per anomaly, one file append per normal reading."""
    with consumer_run(topic, "bench_proto", workdir) as (consumer, es, index, out):
        done = 0
        started = None
        while True:
            msg = consumer.poll(1.0)
            if msg is None:
                if started is not None:
                    break
                continue
            if started is None:
                started = time.perf_counter()
            obs = json.loads(msg.value())
            s, d = (c["valueQuantity"]["value"] for c in obs["component"])
            patient = obs["subject"]["reference"].split("/")[-1]
            if s > 140 or s < 90 or d > 90 or d < 60:
                es.index(index=index, id=obs["id"], document={"patient_id": patient, "systolic": s, "diastolic": d,
                                                              "effective_time": obs["effectiveDateTime"]})
            else:
                with open(out / f"{patient}.json", "a") as f:
                    f.write(json.dumps(obs) + "\n")
            done += 1
            if time.perf_counter() - started > seconds:
                break
        return done / (time.perf_counter() - started)


def reference_consumer(topic: str, observations: int, workdir: Path) -> float:
    """What a user would hold the job against: one Python process, confluent-kafka batches of
    5,000, orjson, the anomaly rule in Python, one `_bulk` request per batch, one append per patient
    per batch. It does less than the job (no de-duplication, corrections, trends, exactly-once):
    a reference line, not a competitor. Observations per second over the whole topic."""
    with consumer_run(topic, "bench_reference", workdir, **{"fetch.max.bytes": 50 << 20}) as (consumer, es, index, out):
        done, started = 0, None
        while done < observations:
            messages = consumer.consume(num_messages=5000, timeout=1.0)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            operations, normals = [], {}
            for msg in messages:
                obs = orjson.loads(msg.value())
                s, d = (c["valueQuantity"]["value"] for c in obs["component"])
                patient = obs["subject"]["reference"].rsplit("/", 1)[-1]
                if s > 140 or s < 90 or d > 90 or d < 60:
                    operations += [{"index": {"_index": index, "_id": obs["id"]}},
                                   {"patient_id": patient, "systolic": s, "diastolic": d,
                                    "effective_time": obs["effectiveDateTime"]}]
                else:
                    normals.setdefault(patient, []).append(msg.value())
            if operations:
                es.bulk(operations=operations)
            for patient, lines in normals.items():
                with open(out / f"{patient}.jsonl", "ab") as f:
                    f.write(b"\n".join(lines) + b"\n")
            done += len(messages)
        return done / (time.perf_counter() - started)


MODES = {
    "routing": lambda topic, args, workdir: run_job(topic, args.observations, False, workdir),
    "trends": lambda topic, args, workdir: run_job(topic, args.observations, False, workdir, trends=True),
    "bare": lambda topic, args, workdir: run_job(topic, args.observations, True, workdir),
    "prototype": lambda topic, args, workdir: {"e2e": prototype_consumer(topic, args.prototype_seconds, workdir)},
    "reference": lambda topic, args, workdir: {"e2e": reference_consumer(topic, args.observations, workdir)},
}


def describe(run: dict) -> str:
    if "peak_mb" not in run:
        return f"{run['e2e']:,.0f} obs/s"
    return f"{run['e2e']:,.0f} obs/s end to end ({run['seconds']:.0f} s, peak {run['peak_mb']:,.0f} MB)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prototype-seconds", type=float, default=60.0)
    parser.add_argument("--warmup-observations", type=int, default=100_000,
                        help="an untimed first run on this many other observations; 0: none")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"which runs, comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown --modes {', '.join(unknown)}: choose from {', '.join(MODES)}")
    config = load_config()
    topic = f"bench_stream_{uuid.uuid4().hex[:8]}"
    warmup_topic = f"{topic}_warmup"
    workdir = Path(tempfile.mkdtemp(prefix="bp-bench-"))
    try:
        t0 = time.perf_counter()
        publish(topic, args.observations)
        print(f"published {args.observations:,} observations to {topic} in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.warmup_observations:
            publish(warmup_topic, args.warmup_observations)
            warm = run_job(warmup_topic, args.warmup_observations, False, workdir, trends=True)
            print(f"warm-up run (not counted): {args.warmup_observations:,} observations with trends in "
                  f"{warm['seconds']:.0f} s", flush=True)
        runs: dict[str, list] = {mode: [] for mode in modes}
        for i in range(args.repeats):
            for mode in modes:
                runs[mode].append(MODES[mode](topic, args, workdir))
            print(f"run {i + 1}: " + "; ".join(f"{mode} {describe(runs[mode][-1])}" for mode in modes), flush=True)
    finally:
        AdminClient(kafka_settings(config)).delete_topics([topic, warmup_topic])
        shutil.rmtree(workdir, ignore_errors=True)

    def med(mode: str, key: str = "e2e") -> float:
        return statistics.median(r[key] for r in runs[mode])

    def outside(mode: str) -> str:
        # Start, stop, the archive's roll at stop, and with trends on the last merge of their windows.
        if "roll_at_stop_s" not in runs[mode][0]:
            return f"outside batches {med(mode, 'outside_s'):4.1f} s   "
        roll, merge = med(mode, "roll_at_stop_s"), med(mode, "merge_at_stop_s")
        rest = statistics.median(r["outside_s"] - r["roll_at_stop_s"] - r["merge_at_stop_s"] for r in runs[mode])
        return (f"outside batches {med(mode, 'outside_s'):4.1f} s (archive roll at stop {roll:.1f}, trends merge at "
                f"stop {merge:.1f}, start, stop and the rest {rest:.1f})   ")

    warmed = f", after a warm-up run on {args.warmup_observations:,}" if args.warmup_observations else ", no warm-up run"
    print(f"\nstream benchmark: {args.observations:,} observations, {args.repeats} runs, medians{warmed}")
    labels = {"routing": "stream job, all sinks, trends off", "trends": "stream job as by default (trends on)",
              "bare": "stream job, no sinks"}
    for mode in ("routing", "trends", "bare"):
        if mode in runs:
            print(f"  {labels[mode]:<38} end to end {med(mode):>9,.0f} obs/s   inside batches "
                  f"{med(mode, 'in_batches'):>9,.0f} obs/s   {outside(mode)}peak memory {med(mode, 'peak_mb'):,.0f} MB")
    for mode in ("routing", "trends"):
        if mode in runs:
            print_costs(f"cost model, {labels[mode]} (the last run)", runs[mode][-1])
    if "prototype" in runs:
        print(f"  {'prototype-style consumer':<38} {med('prototype'):>9,.0f} obs/s (first {args.prototype_seconds:.0f} s of the topic)")
    if "reference" in runs:
        print(f"  {'reference consumer':<38} {med('reference'):>9,.0f} obs/s (one Python process, the whole topic)")
    for mode in ("routing", "trends"):
        for other in ("reference", "prototype"):
            if mode in runs and other in runs:
                print(f"  ratio, {labels[mode]} vs {other} consumer: {med(mode) / med(other):,.2f}x")
    if "routing" in runs and "trends" in runs:
        print(f"  ratio, trends on vs routing only: {med('trends') / med('routing'):.2f}")
    if "routing" in runs and "bare" in runs:
        print(f"  sinks' share of the ceiling: {med('routing') / med('bare'):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
