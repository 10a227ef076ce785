"""The dashboard as code: the Kibana saved objects and alert rule are well formed and use only
fields the index templates define, with suitable types; every panel's aggregation runs on the
real Elasticsearch and returns the expected buckets; the HTML report renders every panel in
headless Chromium without console errors."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from elasticsearch.helpers import bulk
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from bp_spark.alerts.episodes import triage_rank
from bp_spark.config import Config, load_config
from bp_spark.dashboards import (ALERT_RULE, DASHBOARD_ID, dashboard_panels, data_view_indices, kql_filters,
                                 load_saved_objects, rows)
from bp_spark.dashboards import panel as query_of
from bp_spark.elastic import INDEX_KINDS, install_templates, load_template, pipeline_indices
from bp_spark.versions import read_env_file
from test_stream import job_env

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_OF_VIEW = {"bp-anomalies": "anomalies", "bp-alerts": "alerts", "bp-trends": "trends", "bp-metrics": "metrics",
                    "bp-goals": "goals", "bp-episodes": "episodes"}
# Data views without a time field: a patient's target set a year ago still applies today, and an
# alert opened last month and still open is still to work.
TIMELESS_VIEWS = {"bp-goals", "bp-episodes"}
NUMERIC = {"float", "double", "long", "integer", "short", "byte"}
SUITABLE = {"terms": {"keyword", "boolean"} | NUMERIC, "date_histogram": {"date"}, "max": NUMERIC | {"date"},
            "sum": NUMERIC, "cardinality": {"keyword"} | NUMERIC}


def field_types(kind: str) -> dict[str, str]:
    """``{"a.b": type}`` of a template's mapping."""
    out: dict[str, str] = {}

    def walk(properties: dict, prefix: str) -> None:
        for name, spec in properties.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = spec["type"]
                for sub, sub_spec in spec.get("fields", {}).items():
                    out[f"{prefix}{name}.{sub}"] = sub_spec["type"]
    walk(load_template(kind, "x", 0)["template"]["mappings"]["properties"], "")
    return out


def test_saved_objects_reference_existing_fields_with_suitable_types() -> None:
    objects = load_saved_objects()
    by_id = {o["id"]: o for o in objects}
    assert len(by_id) == len(objects)
    views = {o["id"]: o for o in objects if o["type"] == "index-pattern"}
    assert set(views) == set(TEMPLATE_OF_VIEW)
    for view_id, view in views.items():
        types = field_types(TEMPLATE_OF_VIEW[view_id])
        if view_id in TIMELESS_VIEWS:
            assert "timeFieldName" not in view["attributes"], view_id
            continue
        assert types[view["attributes"]["timeFieldName"]] == "date", view_id
    for obj in objects:
        for ref in obj["references"]:  # every reference resolves to an object of the export
            assert ref["id"] in by_id and by_id[ref["id"]]["type"] == ref["type"], (obj["id"], ref)
    panels = dashboard_panels(objects)
    assert len(panels) == 8 and panels[0].id == "bp-alerts-to-work"  # the work list first
    for obj in objects:
        if obj["type"] not in ("visualization", "search"):
            continue
        view = next(r["id"] for r in obj["references"] if r["type"] == "index-pattern")
        types = field_types(TEMPLATE_OF_VIEW[view])
        if obj["type"] == "search":
            for column in obj["attributes"]["columns"] + [field for field, _ in obj["attributes"]["sort"]]:
                assert column in types, (obj["id"], column)
            continue
        for agg in json.loads(obj["attributes"]["visState"])["aggs"]:
            field = agg["params"].get("field")
            if agg["type"] == "count":
                continue
            assert field in types, (obj["id"], field)
            assert types[field] in SUITABLE[agg["type"]], (obj["id"], agg["type"], field, types[field])
        search = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        for term in kql_filters(search["query"]["query"]):
            (field, _), = term["term"].items()
            assert types[field] == "keyword", (obj["id"], field)
        assert search["indexRefName"] == "kibanaSavedObjectMeta.searchSourceJSON.index"
    dashboard = by_id[DASHBOARD_ID]["attributes"]
    assert dashboard["title"] == "Blood pressure monitoring"
    # made for the Kibana the project pins (compose runs Kibana at ES_VERSION)
    assert {p["version"] for p in json.loads(dashboard["panelsJSON"])} == {read_env_file()["ES_VERSION"]}
    controls = json.loads(dashboard["controlGroupInput"]["panelsJSON"])
    anomaly_fields = field_types("anomalies")
    assert {c["explicitInput"]["fieldName"] for c in controls.values()} == {"patient_id", "category"}
    assert all(anomaly_fields[c["explicitInput"]["fieldName"]] == "keyword" for c in controls.values())


def test_alert_rule_fires_when_an_open_alert_pages_or_escalates_not_per_reading() -> None:
    rule = json.loads(ALERT_RULE.read_text())
    assert rule["rule_type_id"] == ".es-query" and rule["consumer"] == "stackAlerts"
    params = rule["params"]
    assert params["index"] == [load_config(env={}).elasticsearch.episodes_index]
    types = field_types("episodes")
    assert types[params["timeField"]] == "date"
    query = json.loads(params["esQuery"])["query"]["bool"]
    assert query["filter"] == [{"term": {"status": "open"}}] and types["status"] == "keyword"
    assert {field for clause in query["should"] for field in clause["range"]} == {"paged_at", "escalated_at"}
    assert all(types[field] == "date" for clause in query["should"] for field in clause["range"])


def _docs(config: Config) -> list[dict]:
    e = config.elasticsearch
    day = lambda d, h=8: datetime(2026, 1, d, h, tzinfo=timezone.utc).isoformat()  # noqa: E731
    anomalies = [
        ("o1", "p1", day(1), "hypertension_stage_2", ["systolic_high"], 150, 85),
        ("o2", "p1", day(1, 9), "hypertensive_crisis", ["systolic_high", "diastolic_high"], 190, 125),
        ("o3", "p2", day(2), "hypotension", ["systolic_low", "diastolic_low"], 85, 55),
        ("o4", "p1", day(2), "hypertension_stage_2", ["diastolic_high"], 135, 95),
    ]
    docs = [{"_index": e.anomalies_index, "_id": i, "observation_id": i, "patient_id": p, "effective_time": t,
             "category": c, "anomaly_types": a, "systolic": s, "diastolic": d, "severity": "warning"}
            for i, p, t, c, a, s, d in anomalies]
    for doc in docs:  # p1 has a target (below 160/100): every anomaly of theirs says where it stands
        if doc["patient_id"] == "p1":
            doc["goal_id"] = "g1"
            doc["target_status"] = "above" if doc["systolic"] >= 160 or doc["diastolic"] >= 100 else "met"
    docs += [{"_index": e.alerts_index, "_id": "o2", "alert_id": "o2", "alert_type": "critical_reading",
              "patient_id": "p1", "effective_time": day(1, 9), "reason": "hypertensive crisis: 190/125 mmHg",
              "severity": "critical", "processed_at": day(1, 10)},
             {"_index": e.alerts_index, "_id": "patient|p1|7d", "alert_id": "patient|p1|7d",
              "alert_type": "sustained_hypertension", "patient_id": "p1", "effective_time": day(2),
              "reason": "sustained hypertension: mean 158/101 mmHg over 12 readings in 7 days (limit 135/85)",
              "severity": "warning", "processed_at": day(2, 10)}]
    # alert episodes, as the job and people leave them: (id, patient, kind, status, severity, paged at)
    episodes = [("a-ack", "p1", "above_target", "acknowledged", "warning", day(1, 10)),
                ("a-old", "p2", "critical_reading", "resolved", "critical", day(1, 6)),
                ("a-crit", "p1", "critical_reading", "open", "critical", day(1, 9)),
                ("a-warn", "p3", "above_target", "open", "warning", day(1, 7))]
    docs += [{"_index": e.episodes_index, "_id": i, "alert_id": i, "patient_id": p, "kind": k, "status": st,
              "severity": sev, "paged_at": at, "opened_at": at, "reason": "r", "readings_count": 1,
              "escalation_level": 0, "triage_rank": triage_rank({"status": st, "severity": sev})}
             for i, p, k, st, sev, at in episodes]
    docs += [{"_index": e.trends_index, "_id": f"cohort|daily|{d}", "scope": "cohort", "period": "daily",
              "window_start": day(d, 0), "systolic_max": s, "diastolic_max": dia}
             for d, s, dia in ((1, 190, 125), (2, 135, 95))]
    docs += [{"_index": e.trends_index, "_id": "patient|daily|p1|1", "scope": "patient", "period": "daily",
              "patient_id": "p1", "window_start": day(1, 0), "systolic_max": 250, "diastolic_max": 150}]
    docs += [{"_index": e.metrics_index, "_id": f"m{b}", "query": "bp_monitor", "batch_id": b,
              "timestamp": f"2026-01-02T08:0{b}:00+00:00", "input_rows": n, "kafka_lag": lag}
             for b, n, lag in ((0, 100, 50), (1, 50, 0))]
    return docs


@pytest.fixture
def dashboard_data(es: Elasticsearch, unique_name: str) -> Config:
    config = load_config(env={}, overrides={f"elasticsearch.{kind}_index": f"{unique_name}_{kind}"
                                            for kind in INDEX_KINDS})
    install_templates(es, pipeline_indices(config), 0)
    bulk(es, _docs(config), refresh=True)
    return config


def test_the_alert_rule_finds_the_alerts_that_paged_or_escalated_within_its_window(
    es: Elasticsearch, dashboard_data: Config
) -> None:
    """The rule's query over its time window, on the real Elasticsearch: a page or an escalation
    in the last 5 minutes of an alert still open; not a reading joining quietly, nor an
    acknowledged or resolved alert."""
    params = json.loads(ALERT_RULE.read_text())["params"]
    index, now = dashboard_data.elasticsearch.episodes_index, int(time.time() * 1000)
    minute = 60_000
    cases = {"paged": ("open", now - minute, None), "escalated": ("open", now - 30 * minute, now - 2 * minute),
             "joined quietly": ("open", now - 60 * minute, None), "acknowledged": ("acknowledged", now - minute, None),
             "resolved": ("resolved", now - 2 * minute, None), "paged long ago": ("open", now - 20 * minute, None)}
    bulk(es, [{"_index": index, "_id": i, "alert_id": i, "patient_id": "p9", "kind": "critical_reading", "status": st,
               "severity": "critical", "paged_at": paged, "escalated_at": escalated,
               "updated_at": now - minute if i != "paged long ago" else paged}
              for i, (st, paged, escalated) in cases.items()], refresh=True)
    window = {"range": {params["timeField"]: {"gte": f"now-{params['timeWindowSize']}{params['timeWindowUnit']}"}}}
    query = json.loads(params["esQuery"])["query"]
    hits = es.search(index=index, size=100,
                     query={"bool": {"filter": [window, query], "must": [{"term": {"patient_id": "p9"}}]}})["hits"]["hits"]
    assert sorted(h["_id"] for h in hits) == ["escalated", "paged"]


def test_every_panel_query_returns_the_expected_buckets(es: Elasticsearch, dashboard_data: Config) -> None:
    results = {}
    for panel in dashboard_panels(indices=data_view_indices(dashboard_data)):
        results[panel.id] = rows(panel, es.search(index=panel.index, **panel.body))
    assert [(r["key"], r["1"]) for r in results["bp-by-category"]] == [
        ("hypertension_stage_2", 2), ("hypertensive_crisis", 1), ("hypotension", 1)]
    assert [(r["key"], r["1"]) for r in results["bp-by-anomaly-type"]] == [
        ("diastolic_high", 2), ("systolic_high", 2), ("diastolic_low", 1), ("systolic_low", 1)]  # ties by key
    assert [(r["key"], r["1"]) for r in results["bp-top-patients"]] == [("p1", 3), ("p2", 1)]
    assert [(r["key"][:10], r["1"]) for r in results["bp-abnormal-patients"]] == [("2026-01-01", 1), ("2026-01-02", 2)]
    # cohort daily windows only: the patient window's 250 is not a cohort peak
    assert [(r["key"][:10], r["1"], r["3"]) for r in results["bp-daily-peaks"]] == [
        ("2026-01-01", 190.0, 125.0), ("2026-01-02", 135.0, 95.0)]
    assert [(r["1"], r["3"]) for r in results["bp-pipeline-health"]] == [(100.0, 50.0), (50.0, 0.0)]
    assert [r["patient_id"] for r in results["bp-latest-alerts"]] == ["p1", "p1"]
    # open before acknowledged before resolved, critical before warning, whatever their age
    assert [(r["patient_id"], r["status"], r["severity"]) for r in results["bp-alerts-to-work"]] == [
        ("p1", "open", "critical"), ("p3", "open", "warning"), ("p1", "acknowledged", "warning"),
        ("p2", "resolved", "critical")]


def test_html_report_renders_every_panel_in_headless_chromium(
    es: Elasticsearch, dashboard_data: Config, tmp_path: Path
) -> None:
    env = job_env(dashboard_data)
    output = tmp_path / "report.html"
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), "--output", str(output)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"report: {output}" in result.stdout
    assert "<script src=" not in output.read_text()  # self-contained: plotly.js is inside
    assert output.stat().st_mode & 0o777 == 0o600  # it names patients: its owner's alone

    browser = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert browser and driver_path, "headless Chromium is missing: make test installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--window-size=1400,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(output.as_uri())
        panels = driver.find_elements("css selector", "section.panel")
        assert len(panels) == 8
        for section in panels:
            if section.get_attribute("data-panel") in ("bp-latest-alerts", "bp-alerts-to-work"):
                continue  # tables of their own, below
            plot = section.find_element("css selector", ".js-plotly-plot")
            assert plot.find_elements("css selector", "svg.main-svg"), section.get_attribute("data-panel")
        titles = driver.execute_script(
            "return Array.from(document.querySelectorAll('.gtitle, .panel h3')).map(e => e.textContent)")
        assert "Abnormal readings by category" in titles and "Latest alerts" in titles
        # The alert table shows every column in full: each value whole, no cell narrower than its text.
        cells = driver.execute_script(
            "return Array.from(document.querySelectorAll('#panel-bp-latest-alerts td'))"
            ".map(td => [td.textContent, td.scrollWidth <= td.clientWidth])")
        texts = [text for text, _ in cells]
        assert "sustained_hypertension" in texts and "critical_reading" in texts
        assert "sustained hypertension: mean 158/101 mmHg over 12 readings in 7 days (limit 135/85)" in texts
        assert all(fits for _, fits in cells), [text for text, fits in cells if not fits]
        # the work list first, as the care team works it
        assert panels[0].get_attribute("data-panel") == "bp-alerts-to-work"
        work = driver.execute_script(
            "return Array.from(document.querySelectorAll('#panel-bp-alerts-to-work tbody tr'))"
            ".map(tr => Array.from(tr.cells).map(td => td.textContent))")
        assert [row[:3] for row in work] == [["open", "critical", "critical_reading"], ["open", "warning", "above_target"],
                                             ["acknowledged", "warning", "above_target"],
                                             ["resolved", "critical", "critical_reading"]]
        assert "4" in driver.find_element("id", "summary").text  # 4 abnormal readings
        legend = driver.execute_script(
            "return Array.from(document.querySelectorAll('#panel-bp-by-category .legendtext')).map(e => e.textContent)")
        assert sorted(legend) == ["hypertension_stage_2", "hypertensive_crisis", "hypotension"]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_kibana_setup_aims_objects_and_rule_at_the_configured_indices() -> None:
    sys.path.insert(0, str(ROOT / "jobs"))
    import kibana_setup

    config = load_config(env={}, overrides={"elasticsearch.anomalies_index": "ward7_anomalies",
                                            "elasticsearch.alerts_index": "ward7_alerts",
                                            "elasticsearch.episodes_index": "ward7_episodes"})
    objects = [json.loads(line) for line in kibana_setup.import_payload(config).decode().splitlines()]
    titles = {o["id"]: o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    assert titles["bp-anomalies"] == "ward7_anomalies" and titles["bp-alerts"] == "ward7_alerts"
    assert len(objects) == len(load_saved_objects())
    assert kibana_setup.rule_body(config)["params"]["index"] == ["ward7_episodes"]


def test_kibana_setup_without_kibana_fails_clearly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "kibana_setup.py"), "--kibana-url",
                             f"http://127.0.0.1:{port}", "--timeout", "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"Kibana at http://127.0.0.1:{port} was not available after 1 s" in result.stderr


def _archive_line(patient: str, when: str, systolic: float | None, diastolic: float | None, code: str = "85354-9") -> bytes:
    """An archived normal Observation: a panel, or (a code of a component) one half of a split reading."""
    loinc = "http://loinc.org"
    quantity = lambda v: {"value": v, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}  # noqa: E731
    obs = {"resourceType": "Observation", "id": f"{patient}-{when}-{code}", "status": "final",
           "code": {"coding": [{"system": loinc, "code": code}]}, "subject": {"reference": f"Patient/{patient}"},
           "effectiveDateTime": when}
    if code == "85354-9":
        obs["component"] = [{"code": {"coding": [{"system": loinc, "code": "8480-6"}]}, "valueQuantity": quantity(systolic)},
                            {"code": {"coding": [{"system": loinc, "code": "8462-4"}]}, "valueQuantity": quantity(diastolic)}]
    else:
        obs["valueQuantity"] = quantity(systolic if code == "8480-6" else diastolic)
    return json.dumps(obs).encode()


def test_the_report_patient_view_redraws_with_the_chosen_patients_data(
    es: Elasticsearch, dashboard_data: Config, tmp_path: Path
) -> None:
    """The patients with the latest alerts first; picking one (or searching an id) redraws the
    readings (anomalies and the archive's normal ones, a split reading put back together), the
    7-day means and the alerts with that patient's data; no console error."""
    archive = tmp_path / "archive"
    for patient, lines in {"p1": [_archive_line("p1", "2026-01-01T20:00:00Z", 118, 76),
                                  _archive_line("p1", "2026-01-02T20:00:00Z", 121, None, "8480-6"),
                                  _archive_line("p1", "2026-01-02T20:00:00Z", None, 79, "8462-4")],
                           "p3": [_archive_line("p3", "2026-01-03T08:00:00Z", 112, 71),
                                  _archive_line("p3", "2026-01-10T08:00:00Z", 118, 75)]}.items():  # a week apart
        (archive / f"patient_id={patient}").mkdir(parents=True)
        (archive / f"patient_id={patient}" / "batch-x-000000000000-00000.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    es.index(index=dashboard_data.elasticsearch.trends_index, id="sustained|p1", refresh=True, document={
        "scope": "sustained", "period": "7 days/1 day", "patient_id": "p1", "window_start": "2025-12-27T00:00:00Z",
        "window_end": "2026-01-03T00:00:00Z", "systolic_mean": 148.5, "diastolic_mean": 93.0, "readings": 5,
        "is_sustained": True})
    # a window ending a week after p1's last reading: a week not lived yet, not drawn
    es.index(index=dashboard_data.elasticsearch.trends_index, id="sustained|p1|late", refresh=True, document={
        "scope": "sustained", "period": "7 days/1 day", "patient_id": "p1", "window_start": "2026-01-02T00:00:00Z",
        "window_end": "2026-01-09T00:00:00Z", "systolic_mean": 121.0, "diastolic_mean": 79.0, "readings": 1,
        "is_sustained": False})
    es.index(index=dashboard_data.elasticsearch.goals_index, id="goal-p1", refresh=True, document={
        "goal_id": "goal-p1", "patient_id": "p1", "lifecycle_status": "active", "active": True,
        "start": "2025-12-01T00:00:00Z", "systolic": {"high": 130.0, "high_inclusive": True},
        "diastolic": {"high": 80.0, "high_inclusive": False}})
    config = load_config(env={}, overrides={**{f"elasticsearch.{kind}_index": getattr(
        dashboard_data.elasticsearch, f"{kind}_index") for kind in INDEX_KINDS}, "paths.archive_dir": str(archive)})
    output = tmp_path / "report.html"
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), "--output", str(output)],
                            env=job_env(config), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "3 patients" in result.stdout

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)

    def shown() -> dict:
        return driver.execute_script("""
            const readings = document.getElementById('patient-readings').data;
            const weeks = document.getElementById('patient-weeks').data;
            const shapes = document.getElementById('patient-readings').layout.shapes;
            return {patient: document.getElementById('patient-view').dataset.patient,
                    systolic: readings[0].y, diastolic: readings[1].y,
                    target: shapes.filter(s => s.label && s.label.text && s.label.text.startsWith('target')).map(s => s.label.text),
                    red: readings[0].marker.color.filter(c => c === '#d62728').length,
                    weeks: weeks[0].y,
                    alerts: Array.from(document.querySelectorAll('#patient-alerts tbody tr'))
                                 .map(tr => Array.from(tr.cells).map(td => td.textContent)),
                    episodes: Array.from(document.querySelectorAll('#patient-episodes tbody tr'))
                                   .map(tr => Array.from(tr.cells).map(td => td.textContent))};""")
    try:
        driver.get(output.as_uri())
        options_shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#patient-select option')).map(o => o.value)")
        assert options_shown == ["p1", "p2", "p3"]  # alerts first, then abnormal readings, then the archive's
        first = shown()
        assert first["patient"] == "p1"
        assert first["systolic"] == [150, 190, 118, 135, 121] and first["diastolic"] == [85, 125, 76, 95, 79]  # in time
        assert first["red"] == 3 and first["weeks"] == [148.5]
        assert first["target"] == ["target systolic <= 130", "target diastolic < 80"]  # p1's own Goal, dotted
        assert [row[1] for row in first["alerts"]] == ["sustained_hypertension", "critical_reading"]
        # p1's alert episodes, as the care team works them: the open critical one first
        assert [(row[0], row[1], row[2]) for row in first["episodes"]] == [
            ("open", "critical", "critical_reading"), ("acknowledged", "warning", "above_target")]
        assert "sustained hypertension: mean 158/101 mmHg over 12 readings in 7 days (limit 135/85)" in first["alerts"][0]

        driver.execute_script("const s = document.getElementById('patient-select'); s.value = 'p2';"
                              "s.dispatchEvent(new Event('change'));")
        second = shown()
        assert (second["patient"], second["systolic"], second["red"], second["weeks"]) == ("p2", [85], 1, [])
        assert second["target"] == []  # no Goal
        assert second["alerts"] == [["no alerts"]]
        assert [row[0] for row in second["episodes"]] == ["resolved"]

        driver.find_element("id", "patient-search").send_keys("p3")
        third = shown()
        # a week without readings is a gap in the line, not a slope across it
        assert (third["patient"], third["systolic"], third["diastolic"], third["red"]) == (
            "p3", [112, None, 118], [71, None, 75], 0)
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


def test_the_patient_dashboard_and_the_drilldown_to_it(es: Elasticsearch, dashboard_data: Config) -> None:
    """A "Patient" dashboard (one patient's abnormal readings, daily peaks, weekly means and
    alerts, a single-patient control), reached from the main dashboard's patient table by a
    dashboard drilldown that carries the clicked patient's filter; its queries, with that filter,
    return the patient's data on the real Elasticsearch."""
    objects = load_saved_objects()
    by_id = {o["id"]: o for o in objects}
    patient = by_id["bp-patient"]
    assert patient["type"] == "dashboard" and patient["attributes"]["title"] == "Patient"
    control, = json.loads(patient["attributes"]["controlGroupInput"]["panelsJSON"]).values()
    assert control["explicitInput"]["fieldName"] == "patient_id" and control["explicitInput"]["singleSelect"]
    main = by_id[DASHBOARD_ID]
    table = next(p for p in json.loads(main["attributes"]["panelsJSON"]) if p["panelRefName"] == "panel_3")
    assert next(r["id"] for r in main["references"] if r["name"] == "3:panel_3") == "bp-top-patients"
    event, = table["embeddableConfig"]["enhancements"]["dynamicActions"]["events"]
    assert event["action"]["factoryId"] == "DASHBOARD_TO_DASHBOARD_DRILLDOWN" and event["triggers"] == ["FILTER_TRIGGER"]
    assert event["action"]["config"]["useCurrentFilters"]  # the clicked patient goes along
    target = f"3:drilldown:DASHBOARD_TO_DASHBOARD_DRILLDOWN:{event['eventId']}:dashboardId"
    assert {r["name"]: r["id"] for r in main["references"]}[target] == "bp-patient"

    bound = lambda high: {"high": high, "high_inclusive": False}  # noqa: E731
    bulk(es, [{"_index": dashboard_data.elasticsearch.goals_index, "_id": g, "goal_id": g, "patient_id": p,
               "lifecycle_status": "active", "active": True, "start": start, "version_time": start,
               "systolic": bound(s), "diastolic": bound(d)}
              for g, p, start, s, d in (("g1", "p1", "2025-06-01T00:00:00+00:00", 160, 100),
                                        ("g2", "p2", "2025-07-01T00:00:00+00:00", 130, 80))], refresh=True)
    views = {view_id: {"title": index} for view_id, index in data_view_indices(dashboard_data).items()}
    refs = {r["name"].split(":", 1)[1]: r["id"] for r in patient["references"] if ":panel_" in r["name"]}
    results = {}
    for item in json.loads(patient["attributes"]["panelsJSON"]):
        built = query_of(by_id[refs[item["panelRefName"]]], views)
        built.body["query"]["bool"]["filter"].append({"term": {"patient_id": "p1"}})  # what the drilldown's filter does
        results[built.id] = rows(built, es.search(index=built.index, **built.body))
    assert [(r["key"][:13], r["1"], r["3"]) for r in results["bp-patient-abnormal"]] == [
        ("2026-01-01T08", 150.0, 85.0), ("2026-01-01T09", 190.0, 125.0), ("2026-01-02T08", 135.0, 95.0)]
    assert [(r["key"][:10], r["1"], r["3"]) for r in results["bp-patient-daily"]] == [("2026-01-01", 250.0, 150.0)]
    assert [r["alert_type"] for r in results["bp-patient-alerts"]] == ["sustained_hypertension", "critical_reading"]
    assert [(r["kind"], r["status"]) for r in results["bp-patient-episodes"]] == [
        ("critical_reading", "open"), ("above_target", "acknowledged")]
    # the patient's own target, set months before the readings, and where their readings stand
    assert sorted((r["key"], r["1"]) for r in results["bp-patient-target-status"]) == [("above", 1), ("met", 2)]
    assert [(r["goal_id"], r["active"], r["systolic"]["high"], r["diastolic"]["high"])
            for r in results["bp-patient-targets"]] == [("g1", True, 160, 100)]
