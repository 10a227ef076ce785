"""What a batch of corrections costs the archive, against a small archive and a big one.

    .venv/bin/python bench/correction_bench.py [--sizes 10000,1000000] [--patients 1000] [--per-day 10] [--ids 20]

For each size it fills an archive as the roll leaves it (one file per patient and day,
``--per-day`` readings each: an archive grows by days, as a feed fills it, not by denser files)
and its archive index on the local stack's Elasticsearch (an index of
its own), then times ``ArchiveSink.remove`` (what a routing batch runs for its corrections and
retractions: ask the index where each earlier version lies, rewrite those files) for ``--ids``
readings of different patients, five times, and prints the median and the ratio of the sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

RUNS = 7
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from elasticsearch.helpers import bulk  # noqa: E402

from bp_spark.files import LocalFiles  # noqa: E402
from bp_spark.archive.layout import published_name  # noqa: E402
from bp_spark.config import load_config  # noqa: E402
from bp_spark.elastic import install_templates, make_client  # noqa: E402
from bp_spark.session import build_session, stop_session  # noqa: E402
from bp_spark.sinks import Sinks  # noqa: E402

LINE = ('{"resourceType":"Observation","id":"%s","status":"final","subject":{"reference":"Patient/%s"},'
        '"effectiveDateTime":"%sT08:00:00Z","note":"' + "x" * 700 + '"}')
FIRST_DAY = date(2026, 1, 1)


def fill(root: Path, es, index: str, size: int, patients: int, per_day: int) -> None:
    files = LocalFiles(root, 0o077)
    per_file: dict[tuple[int, str], list[bytes]] = {}
    docs = []
    for i in range(size):
        patient, day = i % patients, (FIRST_DAY + timedelta(days=i // (patients * per_day))).isoformat()
        obs_id = f"c-{i}"
        per_file.setdefault((patient, day), []).append((LINE % (obs_id, f"p{patient}", day)).encode())
        docs.append({"_index": index, "_id": obs_id, "_source": {
            "patient_id": f"p{patient}", "period": day, "content_hash": i, "tag": "bench000", "batch_id": 0}})
    for (patient, day), lines in per_file.items():
        files.write(f"patient_id=p{patient}/{published_name(day, 0)}", [b"\n".join(lines) + b"\n"])
    for start in range(0, len(docs), 50_000):
        bulk(es.options(request_timeout=120), docs[start:start + 50_000], chunk_size=5000)
    es.indices.refresh(index=index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--per-day", type=int, default=10, help="readings per patient and day")
    parser.add_argument("--ids", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    spark = build_session("bp-monitor-correction-bench")
    medians = {}
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory() as folder:
                index = f"bench_archive_{size}_{int(time.time())}"
                config = load_config(overrides={"paths.archive_dir": f"{folder}/archive",
                                                "paths.checkpoint_dir": f"{folder}/checkpoint",
                                                "elasticsearch.archive_index": index})
                es = make_client(config, request_timeout=120)
                install_templates(es, {"archive": index}, 0)
                started = time.monotonic()
                fill(Path(folder, "archive"), es, index, size, args.patients, args.per_day)
                print(f"{size:,} readings: archive and index filled in {time.monotonic() - started:.0f} s", flush=True)
                sinks = Sinks(spark, config, es, archive_tag="bench000")
                times = []
                for run in range(RUNS):
                    # readings of different patients and days, a new set each run
                    ids = {f"c-{(run * args.ids + k) * 7919 % size}" for k in range(args.ids)}
                    started = time.monotonic()
                    removed = sinks.archive.remove(ids, 1000 + run)
                    times.append(time.monotonic() - started)
                    assert removed == len(ids), (removed, len(ids))
                medians[size] = statistics.median(times)
                print(f"{size:,} readings: {args.ids} corrections removed in {medians[size]:.3f} s (median of {RUNS}; "
                      f"runs {', '.join(f'{t:.3f}' for t in times)})", flush=True)
                es.indices.delete(index=index)
                es.indices.delete_index_template(name=f"bp-monitor-{index}")
    finally:
        stop_session(spark)
    if len(sizes) > 1:
        print(f"ratio {sizes[-1]:,} / {sizes[0]:,} readings: {medians[sizes[-1]] / medians[sizes[0]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
