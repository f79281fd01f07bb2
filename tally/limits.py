"""Ingestion limits shared by the agent and the gateway: series syntax, cardinality, time, rate.

Everything here is pure (no engines, no I/O) and takes its clock as a parameter, so the
same checks run in the StatsD agent, the HTTP gateway and the unit tests.  A failed check
raises :class:`Rejection`, whose ``reason`` is a short stable code to count by and whose
``message`` is a sentence naming the offending value.

Two name syntaxes exist because the two families of senders differ: Prometheus names
(``[a-zA-Z_:][a-zA-Z0-9_:]*``, labels ``[a-zA-Z_][a-zA-Z0-9_]*``) and StatsD/DogStatsD
names, which additionally allow ``.`` and ``-`` after the first character
(``http.requests``, tag ``service-name``).  Callers pick one with ``dialect``.
"""

from __future__ import annotations

import re
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Callable, Mapping

from tally.series import SeriesId

__all__ = [
    "Rejection", "Limits", "validate_series", "validate_timestamp", "SeriesLimiter", "RateLimiter",
    "PROMETHEUS", "STATSD",
]

PROMETHEUS = "prometheus"
STATSD = "statsd"

_METRIC_NAME = {
    PROMETHEUS: re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*"),
    STATSD: re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:.\-]*"),
}
_LABEL_NAME = {
    PROMETHEUS: re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*"),
    STATSD: re.compile(r"[a-zA-Z_][a-zA-Z0-9_.\-]*"),
}


class Rejection(ValueError):
    """One series or sample refused at the door.

    ``reason`` is a short code (``too_many_labels``, ``label_value_too_long``,
    ``bad_metric_name``, ``bad_label_name``, ``too_many_series_tenant``,
    ``too_many_series_metric``, ``too_many_label_values``, ``future_timestamp``,
    ``too_old``, ``rate_limited``, ...); ``message`` says which value broke which limit.
    ``label`` names the offending label when there is one (for per-label counters).
    """

    def __init__(self, reason: str, message: str, label: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.label = label


@dataclass(frozen=True)
class Limits:
    """Per-tenant ingestion limits (issue 4 and issue 8 defaults)."""

    max_labels_per_series: int = 30  # tags, not counting the metric name
    max_label_name_chars: int = 1024
    max_label_value_chars: int = 2048  # also bounds the metric name
    max_series_per_tenant: int = 1_000_000  # active series
    max_series_per_metric: int = 100_000  # active series per metric name, per tenant
    max_label_values_per_metric_label: int = 10_000  # distinct values of one label of one metric
    max_future_seconds: int = 300  # timestamps further ahead than this are refused
    max_age_seconds: int = 3600  # accepted lateness: older timestamps are refused
    samples_per_second_per_tenant: float = 100_000.0
    samples_burst_per_tenant: int = 200_000
    # A series not seen for this long stops counting as active (and frees its label values).
    active_series_idle_seconds: int = 3600

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        """Limits from a TallyConfig's ``limit_*`` fields (missing fields keep the defaults)."""
        values = {}
        for name in cls.__dataclass_fields__:
            if hasattr(cfg, f"limit_{name}"):
                values[name] = getattr(cfg, f"limit_{name}")
        return cls(**values)


def _show(text: str, width: int = 60) -> str:
    """A value quoted for a message, shortened so a 1 MB label does not become a 1 MB error."""
    return repr(text if len(text) <= width else text[:width] + "...")


def validate_series(name: str, tags: Mapping[str, str], limits: Limits, dialect: str = PROMETHEUS) -> None:
    """Check a series' syntax, label count and lengths; raise :class:`Rejection` on the first
    problem.  ``dialect`` is ``"prometheus"`` (remote_write) or ``"statsd"`` (StatsD,
    DogStatsD and the JSON push API, which also allow ``.`` and ``-`` in names)."""
    name_re, label_re = _METRIC_NAME[dialect], _LABEL_NAME[dialect]
    if not isinstance(name, str) or not name:
        raise Rejection("bad_metric_name", "metric name is empty")
    if len(name) > limits.max_label_value_chars:
        raise Rejection("bad_metric_name", f"metric name {_show(name)} is {len(name)} characters long, "
                                           f"longer than the limit of {limits.max_label_value_chars}")
    if not name_re.fullmatch(name):
        raise Rejection("bad_metric_name", f"metric name {_show(name)} does not match {name_re.pattern}")
    if len(tags) > limits.max_labels_per_series:
        raise Rejection("too_many_labels", f"series {_show(name)} has {len(tags)} labels, more than the "
                                           f"limit of {limits.max_labels_per_series}")
    for label, value in tags.items():
        if not isinstance(label, str) or not label:
            raise Rejection("bad_label_name", f"metric {_show(name)} has an empty label name")
        if len(label) > limits.max_label_name_chars:
            raise Rejection("bad_label_name", f"label name {_show(label)} of metric {_show(name)} is "
                                              f"{len(label)} characters long, longer than the limit of "
                                              f"{limits.max_label_name_chars}", label[:200])
        if not label_re.fullmatch(label):
            raise Rejection("bad_label_name", f"label name {_show(label)} of metric {_show(name)} does not "
                                              f"match {label_re.pattern}", label[:200])
        if not isinstance(value, str):
            raise Rejection("bad_label_value", f"label {label!r} of metric {_show(name)} has a "
                                               f"{type(value).__name__} value, not a string", label)
        if len(value) > limits.max_label_value_chars:
            raise Rejection("label_value_too_long", f"label {label!r} of metric {_show(name)} has a value of "
                                                    f"{len(value)} characters ({_show(value, 40)}), longer "
                                                    f"than the limit of {limits.max_label_value_chars}", label)


def validate_timestamp(ts_ms: int, now_ms: int, limits: Limits) -> None:
    """Refuse a timestamp more than ``max_future_seconds`` ahead of ``now_ms`` or more than
    ``max_age_seconds`` behind it."""
    if ts_ms > now_ms + limits.max_future_seconds * 1000:
        raise Rejection("future_timestamp", f"timestamp {ts_ms} ms is {(ts_ms - now_ms) / 1000:.1f} s in the "
                                            f"future, more than the limit of {limits.max_future_seconds} s")
    if ts_ms < now_ms - limits.max_age_seconds * 1000:
        raise Rejection("too_old", f"timestamp {ts_ms} ms is {(now_ms - ts_ms) / 1000:.1f} s old, older than "
                                   f"the accepted lateness of {limits.max_age_seconds} s")


class SeriesLimiter:
    """Cardinality limits on active series: per tenant, per (tenant, metric) and distinct
    values per (tenant, metric, label).

    A series already active always passes (existing series keep flowing when a limit is
    hit); a new series that would cross a limit raises :class:`Rejection` and is counted
    in ``rejections[(tenant, metric, label, reason)]``.  A series idle for
    ``active_series_idle_seconds`` is forgotten, which frees its share of every limit.
    Not thread-safe: one limiter per event loop / worker, or callers hold a lock.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._last_seen: OrderedDict[int, tuple[float, SeriesId]] = OrderedDict()
        self._per_tenant: Counter[str] = Counter()
        self._per_metric: Counter[tuple[str, str]] = Counter()
        # (tenant, metric, label) -> value -> number of active series holding it
        self._values: defaultdict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        self.rejections: Counter[tuple[str, str, str, str]] = Counter()

    def tenants(self) -> list[str]:
        """Tenants with at least one active series."""
        return sorted(self._per_tenant)

    def active(self, tenant: str, metric: str | None = None) -> int:
        """Active series of a tenant (or of one of its metrics)."""
        return self._per_tenant[tenant] if metric is None else self._per_metric[(tenant, metric)]

    def distinct_values(self, tenant: str, metric: str, label: str) -> int:
        """Distinct values of one label of one metric among the tenant's active series."""
        return len(self._values.get((tenant, metric, label), ()))

    def admit(self, series: SeriesId, now_s: float | None = None) -> None:
        """Record that ``series`` received data; raise Rejection if it is new and over a limit."""
        now = self.clock() if now_s is None else now_s
        self._expire(now)
        if series.id in self._last_seen:
            self._last_seen[series.id] = (now, series)
            self._last_seen.move_to_end(series.id)
            return
        lim, tenant, metric = self.limits, series.tenant, series.name
        try:
            if self._per_tenant[tenant] >= lim.max_series_per_tenant:
                raise Rejection("too_many_series_tenant", f"tenant {tenant!r} has {self._per_tenant[tenant]} "
                                f"active series, the limit; new series {_show(series.key, 120)} refused")
            if self._per_metric[(tenant, metric)] >= lim.max_series_per_metric:
                raise Rejection("too_many_series_metric", f"metric {_show(metric)} of tenant {tenant!r} has "
                                f"{self._per_metric[(tenant, metric)]} active series, the limit; new series "
                                f"{_show(series.key, 120)} refused")
            for label, value in series.tags:
                values = self._values.get((tenant, metric, label))
                if values is not None and value not in values and len(values) >= lim.max_label_values_per_metric_label:
                    raise Rejection("too_many_label_values", f"label {label!r} of metric {_show(metric)} already "
                                    f"has {len(values)} distinct values, the limit; new value {_show(value)} "
                                    f"refused", label)
        except Rejection as exc:
            self.rejections[(tenant, metric, exc.label, exc.reason)] += 1
            raise
        self._last_seen[series.id] = (now, series)
        self._per_tenant[tenant] += 1
        self._per_metric[(tenant, metric)] += 1
        for label, value in series.tags:
            self._values[(tenant, metric, label)][value] += 1

    def _expire(self, now: float) -> None:
        horizon = now - self.limits.active_series_idle_seconds
        while self._last_seen:
            sid, (seen, series) = next(iter(self._last_seen.items()))
            if seen > horizon:
                return
            del self._last_seen[sid]
            self._forget(series)

    def _forget(self, series: SeriesId) -> None:
        tenant, metric = series.tenant, series.name
        self._per_tenant[tenant] -= 1
        if not self._per_tenant[tenant]:
            del self._per_tenant[tenant]
        self._per_metric[(tenant, metric)] -= 1
        if not self._per_metric[(tenant, metric)]:
            del self._per_metric[(tenant, metric)]
        for label, value in series.tags:
            values = self._values[(tenant, metric, label)]
            values[value] -= 1
            if not values[value]:
                del values[value]
            if not values:
                del self._values[(tenant, metric, label)]


class RateLimiter:
    """Token bucket per tenant: ``rate`` samples per second, bucket size ``burst``.

    A request may take more than the burst when the bucket is full (it then owes tokens and
    the next requests wait), so any request size eventually passes while the average rate
    stays bounded.
    """

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst, self.clock = float(rate_per_s), float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    @classmethod
    def from_limits(cls, limits: Limits, clock: Callable[[], float] = time.monotonic) -> "RateLimiter":
        return cls(limits.samples_per_second_per_tenant, limits.samples_burst_per_tenant, clock)

    def take(self, tenant: str, n: float, now: float | None = None) -> float | None:
        """Take ``n`` tokens for ``tenant``: None if allowed, else the seconds to wait before
        retrying (nothing is taken then)."""
        now = self.clock() if now is None else now
        tokens, at = self._buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        need = min(float(n), self.burst)
        if tokens < need:
            self._buckets[tenant] = (tokens, now)
            return (need - tokens) / self.rate
        self._buckets[tenant] = (tokens - n, now)
        return None
