"""Which tier answers a query (pure).

Rule: the coarsest tier whose resolution is at most the *wanted resolution*, among the tiers
whose retention still reaches back to the oldest bucket the query reads; when none is fine
enough, the finest tier that holds the range; when no tier holds it, the coarsest tier.

The wanted resolution is the step of a range query (a finer tier would only be read to be
thrown away, a coarser one would repeat values across steps), further limited to a quarter
of the smallest range window (``rate(x[5m])`` needs several buckets per window: with one
bucket per window a Prometheus-style rate has no two samples to compare).  An instant query
without range windows wants the finest tier (the freshest buckets).

A user may force a tier (``tier=10s`` on the API, the dashboard's resolution picker).
"""

from __future__ import annotations

from typing import Sequence

from tally.tiers import DEFAULT_TIERS, Tier, tier_by_name

__all__ = ["choose_tier", "wanted_resolution_ms", "RANGE_WINDOW_BUCKETS"]

RANGE_WINDOW_BUCKETS = 4


def wanted_resolution_ms(step_ms: int, windows_ms: Sequence[int]) -> int:
    """The resolution a query wants: its step, at most a quarter of its smallest range."""
    want = step_ms if step_ms > 0 else None
    if windows_ms:
        limit = min(windows_ms) // RANGE_WINDOW_BUCKETS
        want = limit if want is None else min(want, limit)
    return want or 0


def choose_tier(now_ms: int, read_start_ms: int, step_ms: int, windows_ms: Sequence[int] = (),
                tiers: Sequence[Tier] = DEFAULT_TIERS, forced: str | None = None) -> Tier:
    """The tier for a query reading buckets from ``read_start_ms`` (see module docstring).

    ``forced`` names a tier to use regardless (KeyError naming the tiers if unknown)."""
    if forced:
        return tier_by_name(forced, tiers)
    ordered = sorted(tiers, key=lambda t: t.resolution_ms)
    holding = [t for t in ordered if now_ms - t.retention_seconds * 1000 <= read_start_ms]
    if not holding:
        return ordered[-1]
    want = wanted_resolution_ms(step_ms, windows_ms)
    fine_enough = [t for t in holding if t.resolution_ms <= want]
    return fine_enough[-1] if fine_enough else holding[0]
