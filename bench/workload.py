"""What the benchmarks without a stack share: the generator's observations, and a median of timed runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bp_spark.generator import encode, make_patients, readings, window


def generator_observations(count: int, patients: int = 200) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs as the generator publishes them: a normotensive cohort of
    ``patients``, 4 readings a day each, over as many days as it takes, up to 2026-03-01."""
    start, end = window("", "2026-03-01T00:00:00+00:00", -(-count // (patients * 4)))
    cohort = make_patients(patients, 42, {"normotensive": 1.0})
    return [encode(r) for _, r in zip(range(count), readings(cohort, start, end, 4, 42, 0.01, 0.02))]


def median_seconds(action: Callable[[int], object], repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``action(run_index)``."""
    runs = []
    for i in range(repeats):
        started = time.perf_counter()
        action(i)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)
