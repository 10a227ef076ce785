"""The short fault-injection scenario (jobs/chaos.py --short) on the real stack: the stream job is
killed with kill -9 twice, Elasticsearch hangs then is killed, the broker is killed, while a feed
with duplicates, corrections, retractions and fuzzed input is published; every sink must then
hold exactly the last version of each observation, the archive at most one file per patient and
day, every critical reading must be on one alert episode and every event the episodes record on
the alert topic, and the job must never have stopped by itself.

It kills and restarts the local stack's services, so it runs after every other test (conftest.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.chaos
def test_short_chaos_run_loses_doubles_and_leaves_stale_nothing(kafka_admin, es) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "chaos.py"), "--short"], capture_output=True,
                            text=True, timeout=900, cwd=ROOT)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    sinks = ("anomalies", "alerts", "archive", "dead letter", "episodes", "alert events")
    table = {}
    for line in result.stdout.splitlines():
        found = re.match(rf"^({'|'.join(sinks)})((?:\s+[\d,]+){{6}})$", line)
        if found:
            table[found[1]] = [int(n.replace(",", "")) for n in found[2].split()]
    assert set(table) == set(sinks)
    for sink, (expected, stored, *problems) in table.items():
        assert problems == [0, 0, 0, 0], (sink, problems)  # lost, doubled, stale, unexpected
    # every sink had something to hold: dead letters, anomalies, critical readings on alerts, events
    assert all(table[sink][0] > 0 for sink in ("dead letter", "anomalies", "episodes", "alert events")), table
    assert "exited by itself 0 times" in result.stdout
    # the archive's files follow patients and days, not the job's hundreds of batches and restarts
    found = re.search(r"files in the archive: ([\d,]+) for ([\d,]+) patient-days, ([\d,]+) staged", result.stdout)
    files, days, staged = (int(n.replace(",", "")) for n in found.groups())
    assert files <= days and staged == 0, (files, days, staged)
