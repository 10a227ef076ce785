"""Benchmark of the backfill (jobs/backfill.py) on the local stack: an export loaded, then loaded again.

    .venv/bin/python bench/backfill_bench.py [--observations 200000] [--patients 200] [--no-trends]

Writes N generator observations (JSON Lines, as a Bulk Data export holds them) to a temporary
file, then runs the job as a user does, twice on the same sinks (indices bench_backfill_*, a
temporary archive): the first run stores everything, the second finds every reading stored
(the archive asked about each normal reading, every document written again by id). Prints each
run's wall time (JVM start included) and the job's own elapsed time, in readings per second.
Needs `make up`; removes its indices and files afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import generator_observations
from bp_spark.config import env_name, load_config
from bp_spark.elastic import INDEX_KINDS, make_client

ROOT = Path(__file__).resolve().parent.parent
INDICES = {f"elasticsearch.{kind}_index": f"bench_backfill_{kind}"
           for kind in INDEX_KINDS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--no-trends", action="store_true", help="routing only (trends.enabled = false)")
    args = parser.parse_args()
    es = make_client(load_config())
    with tempfile.TemporaryDirectory(prefix="bp-backfill-bench-") as work:
        export = Path(work) / "Observation.ndjson"
        with export.open("wb") as out:
            for _, value in generator_observations(args.observations, args.patients):
                out.write(value + b"\n")
        env = {**os.environ, **{env_name(key): index for key, index in INDICES.items()},
               env_name("paths.archive_dir"): str(Path(work) / "archive"),
               env_name("trends.enabled"): "false" if args.no_trends else "true"}
        print(f"backfill bench: {args.observations:,} observations of {args.patients} patients, "
              f"{export.stat().st_size / 1e6:.0f} MB, trends {'off' if args.no_trends else 'on'}", flush=True)
        try:
            for run in ("first run (stores everything)", "second run (everything already stored)"):
                started = time.monotonic()
                result = subprocess.run([sys.executable, str(ROOT / "jobs" / "backfill.py"), "--input", str(export)],
                                        capture_output=True, text=True, env=env)
                wall = time.monotonic() - started
                if result.returncode != 0:
                    print(result.stdout[-2000:] + result.stderr[-3000:], file=sys.stderr)
                    return 1
                elapsed = float(re.search(r"elapsed (\d+) s", result.stdout).group(1))
                reconciliation = re.search(r"reconciliation: .*", result.stdout).group(0)
                print(f"  {run}: {wall:.0f} s wall, {args.observations / wall:,.0f} readings/s; "
                      f"the job's own {elapsed:.0f} s, {args.observations / max(elapsed, 1):,.0f} readings/s\n"
                      f"    {reconciliation}", flush=True)
        finally:
            es.options(ignore_status=404).indices.delete(index=",".join(INDICES.values()))
            for index in INDICES.values():
                es.options(ignore_status=404).indices.delete_index_template(name=f"bp-monitor-{index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
