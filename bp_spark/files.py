"""The few file operations the job needs (the archive, the trends' pending windows), on the
local disk or any Hadoop file system.

Paths are relative to a root folder, with ``/`` between folders. Every write is whole:
written beside its target, then renamed onto it (atomic on a local disk and HDFS; on object
stores such as S3 a rename is a copy, and a reader may briefly miss the file). The one
exception is :meth:`LocalFiles.append`, the archive roll's: it cuts the file back to a size
the roll wrote down before adding its lines, so that doing it again after a crash gives the
same file, and it adds them in one system call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from pyspark.sql import SparkSession

try:  # syncfs(2): Linux's sync of one file system
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _LIBC.syncfs  # noqa: B018 (absent outside Linux)
except (OSError, AttributeError, TypeError):
    _LIBC = None


def hadoop_fs(spark: SparkSession, uri: str):
    """The Hadoop file system that holds ``uri`` (local, HDFS, S3A ...) and the qualified path."""
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    return fs, fs.makeQualified(path)


def files_at(spark: SparkSession, uri: str, umask: int) -> "LocalFiles | HadoopFiles":
    """The files under the folder ``uri``, made if missing (its files masked with ``umask``)."""
    fs, root = hadoop_fs(spark, uri)
    if not fs.exists(root):
        fs.mkdirs(root, spark._jvm.org.apache.hadoop.fs.permission.FsPermission(0o777 & ~umask))
    if fs.getScheme() == "file":
        return LocalFiles(Path(root.toUri().getPath()), umask)
    return HadoopFiles(spark, fs, root)


class Files(Protocol):
    """What the job does with files."""

    def names(self, folder: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def size(self, path: str) -> int | None: ...
    def read(self, path: str) -> bytes | None: ...
    def write(self, path: str, chunks: Iterable[bytes]) -> None: ...
    def append(self, path: str, chunks: Iterable[bytes], at: int) -> None: ...
    def sync(self) -> None: ...
    def rename(self, source: str, target: str) -> None: ...
    def delete(self, path: str) -> None: ...


def names_in(folder: Path) -> list[str]:
    """The names in a local ``folder``; none if it is gone (a job renames and deletes staged
    folders while others read: ``Path.glob`` raises on a folder that vanishes under it)."""
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []


class LocalFiles:
    """The archive on this machine's disk: plain system calls (no JVM round trip per file)."""

    def __init__(self, root: Path, umask: int) -> None:
        self.root = root
        self.umask = umask

    def _path(self, path: str) -> Path:
        return self.root / path if path else self.root

    def names(self, folder: str) -> list[str]:
        return sorted(names_in(self._path(folder)))

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def size(self, path: str) -> int | None:
        try:
            return self._path(path).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except FileNotFoundError:
            return None

    def _folders(self, folder: Path) -> None:
        """``folder`` and its missing parents, private (the umask's mode), one level at a time."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            made.mkdir(mode=0o777 & ~self.umask, exist_ok=True)

    def write(self, path: str, chunks: Iterable[bytes]) -> None:
        target = self._path(path)
        self._folders(target.parent)
        temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~self.umask)
        with os.fdopen(descriptor, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)

    def append(self, path: str, chunks: Iterable[bytes], at: int) -> None:
        """Cut ``path`` back to its first ``at`` bytes, then add ``chunks`` (after a line break if
        the kept bytes end without one). Done again, it gives the same file: the archive's roll
        appends this way and, after a crash, simply does it again."""
        with open(self._path(path), "r+b") as out:
            out.truncate(at)
            out.seek(at)
            separator = b"\n" if at > 0 and os.pread(out.fileno(), 1, at - 1) != b"\n" else b""
            out.write(b"".join([separator, *chunks]))

    def sync(self) -> None:
        """Make every write under the root durable: one ``syncfs`` of its file system (appends are
        not synced one by one: 11.6 of a 31.5 s roll onto 60,000 files, ``bench/roll_bench.py``)."""
        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            if _LIBC is not None and _LIBC.syncfs(descriptor) == 0:
                return
            os.sync()
        finally:
            os.close(descriptor)

    def rename(self, source: str, target: str) -> None:
        self._folders(self._path(target).parent)
        os.replace(self._path(source), self._path(target))

    def delete(self, path: str) -> None:
        found = self._path(path)
        if found.is_dir():
            shutil.rmtree(found, ignore_errors=True)
        else:
            found.unlink(missing_ok=True)


class HadoopFiles:
    """The archive on HDFS, S3A or any other Hadoop file system, through Spark's JVM."""

    def __init__(self, spark: SparkSession, fs, root) -> None:
        self.jvm = spark._jvm
        self.fs = fs
        self.root = root

    def _path(self, path: str):
        return self.jvm.org.apache.hadoop.fs.Path(self.root, path) if path else self.root

    def names(self, folder: str) -> list[str]:
        path = self._path(folder)
        if not self.fs.exists(path):
            return []
        return sorted(status.getPath().getName() for status in self.fs.listStatus(path))

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._path(path)))

    def size(self, path: str) -> int | None:
        found = self._path(path)
        return int(self.fs.getFileStatus(found).getLen()) if self.fs.exists(found) else None

    def read(self, path: str) -> bytes | None:
        found = self._path(path)
        if not self.fs.exists(found):
            return None
        stream = self.fs.open(found)
        try:
            return bytes(self.jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write(self, path: str, chunks: Iterable[bytes]) -> None:
        target = self._path(path)
        temporary = self.jvm.org.apache.hadoop.fs.Path(target.getParent(), f".{target.getName()}.tmp")
        stream = self.fs.create(temporary, True)
        try:
            for chunk in chunks:
                stream.write(bytearray(chunk))
        finally:
            stream.close()
        if self.fs.exists(target):
            self.fs.delete(target, False)
        if not self.fs.rename(temporary, target):
            raise OSError(f"could not move {path} into place in the archive")

    def append(self, path: str, chunks: Iterable[bytes], at: int) -> None:
        """As :meth:`LocalFiles.append`, by rewriting the file whole (object stores cannot append)."""
        kept = (self.read(path) or b"")[:at]
        self.write(path, [kept, b"\n" if kept and not kept.endswith(b"\n") else b"", *chunks])

    def sync(self) -> None:
        """Nothing to do: each write is closed (and so persisted by the file system) before it is renamed."""

    def rename(self, source: str, target: str) -> None:
        to = self._path(target)
        self.fs.mkdirs(to.getParent())
        if self.fs.exists(to):
            self.fs.delete(to, True)
        if not self.fs.rename(self._path(source), to):
            raise OSError(f"could not move {source} to {target} in the archive")

    def delete(self, path: str) -> None:
        self.fs.delete(self._path(path), True)
