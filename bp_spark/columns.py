"""Column expressions built once per process, not once per DataFrame.

Building a Spark ``Column`` from Python is a call into the JVM per function and operand: the
parser's columns are a few thousand calls (0.5-0.6 s), the trend windows' a few hundred
(0.1 s). The expressions name only columns, so one set serves every DataFrame it is applied to:
a live batch, a backfill's chunk, a test's frame. :func:`once_per_jvm` keeps what a builder
returns for the same arguments (by their ``repr``: the settings are frozen dataclasses) and the
same JVM gateway (the objects live there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from pyspark import SparkContext

T = TypeVar("T")


def once_per_jvm(build: Callable[..., T]) -> Callable[..., T]:
    """``build(*args)`` once per distinct ``args`` and JVM; a race builds twice, harmlessly."""
    built: dict[tuple[str, int], T] = {}

    @functools.wraps(build)
    def cached(*args) -> T:
        key = (repr(args), id(SparkContext._gateway))
        if key not in built:
            built[key] = build(*args)
        return built[key]
    return cached
