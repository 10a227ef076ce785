"""One job per checkpoint and per archive: a second job on either would overwrite the first's work.

A job claims each folder with an exclusive lock on ``<folder>/.bp-monitor.lock`` (``flock``: the
kernel releases it when the process ends, ``kill -9`` included, so a crash never leaves a stale
claim). Folders on other file systems (HDFS, S3A) cannot be locked this way; the job says so.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from bp_spark.files import hadoop_fs

log = logging.getLogger("bp_spark.ownership")

LOCK_NAME = ".bp-monitor.lock"


class OwnershipError(RuntimeError):
    """Another job holds the checkpoint or the archive."""


@dataclass
class Claim:
    """A held lock; :meth:`release` gives it up."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def claim(spark: SparkSession, uri: str, what: str, key: str) -> Claim | None:
    """Lock the folder ``uri`` (``what``: its role, ``key``: its configuration key) for this job;
    raise :class:`OwnershipError` naming the holder when another job has it."""
    fs, path = hadoop_fs(spark, uri)
    if fs.getScheme() != "file":
        log.warning("the %s %s is not on a local file system: make sure no other job uses it", what, uri)
        return None
    folder = Path(path.toUri().getPath())
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OwnershipError(
            f"the {what} {folder} is in use by another bp-monitor job (pid {holder}); two jobs on one {what} would "
            f"overwrite each other's work. Stop the other job, or give this one its own {key}.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Claim(lock, fd)
