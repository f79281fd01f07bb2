"""What the gateway does with a request body before Kafka: pure, no aiohttp, no Kafka.

``from_remote_write`` and ``from_push`` turn a decoded body into a :class:`Batch`: the
samples to write (series identity, type, timestamp, value, weight) and the refused ones
counted by reason with the first messages, so an HTTP handler only authorizes, calls one
of these, writes ``batch.accepted`` and reports.  The limits are applied here in a fixed
order: relabel rules and series syntax (``tally.limits.resolve_series``, the agent's path
too), then each sample's value and timestamp, then cardinality (a series is admitted only if
it has a sample to write; ``SeriesLimiter.admit`` may rewrite it by an overflow action).
Series dropped by a relabel rule are counted in ``Batch.dropped`` (not an error).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from tally.limits import PROMETHEUS, STATSD, Dropped, Limits, Rejection, SeriesLimiter, resolve_series, \
    validate_timestamp
from tally.remote_write import WriteRequest
from tally.series import SeriesId

__all__ = ["Sample", "Batch", "BodyError", "SeriesCache", "from_remote_write", "load_push", "from_push", "PUSH_TYPES", "MAX_MESSAGES"]

MAX_MESSAGES = 20  # reasons with examples in a response; the counts cover everything
PUSH_TYPES = frozenset({"c", "g", "ms", "h", "d", "s"})
_PUSH_FIELDS = frozenset({"name", "tags", "type", "value", "ts", "rate", "members"})


class BodyError(ValueError):
    """The body as a whole cannot be read (not JSON, wrong shape); nothing in it is used."""


@dataclass(frozen=True)
class Sample:
    """One accepted sample: becomes one point (tally.point.from_value)."""

    series: SeriesId
    metric_type: str
    ts_ms: int
    value: float
    count: float = 1.0


@dataclass
class Batch:
    """The outcome of one request body: accepted samples and rejected ones by reason."""

    accepted: list[Sample] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)  # reason -> samples refused
    messages: list[str] = field(default_factory=list)  # first MAX_MESSAGES explanations
    stale: int = 0  # Prometheus staleness markers skipped (not data, not an error)
    dropped: Counter = field(default_factory=Counter)  # reason -> samples dropped by relabel rules (on purpose)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str, message: str, n: int = 1) -> None:
        self.rejected[reason] += n
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"{reason}: {message}")

    def summary(self) -> dict[str, Any]:
        """The JSON body the gateway answers with."""
        return {"accepted": len(self.accepted), "rejected": self.rejected_total,
                "reasons": dict(sorted(self.rejected.items())), "errors": self.messages,
                "stale_markers_skipped": self.stale, "dropped": sum(self.dropped.values())}


def _admit_and_keep(batch: Batch, series: SeriesId, valid: list[Sample], limiter: SeriesLimiter) -> None:
    if not valid:
        return
    try:
        admitted = limiter.admit(series)
    except Rejection as exc:
        batch.reject(exc.reason, exc.message, len(valid))
        return
    if admitted is not series:  # an overflow action dropped or hashed a label
        valid = [dataclasses.replace(s, series=admitted) for s in valid]
    batch.accepted.extend(valid)


class SeriesCache:
    """Remembers what a label set resolved to (its SeriesId, or the Rejection it earned), so
    the series Prometheus sends every few seconds are validated and hashed once.  Bounded:
    cleared when full.  Valid for one Limits value (one cache per gateway)."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._entries: dict[tuple, SeriesId | Rejection] = {}

    def get(self, key: tuple):
        return self._entries.get(key)

    def put(self, key: tuple, value: SeriesId | Rejection) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = value


def _rw_series(labels_in: list[tuple[str, str]], tenant: str, limits: Limits) -> SeriesId:
    """The series a remote_write label set names, or Rejection."""
    names = [k for k, _ in labels_in]
    if len(set(names)) != len(names):
        dup = sorted({k for k in names if names.count(k) > 1})
        raise Rejection("duplicate_label_name", f"series {_labels_text(labels_in)} repeats label(s) {dup}")
    labels = {k: v for k, v in labels_in if v != ""}
    name = labels.pop("__name__", None)
    if name is None:
        raise Rejection("missing_metric_name", f"series {_labels_text(labels_in)} has no __name__ label")
    return resolve_series(tenant, name, labels, limits, PROMETHEUS)


def from_remote_write(req: WriteRequest, tenant: str, limits: Limits, limiter: SeriesLimiter,
                      now_ms: int, cache: SeriesCache | None = None) -> Batch:
    """Samples of a decoded remote_write request, each a gauge-typed sample of the series
    ``series_id(tenant, __name__, other labels)``.  Labels with an empty value are dropped
    (in Prometheus an empty label equals an absent one)."""
    batch = Batch()
    for message in req.malformed:
        batch.reject("malformed_series", message)
    for ts in req.timeseries:
        batch.stale += ts.stale
        if ts.histograms:
            batch.reject("native_histogram_unsupported",
                         f"{ts.histograms} native histogram sample(s) of {_labels_text(ts.labels)} "
                         "(send classic histograms)", ts.histograms)
        n = len(ts.samples)
        if not n:
            continue
        key = (tenant, tuple(ts.labels))
        series = cache.get(key) if cache is not None else None
        if series is None:
            try:
                series = _rw_series(ts.labels, tenant, limits)
            except Rejection as exc:
                series = exc
            if cache is not None:
                cache.put(key, series)
        if isinstance(series, Dropped):
            batch.dropped[series.reason] += n
            continue
        if isinstance(series, Rejection):
            batch.reject(series.reason, series.message, n)
            continue
        name = series.name
        valid = []
        for value, t in ts.samples:
            if not math.isfinite(value):
                batch.reject("non_finite_value", f"{name}: value {value} at {t} ms is not a finite number")
                continue
            try:
                validate_timestamp(t, now_ms, limits)
            except Rejection as exc:
                batch.reject(exc.reason, f"{name}: {exc.message}")
                continue
            valid.append(Sample(series, "g", t, value))
        _admit_and_keep(batch, series, valid, limiter)
    return batch


def _labels_text(labels: list[tuple[str, str]]) -> str:
    text = "{" + ", ".join(f"{k}={v!r}" for k, v in labels[:8]) + (", ..." if len(labels) > 8 else "") + "}"
    return text if len(text) <= 200 else text[:200] + "...}"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x: int | float) -> bool:
    """True for a number that is a finite double (a huge JSON integer is not)."""
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def load_push(body: bytes) -> list:
    """The ``points`` list of a JSON push body ``{"points": [...]}``; BodyError if the body
    is not such an object (nothing in it is used then)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BodyError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
        raise BodyError('body must be a JSON object {"points": [...]}')
    return doc["points"]


def from_push(items: list, tenant: str, limits: Limits, limiter: SeriesLimiter, now_ms: int) -> Batch:
    """Samples of the points of a JSON push body (:func:`load_push`), each
    ``{name, tags?, type?, value, ts?, rate?}``.

    Names follow the StatsD syntax (dots and dashes allowed); ``type`` is c, g (default),
    ms, h, d or s; ``ts`` is epoch ms (default: now); ``rate`` in (0, 1] weights counters,
    timers, histograms and distributions by 1/rate.  A set (``s``) gives its member(s) in
    ``value`` (string or number) or ``members`` (list); its point's value is the number of
    distinct members.  A bad point is rejected alone.
    """
    batch = Batch()
    by_series: dict[int, list[Sample]] = {}
    series_of: dict[int, SeriesId] = {}
    for i, item in enumerate(items):
        try:
            sample = _push_point(i, item, tenant, limits, now_ms)
        except Dropped as exc:
            batch.dropped[exc.reason] += 1
            continue
        except Rejection as exc:
            batch.reject(exc.reason, exc.message)
            continue
        by_series.setdefault(sample.series.id, []).append(sample)
        series_of[sample.series.id] = sample.series
    for sid, samples in by_series.items():
        _admit_and_keep(batch, series_of[sid], samples, limiter)
    return batch


def _push_point(i: int, item: Any, tenant: str, limits: Limits, now_ms: int) -> Sample:
    where = f"points[{i}]"
    if not isinstance(item, dict):
        raise Rejection("bad_point", f"{where} is a {type(item).__name__}, not an object")
    unknown = set(item) - _PUSH_FIELDS
    if unknown:
        raise Rejection("bad_point", f"{where} has unknown field(s) {sorted(unknown)[:5]}")
    name, tags, mtype = item.get("name"), item.get("tags", {}), item.get("type", "g")
    if not isinstance(name, str):
        raise Rejection("bad_metric_name", f"{where}: 'name' must be a string")
    if not isinstance(tags, dict):
        raise Rejection("bad_point", f"{where}: 'tags' must be an object of strings")
    if mtype not in PUSH_TYPES:
        raise Rejection("bad_type", f"{where}: 'type' must be one of {sorted(PUSH_TYPES)}, got {str(mtype)[:20]!r}")
    try:
        series = resolve_series(tenant, name, tags, limits, STATSD)
    except Dropped:
        raise
    except Rejection as exc:
        raise Rejection(exc.reason, f"{where}: {exc.message}", exc.label) from None
    rate = item.get("rate", 1.0)
    if not _number(rate) or not 0 < rate <= 1:
        raise Rejection("bad_rate", f"{where}: 'rate' must be a number in (0, 1], got {str(rate)[:20]}")
    ts = item.get("ts", now_ms)
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise Rejection("bad_timestamp", f"{where}: 'ts' must be integer epoch milliseconds, got {str(ts)[:30]}")
    try:
        validate_timestamp(ts, now_ms, limits)
    except Rejection as exc:
        raise Rejection(exc.reason, f"{where} ({name}): {exc.message}") from None
    if mtype == "s":
        members = item.get("members", [item["value"]] if "value" in item else None)
        if not isinstance(members, list) or not members or not all(
                isinstance(m, str) or _number(m) for m in members):
            raise Rejection("bad_value", f"{where}: a set needs 'value' (a member) or 'members' (a non-empty list)")
        value, count = float(len({str(m) for m in members})), 1.0
    else:
        value = item.get("value")
        if "members" in item:
            raise Rejection("bad_point", f"{where}: 'members' is only for sets (type 's')")
        if not _number(value) or not _finite(value):
            raise Rejection("bad_value", f"{where}: 'value' must be a finite number, got {str(value)[:30]}")
        count = 1.0 if mtype == "g" else 1.0 / rate
        if not _finite(float(value) * count):
            raise Rejection("bad_value", f"{where}: value {value} / rate {rate} is not a finite number")
    return Sample(series, mtype, ts, float(value), count)
