"""Benchmark of the archive's roll: a backfill's staged batch published into a fresh archive
(each new file moved into place), then a second one appended to the files the first made.

    .venv/bin/python bench/roll_bench.py [--patients 100] [--days 600] [--repeats 1]

No stack and no Spark: the staged files are written as the partitioned write leaves them
(``_staging/<tag>/batch=<n>/patient_id=<p>/period=<day>/part-00000.jsonl``, two lines each), and
the roll (:class:`bp_spark.archive.roll.Roller`) runs on the local disk, as the job's does. The
1M stream bench stages ~111,000 such files per 500,000-reading batch (200 patients, 3.4 years).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bp_spark.archive.layout import PATIENT_PREFIX, PERIOD_PREFIX, staged_batch
from bp_spark.archive.roll import Roller
from bp_spark.files import LocalFiles

LINE = b'{"resourceType":"Observation","id":"bench","status":"final"' + b' ' * 900 + b'}\n'


def stage(root: Path, batch: int, patients: int, days: int) -> int:
    """One staged batch: a file per patient and day; return how many files."""
    first = dt.date(2023, 1, 1)
    for patient in range(patients):
        for day in range(days):
            folder = (root / staged_batch("bench", batch) / f"{PATIENT_PREFIX}p{patient:04d}"
                      / f"{PERIOD_PREFIX}{first + dt.timedelta(days=day)}")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part-00000.jsonl").write_bytes(LINE * 2)
    return patients * days


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--days", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    moved, appended = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bp-roll-bench-") as folder:
            root = Path(folder)
            roller = Roller(LocalFiles(root, 0o077), 64 << 20)
            files = stage(root, 0, args.patients, args.days)
            started = time.monotonic()
            first = roller.roll()
            moved.append(time.monotonic() - started)
            stage(root, 1, args.patients, args.days)
            started = time.monotonic()
            second = roller.roll()
            appended.append(time.monotonic() - started)
            assert first.files == second.files == files, (first, second, files)
    print(f"{files:,} staged files of {args.patients} patients over {args.days} days, {args.repeats} repeats (median)")
    print(f"first roll, every file new (moved):        {statistics.median(moved):7.2f} s "
          f"({files / statistics.median(moved):,.0f} files/s)")
    print(f"second roll, every file appended to:       {statistics.median(appended):7.2f} s "
          f"({files / statistics.median(appended):,.0f} files/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
