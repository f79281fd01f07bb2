"""The storage interface the query engine reads through, and an in-memory implementation.

``Storage`` is what :class:`tally.query.engine.QueryEngine` needs: the metric names and
series of a tenant (the series index) and the buckets of some series of one tier in a time
range.  :class:`tally.query.store.BucketStore` implements it over Cassandra + Redis;
:class:`MemoryStorage` holds buckets in dicts for unit tests of the engine and of code
built on it (alerts, dashboard).  Every method takes the tenant: no call can reach another
tenant's series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import numpy as np

from tally.tiers import Tier

__all__ = ["SeriesMeta", "Buckets", "Storage", "MemoryStorage", "FLOAT_COLUMNS"]

FLOAT_COLUMNS = ("count", "sum", "min", "max", "last")


@dataclass(frozen=True)
class SeriesMeta:
    """A series of the index: id, metric name, sorted tags, metric type (None if unknown)."""

    sid: int
    name: str
    tags: tuple[tuple[str, str], ...]
    mtype: str | None = None


@dataclass
class Buckets:
    """Buckets of one series: ``ts`` (int64 ms, ascending) and the requested columns."""

    ts: np.ndarray
    cols: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, columns: Iterable[str]) -> "Buckets":
        return cls(np.empty(0, dtype=np.int64),
                   {c: (np.empty(0, dtype=object) if c == "sketch" else np.empty(0)) for c in columns})


class Storage(Protocol):
    async def metric_names(self, tenant: str) -> list[str]:
        """Every metric name the tenant has in the series index."""

    async def series(self, tenant: str, name: str) -> list[SeriesMeta]:
        """The tenant's series of one metric name."""

    async def buckets(self, tenant: str, tier: Tier, metas: Sequence[SeriesMeta], start_ms: int, end_ms: int,
                      columns: set[str], latest_only: bool = False) -> tuple[dict[int, Buckets], list[str]]:
        """Buckets with start in [start_ms, end_ms] per sid (only those with data), plus
        warnings (e.g. a fallback); ``latest_only``: just the newest bucket of the range."""

    async def write_version(self, tenant: str, tier: str) -> int | None:
        """A number that changes whenever the tenant's buckets of the tier are written
        (None: unknown).  Read before the buckets, equal later = nothing written since."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStorage:
    """Buckets in memory: ``add(tenant, name, tags, tier_name, ts_ms, count=, sum=, ...)``."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], dict[int, SeriesMeta]] = {}
        self._rows: dict[tuple[str, str, int], dict[int, dict]] = {}
        self._versions: dict[tuple[str, str], int] = {}

    def add_series(self, tenant: str, name: str, tags: dict, mtype: str | None = None) -> SeriesMeta:
        from tally.series import series_id

        sid = series_id(tenant, name, tags)
        meta = SeriesMeta(sid.id, name, sid.tags, mtype)
        self._series.setdefault((tenant, name), {})[sid.id] = meta
        return meta

    def add(self, tenant: str, name: str, tags: dict, tier: str, ts_ms: int, *, mtype: str | None = None,
            count: float = 1.0, sum: float | None = None, min: float | None = None, max: float | None = None,
            last: float | None = None, value: float | None = None, sketch: bytes | None = None) -> None:
        """Add one bucket; ``value`` fills sum/min/max/last for a single-point bucket."""
        meta = self.add_series(tenant, name, tags, mtype)
        if value is not None:
            sum = value * count if sum is None else sum
            min = value if min is None else min
            max = value if max is None else max
            last = value if last is None else last
        self._rows.setdefault((tenant, tier, meta.sid), {})[int(ts_ms)] = {
            "count": float(count), "sum": float(sum or 0.0), "min": float(min or 0.0), "max": float(max or 0.0),
            "last": float(last or 0.0), "sketch": sketch}
        self._versions[(tenant, tier)] = self._versions.get((tenant, tier), 0) + 1

    async def write_version(self, tenant: str, tier: str) -> int | None:
        return self._versions.get((tenant, tier), 0)

    async def metric_names(self, tenant: str) -> list[str]:
        return sorted(name for (t, name) in self._series if t == tenant)

    async def series(self, tenant: str, name: str) -> list[SeriesMeta]:
        return list(self._series.get((tenant, name), {}).values())

    async def buckets(self, tenant, tier, metas, start_ms, end_ms, columns, latest_only=False):
        out = {}
        for meta in metas:
            rows = self._rows.get((tenant, tier.name, meta.sid), {})
            keys = sorted(ts for ts in rows if start_ms <= ts <= end_ms)
            if latest_only:
                keys = keys[-1:]
            if not keys:
                continue
            cols = {}
            for c in columns:
                if c == "sketch":
                    arr = np.empty(len(keys), dtype=object)
                    arr[:] = [rows[k]["sketch"] for k in keys]
                    cols[c] = arr
                else:
                    cols[c] = np.array([rows[k][c] for k in keys], dtype=float)
            out[meta.sid] = Buckets(np.array(keys, dtype=np.int64), cols)
        return out, []

    async def close(self) -> None:
        return None
