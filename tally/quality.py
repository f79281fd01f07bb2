"""Data-quality figures for the dashboard and the API (pure: inputs are plain values).

- ``dq_counters``: the job's counters from the Redis hash ``<keyspace>:dq:<tenant>``
  (schemas/redis.json): duplicates dropped, rejected, late beyond grace per tier.
- ``ingestion_figures``: ingestion lag (now minus the end of the newest 1 s bucket) and points
  per second over the last minute, from recent 1 s buckets.
- ``bucket_status``: which buckets of a shown range are provisional (the window end plus grace
  has not passed yet, so late points within grace may still change them), final, or repaired
  (rewritten by the nightly reconciliation, ``repaired_ms`` set).
- ``histogram``: the bins of a merged sketch with p50/p90/p99.
- ``dq_report``: one tenant's data-quality report from the figures gathered by
  ``tally.api.quality`` (Kafka consumer lag, the job's watermark, its throughput, the dq
  hash); ``prometheus_text`` renders reports in the Prometheus text format.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS

__all__ = ["dq_counters", "ingestion_figures", "bucket_status", "sketch_bins", "histogram", "dq_report",
           "prometheus_text"]

# The job's single rejection reason: a record field missing or of the wrong type (the JSON
# format turns it into NULL); producers that know finer reasons write ``rejected:<reason>``.
JOB_REJECT_REASON = "malformed_record"

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _text(x) -> str:
    return x.decode() if isinstance(x, (bytes, bytearray)) else str(x)


def dq_counters(raw: Mapping) -> dict:
    """Counters from the dq hash; missing fields are 0.  ``late_beyond_grace`` is the 1 s
    tier's figure (a late point misses every tier, so each tier counts it once)."""
    fields = {_text(k): float(_text(v)) for k, v in raw.items()}
    finest = DEFAULT_TIERS[0].name
    by_reason = {JOB_REJECT_REASON: fields["rejected"]} if fields.get("rejected") else {}
    for name, value in fields.items():
        if name.startswith("rejected:"):
            reason = name.split(":", 1)[1]
            by_reason[reason] = by_reason.get(reason, 0.0) + value
    return {
        "duplicates_dropped": fields.get("duplicates_dropped", 0.0),
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "late_beyond_grace": fields.get(f"late_beyond_grace:{finest}", 0.0),
        "late_beyond_grace_by_tier": {t.name: fields.get(f"late_beyond_grace:{t.name}", 0.0) for t in DEFAULT_TIERS},
        # Points that arrived after a later second had been seen and were still aggregated.
        "late_within_grace": fields.get("late_within_grace", 0.0),
    }


def ingestion_figures(buckets: Iterable[tuple[int, float]], now_ms: int, window_s: int = 60,
                      resolution_ms: int = 1000) -> tuple[float | None, float]:
    """(lag seconds or None without data, points per second) from (bucket start ms, count)
    pairs of 1 s buckets (any number of series)."""
    newest = None
    total = 0.0
    since = now_ms - window_s * 1000
    for ts, count in buckets:
        newest = ts if newest is None or ts > newest else newest
        if ts >= since:
            total += count
    lag = None if newest is None else max(0.0, (now_ms - (newest + resolution_ms)) / 1000.0)
    return lag, total / window_s


def bucket_status(start_s: float, end_s: float, resolution_s: int, grace_s: float, now_s: float,
                  repaired_starts_s: Iterable[float] = ()) -> dict:
    """Status of the tier buckets whose start lies in [start, end]: a bucket is final once
    its end plus grace is behind ``now``; repaired ones (set) are counted as repaired, not
    final.  ``provisional_from``: the start of the oldest bucket that is still provisional."""
    first = math.ceil(start_s / resolution_s) * resolution_s
    last = math.floor(end_s / resolution_s) * resolution_s
    provisional_from = now_s - grace_s - resolution_s  # bucket starts after this: provisional
    total = 0 if last < first else int((last - first) // resolution_s) + 1
    cut = max(first, math.floor(provisional_from / resolution_s) * resolution_s + resolution_s)
    provisional = 0 if cut > last else int((last - cut) // resolution_s) + 1
    provisional = min(provisional, total)
    repaired = {s for s in repaired_starts_s if first <= s <= last and s < cut}
    return {"total": total, "provisional": provisional, "repaired": len(repaired),
            "final": total - provisional - len(repaired),
            "provisional_from": float(max(cut, first)) if provisional else None}


def sketch_bins(sketch: Sketch) -> list[dict]:
    """Non-empty bins of a sketch, ascending: ``{"lo", "hi", "count"}``.

    A positive bin of representative value ``v = 2 g^k / (g + 1)`` covers ``(g^(k-1), g^k]``
    (tally.sketch); negatives mirror it and the zero bucket is ``[0, 0]``."""
    gamma = (1.0 + sketch.alpha) / (1.0 - sketch.alpha)
    out = []
    for value, weight in sketch.bins():
        if value == 0.0:
            out.append({"lo": 0.0, "hi": 0.0, "count": weight})
            continue
        mag = abs(value)
        hi = mag * (gamma + 1.0) / 2.0
        lo = hi / gamma
        lo, hi = (lo, hi) if value > 0 else (-hi, -lo)
        out.append({"lo": lo, "hi": hi, "count": weight})
    return out


def histogram(sketch: Sketch | None) -> dict:
    """The histogram view of a merged sketch: bins, total count, p50/p90/p99."""
    if sketch is None or sketch.is_empty():
        return {"bins": [], "count": 0, "quantiles": {name: None for name, _ in QUANTILES},
                "alpha": None if sketch is None else sketch.alpha}
    return {"bins": sketch_bins(sketch), "count": sketch.count,
            "quantiles": {name: sketch.quantile(q) for name, q in QUANTILES}, "alpha": sketch.alpha}


def dq_report(gathered: Mapping, grace_s: float) -> dict:
    """One tenant's data-quality report from the figures ``tally.api.quality.gather`` read:
    ``counters`` (the raw dq hash or None), ``lag`` (consumer lag dict or None),
    ``watermark_ms`` (the job's event time or None), ``records_per_second`` (the job's
    source throughput or None), ``unparseable_records`` (records the job's sources skipped
    as not JSON, job-wide, or None), ``now_ms``.

    Bucket status: a bucket that ends at or before the job's watermark is final (the
    watermark trails the newest event time by the grace, so the grace has passed for it;
    repaired once reconciliation rewrote it); later ones are provisional."""
    counters = dq_counters(gathered["counters"]) if gathered.get("counters") is not None else None
    lag = gathered.get("lag")
    watermark = gathered.get("watermark_ms")
    now_ms = gathered["now_ms"]
    return {
        "tenant": gathered.get("tenant"),
        "kafka_consumer_lag_records": None if lag is None else lag["total"],
        "kafka_consumer_lag_by_partition": None if lag is None else {str(p): n for p, n in lag["partitions"].items()},
        "event_time_ms": watermark,
        "event_time_lag_seconds": None if watermark is None else max(0.0, (now_ms - watermark) / 1000.0),
        "points_per_second": gathered.get("records_per_second"),
        "duplicates_dropped": None if counters is None else counters["duplicates_dropped"],
        "late_within_grace": None if counters is None else counters["late_within_grace"],
        "late_beyond_grace": None if counters is None else counters["late_beyond_grace"],
        "rejected_by_reason": None if counters is None else counters["rejected_by_reason"],
        # not JSON at all: no tenant to charge it to, so one figure for the whole job
        "unparseable_records": gathered.get("unparseable_records"),
        "bucket_status": {"final_before_ms": watermark, "grace_seconds": grace_s,
                          "rule": "a bucket ending at or before final_before_ms is final (repaired once "
                                  "reconciliation rewrote it); later ones are provisional"},
        "warnings": list(gathered.get("warnings", [])),
    }


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(reports: Iterable[Mapping]) -> str:
    """Reports of ``dq_report`` in the Prometheus text exposition format (0.0.4).  Figures
    of the whole job (lag, event time, throughput) come from the first report; counters are
    per tenant.  Unknown figures (a component unreachable) are left out, never zero."""
    reports = list(reports)
    families: list[tuple[str, str, str, list[tuple[dict, float]]]] = []

    def family(name, kind, help_text, samples):
        samples = [(labels, value) for labels, value in samples if value is not None]
        if samples:
            families.append((name, kind, help_text, samples))

    first = reports[0] if reports else {}
    family("tally_dq_kafka_consumer_lag_records", "gauge",
           "Records of the points topic not yet covered by the job's committed offsets.",
           [({"partition": p}, n) for p, n in sorted((first.get("kafka_consumer_lag_by_partition") or {}).items())])
    family("tally_dq_event_time_lag_seconds", "gauge", "Wall clock minus the job's watermark.",
           [({}, first.get("event_time_lag_seconds"))])
    family("tally_dq_final_before_timestamp_seconds", "gauge",
           "Buckets ending at or before this time are final (provisional after it).",
           [({}, None if first.get("event_time_ms") is None else first["event_time_ms"] / 1000.0)])
    family("tally_dq_points_per_second", "gauge", "Records per second the job reads from the points topic.",
           [({}, first.get("points_per_second"))])
    family("tally_dq_unparseable_records_total", "counter",
           "Kafka records the job skipped because they were not a JSON object (since the job's last start).",
           [({}, first.get("unparseable_records"))])
    for name, key, help_text in (
            ("tally_dq_duplicates_dropped_total", "duplicates_dropped", "Replayed points dropped by the job."),
            ("tally_dq_late_within_grace_total", "late_within_grace", "Points late within grace, kept."),
            ("tally_dq_late_beyond_grace_total", "late_beyond_grace",
             "Points late beyond grace: not in the stream's buckets, repaired by reconciliation.")):
        family(name, "counter", help_text, [({"tenant": r["tenant"]}, r.get(key)) for r in reports])
    family("tally_dq_rejected_total", "counter", "Records rejected by the job, by reason.",
           [({"tenant": r["tenant"], "reason": reason}, n) for r in reports
            for reason, n in sorted((r.get("rejected_by_reason") or {}).items())])
    lines = []
    for name, kind, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {float(value):.17g}" if text else f"{name} {float(value):.17g}")
    return "\n".join(lines) + "\n"
