"""The archive that ships this package to Spark executors: ``spark-submit --py-files dist/bp_spark.zip``.

    python -m bp_spark.package            # writes dist/bp_spark.zip, prints its path  (make dist)

On a cluster the driver runs jobs/stream.py from a checkout (with conf/ beside it), and each
executor imports ``bp_spark`` from this archive. The job's transformations are Spark column
expressions, so executors run no Python of ours today; shipping the package keeps that true
of any later code (a UDF, a pickled function) without a second deployment step.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DEFAULT_TARGET = PACKAGE.parent / "dist" / "bp_spark.zip"


def build(target: Path = DEFAULT_TARGET) -> Path:
    """Write ``bp_spark/**/*.py`` (its subpackages too) into ``target`` (a zip importable from
    ``sys.path``); return its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(PACKAGE.rglob("*.py")):
            archive.write(source, f"bp_spark/{source.relative_to(PACKAGE).as_posix()}")
    partial.replace(target)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET))
