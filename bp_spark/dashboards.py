"""The dashboard as code: Kibana saved objects in ``conf/kibana/``, and each visualisation's
aggregation as the Elasticsearch query it stands for.

The saved objects are aggregation-based visualisations (``visState``: a metric and a bucket
aggregation over one data view, with a KQL filter of ``field : "value"`` terms), so the same
definition drives Kibana, the HTML report of ``jobs/report.py`` where there is no Kibana, and
the tests that run every panel's query against a real Elasticsearch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bp_spark.config import Config

KIBANA_DIR = Path(__file__).resolve().parent.parent / "conf" / "kibana"
SAVED_OBJECTS = KIBANA_DIR / "saved_objects.ndjson"
ALERT_RULE = KIBANA_DIR / "alert_rule.json"
DASHBOARD_ID = "bp-monitoring"
# One patient's dashboard, reached from the main one's patient table (a dashboard drilldown).
PATIENT_DASHBOARD_ID = "bp-patient"

_KQL_TERM = re.compile(r'^\s*([\w.]+)\s*:\s*"([^"]*)"\s*$')
_INTERVALS = {"d": "1d", "h": "1h", "w": "1w", "M": "1M"}


def load_saved_objects(path: Path = SAVED_OBJECTS) -> list[dict[str, Any]]:
    """The NDJSON export, one object per line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kql_filters(kql: str) -> list[dict[str, Any]]:
    """``a : "x" and b : "y"`` as term filters (the only KQL the saved objects use)."""
    if not kql.strip():
        return []
    filters = []
    for part in re.split(r"\s+and\s+", kql.strip()):
        match = _KQL_TERM.match(part)
        if not match:
            raise ValueError(f"unsupported KQL in a saved object: {part!r} (only field : \"value\" joined by and)")
        filters.append({"term": {match.group(1): match.group(2)}})
    return filters


@dataclass(frozen=True)
class Panel:
    """One visualisation (or saved search) with the index and query it runs."""

    id: str
    title: str
    kind: str  # pie, histogram, line, table, search
    index: str
    body: dict[str, Any]
    metrics: list[dict[str, Any]]  # [{"id", "type", "field"}]
    bucket: dict[str, Any] | None  # {"id", "type", "field"}
    columns: list[str]


def _data_views(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["id"]: o["attributes"] for o in objects if o["type"] == "index-pattern"}


def _index_of(obj: dict[str, Any], views: dict[str, dict[str, Any]]) -> str:
    ref = next(r for r in obj["references"] if r["name"] == "kibanaSavedObjectMeta.searchSourceJSON.index")
    return views[ref["id"]]["title"]


def _bucket_agg(agg: dict[str, Any], order_metric: dict[str, Any] | None) -> dict[str, Any]:
    params = agg["params"]
    if agg["type"] == "terms":
        order_key = "_count" if order_metric is None or order_metric["type"] == "count" else order_metric["id"]
        return {"terms": {"field": params["field"], "size": params.get("size", 10), "order": {order_key: params.get("order", "desc")}}}
    if agg["type"] == "date_histogram":
        interval = params.get("interval", "auto")
        histogram = {"field": params["field"], "min_doc_count": params.get("min_doc_count", 1)}
        if interval == "auto":
            histogram["fixed_interval"] = "1m"
        else:
            histogram["calendar_interval"] = _INTERVALS[interval]
        return {"date_histogram": histogram}
    raise ValueError(f"unsupported bucket aggregation {agg['type']}")


def panel(obj: dict[str, Any], views: dict[str, dict[str, Any]]) -> Panel:
    """The Elasticsearch query a visualisation or saved search stands for."""
    attributes = obj["attributes"]
    search = json.loads(attributes["kibanaSavedObjectMeta"]["searchSourceJSON"])
    query = {"bool": {"filter": kql_filters(search.get("query", {}).get("query", ""))}}
    index = _index_of(obj, views)
    if obj["type"] == "search":
        sort = [{field: direction} for field, direction in attributes["sort"]]
        body = {"size": 20, "query": query, "sort": sort,
                "_source": attributes["columns"] + [field for field, _ in attributes["sort"]]}
        return Panel(obj["id"], attributes["title"], "search", index, body, [], None, attributes["columns"])
    state = json.loads(attributes["visState"])
    aggs = [a for a in state["aggs"] if a.get("enabled", True)]
    metrics = [{"id": a["id"], "type": a["type"], "field": a["params"].get("field")} for a in aggs if a["schema"] == "metric"]
    buckets = [a for a in aggs if a["schema"] in ("segment", "bucket")]
    if len(buckets) != 1:
        raise ValueError(f"{obj['id']}: expected one bucket aggregation, found {len(buckets)}")
    order_by = buckets[0]["params"].get("orderBy")
    order_metric = next((m for m in metrics if m["id"] == order_by), None)
    sub_aggs = {m["id"]: {m["type"]: {"field": m["field"]}} for m in metrics if m["type"] != "count"}
    bucket_body = _bucket_agg(buckets[0], order_metric)
    if sub_aggs:
        bucket_body["aggs"] = sub_aggs
    body = {"size": 0, "query": query, "aggs": {"buckets": bucket_body}}
    bucket = {"id": buckets[0]["id"], "type": buckets[0]["type"], "field": buckets[0]["params"]["field"]}
    return Panel(obj["id"], attributes["title"], state["type"], index, body, metrics, bucket, [])


def data_view_indices(config: Config) -> dict[str, str]:
    """The index behind each data view of the saved objects, as the configuration names it."""
    e = config.elasticsearch
    return {"bp-anomalies": e.anomalies_index, "bp-alerts": e.alerts_index, "bp-trends": e.trends_index,
            "bp-metrics": e.metrics_index, "bp-goals": e.goals_index, "bp-episodes": e.episodes_index}


def dashboard_panels(objects: list[dict[str, Any]] | None = None,
                     indices: dict[str, str] | None = None) -> list[Panel]:
    """The dashboard's panels in layout order (top to bottom, left to right); ``indices``
    (data view id -> index) points the data views at other indices than their titles."""
    objects = objects if objects is not None else load_saved_objects()
    views = _data_views(objects)
    for view_id, index in (indices or {}).items():
        views[view_id] = {**views[view_id], "title": index}
    by_id = {o["id"]: o for o in objects}
    dashboard = by_id[DASHBOARD_ID]
    refs = {r["name"].split(":", 1)[1]: r["id"] for r in dashboard["references"] if ":panel_" in r["name"]}
    layout = sorted(json.loads(dashboard["attributes"]["panelsJSON"]), key=lambda p: (p["gridData"]["y"], p["gridData"]["x"]))
    return [panel(by_id[refs[p["panelRefName"]]], views) for p in layout]


def rows(panel_: Panel, response: dict[str, Any]) -> list[dict[str, Any]]:
    """A panel's result as rows: ``{"key": bucket key, "<metric id>": value, ...}``, or the hits."""
    if panel_.kind == "search":
        return [hit["_source"] for hit in response["hits"]["hits"]]
    out = []
    for bucket in response["aggregations"]["buckets"]["buckets"]:
        row = {"key": bucket.get("key_as_string", bucket["key"])}
        for metric in panel_.metrics:
            row[metric["id"]] = bucket["doc_count"] if metric["type"] == "count" else bucket[metric["id"]]["value"]
        out.append(row)
    return out
