"""The report's patient view: pick a patient, see their pressures, alert episodes, alerting
readings and weekly means.

A nurse or physician first asks "show me this patient's pressures". For the patients with the
most recent alerts first (then those with most abnormal readings, then the rest of the
archive's), up to ``--patients`` of them, the report embeds:

- every reading: abnormal ones from the anomaly index, normal ones from the archive when it is
  on this machine's file system (a reading sent as two Observations is put back together);
- their alerts (critical readings, onsets of sustained hypertension), every column in full;
- their 7-day sustained windows (the trends index): mean systolic and diastolic, and whether
  the window was sustained hypertension.

The page draws the chosen patient's charts with the embedded plotly.js: no server, offline.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import orjson
from elasticsearch import Elasticsearch

from bp_spark.archive.layout import PATIENT_PREFIX, archived_lines, patient_ids
from bp_spark.clinical.classify import ELEVATED_SYSTOLIC, STAGE_1_SYSTOLIC, limits, rules_for
from bp_spark.config import Config
from bp_spark.parse import DIASTOLIC_CODINGS, PANEL_CODINGS, SYSTOLIC_CODINGS
from bp_spark.trends.windows import SUSTAINED

DEFAULT_PATIENTS = 200
# The latest readings of a patient the page holds, at most.
READINGS_PER_PATIENT = 1000
PAGE = 10_000


def _ms(value) -> int | None:
    """A date from the index (epoch milliseconds, or ISO 8601 as a test may write it) in epoch ms."""
    if value is None or isinstance(value, (int, float)):
        return value
    return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _search_all(es: Elasticsearch, index: str, query: dict, fields: list[str], sort: list[dict]) -> list[dict]:
    """Every matching document's ``fields``, page by page (search_after)."""
    if not es.indices.exists(index=index):
        return []
    found, after = [], None
    while True:
        page = es.search(index=index, query=query, size=PAGE, sort=sort + [{"_doc": "asc"}], source=fields,
                         search_after=after)["hits"]["hits"]
        found += [hit["_source"] for hit in page]
        if len(page) < PAGE:
            return found
        after = page[-1]["sort"]


def _terms(es: Elasticsearch, index: str, size: int, order: dict | None = None, aggs: dict | None = None) -> list[str]:
    if not es.indices.exists(index=index):
        return []
    terms = {"field": "patient_id", "size": size, **({"order": order} if order else {})}
    result = es.search(index=index, size=0, aggs={"p": {"terms": terms, **({"aggs": aggs} if aggs else {})}})
    return [bucket["key"] for bucket in result["aggregations"]["p"]["buckets"]]


def chosen_patients(es: Elasticsearch, config: Config, archive: Path | None, limit: int) -> list[str]:
    """Patients with alerts (latest first), then with abnormal readings (most first), then the archive's."""
    e = config.elasticsearch
    ordered = _terms(es, e.alerts_index, limit, {"latest": "desc"}, {"latest": {"max": {"field": "effective_time"}}})
    ordered += _terms(es, e.anomalies_index, limit)
    if archive is not None and archive.is_dir():
        ordered += patient_ids(archive)
    return list(dict.fromkeys(ordered))[:limit]


def _coded(concept: dict | None, codings: tuple) -> bool:
    return any((c.get("system"), c.get("code")) in codings for c in (concept or {}).get("coding") or [])


def archived_readings(archive: Path, patient_id: str) -> list[list]:
    """A patient's normal readings from the archive, [epoch ms, systolic, diastolic]; the two
    Observations of a reading sent as two are put back together by their effective time."""
    readings, halves = [], defaultdict(dict)
    for line in archived_lines(archive, f"{PATIENT_PREFIX}{patient_id}"):
        obs = orjson.loads(line)
        when = _ms(obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start"))
        if _coded(obs.get("code"), PANEL_CODINGS):
            values = {}
            for component in obs.get("component") or []:
                for kind, codings in (("s", SYSTOLIC_CODINGS), ("d", DIASTOLIC_CODINGS)):
                    if _coded(component.get("code"), codings):
                        values[kind] = (component.get("valueQuantity") or {}).get("value")
            readings.append([when, values.get("s"), values.get("d")])
        else:
            kind = "s" if _coded(obs.get("code"), SYSTOLIC_CODINGS) else "d"
            halves[when][kind] = (obs.get("valueQuantity") or {}).get("value")
    readings += [[when, pair.get("s"), pair.get("d")] for when, pair in halves.items()]
    return readings


def patient_data(es: Elasticsearch, config: Config, archive: Path | None, limit: int = DEFAULT_PATIENTS) -> dict:
    """What the page embeds: the thresholds and, per chosen patient, readings, alerts and weekly means."""
    e, rules = config.elasticsearch, rules_for(config)
    t = limits(rules, rules.setting)
    patients = chosen_patients(es, config, archive, limit)
    of_chosen = {"terms": {"patient_id": patients}}
    by_patient: dict[str, dict] = {p: {"id": p, "readings": [], "alerts": [], "episodes": [], "weeks": []}
                                   for p in patients}
    if patients:
        for doc in _search_all(es, e.anomalies_index, of_chosen, ["patient_id", "effective_time", "systolic",
                                                                  "diastolic", "category"], [{"effective_time": "asc"}]):
            by_patient[doc["patient_id"]]["readings"].append(
                [_ms(doc["effective_time"]), doc["systolic"], doc["diastolic"], doc.get("category")])
        for doc in _search_all(es, e.alerts_index, of_chosen, ["patient_id", "effective_time", "alert_type", "reason",
                                                               "severity"], [{"effective_time": "desc"}]):
            by_patient[doc["patient_id"]]["alerts"].append(
                [_ms(doc["effective_time"]), doc["alert_type"], doc.get("reason", ""), doc.get("severity", "")])
        # Their alert episodes as the care team works them: active first, critical first, oldest page first.
        for doc in _search_all(es, e.episodes_index, of_chosen, ["patient_id", "status", "severity", "kind", "reason",
                                                                 "opened_at", "readings_count", "escalation_level"],
                               [{"triage_rank": "asc"}, {"paged_at": "asc"}]):
            by_patient[doc["patient_id"]]["episodes"].append(
                [doc.get("status", ""), doc.get("severity", ""), doc.get("kind", ""), _ms(doc.get("opened_at")),
                 doc.get("readings_count", 0), doc.get("escalation_level", 0), doc.get("reason", "")])
        weekly = {"bool": {"filter": [of_chosen, {"term": {"scope": SUSTAINED}}]}}
        for doc in _search_all(es, e.trends_index, weekly, ["patient_id", "window_end", "systolic_mean",
                                                            "diastolic_mean", "readings", "is_sustained"],
                               [{"window_end": "asc"}]):
            by_patient[doc["patient_id"]]["weeks"].append(
                [_ms(doc["window_end"]), doc["systolic_mean"], doc["diastolic_mean"], doc["readings"],
                 bool(doc.get("is_sustained"))])
        # Each patient's target: the active Goal with the latest start (docs/clinical.md).
        for doc in _search_all(es, e.goals_index, {"bool": {"filter": [of_chosen, {"term": {"active": True}}]}},
                               ["patient_id", "goal_id", "start", "systolic", "diastolic"], [{"start": "asc"}]):
            by_patient[doc["patient_id"]]["target"] = {
                "goal": doc["goal_id"], "start": _ms(doc.get("start")),
                **{f"{side}_{end}": (doc.get(side) or {}).get(end) for side in ("systolic", "diastolic")
                   for end in ("low", "high")},
                **{f"{side}_{end}_op": ("<=" if end == "high" else ">=") if (doc.get(side) or {}).get(
                    f"{end}_inclusive", True) else ("<" if end == "high" else ">")
                   for side in ("systolic", "diastolic") for end in ("low", "high")}}
    for patient in by_patient.values():
        if archive is not None:
            patient["readings"] += [[when, s, d, None] for when, s, d in archived_readings(archive, patient["id"])]
        patient["readings"] = sorted((r for r in patient["readings"] if r[0] is not None),
                                     key=lambda r: r[0])[-READINGS_PER_PATIENT:]
    return {
        # The profile's limits for the configured setting (docs/clinical.md): ">" under mission, ">=" otherwise.
        "thresholds": {"profile": rules.profile.name, "setting": rules.setting,
                       "high_op": rules.profile.high[rules.setting][0].op,
                       "systolic_high": t["systolic_high"], "systolic_low": t["systolic_low"],
                       "diastolic_high": t["diastolic_high"], "diastolic_low": t["diastolic_low"],
                       "sustained_systolic": config.trends.sustained_systolic,
                       "sustained_diastolic": config.trends.sustained_diastolic,
                       "elevated": ELEVATED_SYSTOLIC, "stage_1": STAGE_1_SYSTOLIC},
        "archive": archive is not None,
        "patients": list(by_patient.values()),
    }


def local_archive(config: Config) -> Path | None:
    """The archive's folder when it is a local path (normal readings are read from it), else None."""
    uri = config.paths.archive_dir
    if "://" in uri and not uri.startswith("file:"):
        return None
    return Path(uri.removeprefix("file://").removeprefix("file:"))


def section(data: dict) -> str:
    """The patient view: a searchable picker, the chosen patient's charts and alerts, and the
    script that draws them from the embedded data."""
    options = "".join(
        f'<option value="{html.escape(p["id"])}">{html.escape(p["id"])}'
        + (f' ({len(p["alerts"])} alert{"s" * (len(p["alerts"]) != 1)})' if p["alerts"] else "") + "</option>"
        for p in data["patients"])
    note = "" if data["archive"] else (
        '<p class="note">Normal readings are in an archive this machine cannot read: abnormal ones only.</p>')
    # </script> inside the data would end the script early: JSON escapes "/" as \u002f here.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\u002f")
    return f"""<section id="patient-view">
<h2>Patient</h2>
<p>The patients with the most recent alerts first. {len(data["patients"])} patients.</p>{note}
<div class="picker"><input id="patient-search" type="search" placeholder="Search a patient id" autocomplete="off">
<select id="patient-select">{options}</select></div>
<div id="patient-readings" class="patient-chart"></div>
<div id="patient-weeks" class="patient-chart"></div>
<h3>Alert episodes</h3>
<div class="rows-wrap"><table class="rows" id="patient-episodes"><thead><tr><th>status</th><th>severity</th>
<th>kind</th><th>opened</th><th>readings</th><th>escalation</th><th>reason</th></tr></thead><tbody></tbody></table></div>
<h3>Alerting readings</h3>
<div class="rows-wrap"><table class="rows" id="patient-alerts"><thead><tr><th>effective time</th><th>alert type</th>
<th>reason</th><th>severity</th></tr></thead><tbody></tbody></table></div>
</section>
<script>
const PATIENT_DATA = {payload};
{SCRIPT}
</script>"""


SCRIPT = r"""
(function () {
  const byId = new Map(PATIENT_DATA.patients.map(p => [p.id, p]));
  const t = PATIENT_DATA.thresholds;
  const select = document.getElementById("patient-select");
  const search = document.getElementById("patient-search");
  const when = ms => new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  const band = (y0, y1, color) => ({type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: y0, y1: y1,
    fillcolor: color, opacity: 0.12, line: {width: 0}, layer: "below"});
  const limit = (y, color, text, where) => ({type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: y, y1: y,
    line: {color: color, width: 1, dash: "dash"}, label: {text: text, textposition: where || "end", font: {size: 10}}});

  // The patient's own target (a FHIR Goal): each bound it sets, dotted, labelled as the Goal says it.
  function targetLines(target) {
    if (!target) return [];
    const lines = [];
    for (const [side, color, where] of [["systolic", "#8c564b", "end"], ["diastolic", "#e377c2", "start"]]) {
      for (const end of ["high", "low"]) {
        const value = target[side + "_" + end];
        if (value === null || value === undefined) continue;
        const line = limit(value, color, "target " + side + " " + target[side + "_" + end + "_op"] + " " + value, where);
        line.line.dash = "dot";
        line.line.width = 2;
        lines.push(line);
      }
    }
    return lines;
  }

  // A line joins points no further apart than this; a longer silence is drawn as a gap.
  const GAP_MS = 2 * 86400000;
  const DAY_MS = 86400000;
  function withGaps(points) {
    const out = [];
    points.forEach((point, i) => {
      if (i > 0 && point[0] - points[i - 1][0] > GAP_MS) out.push(null);
      out.push(point);
    });
    return out;
  }

  function drawReadings(p) {
    const points = withGaps(p.readings);
    const x = points.map(r => r === null ? null : new Date(r[0]));
    const abnormal = points.map(r => r !== null && r[3] !== null);
    const marker = base => ({color: abnormal.map(a => a ? "#d62728" : base), size: abnormal.map(a => a ? 8 : 5)});
    const text = points.map(r => r === null ? "" : r[3] === null ? "normal" : r[3].replaceAll("_", " "));
    Plotly.react("patient-readings", [
      {x: x, y: points.map(r => r === null ? null : r[1]), name: "systolic", mode: "lines+markers",
       marker: marker("#1f77b4"), line: {color: "#1f77b4"}, text: text, connectgaps: false},
      {x: x, y: points.map(r => r === null ? null : r[2]), name: "diastolic", mode: "lines+markers",
       marker: marker("#2ca02c"), line: {color: "#2ca02c"}, text: text, connectgaps: false},
    ], {
      title: {text: "Readings of " + p.id + " (abnormal in red; AHA systolic bands shaded; " + t.profile
                    + " limits" + (p.target ? ", the patient's own target dotted)" : ")")},
      yaxis: {title: "mmHg"}, margin: {l: 50, r: 20, t: 60, b: 50}, legend: {orientation: "h"},
      shapes: [band(0, t.elevated, "#2ca02c"), band(t.elevated, t.stage_1, "#ffdd57"),
               band(t.stage_1, t.systolic_high, "#ff9f40"), band(t.systolic_high, 300, "#d62728"),
               limit(t.systolic_high, "#d62728", "systolic " + t.high_op + " " + t.systolic_high),
               limit(t.systolic_low, "#1f77b4", "systolic < " + t.systolic_low),
               limit(t.diastolic_high, "#9467bd", "diastolic " + t.high_op + " " + t.diastolic_high, "start"),
               limit(t.diastolic_low, "#2ca02c", "diastolic < " + t.diastolic_low, "start"),
               ...targetLines(p.target)],
    }, {displaylogo: false, responsive: true});
  }

  function drawWeeks(p) {
    // Each mean at the end of the week it describes; the windows that end more than a day after
    // the patient's last reading describe days not lived yet, and are left out.
    const last = p.readings.length ? Math.max(...p.readings.map(r => r[0])) : Infinity;
    const points = withGaps(p.weeks.filter(w => w[0] <= last + DAY_MS));
    const x = points.map(w => w === null ? null : new Date(w[0]));
    const sustained = points.map(w => w !== null && w[4] ? "#d62728" : "#7f7f7f");
    Plotly.react("patient-weeks", [
      {x: x, y: points.map(w => w === null ? null : w[1]), name: "7-day mean systolic", mode: "lines+markers",
       marker: {color: sustained}, connectgaps: false},
      {x: x, y: points.map(w => w === null ? null : w[2]), name: "7-day mean diastolic", mode: "lines+markers",
       marker: {color: sustained}, connectgaps: false},
    ], {
      title: {text: "7-day sustained means of " + p.id + " (sustained hypertension in red)"},
      yaxis: {title: "mmHg"}, margin: {l: 50, r: 20, t: 60, b: 50}, legend: {orientation: "h"},
      shapes: [limit(t.sustained_systolic, "#d62728", "systolic " + t.sustained_systolic),
               limit(t.sustained_diastolic, "#9467bd", "diastolic " + t.sustained_diastolic, "start")],
    }, {displaylogo: false, responsive: true});
  }

  function drawAlerts(p) {
    const body = document.querySelector("#patient-alerts tbody");
    body.replaceChildren();
    if (!p.alerts.length) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 4;
      cell.textContent = "no alerts";
      return;
    }
    for (const a of p.alerts) {
      const row = body.insertRow();
      [when(a[0]), a[1], a[2], a[3]].forEach((value, i) => {
        const cell = row.insertCell();
        cell.textContent = value;
        if (i === 2) cell.className = "col-reason";
      });
    }
  }

  function drawEpisodes(p) {
    const body = document.querySelector("#patient-episodes tbody");
    body.replaceChildren();
    if (!p.episodes.length) {
      const cell = body.insertRow().insertCell();
      cell.colSpan = 7;
      cell.textContent = "no alert episodes";
      return;
    }
    for (const e of p.episodes) {
      const row = body.insertRow();
      [e[0], e[1], e[2], when(e[3]), e[4], e[5], e[6]].forEach((value, i) => {
        const cell = row.insertCell();
        cell.textContent = value;
        if (i === 6) cell.className = "col-reason";
      });
    }
  }

  function show(id) {
    const p = byId.get(id);
    if (!p) return;
    document.getElementById("patient-view").dataset.patient = id;
    drawReadings(p);
    drawWeeks(p);
    drawEpisodes(p);
    drawAlerts(p);
  }

  select.addEventListener("change", () => show(select.value));
  search.addEventListener("input", () => {
    const wanted = search.value.trim().toLowerCase();
    let first = null;
    for (const option of select.options) {
      option.hidden = wanted !== "" && !option.value.toLowerCase().includes(wanted);
      if (!option.hidden && first === null) first = option;
    }
    if (first !== null && first.value !== select.value) {
      select.value = first.value;
      show(first.value);
    }
  });
  if (select.options.length) show(select.options[0].value);
})();
"""
