"""Data-quality figures for the dashboard and the API (pure: inputs are plain values).

- ``dq_counters``: the job's counters from the Redis hash ``<keyspace>:dq:<tenant>``
  (schemas/redis.json): duplicates dropped, rejected, late beyond grace per tier.
- ``ingestion_figures``: ingestion lag (now minus the end of the newest 1 s bucket) and points
  per second over the last minute, from recent 1 s buckets.
- ``bucket_status``: which buckets of a shown range are provisional (the window end plus grace
  has not passed yet, so late points within grace may still change them), final, or repaired
  (rewritten by the nightly reconciliation, ``repaired_ms`` set).
- ``histogram``: the bins of a merged sketch with p50/p90/p99.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS

__all__ = ["dq_counters", "ingestion_figures", "bucket_status", "sketch_bins", "histogram"]

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _text(x) -> str:
    return x.decode() if isinstance(x, (bytes, bytearray)) else str(x)


def dq_counters(raw: Mapping) -> dict:
    """Counters from the dq hash; missing fields are 0.  ``late_beyond_grace`` is the 1 s
    tier's figure (a late point misses every tier, so each tier counts it once)."""
    fields = {_text(k): float(_text(v)) for k, v in raw.items()}
    finest = DEFAULT_TIERS[0].name
    return {
        "duplicates_dropped": fields.get("duplicates_dropped", 0.0),
        "rejected": fields.get("rejected", 0.0),
        "late_beyond_grace": fields.get(f"late_beyond_grace:{finest}", 0.0),
        "late_beyond_grace_by_tier": {t.name: fields.get(f"late_beyond_grace:{t.name}", 0.0) for t in DEFAULT_TIERS},
        # The job accepts points late within grace without counting them separately.
        "late_within_grace": None,
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
