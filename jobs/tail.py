"""Print the observations on the Kafka topic, for people inspecting the feed.

    python jobs/tail.py                                  # new messages, pretty, until Ctrl-C
    python jobs/tail.py --from-beginning --max 5         # the first five on the topic
    python jobs/tail.py --from-beginning --patient patient-00007 --compact | jq .component
    python jobs/tail.py --from-beginning --idle-timeout 5   # stop once the topic is quiet

It reads without committing offsets (a fresh consumer group each run), so it never moves
another consumer's position. The message key is the patient id, so --patient filters
without parsing the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException

from bp_spark.config import ConfigError, add_config_flags, load_config_from_args
from bp_spark.connections import check_kafka, kafka_settings


def render(msg, pretty: bool) -> str:
    """One message as text: the value alone (compact) or a header and indented JSON (pretty)."""
    value = msg.value() or b""
    if not pretty:
        return value.decode(errors="replace")
    header = f"# {msg.topic()}[{msg.partition()}]@{msg.offset()} key={(msg.key() or b'').decode(errors='replace')}"
    try:
        body = json.dumps(json.loads(value), indent=2)
    except ValueError:
        body = value.decode(errors="replace") + "\n(not JSON)"
    return f"{header}\n{body}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_config_flags(parser, ["bootstrap-servers", "topic"])
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest message (default: only new ones)")
    parser.add_argument("--patient", action="append", default=[], metavar="ID",
                        help="only this patient (repeatable)")
    parser.add_argument("--max", type=int, default=0, metavar="N", help="stop after N messages (0: no limit)")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("--pretty", dest="pretty", action="store_true", default=True, help="indented JSON with a header (default)")
    style.add_argument("--compact", dest="pretty", action="store_false", help="one JSON line per message")
    parser.add_argument("--idle-timeout", type=float, default=0, metavar="S",
                        help="stop after S seconds without a message (0: wait forever)")
    args = parser.parse_args(argv)
    if args.max < 0 or args.idle_timeout < 0:
        parser.error("--max and --idle-timeout must be >= 0")
    try:
        config = load_config_from_args(args)
        check_kafka(config, timeout_s=10)
    except ConfigError as exc:
        print(f"tail: {exc}", file=sys.stderr)
        return 2

    consumer = Consumer({
        **kafka_settings(config),
        "group.id": f"bp-tail-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    try:
        consumer.list_topics(timeout=10)
    except KafkaException as exc:
        print(f"tail: Kafka at {config.kafka.bootstrap_servers} did not answer ({exc.args[0]}); "
              "start it with `make up` or pass --bootstrap-servers.", file=sys.stderr)
        return 1
    patients = {p.encode() for p in args.patient}
    consumer.subscribe([config.kafka.topic])
    shown = 0
    last_seen = time.monotonic()
    try:
        while not args.max or shown < args.max:
            msg = consumer.poll(0.5)
            if msg is None:
                if args.idle_timeout and time.monotonic() - last_seen > args.idle_timeout:
                    break
                continue
            last_seen = time.monotonic()
            if msg.error():
                if msg.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    print(f"tail: topic {config.kafka.topic!r} does not exist yet; waiting for it "
                          "(Ctrl-C to stop)", file=sys.stderr)
                else:
                    print(f"tail: {msg.error()}", file=sys.stderr)
                continue
            if patients and msg.key() not in patients:
                continue
            print(render(msg, args.pretty), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
