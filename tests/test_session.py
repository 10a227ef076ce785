"""The session's local file system: Hadoop's, with permissions set without a chmod process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyspark.sql import SparkSession

from bp_spark.session import JVM_JAR
from bp_spark.sinks import hadoop_fs


def test_local_files_go_through_the_no_fork_file_system(spark: SparkSession, tmp_path: Path) -> None:
    assert JVM_JAR.exists(), f"{JVM_JAR} is missing: `make install` builds it from jvm/"
    fs, _ = hadoop_fs(spark, tmp_path.as_uri())
    assert fs.getClass().getName() == "bpmonitor.NoForkLocalFileSystem"


def test_files_and_folders_get_the_permissions_asked_for(spark: SparkSession, tmp_path: Path) -> None:
    FsPermission = spark._jvm.org.apache.hadoop.fs.permission.FsPermission
    folder, file = tmp_path / "a" / "b", tmp_path / "a" / "b" / "part-0.jsonl"
    fs, hadoop_folder = hadoop_fs(spark, folder.as_uri())
    assert fs.mkdirs(hadoop_folder, FsPermission.createImmutable(0o750))
    _, hadoop_file = hadoop_fs(spark, file.as_uri())
    stream = fs.create(hadoop_file, FsPermission.createImmutable(0o640), True, 4096, 1, 1 << 20, None)
    stream.write(bytearray(b'{"id": "x"}\n'))
    stream.close()
    assert file.read_bytes() == b'{"id": "x"}\n'
    # the session's umask (private_files_conf("077"), as the job's) keeps group and others out
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    fs.setPermission(hadoop_file, FsPermission.createImmutable(0o604))
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o604

