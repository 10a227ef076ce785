"""The dashboard without Kibana: one self-contained HTML file with the same panels as the
Kibana dashboard (conf/kibana/), as interactive Plotly charts, and the summary counts.

    python jobs/report.py [--output var/report.html] [--es-url URL]

Each panel runs the query its Kibana visualisation stands for (bp_spark/dashboards.py)
against Elasticsearch. Below them, a patient view: pick a patient (those with the latest alerts
first, or search by id) to see their readings over time against the anomaly thresholds and AHA
bands, their alerts and their 7-day means (bp_spark/patient_view.py). The file embeds plotly.js
and its data, so it opens offline in any browser; it names patients, so it is its owner's alone.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bp_spark.config import ConfigError, add_config_flags, load_config_from_args  # noqa: E402
from bp_spark.dashboards import Panel, dashboard_panels, data_view_indices, rows  # noqa: E402
from bp_spark.elastic import (ElasticsearchUnavailable, count_documents, distinct_count, make_client,  # noqa: E402
                              probe_cluster, refresh_indices)
from bp_spark import patient_view  # noqa: E402

METRIC_NAMES = {"count": "readings", "cardinality": "distinct", "max": "max", "sum": "sum"}


def metric_label(metric: dict) -> str:
    return METRIC_NAMES[metric["type"]] + (f" {metric['field']}" if metric["field"] else "")


def readable(column: str, value: object) -> str:
    """A cell's text: dates (epoch milliseconds in the index) as UTC times."""
    if isinstance(value, (int, float)) and column.endswith("_time"):
        return datetime.fromtimestamp(value / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def rows_table(panel: Panel, data: list[dict]) -> str:
    """A saved search (the latest alerts) as an HTML table: columns as wide as their values, every
    value in full (a chart's table cuts what does not fit its equal columns)."""
    columns = panel.columns + [c for c in (data[0] if data else {}) if c not in panel.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="col-{html.escape(c)}">{html.escape(readable(c, row.get(c, "")))}</td>'
                                    for c in columns) + "</tr>" for row in data)
    return (f'<h3>{html.escape(panel.title)}</h3><div class="rows-wrap"><table class="rows" id="panel-{panel.id}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def figure(panel: Panel, data: list[dict]) -> go.Figure:
    """The panel's chart: pie and bars for terms, lines for date histograms, tables for the rest."""
    if panel.kind == "table":
        cells = [[row["key"] for row in data]] + [[row[m["id"]] for row in data] for m in panel.metrics]
        fig = go.Figure(go.Table(header={"values": [panel.bucket["field"]] + [metric_label(m) for m in panel.metrics]},
                                 cells={"values": cells}))
    elif panel.kind == "pie":
        metric = panel.metrics[0]
        fig = go.Figure(go.Pie(labels=[r["key"] for r in data], values=[r[metric["id"]] for r in data], hole=0.4,
                               textposition="inside", sort=False))
    else:
        trace = go.Bar if panel.kind == "histogram" else go.Scatter
        fig = go.Figure([trace(x=[r["key"] for r in data], y=[r[m["id"]] for r in data], name=metric_label(m))
                         for m in panel.metrics])
    fig.update_layout(title=panel.title, autosize=True, margin={"l": 50, "r": 20, "t": 60, "b": 50})
    return fig


def summary_counts(es, config) -> list[tuple[str, int]]:
    e = config.elasticsearch
    return [
        ("abnormal readings", count_documents(es, e.anomalies_index)),
        ("patients with abnormal readings", distinct_count(es, e.anomalies_index, "patient_id")),
        ("critical readings", count_documents(es, e.alerts_index, {"term": {"alert_type": "critical_reading"}})),
        ("onsets of sustained hypertension",
         count_documents(es, e.alerts_index, {"term": {"alert_type": "sustained_hypertension"}})),
        ("unreadable messages (dead letters)", count_documents(es, e.deadletter_index)),
        ("trend windows", count_documents(es, e.trends_index)),
    ]


def render(panels: list[tuple[Panel, list[dict]]], counts: list[tuple[str, int]], source: str,
           patients: str = "") -> str:
    """The whole page: summary counts, one chart per panel, then the patient view (its HTML)."""
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tiles = "".join(f'<div class="tile"><div class="n">{n:,}</div><div>{html.escape(label)}</div></div>'
                    for label, n in counts)
    charts = "".join(
        f'<section class="panel" data-panel="{html.escape(p.id)}">'
        + (rows_table(p, data) if p.kind == "search" else
           figure(p, data).to_html(full_html=False, include_plotlyjs=False, div_id=f"panel-{p.id}",
                                   default_width="100%", default_height="420px",
                                   config={"displaylogo": False, "responsive": True}))
        + "</section>" for p, data in panels)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Blood pressure monitoring</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
.tiles {{ display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0 24px; }}
.tile {{ border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px; min-width: 160px; }}
.tile .n {{ font-size: 28px; font-weight: 600; }}
.grid {{ display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }}
@media (max-width: 1100px) {{ .grid {{ grid-template-columns: minmax(0, 1fr); }} }}
.panel {{ border: 1px solid #eee; border-radius: 6px; min-width: 0; overflow: hidden; }}
.panel h3 {{ font-size: 17px; font-weight: 400; margin: 16px 16px 8px; }}
.rows-wrap {{ overflow-x: auto; padding: 0 16px 16px; }}
table.rows {{ border-collapse: collapse; font-size: 13px; }}
table.rows th, table.rows td {{ border-bottom: 1px solid #eee; padding: 4px 10px; text-align: left; white-space: nowrap;
  vertical-align: top; }}
table.rows td.col-reason {{ white-space: normal; min-width: 18em; }}
#patient-view {{ margin-top: 32px; border-top: 1px solid #ddd; }}
#patient-view .picker {{ display: flex; gap: 8px; margin: 8px 0 16px; }}
#patient-view .picker input, #patient-view .picker select {{ font-size: 15px; padding: 4px 8px; min-width: 16em; }}
.patient-chart {{ height: 420px; border: 1px solid #eee; border-radius: 6px; margin-bottom: 16px; }}
.note {{ color: #8a5a00; }}
</style>
<script>{get_plotlyjs()}</script></head>
<body><h1>Blood pressure monitoring</h1>
<p>From {html.escape(source)}, {created}. The panels of the Kibana dashboard "Blood pressure monitoring".</p>
<div class="tiles" id="summary">{tiles}</div>
<div class="grid">{charts}</div>
{patients}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(parser, ["es-url"])
    parser.add_argument("--output", default="var/report.html", help="where to write the HTML file (default var/report.html)")
    parser.add_argument("--patients", type=int, default=patient_view.DEFAULT_PATIENTS, metavar="N",
                        help=f"patients in the patient view, latest alerts first (default {patient_view.DEFAULT_PATIENTS})")
    args = parser.parse_args(argv)
    try:
        config = load_config_from_args(args)
        es = make_client(config)
        probe_cluster(es, config)
    except (ConfigError, ElasticsearchUnavailable) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    refresh_indices(es, config)
    results = []
    for p in dashboard_panels(indices=data_view_indices(config)):
        if es.indices.exists(index=p.index):
            results.append((p, rows(p, es.search(index=p.index, **p.body))))
        else:
            results.append((p, []))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    patients = patient_view.patient_data(es, config, patient_view.local_archive(config), args.patients)
    page = render(results, summary_counts(es, config), config.elasticsearch.url, patient_view.section(patients))
    # It names patients and their readings: readable by its owner only, also when it existed before.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(page)
    print(f"report: {output.resolve()} ({len(results)} panels, {len(patients['patients'])} patients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
