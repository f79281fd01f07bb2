"""Pre-aggregation of StatsD lines per series per 1 s of event time (pure, the agent's hot path).

Hot path (``ingest``): a line ``name:values|type|fields`` is cut with ``str.partition`` into its
head (``name|type|fields``, the line without its values) and its raw values.  The head is
parsed once by :func:`tally.statsd.parse_head` and cached; each line then costs a dict
lookup and one ``list.append`` of the raw value string into the list of (event second, head).
Values are turned into numbers in bulk when the second is flushed (``map(float, ...)`` after a
single character-class check of the joined values); a bad value is then rejected with its
reason exactly like :func:`tally.statsd.parse_line` would, the other lines are kept.

Event time is the line's ``|T`` timestamp when present, else the arrival second passed in.
Per (series, type, second) the flush emits one partial aggregate: weighted count, sum, min,
max, last (arrival order) and for ``ms``/``h``/``d`` a :class:`tally.sketch.Sketch`.  Weights:
a counter sampled at rate r adds value/r and counts 1/r; a timer/histogram/distribution value
counts 1/r; gauges and sets count 1.  Gauges: ``+x``/``-x`` change the current value of the
series kept across seconds (starting from 0), a plain value sets it; the point holds the
gauge values after each sample.  Sets: the point value (sum = min = max = last) is the exact
number of distinct members seen in that second, with count 1.

Counters (``received``, ``parsed``, ``rejected`` by reason, ``aggregated`` values) satisfy
``received == parsed + sum(rejected) + pending`` where pending lines await their flush.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

from tally.limits import PROMETHEUS, Limits, Rejection, SeriesLimiter, resolve_series, validate_timestamp
from tally.series import SeriesId
from tally.sketch import Sketch
from tally.statsd import SAMPLED_TYPES, StatsdLineError, all_in_range, parse_head, parse_number, split_line

_NUMBER_CHARS = "0123456789.eE+-"
SKETCH_TYPES = frozenset({"ms", "h", "d"})


@dataclass(frozen=True, slots=True)
class Meta:
    """A resolved head: the series, its type and the weight of each of its values."""

    series: SeriesId
    type: str
    weight: float


@dataclass(slots=True)
class Flushed:
    """One partial aggregate of a series over one second, ready to become a point."""

    series: SeriesId
    type: str
    ts_ms: int
    count: float
    sum: float
    min: float
    max: float
    last: float
    sketch: Sketch | None


class Aggregator:
    """Per-second partial aggregates of StatsD lines.  Not thread-safe: one per worker.

    ``limits`` (tally.limits) are checked like the gateway does: series syntax, label count
    and lengths once per distinct head (after name normalization, so in the Prometheus
    dialect), ``|T`` timestamps against ``max_future_seconds``/``max_age_seconds`` (``clock``
    gives now), and active-series cardinality when a second is flushed (a refused series'
    lines are rejected with the limiter's reason).  Cardinality is per aggregator, i.e.
    per agent worker."""

    def __init__(self, tenant: str, limits: Limits | None = None, max_heads: int = 200_000,
                 clock: Callable[[], float] = time.time):
        self.tenant = tenant
        self.limits = limits or Limits()
        self.limiter = SeriesLimiter(self.limits, clock=clock)
        self.clock = clock
        self.max_heads = max_heads
        self.heads: dict[str, Meta | StatsdLineError] = {}
        self.open: dict[int, dict[str, list[str]]] = {}
        self.gauges: dict[int, float] = {}
        self.received = 0
        self.parsed = 0
        self.aggregated = 0
        self.rejected: Counter[str] = Counter()
        self.series_seen: set[int] = set()

    # -- hot path ---------------------------------------------------------------------

    def ingest_bytes(self, data: bytes, arrival_sec: int) -> None:
        """Ingest one datagram (or a run of complete TCP lines) received in arrival_sec."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            for raw in data.split(b"\n"):
                try:
                    self.ingest(raw.decode("utf-8"), arrival_sec)
                except UnicodeDecodeError:
                    if raw:
                        self.received += 1
                        self.rejected["encoding"] += 1
            return
        self.ingest(text, arrival_sec)

    def ingest(self, text: str, arrival_sec: int) -> None:
        """Ingest the lines of ``text`` (separated by newlines) that arrived in arrival_sec."""
        cur = self.open.get(arrival_sec)
        if cur is None:
            cur = self.open[arrival_sec] = {}
        heads = self.heads
        lines = text.split("\n")
        empty = 0
        check_length = len(text) > 8192
        for line in lines:
            # str.partition is the cheapest split in CPython: measured ~35 % faster than find+slice.
            head, bar, rest = line.partition("|")
            name, colon, raw = head.partition(":")
            if not (bar and colon and name) or (check_length and len(line) > 8192):
                if line:
                    self._slow(line, arrival_sec)
                else:
                    empty += 1
                continue
            key = name + bar + rest
            values = cur.get(key)
            if values is None:
                meta = heads.get(key)
                if meta is None:
                    if "|T" in key:  # varying timestamps: never cached
                        self._slow(line, arrival_sec)
                        continue
                    meta = self._resolve(key)
                if meta.__class__ is not Meta:
                    self.rejected[meta.reason] += 1
                    continue
                values = cur[key] = []
            values.append(raw)
        self.received += len(lines) - empty

    def _resolve(self, key: str) -> Meta | StatsdLineError:
        try:
            head = parse_head(key)
            # relabel rules, syntax checks, series id: the gateway's path too (tally.limits)
            meta: Meta | StatsdLineError = Meta(
                resolve_series(self.tenant, head.name, head.tags, self.limits, PROMETHEUS), head.type, head.weight)
        except StatsdLineError as exc:
            meta = exc
        except Rejection as exc:
            meta = StatsdLineError(exc.reason, exc.message)
        self.heads[key] = meta
        return meta

    def _slow(self, line: str, arrival_sec: int) -> None:
        """Lines the fast path does not take: malformed ones and ones with a |T timestamp."""
        try:
            key, raw = split_line(line)
            parts = key.split("|")
            fields = [p for p in parts[2:] if p[:1] != "T"]
            head = parse_head(key)  # validates the timestamp too
            sec = arrival_sec
            if head.timestamp is not None:
                try:
                    validate_timestamp(head.timestamp * 1000, int(self.clock() * 1000), self.limits)
                except Rejection as exc:
                    raise StatsdLineError(exc.reason, exc.message) from None
                sec = head.timestamp
                key = "|".join(parts[:2] + fields)
            meta = self.heads.get(key) or self._resolve(key)
            if meta.__class__ is not Meta:
                raise meta
        except StatsdLineError as exc:
            self.rejected[exc.reason] += 1
            return
        bucket = self.open.get(sec)
        if bucket is None:
            bucket = self.open[sec] = {}
        bucket.setdefault(key, []).append(raw)

    # -- flush ------------------------------------------------------------------------

    def pending_seconds(self) -> list[int]:
        return sorted(self.open)

    def flush(self, before_sec: int | None = None) -> list[Flushed]:
        """Close every second < before_sec (all when None) and return its aggregates,
        oldest second first."""
        return list(self.flush_iter(before_sec))

    def flush_iter(self, before_sec: int | None = None) -> Iterator[Flushed]:
        """Like :meth:`flush`, but the aggregates are computed as the iterator is consumed,
        so the agent can interleave that work with reading its socket.  The closed seconds
        are taken out at once: lines ingested meanwhile go to later flushes."""
        if len(self.heads) > self.max_heads:
            keep = {k for bucket in self.open.values() for k in bucket}
            self.heads = {k: v for k, v in self.heads.items() if k in keep}
        closed = [(sec, self.open.pop(sec)) for sec in sorted(self.open)
                  if before_sec is None or sec < before_sec]
        heads = self.heads
        closed = [(sec, [(heads[k], raws) for k, raws in bucket.items()]) for sec, bucket in closed]
        return self._aggregate_closed(closed)

    def _aggregate_closed(self, closed) -> Iterator[Flushed]:
        for sec, entries in closed:
            groups: dict[tuple[int, str], list[tuple[Meta, list[str]]]] = {}
            for meta, raws in entries:
                groups.setdefault((meta.series.id, meta.type), []).append((meta, raws))
            for group in groups.values():
                try:
                    admitted = self.limiter.admit(group[0][0].series)  # may drop/hash a label (overflow)
                except Rejection as exc:
                    self.rejected[exc.reason] += sum(len(raws) for _, raws in group)
                    continue
                flushed = self._aggregate(sec, group)
                if flushed is not None:
                    flushed.series = admitted
                    yield flushed

    def _numbers(self, raws: list[str]) -> list[float]:
        """All values of the lines in raws; a line with a bad value is rejected whole."""
        joined = "".join(raws)
        if not joined.strip(_NUMBER_CHARS):  # one value per line, only number characters
            try:
                values = list(map(float, raws))
            except ValueError:
                pass
            else:
                if all_in_range(values):  # else re-check one by one, rejecting the bad ones
                    self.parsed += len(raws)
                    return values
        values = []
        for raw in raws:
            try:
                values.extend([parse_number(p) for p in raw.split(":")])
            except StatsdLineError as exc:
                self.rejected[exc.reason] += 1
                continue
            self.parsed += 1
        return values

    def _aggregate(self, sec: int, entries: list[tuple[Meta, list[str]]]) -> Flushed | None:
        meta = entries[0][0]
        mtype = meta.type
        if mtype == "s":
            members: set[str] = set()
            for _, raws in entries:
                for raw in raws:
                    parts = raw.split(":")
                    if "" in parts:
                        self.rejected["bad_value"] += 1
                        continue
                    self.parsed += 1
                    self.aggregated += len(parts)
                    members.update(parts)
            if not members:
                return None
            n = float(len(members))
            return Flushed(meta.series, mtype, sec * 1000, 1.0, n, n, n, n, None)
        if mtype == "g":
            return self._gauge(sec, meta, [r for _, raws in entries for r in raws])
        count = total = 0.0
        lo, hi, last = math.inf, -math.inf, 0.0
        sketch = Sketch() if mtype in SKETCH_TYPES else None
        for m, raws in entries:
            values = self._numbers(raws)
            if not values:
                continue
            w = m.weight
            self.aggregated += len(values)
            count += len(values) * w
            total += math.fsum(values) * w
            lo = min(lo, min(values))
            hi = max(hi, max(values))
            last = values[-1]
            if sketch is not None:
                sketch.add_many(values, w)
        if count == 0.0:
            return None
        return Flushed(meta.series, mtype, sec * 1000, count, total, lo, hi, last, sketch)

    def _gauge(self, sec: int, meta: Meta, raws: list[str]) -> Flushed | None:
        sid = meta.series.id
        current = self.gauges.get(sid, 0.0)
        values = []
        joined = "".join(raws)
        if ":" not in joined and not joined.strip(_NUMBER_CHARS):
            try:  # one value per line: check them in bulk, then apply in order
                numbers = list(map(float, raws))
            except ValueError:
                numbers = None
            if numbers is not None and all_in_range(numbers):
                for raw, value in zip(raws, numbers):
                    first = raw[0]
                    current = current + value if first == "+" or first == "-" else value
                    values.append(current)
                self.parsed += len(raws)
                raws = ()
        for raw in raws:
            try:
                parts = [(parse_number(p), p[:1] in "+-") for p in raw.split(":")]
            except StatsdLineError as exc:
                self.rejected[exc.reason] += 1
                continue
            self.parsed += 1
            for value, delta in parts:
                current = current + value if delta else value
                values.append(current)
        if not values:
            return None
        self.gauges[sid] = current
        self.aggregated += len(values)
        return Flushed(meta.series, "g", sec * 1000, float(len(values)), math.fsum(values),
                       min(values), max(values), values[-1], None)

    def counters(self) -> dict:
        """A snapshot of the line counters."""
        return {"received": self.received, "parsed": self.parsed, "aggregated": self.aggregated,
                "rejected": dict(self.rejected)}


def weight_of(metric_type: str, rate: float) -> float:
    """The weight of one value: 1/rate for sampled types, else 1."""
    return 1.0 / rate if metric_type in SAMPLED_TYPES else 1.0
