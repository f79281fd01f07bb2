"""Comparing recomputed buckets with stored ones, and the reconciliation report (pure).

A bucket is the same when count, sum, min, max and last agree within ``REL_TOL``
(sums are accumulated in different orders by the stream and the batch job), ``last_ts``
is equal, and the sketches have the same decoded content (same buckets, counts within
the tolerance).  Drift of a bucket = the largest relative difference over its numeric
fields (a sketch that differs counts as its relative count difference, at least
``REL_TOL``; one that does not decode counts as 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

from tally.sketch import Sketch, SketchDecodeError

__all__ = ["Bucket", "Drift", "Report", "REL_TOL", "compare", "diff"]

REL_TOL = 1e-9
ABS_TOL = 1e-9
NUMERIC_FIELDS = ("count", "sum", "min", "max", "last")
_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)

Key = tuple[str, str, int, int]  # tier, tenant, sid, bucket start ms


@dataclass(frozen=True)
class Bucket:
    """One bucket's full value (what a tier table row holds)."""

    tier: str
    tenant: str
    sid: int
    ts: int
    count: float
    sum: float
    min: float
    max: float
    last: float
    last_ts: int
    sketch: bytes | None = None

    @property
    def key(self) -> Key:
        return (self.tier, self.tenant, self.sid, self.ts)


@dataclass(frozen=True)
class Drift:
    """How one stored bucket differs from its recomputed value."""

    key: Key
    status: str  # "missing" or "drifted"
    fields: tuple[str, ...]
    relative: float  # largest relative difference (1.0 for a missing bucket)
    expected: Mapping
    stored: Mapping | None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _relative(expected: float, stored: float) -> float:
    if expected == stored:
        return 0.0
    return abs(stored - expected) / max(abs(expected), ABS_TOL)


def _sketch_difference(expected: bytes | None, stored: bytes | None) -> float | None:
    """None when the sketches hold the same content, else a relative drift."""
    if expected is None and stored is None:
        return None
    if expected is None or stored is None:
        return 1.0
    want = Sketch.from_bytes(expected)
    try:
        got = Sketch.from_bytes(stored)
    except (SketchDecodeError, ValueError):
        return 1.0
    if want == got:
        return None
    same = (want.alpha == got.alpha and want.bucket_count == got.bucket_count and _close(want.count, got.count)
            and all(_close(want.quantile(q) or 0.0, got.quantile(q) or 0.0) for q in _QUANTILES))
    if same:
        return None
    return max(_relative(want.count, got.count), REL_TOL)


def _plain(bucket: Bucket) -> dict:
    values = asdict(bucket)
    values["sketch"] = None if bucket.sketch is None else f"{len(bucket.sketch)} bytes"
    return values


def compare(expected: Bucket, stored: Bucket | None) -> Drift | None:
    """None when ``stored`` holds the recomputed value, else how it differs."""
    if stored is None:
        return Drift(expected.key, "missing", (), 1.0, _plain(expected), None)
    fields, worst = [], 0.0
    for name in NUMERIC_FIELDS:
        a, b = getattr(expected, name), getattr(stored, name)
        if b is None or not _close(a, b):
            fields.append(name)
            worst = max(worst, 1.0 if b is None else _relative(a, b))
    if expected.last_ts != stored.last_ts:
        fields.append("last_ts")
        worst = max(worst, REL_TOL)
    sketch = _sketch_difference(expected.sketch, stored.sketch)
    if sketch is not None:
        fields.append("sketch")
        worst = max(worst, sketch)
    if not fields:
        return None
    return Drift(expected.key, "drifted", tuple(fields), worst, _plain(expected), _plain(stored))


@dataclass
class Report:
    """What one reconciliation run found and did."""

    period: str
    tiers: tuple[str, ...]
    duplicates: int = 0  # further copies of an idempotency id, dropped
    rejected: int = 0  # archived records with a field that did not parse
    checked: int = 0  # recomputed buckets compared with Cassandra
    missing: int = 0
    drifted: int = 0
    repaired: int = 0
    unexpected: int = 0  # stored buckets of the period the archive has no point for (not touched)
    by_tier: dict = field(default_factory=dict)  # tier -> {checked, missing, drifted}
    largest_drift: dict | None = None
    duration_s: float = 0.0
    timings_s: dict = field(default_factory=dict)  # recompute (Flink batch), read, diff, repair
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The human-readable summary printed by ``tally reconcile``."""
        out = [f"reconcile {self.period} (tiers {', '.join(self.tiers)}): {self.duplicates} duplicate "
               f"records dropped, {self.rejected} rejected",
               f"buckets checked {self.checked}, missing {self.missing}, drifted {self.drifted}, "
               f"repaired {self.repaired}, unexpected {self.unexpected}"]
        for tier, counts in self.by_tier.items():
            out.append(f"  {tier:>4}: checked {counts['checked']}, missing {counts['missing']}, "
                       f"drifted {counts['drifted']}")
        if self.largest_drift:
            d = self.largest_drift
            out.append(f"largest drift: {d['relative']:.3g} relative ({', '.join(d['fields'])}) in {d['tier']} bucket "
                       f"{d['ts']} of {d['tenant']}/{d['sid']}")
        out.extend(f"note: {n}" for n in self.notes)
        steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.timings_s.items())
        out.append(f"took {self.duration_s:.1f}s" + (f" ({steps})" if steps else ""))
        return out


def diff(expected: Iterable[Bucket], stored: Mapping[Key, Bucket], report: Report) -> list[Drift]:
    """Compare every recomputed bucket with its stored row; fills the report's counts and
    returns the buckets to rewrite.  ``stored`` holds the rows read for the same series
    and period; rows with no recomputed counterpart are counted as ``unexpected``."""
    drifts: list[Drift] = []
    seen = set()
    for bucket in expected:
        seen.add(bucket.key)
        counts = report.by_tier.setdefault(bucket.tier, {"checked": 0, "missing": 0, "drifted": 0})
        counts["checked"] += 1
        report.checked += 1
        drift = compare(bucket, stored.get(bucket.key))
        if drift is None:
            continue
        counts[drift.status] += 1
        setattr(report, drift.status, getattr(report, drift.status) + 1)
        drifts.append(drift)
        if drift.status == "drifted" and (report.largest_drift is None
                                          or drift.relative > report.largest_drift["relative"]):
            tier, tenant, sid, ts = drift.key
            report.largest_drift = {"tier": tier, "tenant": tenant, "sid": sid, "ts": ts, "fields": list(drift.fields),
                                    "relative": drift.relative, "expected": drift.expected, "stored": drift.stored}
    report.unexpected += sum(1 for key in stored if key not in seen)
    return drifts
