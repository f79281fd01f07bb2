"""Result cache for repeated range queries (dashboards refreshing the same panels).

What is cached: for a (tenant, expression, step, step phase, tier) key, the evaluated
values of a contiguous run of *closed* steps.  A step at time t reads buckets starting at
or before t (minus the selector offset); it is closed when the newest of those buckets
ended more than ``grace + settle`` seconds ago: the streaming job finalises a bucket
``grace`` seconds after its end (watermark), and ``settle`` covers ingestion lag.  Points
arriving later than grace are not written into buckets by the job (they go to the late
topic and the nightly repair), so a closed step's value no longer changes; the open tail
of a query (steps newer than that) is always read and evaluated again, so late data within
grace is always seen.  Entries expire after ``ttl`` seconds, which bounds how long a repaired
bucket (nightly reconciliation) or an ingestion lag above ``settle`` can be served stale;
``nocache=1`` on the API and ``use_cache=False`` on the engine bypass the cache.

A sliding dashboard range (start and end move forward, step grid fixed, as Grafana aligns
them) reuses the cached steps and evaluates only the new ones.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

__all__ = ["Extent", "ResultCache", "merge_parts"]


@dataclass
class Extent:
    """Evaluated steps ``times_ms`` (contiguous on the step grid) for ``labels`` × steps."""

    result_type: str
    times_ms: np.ndarray
    labels: list
    data: np.ndarray
    stored_at: float = 0.0
    encoded: object = None  # its rows encoded for the HTTP API (tally.api.encode), built on first use


class ResultCache:
    """A small LRU of Extents with a time-to-live."""

    def __init__(self, max_entries: int = 256, ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Extent] = OrderedDict()

    def get(self, key: Hashable) -> Extent | None:
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.stored_at > self.ttl_s:
            self._entries.pop(key, None)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: Hashable, extent: Extent) -> None:
        if self.max_entries <= 0 or not len(extent.times_ms):
            return
        extent.stored_at = self.clock()
        self._entries[key] = extent
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def merge_parts(parts: list[tuple[np.ndarray, list, np.ndarray]]) -> tuple[np.ndarray, list, np.ndarray]:
    """Concatenate time-disjoint (times, labels, data) parts (ascending) into one matrix,
    matching series by labels; a series missing from a part has NaN there."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, dtype=np.int64), [], np.empty((0, 0))
    if len(parts) == 1:
        return parts[0]
    times = np.concatenate([p[0] for p in parts])
    index: dict = {}
    for _, labels, _ in parts:
        for l in labels:
            index.setdefault(l, len(index))
    data = np.full((len(index), len(times)), np.nan)
    col = 0
    for t, labels, d in parts:
        if len(labels):
            rows = np.fromiter((index[l] for l in labels), dtype=np.int64, count=len(labels))
            data[rows, col:col + len(t)] = d
        col += len(t)
    return times, list(index), data
