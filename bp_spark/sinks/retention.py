"""What the job forgets, and when.

- Dead letters, after ``elasticsearch.deadletter_retention``: they hold raw payloads (patient
  data). So do the pending index's halves of split readings that no longer wait or pair
  (expired, hence dead letters; superseded by a correction); a paired half stays, since a later
  correction of its partner needs it.
- Health records, after ``elasticsearch.metrics_retention``.
- The versions seen of an observation (:mod:`bp_spark.routing.repeats`), once none new came for
  ``stream.dedup_horizon``.

Each rule is a range query on a date its documents carry, so a pass costs what expires, not
the history kept. :func:`retention_rules` is pure (it takes the values, not the configuration);
:func:`apply_retention` runs the rules through the sink's one door to Elasticsearch. The stream
job applies them at its start and every hour (``jobs/stream.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bp_spark.config import Config, duration_seconds


@dataclass(frozen=True)
class Expiry:
    """One rule: delete what ``query`` matches in ``index``, ``page`` documents at a time."""

    what: str  # for the log: "dead letters older than 30 days (elasticsearch.deadletter_retention)"
    index: str
    query: dict
    page: int


class Deleter(Protocol):
    def delete_matching(self, index: str, query: dict, page: int) -> int: ...


def _older(field: str, seconds: int) -> dict:
    return {"range": {field: {"lt": f"now-{seconds}s"}}}


def retention_rules(*, deadletter_index: str, pending_index: str, metrics_index: str, versions_index: str,
                    deadletter_s: int, metrics_s: int, versions_s: int,
                    deadletter_after: str = "", metrics_after: str = "", versions_after: str = "") -> list[Expiry]:
    """The rules for these indices and ages (seconds; 0: keep until someone deletes them, except
    for the versions seen, which a horizon always bounds). ``*_after``: the settings' own words, for the log."""
    rules = []
    if deadletter_s:
        rules.append(Expiry(f"dead letters older than {deadletter_after or f'{deadletter_s} s'} "
                            "(elasticsearch.deadletter_retention)", deadletter_index,
                            _older("processed_at", deadletter_s), 1000))
        rules.append(Expiry("finished halves of split readings as old (elasticsearch.deadletter_retention)",
                            pending_index,
                            {"bool": {"filter": [_older("processed_at", deadletter_s),
                                                 {"terms": {"state": ["expired", "superseded"]}}]}}, 1000))
    if metrics_s:
        rules.append(Expiry(f"health records older than {metrics_after or f'{metrics_s} s'} "
                            "(elasticsearch.metrics_retention)", metrics_index, _older("timestamp", metrics_s), 5000))
    rules.append(Expiry(f"versions seen of observations with none new for {versions_after or f'{versions_s} s'} "
                        "(stream.dedup_horizon)", versions_index, _older("seen_at", versions_s), 5000))
    return rules


def rules_for(config: Config) -> list[Expiry]:
    """:func:`retention_rules` with the configured indices and ages."""
    e = config.elasticsearch
    return retention_rules(deadletter_index=e.deadletter_index, pending_index=e.pending_index,
                           metrics_index=e.metrics_index, versions_index=e.versions_index,
                           deadletter_s=e.deadletter_retention_s, metrics_s=e.metrics_retention_s,
                           versions_s=duration_seconds(config.stream.dedup_horizon),
                           deadletter_after=e.deadletter_retention, metrics_after=e.metrics_retention,
                           versions_after=config.stream.dedup_horizon)


def apply_retention(sink: Deleter, rules: list[Expiry], page: int | None = None) -> dict[str, int]:
    """Apply each rule; return ``{what: documents deleted}``. ``page``: overrides the rules' page size."""
    return {rule.what: sink.delete_matching(rule.index, rule.query, page or rule.page) for rule in rules}
