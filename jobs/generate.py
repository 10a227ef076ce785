"""Publish synthetic FHIR R4 blood-pressure Observations to Kafka.

    python jobs/generate.py                         # the reference workload: 200 patients x 30 days x 4 a day
    python jobs/generate.py --patients 20 --days 2 --seed 7 --dry-run | head -1
    python jobs/generate.py --live --rate 20        # keep publishing current readings until Ctrl-C

Defaults come from conf/pipeline.toml ([generator], [kafka]); BP_GENERATOR_* and BP_KAFKA_*
environment variables and the flags below override them. Messages are keyed by patient id
and go out in event-time order across patients. The exit status is non-zero when a delivery
still fails after the client's retries.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import random
import signal
import sys
import time
from datetime import datetime, timezone

from confluent_kafka import KafkaException, Producer

from bp_spark.logs import configure_logging
from bp_spark.config import Config, ConfigError, add_config_flags, load_config_from_args
from bp_spark.connections import check_kafka, kafka_settings
from bp_spark.generator import (
    Tally, Validator, encode, goal_for, live_reading, make_patients, patients_with_goals, readings, window,
)

log = logging.getLogger("generate")

PROGRESS_EVERY_S = 5.0


def producer_settings(config: Config) -> dict:
    """Safe and fast: idempotent, acks from all replicas, batched, compressed, bounded waits; TLS and
    SASL as configured."""
    return {
        **kafka_settings(config),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 60_000,
        # Only failures call back: successes are counted as produced minus failed.
        "delivery.report.only.error": True,
    }


# How long the generator waits for the broker's first answer before it says how to start it.
CONNECT_TIMEOUT_S = 10.0


class Publisher:
    """Sends (key, value) pairs to a topic; counts failed deliveries; never flushes per message."""

    def __init__(self, settings: dict, topic: str, connect_timeout_s: float | None = None) -> None:
        connect_timeout_s = CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s
        self.topic = topic
        self.failed = 0
        self.first_error: str | None = None
        self._producer = Producer({**settings, "on_delivery": self._on_delivery})
        self._produce = self._producer.produce
        try:
            self._producer.list_topics(timeout=connect_timeout_s)
        except KafkaException as exc:
            raise ConnectionError(
                f"Kafka at {settings['bootstrap.servers']} did not answer within {connect_timeout_s:.0f} s "
                f"({exc.args[0]}). Start it with `make up`, or pass --bootstrap-servers."
            ) from exc

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{err} (key {msg.key()!r})"

    def send(self, key: bytes, value: bytes) -> None:
        try:
            self._produce(self.topic, value, key)
        except BufferError:
            while True:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
                try:
                    self._produce(self.topic, value, key)
                    return
                except BufferError:
                    continue

    def poll(self) -> None:
        self._producer.poll(0)

    def close(self, timeout_s: float = 60.0) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return self._producer.flush(timeout_s)


class Progress:
    """A bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.started = time.monotonic()
        self._last = self.started
        self._tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self._tty else PROGRESS_EVERY_S):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        if self._tty and self.total:
            width = 30
            filled = int(width * done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} {rate:,.0f} obs/s")
            sys.stderr.flush()
        else:
            of = f"/{self.total:,}" if self.total else ""
            log.info("published %s%s observations (%s obs/s)", f"{done:,}", of, f"{rate:,.0f}")

    def finish(self) -> None:
        if self._tty and self.total:
            sys.stderr.write("\n")


def _pace(rate: float, done: int, started: float) -> None:
    """Sleep just enough to hold ``rate`` observations per second."""
    if rate > 0:
        ahead = done / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def _mix(config: Config) -> dict[str, float]:
    g = config.generator
    return {"normotensive": g.mix_normotensive, "elevated": g.mix_elevated, "stage_1": g.mix_stage_1,
            "stage_2": g.mix_stage_2, "hypotensive": g.mix_hypotensive}


def window_capacity(config: Config) -> int:
    """How many readings the window holds: one per patient per slot (``per_day`` slots a day)."""
    g = config.generator
    start, end = window(g.start, g.end, g.days)
    return int((end - start).total_seconds() // (86400 / g.per_day)) * g.patients


def fit_count(config: Config, days_given: bool) -> Config:
    """``config`` whose window holds ``generator.count`` readings: the window is extended back in
    time (more days) when its length was not given (``days_given``, or a start); else a count it
    cannot hold is refused."""
    g = config.generator
    capacity = window_capacity(config)
    if not g.count or g.count <= capacity:
        return config
    per_day = g.patients * g.per_day
    days = -(-g.count // per_day)
    if days_given or g.start:
        raise ConfigError(
            f"--count {g.count:,} is more than the {capacity:,} readings of the window ({g.patients} patients x "
            f"{g.per_day} a day); lengthen it (--days {days}, or an earlier --start), add --patients, or lower --count")
    log.info("--count %d: the window is extended to %d days (%d patients x %d a day)", g.count, days, g.patients,
             g.per_day)
    return dataclasses.replace(config, generator=dataclasses.replace(g, days=days))


def run(config: Config, dry_run: bool, live: bool, out=None) -> int:
    out = out or sys.stdout
    g = config.generator
    patients = make_patients(g.patients, g.seed, _mix(config))
    validate = Validator(g.validate)
    t = config.thresholds
    tally = Tally(limits=(t.systolic_low, t.systolic_high, t.diastolic_low, t.diastolic_high))
    publisher = None if dry_run else Publisher(producer_settings(config), config.kafka.topic)

    if live:
        rng = random.Random(f"live/{g.seed}")
        limit = g.count or None
        source = (live_reading(patients[i % len(patients)], rng, g.crisis_rate, g.hypotension_rate)
                  for i in itertools.count())
        total = limit
    else:
        start, end = window(g.start, g.end, g.days)
        source = readings(patients, start, end, g.per_day, g.seed, g.crisis_rate, g.hypotension_rate)
        total = g.count or window_capacity(config)
        log.info("window %s .. %s, %d patients, %d a day", start.isoformat(), end.isoformat(), g.patients, g.per_day)

    stop = {"now": False}

    def request_stop(signum, _frame) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def emit(key: bytes, value: bytes) -> None:
        """Validate one message, then print it (--dry-run) or send it."""
        validate(value)
        if publisher is None:
            out.write(value.decode())
            out.write("\n")
        else:
            publisher.send(key, value)

    progress = Progress(total if not dry_run else None)
    started = time.monotonic()
    goals = 0
    if g.goals:  # each target before the readings it applies to
        first_day = datetime.now(timezone.utc) if live else start
        rng = random.Random(f"goal-targets/{g.seed}")
        for patient in patients_with_goals(patients, g.goals, g.seed):
            emit(*goal_for(patient, first_day, rng))
            goals += 1
    for reading in source:
        if stop["now"] or (g.count and tally.total >= g.count):
            break
        emit(*encode(reading))
        if publisher is not None and tally.total % 1000 == 0:
            publisher.poll()
        tally.add(reading)
        if tally.total % 1000 == 0 and not dry_run:
            progress.update(tally.total)
        if g.rate:
            _pace(g.rate, tally.total, started)

    undelivered = publisher.close() if publisher else 0
    elapsed = time.monotonic() - started
    if not dry_run:
        progress.update(tally.total, force=True)
        progress.finish()
    failed = (publisher.failed if publisher else 0) + undelivered
    summary(tally, elapsed, failed, validate, publisher, goals)
    if failed:
        print(f"generate: {failed:,} deliveries failed after the client's retries; first error: "
              f"{publisher.first_error or 'still undelivered at exit'}", file=sys.stderr)
        return 1
    return 0


def summary(tally: Tally, elapsed: float, failed: int, validate: Validator, publisher, goals: int = 0) -> None:
    """The closing report, on stderr so --dry-run's stdout stays pure JSON lines."""
    lines = [f"observations {tally.total:,} in {elapsed:.1f} s ({tally.total / max(elapsed, 1e-9):,.0f} obs/s)"]
    if goals:
        lines.append(f"patient targets (FHIR Goals) published first: {goals:,}")
    if publisher is not None:
        lines.append(f"topic {publisher.topic}: delivered {tally.total + goals - failed:,}, failed {failed:,}")
    lines.append(f"validated with fhir.resources (R4B): {validate.checked:,} ({validate.mode})")
    lines.append(f"abnormal by the anomaly rule: {tally.abnormal:,} ({100 * tally.abnormal / max(tally.total, 1):.1f}%); "
                 "AHA 2017 categories:")
    for category, n in sorted(tally.by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {category:<22} {n:>9,}  {100 * n / max(tally.total, 1):5.1f}%")
    for episode, n in sorted(tally.episodes.items()):
        lines.append(f"  episodes of {episode}: {n:,}")
    for line in lines:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_config_flags(parser, ["bootstrap-servers", "topic", "patients", "days", "per-day", "start", "end",
                              "seed", "rate", "count", "validate", "goals"])
    parser.add_argument("--dry-run", action="store_true", help="write JSON lines to stdout, send nothing")
    parser.add_argument("--live", action="store_true",
                        help="keep publishing readings taken now at --rate until stopped (Ctrl-C)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config_from_args(args)
        if args.live and config.generator.rate == 0:
            raise ConfigError("--live needs --rate > 0 (observations per second), e.g. --rate 20")
        if args.live and config.generator.rate > config.generator.patients:
            # Ids are unique per patient and second: a patient may measure at most once a second.
            raise ConfigError(f"--live --rate {config.generator.rate:g} is more than one reading per patient per "
                              f"second; use --rate <= --patients ({config.generator.patients})")
        window_flags = [f"--{name}" for name in ("start", "end", "days") if getattr(args, f"generator.{name}") is not None]
        if args.live and window_flags:
            raise ConfigError(f"--live publishes readings taken now: {', '.join(window_flags)} would be ignored; "
                              "drop them, or drop --live to publish that window")
        if not args.live:
            config = fit_count(config, "--days" in window_flags or bool(os.environ.get("BP_GENERATOR_DAYS")))
        if not args.dry_run:
            check_kafka(config, timeout_s=min(5.0, CONNECT_TIMEOUT_S))  # a refused login: exit 2 at once, naming Kafka
        return run(config, args.dry_run, args.live)
    except ConfigError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, ValueError) as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # --dry-run piped into `head`: the reader has what it wanted.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
