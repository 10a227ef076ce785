"""Where each reading lies in the archive, and how a reader on this machine reads it."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
from pyspark.sql import Column
from pyspark.sql import functions as F

from bp_spark.files import names_in

STAGING = "_staging"
ROLLS = "_rolls"
MANIFEST = f"{ROLLS}/manifest.json"
PATIENT_PREFIX = "patient_id="
PERIOD_PREFIX = "period="
# A staged batch's folder once it is whole (``batch=<n>.tmp`` while it is written).
STAGED_BATCH = re.compile(r"^batch=(\d+)$")
# A published file: ``<period>-<nnn>.jsonl``.
PUBLISHED = re.compile(r"^(?P<period>\d{4}(?:-\d{2}){0,2}(?:T\d{2})?|undated)-(?P<part>\d{3,})\.jsonl$")
# Files of the layout before periods (one per patient per batch, and correction rewrites).
LEGACY = re.compile(r"^(batch|rewrite)-[0-9a-f]{8}-\d+(-\d+)?\.jsonl$")
UNDATED = "undated"

# archive.period -> the Spark date pattern of a reading's period (in UTC).
PERIOD_PATTERNS = {"hour": "yyyy-MM-dd'T'HH", "day": "yyyy-MM-dd", "month": "yyyy-MM"}


def period_of(period: str) -> Column:
    """A reading's period (``archive.period``: hour, day or month of its effective time, in the
    session's zone, UTC) as the archive's files name it."""
    return F.coalesce(F.date_format("effective_time", PERIOD_PATTERNS[period]), F.lit(UNDATED))


def published_name(period: str, part: int) -> str:
    """The name of a published part: ``2026-12-06-000.jsonl``."""
    return f"{period}-{part:03d}.jsonl"


def staged_batch(tag: str, batch_id: int) -> str:
    """The folder of a staged batch."""
    return f"{STAGING}/{tag}/batch={batch_id:012d}"


def rolled_through_path(tag: str) -> str:
    """The file that records the last batch of ``tag`` the roll published."""
    return f"{ROLLS}/{tag}/rolled_through"


def line_id(line: bytes) -> str | None:
    """An archived line's observation id."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value.get("id") if isinstance(value, dict) else None


def _lines(path: Path) -> list[bytes]:
    """A file's whole lines: a last line without its line break is a roll's append under way
    (the reading is still in its staged file, read first) and is left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # rolled or rewritten since it was listed: read where it went
        return []
    return data[: data.rfind(b"\n") + 1].splitlines()


def _names(folder: Path, pattern: str = "*") -> list[str]:
    """The names in ``folder`` matching ``pattern`` (none if it is gone)."""
    return fnmatch.filter(names_in(folder), pattern)


def staged_batches(root: Path) -> list[Path]:
    """Every whole staged batch folder, of any job (not one still being written, ``batch=<n>.tmp``)."""
    return [root / STAGING / tag / name for tag in _names(root / STAGING)
            for name in _names(root / STAGING / tag, "batch=*") if STAGED_BATCH.match(name)]


def staged_files(root: Path, patient_folder: str = "*") -> list[Path]:
    """Every staged file (of any job) for one patient folder, or for all."""
    return sorted(batch / patient / period / name for batch in staged_batches(root)
                  for patient in _names(batch, patient_folder)
                  for period in _names(batch / patient, f"{PERIOD_PREFIX}*")
                  for name in _names(batch / patient / period) if not name.startswith("."))


def published_files(root: Path, patient_folder: str = "*") -> list[Path]:
    """Every published file (and any of the earlier layout) for one patient folder, or for all."""
    return sorted(root / patient / name for patient in _names(root, patient_folder)
                  for name in _names(root / patient, "*.jsonl") if not name.startswith("."))


def archived_lines(root: Path, patient_folder: str = f"{PATIENT_PREFIX}*", exact: bool = False) -> Iterator[bytes]:
    """Each archived line of a local archive, also those staged and not yet rolled.

    Staged files are read first, then the published ones: a roll publishes a batch before it
    deletes its staged files, so a reading moved while we read is found in one place or both,
    never in neither; a line read in both places is given once (same id, same bytes). ``exact``:
    no such merging, for an archive no job is writing (a test reconciling every line).
    """
    seen: set[bytes] = set()
    for path in [*staged_files(root, patient_folder), *published_files(root, patient_folder)]:
        for line in _lines(path):
            if exact:
                yield line
            elif line not in seen:
                seen.add(line)
                yield line


def patient_ids(root: Path) -> list[str]:
    """The patients the archive has a folder for (published or staged)."""
    names = set(_names(root, f"{PATIENT_PREFIX}*"))
    names |= {name for batch in staged_batches(root) for name in _names(batch, f"{PATIENT_PREFIX}*")}
    return sorted(name.split("=", 1)[1] for name in names)


def file_count(root: Path) -> tuple[int, int, int]:
    """(published files, staged files, bytes of both) of a local archive."""
    published = published_files(root, f"{PATIENT_PREFIX}*")
    staged = staged_files(root)
    size = 0
    for path in [*published, *staged]:
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            pass
    return len(published), len(staged), size
