"""The cardinality view (pure): who has how many series, which labels explode, how fast.

Input: a tenant's rows of the series index (``<keyspace>.series``, schemas/cassandra.cql),
each with the metric name, the tags and the time the row was written
(``WRITETIME(series)``, read by ``tally.api.cardinality``).  Definitions:

- **series of a metric**: the metric's rows in the series index, i.e. the series Tally has
  stored and the query API can find (the ingesters only let in what the limits admit).  The
  index has no TTL: a series idle for days still counts.
- **active series of a metric**: those of its index rows whose series had a 10 s bucket
  written in the last 2 h - the job writes every bucket through to Redis and each series'
  10 s sorted set expires 2 h after its last write (schemas/redis.json), so the key exists
  exactly then (unless Redis evicted it under memory pressure: an undercount).  ``None``
  when Redis could not be asked; metrics are ranked by active series when known.
- **distinct values of a label of a metric**: distinct values among those rows.
- **growth**: rows whose index write is within the last hour / 24 h.  A series' row is
  written when the job reads its registration, which a producer sends the first time it
  emits the series - so this is "new series per hour", except that a producer restarted
  registers its series again (they then count as added at that time).

:func:`report` computes the Tally view, :func:`tsdb_status` the Prometheus
``/api/v1/status/tsdb`` shape, :func:`render_metrics` the same figures as Prometheus text.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["IndexRow", "report", "tsdb_status", "render_metrics", "HOUR_MS", "DAY_MS"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class IndexRow:
    """One series index row: metric name, tags, write time (epoch ms; None if unknown),
    whether the series is active (None if unknown)."""

    name: str
    tags: Mapping[str, str]
    written_ms: int | None = None
    active: bool | None = None


def report(tenant: str, rows: Iterable[IndexRow], now_ms: int, limit: int = 10, label_limit: int = 5,
           active_window_s: int | None = None) -> dict:
    """The cardinality view of one tenant: the top ``limit`` metrics by active series (by
    series when activity is unknown), each with its top ``label_limit`` labels by distinct
    values and its series added in the last hour; the top ``limit`` labels by distinct values
    over all metrics, the top label-value pairs, and the tenant's series growth.
    ``active_window_s`` only documents what "active" meant in the output."""
    per_metric: Counter[str] = Counter()
    active_metric: Counter[str] = Counter()
    activity_known = False
    values: defaultdict[tuple[str, str], set] = defaultdict(set)  # (metric, label) -> values
    all_values: defaultdict[str, set] = defaultdict(set)  # label -> values (any metric)
    pairs: Counter[str] = Counter()
    added_metric: Counter[str] = Counter()
    added_hour = added_day = 0
    oldest = newest = None
    for row in rows:
        per_metric[row.name] += 1
        if row.active is not None:
            activity_known = True
            active_metric[row.name] += row.active
        for label, value in row.tags.items():
            values[(row.name, label)].add(value)
            all_values[label].add(value)
            pairs[f"{label}={value}"] += 1
        w = row.written_ms
        if w is not None:
            oldest = w if oldest is None else min(oldest, w)
            newest = w if newest is None else max(newest, w)
            if w >= now_ms - HOUR_MS:
                added_hour += 1
                added_metric[row.name] += 1
            if w >= now_ms - DAY_MS:
                added_day += 1
    by_metric: defaultdict[str, list] = defaultdict(list)
    for (metric, label), vals in values.items():
        by_metric[metric].append((label, len(vals)))
    top = sorted(per_metric.items(), key=lambda kv: (-active_metric[kv[0]], -kv[1], kv[0]))[:limit]
    metrics = []
    for name, n in top:
        labels = sorted(by_metric[name], key=lambda kv: (-kv[1], kv[0]))[:label_limit]
        metrics.append({"name": name, "active_series": active_metric[name] if activity_known else None,
                        "series": n, "series_added_last_hour": added_metric[name],
                        "labels": [{"name": label, "values": v} for label, v in labels]})
    total = sum(per_metric.values())
    return {
        "tenant": tenant,
        "series": total,
        "active_series": sum(active_metric.values()) if activity_known else None,
        "active_window_seconds": active_window_s if activity_known else None,
        "metrics_total": len(per_metric),
        "label_pairs": len(pairs),
        "metrics": metrics,
        "labels": [{"name": label, "values": len(v)}
                   for label, v in sorted(all_values.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]],
        "label_value_pairs": [{"name": p, "series": n}
                              for p, n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]],
        "growth": {"series_added_last_hour": added_hour, "series_added_last_24h": added_day,
                   "series_per_hour": float(added_hour), "series_per_hour_24h_avg": added_day / 24.0,
                   "oldest_registration_ms": oldest, "newest_registration_ms": newest},
        "now_ms": now_ms,
    }


def tsdb_status(rep: dict) -> dict:
    """The Prometheus ``GET /api/v1/status/tsdb`` data of a :func:`report`: series counts are
    active series when known (Prometheus counts its head, i.e. recent series), else index
    rows; Tally has no head chunks (``chunkCount`` 0), min/max time are the oldest/newest
    registrations."""
    g = rep["growth"]

    def count(m):
        return m["series"] if m["active_series"] is None else m["active_series"]

    return {
        "headStats": {"numSeries": rep["series"] if rep["active_series"] is None else rep["active_series"],
                      "numLabelPairs": rep["label_pairs"], "chunkCount": 0,
                      "minTime": g["oldest_registration_ms"] or 0, "maxTime": g["newest_registration_ms"] or 0},
        "seriesCountByMetricName": [{"name": m["name"], "value": count(m)} for m in rep["metrics"]],
        "labelValueCountByLabelName": [{"name": lbl["name"], "value": lbl["values"]} for lbl in rep["labels"]],
        "memoryInBytesByLabelName": [],
        "seriesCountByLabelValuePair": [{"name": p["name"], "value": p["series"]} for p in rep["label_value_pairs"]],
    }


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(rep: dict) -> str:
    """The figures of a :func:`report` in Prometheus text format 0.0.4."""
    t = _esc(rep["tenant"])
    g = rep["growth"]
    out = [
        "# HELP tally_cardinality_series Series in the series index of the top metrics",
        "# TYPE tally_cardinality_series gauge",
        *(f'tally_cardinality_series{{tenant="{t}",metric="{_esc(m["name"])}"}} {m["series"]}'
          for m in rep["metrics"]),
        "# HELP tally_cardinality_active_series Active series (a 10 s bucket within the active window) of the top metrics",
        "# TYPE tally_cardinality_active_series gauge",
        *(f'tally_cardinality_active_series{{tenant="{t}",metric="{_esc(m["name"])}"}} {m["active_series"]}'
          for m in rep["metrics"] if m["active_series"] is not None),
        "# HELP tally_cardinality_label_values Distinct values of the top labels of the top metrics",
        "# TYPE tally_cardinality_label_values gauge",
        *(f'tally_cardinality_label_values{{tenant="{t}",metric="{_esc(m["name"])}",label="{_esc(lbl["name"])}"}} '
          f'{lbl["values"]}' for m in rep["metrics"] for lbl in m["labels"]),
        "# HELP tally_cardinality_series_total Series in the series index of the tenant",
        "# TYPE tally_cardinality_series_total gauge",
        f'tally_cardinality_series_total{{tenant="{t}"}} {rep["series"]}',
        "# HELP tally_cardinality_metrics_total Metric names of the tenant",
        "# TYPE tally_cardinality_metrics_total gauge",
        f'tally_cardinality_metrics_total{{tenant="{t}"}} {rep["metrics_total"]}',
        "# HELP tally_cardinality_series_added Series registered within the window",
        "# TYPE tally_cardinality_series_added gauge",
        f'tally_cardinality_series_added{{tenant="{t}",window="1h"}} {g["series_added_last_hour"]}',
        f'tally_cardinality_series_added{{tenant="{t}",window="24h"}} {g["series_added_last_24h"]}',
        "# HELP tally_cardinality_series_growth_per_hour New series per hour (last hour)",
        "# TYPE tally_cardinality_series_growth_per_hour gauge",
        f'tally_cardinality_series_growth_per_hour{{tenant="{t}"}} {g["series_per_hour"]:g}',
    ]
    return "\n".join(out) + "\n"
