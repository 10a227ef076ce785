"""Trend windows as merges of partials, and the sustained windows summed from daily ones (pure Python).

A batch's partial windows (:func:`bp_spark.trends.windows.partial_windows`) are few: one per
patient and day the batch touched, and a handful for the cohort. They are merged on the driver
into the documents the trends index holds: counts and sums add, extremes and the peak take
the larger, the cohort's abnormal patients are a set union, so the document of a window is the
aggregate of all its readings whatever batches brought them.

**Exactly once.** Each document records the ``tag`` of the job (one per checkpoint) and the
last ``batch_id`` merged into it; a partial of a batch at or before that, from the same job,
is already in it and is not added again. A batch replayed after a crash, or partials merged
again because the job died after writing some windows and before forgetting them, change
nothing twice.

**Sustained hypertension** is a sliding window (``trends.sustained_window``, 7 days, sliding by
``trends.sustained_slide``, a day): each is the merge of the patient's daily windows inside it,
recomputed whole whenever one of those days changes (:func:`sustained`).

Times are epoch milliseconds throughout, as Elasticsearch returns the dates the job writes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timezone

from bp_spark.config import TrendsConfig
from bp_spark.config import duration_seconds as seconds
from bp_spark.trends.windows import ANOMALY_TYPES, COHORT, PATIENT, SUSTAINED, slide_period, sustained_period

# The measures a partial carries, and how two of them merge.
_SUMS = ("readings", "systolic_sum", "diastolic_sum", "abnormal_readings")
_MAXIMA = ("systolic_max", "diastolic_max", "last_reading_time")
_MINIMA = ("systolic_min", "diastolic_min")
# A window's identity and extent, carried unchanged through a merge.
_SLOT = ("trend_id", "scope", "period", "patient_id", "window_start", "window_end")


@functools.lru_cache(maxsize=65_536)
def _start_text(start_ms: int) -> str:
    return datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def window_id(scope: str, period: str, patient_id: str | None, start_ms: int) -> str:
    """``scope|period|patient|start`` as :func:`bp_spark.trends.windows.trend_id` makes it in
    Spark (a timestamp cast to text in UTC; no patient for the cohort)."""
    if patient_id is None:
        return f"{scope}|{period}|{_start_text(start_ms)}"
    return f"{scope}|{period}|{patient_id}|{_start_text(start_ms)}"


def epoch_ms(value: int | float | str | None) -> int | None:
    """A date as the index returns it (epoch milliseconds, or ISO 8601) in epoch milliseconds."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else int(value)
    return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _peak_key(peak: dict | None) -> tuple:
    """The order of :data:`bp_spark.trends.windows.PEAK_ORDER`, nulls first as Spark orders them."""
    peak = peak or {}
    return tuple((value is not None, value) if value is not None else (False, 0)
                 for value in (peak.get("systolic"), peak.get("diastolic"), peak.get("effective_time"),
                               peak.get("observation_id")))


def _reading(observation_id: str | None, patient_id: str, micros: int, systolic: float, diastolic: float,
             is_anomaly: bool | None, anomaly_types: list[str] | None) -> dict:
    """One reading as a window of one reading: its measures, its peak's time in microseconds
    (Spark compares the peak's time to the microsecond)."""
    kinds = set(anomaly_types or ())
    return {"readings": 1, "systolic_sum": systolic, "diastolic_sum": diastolic,
            "abnormal_readings": 1 if is_anomaly else 0, "systolic_max": systolic, "diastolic_max": diastolic,
            "last_reading_time": micros // 1000, "systolic_min": systolic, "diastolic_min": diastolic,
            "peak": {"observation_id": observation_id, "effective_time": micros, "systolic": systolic,
                     "diastolic": diastolic},
            "anomalies": {kind: int(kind in kinds) for kind in ANOMALY_TYPES},
            "_patient": patient_id if is_anomaly else None}


def partials_of(readings: Iterable[tuple], config: TrendsConfig) -> list[dict]:
    """The partial windows of ``readings``, computed on the driver: for a small batch, what
    :func:`~bp_spark.trends.windows.collect_partials` of :func:`~bp_spark.trends.windows.partial_windows`
    gives, without a Spark aggregation (its shuffle's stages cost a live batch a quarter of a
    second). ``readings``: tuples of :data:`~bp_spark.trends.windows.TREND_READING_COLUMNS`, the time in
    epoch microseconds, as :func:`~bp_spark.trends.windows.collect_readings` brings them (usable
    readings: both values and the time are there). Each reading is a window of one, and a partial the merge's total of its
    readings (:func:`_total`): the same windows, measures and peaks as Spark's (tests/test_trends.py
    compares them value for value)."""
    slots = [(scope, label, seconds(duration))
             for scope, windows in ((PATIENT, config.patient_window_list), (COHORT, config.window_list))
             for label, duration in windows]
    groups: dict[tuple, list[dict]] = {}
    for reading in readings:
        one, second = _reading(*reading), reading[2] // 1_000_000
        for scope, label, length in slots:
            key = (scope, label, reading[1] if scope == PATIENT else None, second // length * length, length)
            groups.setdefault(key, []).append(one)
    out = []
    for (scope, label, patient, start, length), members in groups.items():
        window = {"trend_id": window_id(scope, label, patient, start * 1000), "scope": scope, "period": label,
                  "patient_id": patient, "window_start": start * 1000, "window_end": (start + length) * 1000,
                  **_total(members)}
        window["peak"]["effective_time"] //= 1000  # in epoch milliseconds, as the partials' JSON has it
        if scope == COHORT:
            window["abnormal_patient_ids"] = sorted({w["_patient"] for w in members if w["_patient"] is not None})
        out.append(window)
    return out


def stored_window(doc: dict) -> dict:
    """A document of the trends index as a window to merge into: its measures, times in epoch
    milliseconds. A document written before the sums were stored gives them from its means."""
    window = {name: doc.get(name) for name in (*_SLOT, *_SUMS, *_MAXIMA, *_MINIMA)}
    for name in ("window_start", "window_end", "last_reading_time"):
        window[name] = epoch_ms(window[name])
    readings = doc["readings"]
    for side in ("systolic", "diastolic"):
        if window[f"{side}_sum"] is None:
            window[f"{side}_sum"] = doc[f"{side}_mean"] * readings
    peak = dict(doc.get("peak") or {})
    peak["effective_time"] = epoch_ms(peak.get("effective_time"))
    window["peak"] = peak
    window["anomalies"] = {kind: (doc.get("anomalies") or {}).get(kind, 0) for kind in ANOMALY_TYPES}
    if doc.get("scope") == COHORT:
        window["abnormal_patient_ids"] = list(doc.get("abnormal_patient_ids") or ())
    return window


def merge(a: dict | None, b: dict) -> dict:
    """The window holding the readings of both ``a`` and ``b`` (the same slot; ``a`` may be None)."""
    if a is None:
        return {**b, "peak": dict(b["peak"]), "anomalies": dict(b["anomalies"])}
    out = {**{name: b[name] for name in _SLOT}, **_total([a, b])}
    if out["scope"] == COHORT:
        out["abnormal_patient_ids"] = sorted(set(a.get("abnormal_patient_ids") or ())
                                             | set(b.get("abnormal_patient_ids") or ()))
    return out


def finish(window: dict, config: TrendsConfig) -> dict:
    """``window`` with what is derived from its measures: the means, the cohort's count of
    abnormal patients, and for a sustained window ``is_sustained`` (either mean at or above its
    limit, over at least ``sustained_min_readings`` readings)."""
    readings = window["readings"]
    out = {**window, "systolic_mean": window["systolic_sum"] / readings,
           "diastolic_mean": window["diastolic_sum"] / readings}
    if window["scope"] == COHORT:
        out["abnormal_patients"] = len(window["abnormal_patient_ids"])
    if window["scope"] == SUSTAINED:
        high = out["systolic_mean"] >= config.sustained_systolic or out["diastolic_mean"] >= config.sustained_diastolic
        out["is_sustained"] = high and readings >= config.sustained_min_readings
    return out


def _batch(doc: dict) -> int:
    batch_id = doc.get("batch_id")
    return -1 if batch_id is None else int(batch_id)


def merged_windows(stored: dict[str, dict], batches: list[tuple[int, list[dict]]], tag: str) -> dict[str, dict]:
    """The windows that ``batches`` (``(batch_id, partials)``, in batch order) change, merged
    into their ``stored`` documents: a partial is added unless the document already holds its
    batch (same ``tag``, ``batch_id`` at or after it). Each result carries the ``tag`` and the
    last ``batch_id`` merged into it; windows the batches leave as they were are left out."""
    out: dict[str, dict] = {}
    for batch_id, partials in batches:
        for partial in partials:
            doc = stored.get(partial["trend_id"])
            if doc is not None and doc.get("tag") == tag and _batch(doc) >= batch_id:
                continue  # this batch is in the document already
            window_id_ = partial["trend_id"]
            base = out.get(window_id_)
            if base is None and doc is not None:
                base = stored_window(doc)
            out[window_id_] = {**merge(base, partial), "tag": tag, "batch_id": batch_id}
    return out


def _starts(start_ms: int, config: TrendsConfig) -> list[int]:
    """The starts of the sustained windows that hold the slide-long window starting at ``start_ms``."""
    length, slide = seconds(config.sustained_window) * 1000, seconds(config.sustained_slide) * 1000
    return [start_ms - i * slide for i in range(length // slide)]


def daily_neighbours(updated: Iterable[dict], config: TrendsConfig) -> set[str]:
    """The ids of the daily windows a sustained window holding one of ``updated`` (daily windows)
    also holds: up to a sustained window's length on either side."""
    slide = seconds(config.sustained_slide) * 1000
    days = seconds(config.sustained_window) * 1000 // slide
    period = slide_period(config)
    return {window_id(PATIENT, period, w["patient_id"], w["window_start"] + i * slide)
            for w in updated for i in range(1 - days, days) if i}


def is_daily(window: dict, config: TrendsConfig) -> bool:
    """Whether ``window`` is a patient window one slide long, which sustained windows are summed from."""
    return window["scope"] == PATIENT and window["period"] == slide_period(config)


def _total(windows: list[dict], peak_key=_peak_key) -> dict:
    """The measures of ``windows`` together, in one pass per measure (``peak_key``: the peak's
    order, :func:`_peak_key` or a cache of it)."""
    return {
        **{name: sum(w[name] for w in windows) for name in _SUMS},
        **{name: max(w[name] for w in windows) for name in _MAXIMA},
        **{name: min(w[name] for w in windows) for name in _MINIMA},
        "peak": dict(max((w["peak"] for w in windows), key=peak_key)),
        "anomalies": {kind: sum(w["anomalies"].get(kind, 0) for w in windows) for kind in ANOMALY_TYPES},
    }


def sustained(daily: dict[str, dict], updated: Iterable[dict], config: TrendsConfig) -> list[dict]:
    """The sustained windows that hold a window of ``updated`` (daily windows), each the merge of
    the daily windows of ``daily`` (by id: the updated ones and their neighbours) inside it,
    finished, with ``previous_trend_id`` (the window one slide earlier)."""
    length, slide = seconds(config.sustained_window) * 1000, seconds(config.sustained_slide) * 1000
    period, label = slide_period(config), sustained_period(config)
    peak_keys = {id(day["peak"]): _peak_key(day["peak"]) for day in daily.values()}
    out: dict[str, dict] = {}
    for day in updated:
        patient = day["patient_id"]
        for start in _starts(day["window_start"], config):
            trend_id = window_id(SUSTAINED, label, patient, start)
            if trend_id in out:
                continue
            inside = [daily[key] for key in (window_id(PATIENT, period, patient, start + i * slide)
                                              for i in range(length // slide)) if key in daily]
            total = {"trend_id": trend_id, "scope": SUSTAINED, "period": label, "patient_id": patient,
                     "window_start": start, "window_end": start + length, **_total(inside, lambda peak: peak_keys[id(peak)])}
            out[trend_id] = {**finish(total, config),
                             "previous_trend_id": window_id(SUSTAINED, label, patient, start - slide)}
    return list(out.values())


def sustained_onsets(windows: list[tuple[str, str, bool]], earlier: dict[str, bool]) -> list[str]:
    """The sustained windows that start a run: ``windows`` are ``(trend_id, previous_window_id,
    is_sustained)``; a sustained window is an onset when the window one slide earlier is not
    sustained, as this batch has it or else as ``earlier`` (the index) has it; unknown = not."""
    now = {window_id_: is_on for window_id_, _, is_on in windows}
    return sorted(window_id_ for window_id_, previous_id, is_on in windows
                  if is_on and not now.get(previous_id, earlier.get(previous_id, False)))
