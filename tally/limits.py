"""Ingestion limits shared by the agent and the gateway: series syntax, cardinality, time, rate.

Everything here is pure (no engines, no I/O) and takes its clock as a parameter, so the
same checks run in the StatsD agent, the HTTP gateway and the unit tests.  A failed check
raises :class:`Rejection`, whose ``reason`` is a short stable code to count by and whose
``message`` is a sentence naming the offending value.

Two name syntaxes exist because the two families of senders differ: Prometheus names
(``[a-zA-Z_:][a-zA-Z0-9_:]*``, labels ``[a-zA-Z_][a-zA-Z0-9_]*``) and StatsD/DogStatsD
names, which additionally allow ``.`` and ``-`` after the first character
(``http.requests``, tag ``service-name``).  Callers pick one with ``dialect``.

One path for every ingester (agent and gateway): :func:`resolve_series` turns a name and
tags into the series identity (relabel rules of ``Limits.relabel`` first, then the syntax
checks, then :func:`tally.series.series_id`), and :meth:`SeriesLimiter.admit` applies the
cardinality limits to it, returning the series to write: the same one, or, when the
operator configured an overflow action for the limit that was hit (``drop_label`` or
``hash:N``), the series with its offending label dropped or replaced by a hash bucket.
"""

from __future__ import annotations

import re
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from tally.relabel import RuleSet, hash_bucket, load_rules
from tally.rollup import ROLLUP_LABEL
from tally.series import SeriesId, series_id

__all__ = [
    "Rejection", "Dropped", "Limits", "Overflow", "validate_series", "validate_timestamp", "resolve_series",
    "SeriesLimiter", "RateLimiter", "limiter_metric_lines", "PROMETHEUS", "STATSD",
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


class Dropped(Rejection):
    """A series the operator's relabel rules drop on purpose (reason ``relabel_drop``):
    counted like a rejection, but not an error of the sender."""


@dataclass(frozen=True)
class Overflow:
    """What to do with a new series over a cardinality limit: ``reject`` it (default),
    ``drop_label`` (write it without the offending label) or ``hash:N`` (replace the
    offending label's value by one of N buckets, ``hash_00`` .. ``hash_<N-1>``)."""

    action: str = "reject"
    buckets: int = 0

    @classmethod
    def parse(cls, text: str, field_name: str = "overflow") -> "Overflow":
        raw = str(text).strip().lower()
        if raw in ("reject", "drop_label"):
            return cls(raw)
        if raw.startswith("hash:"):
            try:
                n = int(raw[5:])
            except ValueError:
                n = 0
            if 1 <= n <= 100_000:
                return cls("hash", n)
        raise ValueError(f"{field_name} must be 'reject', 'drop_label' or 'hash:N' (N from 1 to 100000), "
                         f"got {text!r}")

    @property
    def name(self) -> str:
        return f"hash:{self.buckets}" if self.action == "hash" else self.action

    def rewrite(self, series: SeriesId, label: str) -> SeriesId:
        """``series`` with ``label`` dropped or hashed (not for ``reject``)."""
        tags = [(k, v) for k, v in series.tags if k != label]
        if self.action == "hash":
            tags.append((label, hash_bucket(series.tag_dict[label], self.buckets)))
        return series_id(series.tenant, series.name, tags)


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
    # Overflow action per cardinality limit (Overflow.parse: reject | drop_label | hash:N).
    label_values_overflow: str = "reject"
    series_per_metric_overflow: str = "reject"
    series_per_tenant_overflow: str = "reject"
    # Relabel rules applied by resolve_series before everything else (None: none).
    relabel: RuleSet | None = None

    def __post_init__(self):
        for name in ("label_values_overflow", "series_per_metric_overflow", "series_per_tenant_overflow"):
            Overflow.parse(getattr(self, name), name)  # fail at start-up, naming the setting

    def overflow(self, reason: str) -> Overflow:
        """The overflow action configured for the limit behind a rejection ``reason``."""
        field_name = _OVERFLOW_FIELD.get(reason)
        return Overflow.parse(getattr(self, field_name), field_name) if field_name else Overflow()

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        """Limits from a TallyConfig's ``limit_*`` fields (missing fields keep the defaults)
        and its relabel rule file (``relabel_rules_path``; RelabelError if unusable)."""
        values = {}
        for name in cls.__dataclass_fields__:
            if hasattr(cfg, f"limit_{name}"):
                values[name] = getattr(cfg, f"limit_{name}")
        path = getattr(cfg, "relabel_rules_path", None)
        if path:
            values["relabel"] = load_rules(path)
        return cls(**values)


_OVERFLOW_FIELD = {"too_many_label_values": "label_values_overflow",
                   "too_many_series_metric": "series_per_metric_overflow",
                   "too_many_series_tenant": "series_per_tenant_overflow"}


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
        if label == ROLLUP_LABEL:
            raise Rejection("reserved_label", f"label name {label!r} of metric {_show(name)} is reserved for "
                                              "rollup series (tally.rollup); senders may not set it", label)
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


def resolve_series(tenant: str, name: str, tags: Mapping[str, str] | Iterable[tuple[str, str]], limits: Limits,
                   dialect: str = PROMETHEUS) -> SeriesId:
    """The series identity of a received name and tag set, the one path of the agent and the
    gateway: the relabel rules of ``limits`` (:class:`Dropped` if they drop it), then
    :func:`validate_series` (:class:`Rejection`), then :func:`tally.series.series_id`."""
    if limits.relabel is not None and limits.relabel.rules:
        if not isinstance(tags, Mapping):
            tags = dict(tags)
        validate_series(name, tags, limits, dialect)  # what the rules read is well-formed and bounded
        out = limits.relabel.apply(name, tags)
        if out is None:
            raise Dropped("relabel_drop", f"series {_show(name)} dropped by a relabel rule of {limits.relabel.source}")
        name, tags = out
    elif not isinstance(tags, Mapping):
        tags = dict(tags)
    validate_series(name, tags, limits, dialect)
    return series_id(tenant, name, tags)


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
    hit).  A new series that would cross a limit is handled by that limit's overflow action
    (``Limits.*_overflow``): ``reject`` raises :class:`Rejection`, counted in
    ``rejections[(tenant, metric, label, reason)]``; ``drop_label`` / ``hash:N`` rewrite the
    offending label (for the label-value limit: that label; for the series limits: the
    series' label with the most distinct values in its metric) and admit the rewritten
    series instead, counted in ``overflowed[(tenant, metric, label, reason, action)]``.
    The rewritten series is checked again, except against the label-value limit of the
    rewritten label (its values are bounded: N buckets, or none) and the per-metric limit
    when that limit was hit (the rewrite bounds the metric's growth); the per-tenant limit
    is never exceeded by a new series.  A series idle for ``active_series_idle_seconds``
    is forgotten, which frees its share of every limit.
    Not thread-safe: one limiter per event loop / worker, or callers hold a lock.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic, max_redirects: int = 200_000):
        self.limits = limits
        self.clock = clock
        self._last_seen: OrderedDict[int, tuple[float, SeriesId]] = OrderedDict()
        self._per_tenant: Counter[str] = Counter()
        self._per_metric: Counter[tuple[str, str]] = Counter()
        # (tenant, metric, label) -> value -> number of active series holding it
        self._values: defaultdict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        self.rejections: Counter[tuple[str, str, str, str]] = Counter()
        self.overflowed: Counter[tuple[str, str, str, str, str]] = Counter()
        # over-limit series id -> (rewritten series, what was rewritten): later batches of the
        # same series skip the rewrite while the target is active
        self._redirects: OrderedDict[int, tuple[SeriesId, list]] = OrderedDict()
        self._max_redirects = max_redirects
        self._overflow = {reason: limits.overflow(reason) for reason in _OVERFLOW_FIELD}

    def tenants(self) -> list[str]:
        """Tenants with at least one active series."""
        return sorted(self._per_tenant)

    def active(self, tenant: str, metric: str | None = None) -> int:
        """Active series of a tenant (or of one of its metrics)."""
        return self._per_tenant[tenant] if metric is None else self._per_metric[(tenant, metric)]

    def distinct_values(self, tenant: str, metric: str, label: str) -> int:
        """Distinct values of one label of one metric among the tenant's active series."""
        return len(self._values.get((tenant, metric, label), ()))

    def admit(self, series: SeriesId, now_s: float | None = None) -> SeriesId:
        """Record that ``series`` received data and return the series to write it as: itself,
        or its rewrite by an overflow action; raise Rejection if it is new and refused."""
        now = self.clock() if now_s is None else now_s
        self._expire(now)
        if series.id in self._last_seen:  # the common case, inline: the agent calls this per series per second
            self._last_seen[series.id] = (now, series)
            self._last_seen.move_to_end(series.id)
            return series
        redirect = self._redirects.get(series.id)
        if redirect is not None and redirect[0].id in self._last_seen:
            target, rewrites = redirect
            self._touch(target, now)
            for key in rewrites:
                self.overflowed[key] += 1
            return target
        original, exempt, metric_exempt, rewrites = series, set(), False, []
        while True:
            if series is not original and series.id in self._last_seen:
                break
            problem = self._check(series, exempt, metric_exempt)
            if problem is None:
                self._add(series, now)
                break
            action = self._overflow.get(problem.reason, Overflow())
            label = problem.label or self._culprit(series, exempt)
            if action.action == "reject" or not label or label in exempt:
                self.rejections[(series.tenant, series.name, problem.label, problem.reason)] += 1
                raise problem
            series = action.rewrite(series, label)
            exempt.add(label)
            metric_exempt = metric_exempt or problem.reason == "too_many_series_metric"
            rewrites.append((series.tenant, series.name, label, problem.reason, action.name))
        if series is not original:
            for key in rewrites:
                self.overflowed[key] += 1
            self._redirects[original.id] = (series, rewrites)
            if len(self._redirects) > self._max_redirects:
                self._redirects.popitem(last=False)
        self._touch(series, now)
        return series

    def _touch(self, series: SeriesId, now: float) -> None:
        self._last_seen[series.id] = (now, series)
        self._last_seen.move_to_end(series.id)

    def _check(self, series: SeriesId, exempt: set, metric_exempt: bool) -> Rejection | None:
        lim, tenant, metric = self.limits, series.tenant, series.name
        if self._per_tenant[tenant] >= lim.max_series_per_tenant:
            return Rejection("too_many_series_tenant", f"tenant {tenant!r} has {self._per_tenant[tenant]} "
                             f"active series, the limit; new series {_show(series.key, 120)} refused")
        if not metric_exempt and self._per_metric[(tenant, metric)] >= lim.max_series_per_metric:
            return Rejection("too_many_series_metric", f"metric {_show(metric)} of tenant {tenant!r} has "
                             f"{self._per_metric[(tenant, metric)]} active series, the limit; new series "
                             f"{_show(series.key, 120)} refused")
        for label, value in series.tags:
            if label in exempt:
                continue
            values = self._values.get((tenant, metric, label))
            if values is not None and value not in values and len(values) >= lim.max_label_values_per_metric_label:
                return Rejection("too_many_label_values", f"label {label!r} of metric {_show(metric)} already "
                                 f"has {len(values)} distinct values, the limit; new value {_show(value)} "
                                 f"refused", label)
        return None

    def _culprit(self, series: SeriesId, exempt: set) -> str:
        """The label of ``series`` with the most distinct values in its metric (ties: name)."""
        best, best_n = "", -1
        for label, _ in series.tags:
            n = len(self._values.get((series.tenant, series.name, label), ()))
            if label not in exempt and n > best_n:
                best, best_n = label, n
        return best

    def _add(self, series: SeriesId, now: float) -> None:
        self._last_seen[series.id] = (now, series)
        self._per_tenant[series.tenant] += 1
        self._per_metric[(series.tenant, series.name)] += 1
        for label, value in series.tags:
            self._values[(series.tenant, series.name, label)][value] += 1

    def snapshot(self) -> dict:
        """Plain counters for another process to render (:func:`limiter_metric_lines`)."""
        return {"rejections": [[*k, n] for k, n in self.rejections.items()],
                "overflowed": [[*k, n] for k, n in self.overflowed.items()],
                "active": [[t, n] for t, n in self._per_tenant.items()]}

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


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def limiter_metric_lines(prefix: str, snapshots: Iterable[dict]) -> list[str]:
    """Prometheus text lines of the cardinality-limit counters of one or more limiters
    (:meth:`SeriesLimiter.snapshot`, e.g. one per agent worker; counters are summed):
    ``<prefix>_series_limited_total{tenant,metric,label,reason}`` (new series refused),
    ``<prefix>_series_overflowed_total{tenant,metric,label,reason,action}`` (new series
    rewritten by an overflow action) and ``<prefix>_active_series{tenant}``."""
    families = (("series_limited_total", "counter", "New series refused by a cardinality limit",
                 "rejections", ("tenant", "metric", "label", "reason")),
                ("series_overflowed_total", "counter",
                 "New series over a cardinality limit written with the label dropped or hashed",
                 "overflowed", ("tenant", "metric", "label", "reason", "action")),
                ("active_series", "gauge", "Active series per tenant known to this process", "active", ("tenant",)))
    snapshots, out = list(snapshots), []
    for suffix, kind, help_text, key, names in families:
        summed: Counter = Counter()
        for snap in snapshots:
            for row in (snap or {}).get(key, ()):
                summed[tuple(row[:-1])] += row[-1]
        name = f"{prefix}_{suffix}"
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, n in sorted(summed.items()):
            text = ",".join(f'{k}="{_esc(v)}"' for k, v in zip(names, labels))
            out.append(f"{name}{{{text}}} {n}")
    return out


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
