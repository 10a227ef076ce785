"""Tests of jobs/tail.py against the real broker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_job = _load("generate")
tail_job = _load("tail")

END = "2026-03-01T00:00:00+00:00"


def test_tail_filters_by_patient_and_stops_after_n(capsys, kafka_admin, unique_name: str) -> None:
    assert generate_job.main(["--topic", unique_name, "--patients", "6", "--days", "2", "--end", END]) == 0
    capsys.readouterr()

    assert tail_job.main(["--topic", unique_name, "--from-beginning", "--patient", "patient-00003",
                          "--compact", "--idle-timeout", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    observations = [orjson.loads(line) for line in lines]
    assert len(observations) == 2 * 4  # two days, four a day
    assert {o["subject"]["reference"] for o in observations} == {"Patient/patient-00003"}

    assert tail_job.main(["--topic", unique_name, "--from-beginning", "--max", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"# {unique_name}[") == 3
    assert '"resourceType": "Observation"' in out
