"""The query engine: PromQL text in, evaluated series out, for one tenant at a time.

Used by the HTTP API (``tally.api``), the alert evaluator and the dashboard without HTTP::

    engine = QueryEngine(cfg)                      # Cassandra + Redis (tally.query.store)
    res = await engine.instant("acme", "sum by (host) (rate(http_requests[5m]))", time_s)
    res = await engine.range("acme", "avg(cpu_usage)", start_s, end_s, step_s)
    for s in res.series():                         # ResultSeries(labels: dict, points: [(t_s, v)])
        ...
    await engine.close()

Per query: parse (``tally.promql``) → choose the tier (``tally.query.resolution``) → look the
selectors' series up in the series index (derived names ``_count``/``_sum``/... included)
→ read their buckets concurrently (Redis for the recent part, Cassandra for the rest) →
evaluate all steps at once (numpy, in a worker thread so the event loop stays responsive).
Errors: ``PromQLError`` subclasses (400/422), ``QueryTimeout`` (503), ``TooManyPoints`` (400).
Every query holds one of the tenant's ``query_max_concurrent_per_tenant`` slots (waiting
counts against the timeout).  Range results of closed steps are cached (tally.query.cache).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from tally.config import TallyConfig
from tally.promql import ast as A
from tally.promql.errors import PromQLError, PromQLExecError
from tally.promql.evaluator import EvalContext, Scalar, SeriesData, Vector, evaluate
from tally.promql.parser import is_scalar, parse
from tally.promql.views import split_derived, view_for, columns_for
from tally.query.cache import Extent, ResultCache, merge_parts
from tally.query.resolution import choose_tier
from tally.query.rollups import is_rollup_selector, plan as plan_rollups, rollup_metric_names
from tally.query.storage import Buckets, SeriesMeta, Storage
from tally.rollup import ROLLUP_LABEL, RollupSet, load_rules
from tally.tiers import DEFAULT_TIERS, Tier

__all__ = ["QueryEngine", "QueryResult", "ResultSeries", "QueryTimeout", "TooManyPoints", "QueryLimits"]


class QueryTimeout(Exception):
    """The query ran past its timeout (HTTP 503, errorType ``timeout``)."""

    error_type = "timeout"
    status = 503


class TooManyPoints(PromQLError):
    """The range has more steps than allowed (HTTP 400 ``bad_data``)."""


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float = 30.0
    max_concurrent_per_tenant: int = 8
    max_points_per_series: int = 11_000
    lookback_s: int = 300
    cache_settle_s: float = 30.0

    @classmethod
    def from_config(cls, cfg: TallyConfig) -> "QueryLimits":
        return cls(cfg.query_timeout_seconds, cfg.query_max_concurrent_per_tenant,
                   cfg.query_max_points_per_series, cfg.query_lookback_seconds, cfg.query_cache_settle_seconds)


@dataclass
class ResultSeries:
    """One result series as plain values: labels and (unix seconds, value) points."""

    labels: dict
    points: list


@dataclass
class QueryResult:
    """An evaluated query.

    ``result_type``: "vector" (instant), "matrix" (range) or "scalar"; ``times_ms``: the
    evaluation times; ``labels``/``data``: series labels (sorted pairs) and a
    (series × steps) matrix with NaN = no sample; ``tier``: the tier read; ``closed``:
    every step was final (cacheable); ``stats``: series/bucket counts, cache use, timings;
    ``rollups``: the rollup rules that answered parts of the query (tally.query.rollups),
    as dicts with ``rule``, ``selector`` and ``note``; ``reuse``: (extent, lo, hi, col) when
    steps [col, col + hi - lo) are the cached extent's steps [lo, hi) (tally.api.encode
    splices its encoded rows); ``write_version``: the storage's write counter of the tier,
    read before the buckets (tally.query.storage), for a range with open steps.
    """

    result_type: str
    times_ms: np.ndarray
    labels: list
    data: np.ndarray
    tier: str
    warnings: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    closed: bool = False
    rollups: list = field(default_factory=list)
    reuse: tuple | None = None
    write_version: int | None = None

    def series(self) -> list[ResultSeries]:
        """Series with their points (NaN steps left out)."""
        out = []
        times_s = (self.times_ms / 1000.0).tolist()
        for labels, row in zip(self.labels, self.data):
            pts = [(t, v) for t, v in zip(times_s, row.tolist()) if not math.isnan(v)]
            if pts:
                out.append(ResultSeries(dict(labels), pts))
        return out

    def scalar(self) -> float | None:
        """The value of a scalar instant result (None when NaN)."""
        v = float(self.data[0][-1]) if len(self.data) else math.nan
        return None if math.isnan(v) else v


@lru_cache(maxsize=1024)
def _parse_cached(text: str):
    return parse(text)


def _usages(node, parent=None) -> dict:
    """selector → set of uses ("instant", "rate", "<fn>_over_time", "sketch", ...)."""
    out: dict = {}

    def visit(n, use):
        if isinstance(n, A.VectorSelector):
            out.setdefault(n, set()).add(use or "instant")
        elif isinstance(n, A.MatrixSelector):
            visit(n.selector, use)
        elif isinstance(n, A.Call):
            for arg in n.args:
                visit(arg, n.func if isinstance(arg, A.MatrixSelector) else None)
        elif isinstance(n, A.Aggregate):
            if n.op == "sketch_quantile":
                visit(n.expr, "sketch")
            else:
                visit(n.expr, None)
        elif isinstance(n, A.Binary):
            visit(n.lhs, None)
            visit(n.rhs, None)
        elif isinstance(n, A.Unary):
            visit(n.expr, None)

    visit(node, None)
    return out


def _selector_window_ms(sel: A.VectorSelector, node, lookback_ms: int, step_ms: int, res_ms: int) -> int:
    """How far back from an evaluation time a selector reads (the largest of its uses)."""
    window = 0

    def visit(n):
        nonlocal window
        if isinstance(n, A.MatrixSelector) and n.selector == sel:
            window = max(window, n.range_ms)
            return
        if isinstance(n, A.Aggregate) and n.op == "sketch_quantile" and n.expr == sel:
            window = max(window, step_ms, res_ms)
            return
        if n == sel:
            window = max(window, lookback_ms)
            return
        for child in A._children(n):
            visit(child)

    visit(node)
    return window


class QueryEngine:
    """Evaluates PromQL for a tenant over a :class:`tally.query.storage.Storage`."""

    def __init__(self, cfg: TallyConfig, storage: Storage | None = None, tiers: Sequence[Tier] = DEFAULT_TIERS,
                 clock: Callable[[], float] = time.time, cache: ResultCache | None = None,
                 limits: QueryLimits | None = None, rollups: RollupSet | None = None):
        self.cfg = cfg
        # Rollup rules (tally.rollup): covered aggregations read the rollup series.
        self.rollups = rollups if rollups is not None else load_rules(cfg.rollup_rules_path)
        if storage is None:
            from tally.query.store import BucketStore

            storage = BucketStore(cfg, tiers)
        self.storage = storage
        self.tiers = tuple(tiers)
        self.clock = clock
        self.limits = limits or QueryLimits.from_config(cfg)
        self.cache = cache if cache is not None else ResultCache(cfg.query_cache_max_entries,
                                                                 cfg.query_cache_ttl_seconds)
        self.grace_ms = cfg.grace_seconds * 1000
        self._slots: dict[str, asyncio.Semaphore] = {}

    # -- public API -------------------------------------------------------------------------

    async def instant(self, tenant: str, expr: str, time_s: float | None = None, *, tier: str | None = None,
                      timeout_s: float | None = None) -> QueryResult:
        """Evaluate ``expr`` at ``time_s`` (default now): a "vector" or "scalar" result."""
        t_ms = int(round((self.clock() if time_s is None else time_s) * 1000))
        return await self._run(tenant, expr, np.array([t_ms], dtype=np.int64), 0, tier, timeout_s, False)

    async def range(self, tenant: str, expr: str, start_s: float, end_s: float, step_s: float, *,
                    tier: str | None = None, timeout_s: float | None = None, use_cache: bool = True) -> QueryResult:
        """Evaluate ``expr`` at start, start+step, ... ≤ end: a "matrix" result."""
        if not step_s > 0:
            raise TooManyPoints("zero or negative query resolution step widths are not accepted. "
                                "Try a positive integer")
        if end_s < start_s:
            raise TooManyPoints("end timestamp must not be before start time")
        start_ms, end_ms, step_ms = int(round(start_s * 1000)), int(round(end_s * 1000)), int(round(step_s * 1000))
        n = (end_ms - start_ms) // step_ms + 1
        if n > self.limits.max_points_per_series:
            raise TooManyPoints(f"exceeded maximum resolution of {self.limits.max_points_per_series} points per "
                                f"timeseries. Try decreasing the query resolution (?step=XX)")
        times = start_ms + step_ms * np.arange(n, dtype=np.int64)
        return await self._run(tenant, expr, times, step_ms, tier, timeout_s, use_cache)

    async def metric_names(self, tenant: str) -> list[str]:
        return await self.storage.metric_names(tenant)

    async def write_version(self, tenant: str, tier: str) -> int | None:
        """The storage's write counter of the tenant's tier (None: unknown)."""
        return await self.storage.write_version(tenant, tier)

    async def find_series(self, tenant: str, selectors: Sequence[str], start_s: float | None = None,
                          end_s: float | None = None) -> list[dict]:
        """Label sets of the series matching any of the selectors (``match[]``).  Series
        come from the index (derived names are not listed); the time range is not used to
        filter (the index does not record when a series was last written)."""
        seen, out = set(), []
        for text in selectors:
            node = _parse_cached(text)
            if not isinstance(node, A.VectorSelector):
                raise PromQLExecError(f"match[] must be a series selector, got {text!r}")
            for meta, name, _suffix in await self._resolve(tenant, node, derived=False):
                labels = (("__name__", name),) + meta.tags
                if labels not in seen:
                    seen.add(labels)
                    out.append(dict(labels))
        return out

    async def label_names(self, tenant: str, selectors: Sequence[str] = ()) -> list[str]:
        series = await self._all_series(tenant, selectors)
        return sorted({k for s in series for k in s})

    async def label_values(self, tenant: str, label: str, selectors: Sequence[str] = ()) -> list[str]:
        if label == "__name__" and not selectors:
            return sorted(await self.storage.metric_names(tenant))
        series = await self._all_series(tenant, selectors)
        return sorted({s[label] for s in series if label in s})

    async def metadata(self, tenant: str, metric: str | None = None) -> dict:
        """Prometheus /api/v1/metadata: metric name → [{type, help, unit}]."""
        names = [metric] if metric else await self.storage.metric_names(tenant)
        kinds = {"c": "counter", "g": "gauge", "ms": "summary", "h": "summary", "d": "summary", "s": "counter"}
        out = {}
        for name in names:
            metas = await self.storage.series(tenant, name)
            if not metas:
                continue
            mtype = next((m.mtype for m in metas if m.mtype), None)
            help_text = {"c": "StatsD counter: value per bucket = its sum (delta)",
                         "s": "StatsD set: value per bucket = events counted"}.get(mtype or "", "")
            if mtype in ("ms", "h", "d"):
                help_text = ("distribution: value = mean per bucket; _count/_sum/_min/_max derived; "
                             "percentiles with sketch_quantile()")
            out[name] = [{"type": kinds.get(mtype or "g", "unknown"), "help": help_text, "unit": ""}]
        return out

    async def close(self) -> None:
        await self.storage.close()

    # -- internals --------------------------------------------------------------------------

    async def _all_series(self, tenant: str, selectors: Sequence[str]) -> list[dict]:
        if selectors:
            return await self.find_series(tenant, selectors)
        out = []
        for name in await self.storage.metric_names(tenant):
            for meta in await self.storage.series(tenant, name):
                if ROLLUP_LABEL not in dict(meta.tags):
                    out.append({"__name__": name, **dict(meta.tags)})
        return out

    def _slot(self, tenant: str) -> asyncio.Semaphore:
        sem = self._slots.get(tenant)
        if sem is None:
            sem = self._slots[tenant] = asyncio.Semaphore(self.limits.max_concurrent_per_tenant)
        return sem

    async def _run(self, tenant, expr, times, step_ms, tier_name, timeout_s, use_cache) -> QueryResult:
        node = _parse_cached(expr)
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                async with self._slot(tenant):
                    return await self._query(tenant, node, times, step_ms, tier_name, use_cache, deadline)
        except TimeoutError:
            raise QueryTimeout(f"query timed out after {timeout:g}s: {expr[:200]}") from None

    async def _query(self, tenant, node, times, step_ms, tier_name, use_cache, deadline) -> QueryResult:
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        windows = A.range_windows_ms(node)
        sels = A.selectors(node)
        max_offset = max([s.offset_ms for s in sels] or [0])
        min_offset = min([s.offset_ms for s in sels] or [0])
        base_reach = max(windows + [self.limits.lookback_s * 1000])
        try:
            tier = choose_tier(now_ms, int(times[0]) - base_reach - max_offset, step_ms, windows, self.tiers,
                               tier_name)
        except KeyError as exc:
            raise TooManyPoints(str(exc).strip('"')) from None
        result_type = "scalar" if is_scalar(node) else ("matrix" if step_ms else "vector")
        stats = {"tier": tier.name, "series_fetched": 0, "buckets_fetched": 0, "cache": "off"}
        uses = []
        if self.rollups:
            node, uses = await self._plan_rollups(tenant, node, int(times[0]) - base_reach - max_offset,
                                                  step_ms == 0)
        warnings: list[str] = []
        # A step is closed when the newest bucket it reads ended grace + settle ago.
        closed_limit = now_ms - self.grace_ms - int(self.limits.cache_settle_s * 1000)
        closed = times - min_offset + tier.resolution_ms <= closed_limit
        key = (tenant, repr(node), step_ms, int(times[0]) % step_ms if step_ms else 0, tier.name)
        # Read before any bucket: equal later means nothing of the tier was written since.
        version = (await self.storage.write_version(tenant, tier.name)
                   if use_cache and step_ms and not closed.all() else None)
        cached = self.cache.get(key) if (use_cache and step_ms) else None
        parts = []
        reuse = None  # (extent, lo, hi, col): result steps [col, col+hi-lo) = the extent's [lo, hi)
        head = np.empty(0, dtype=np.int64)
        if cached is not None:
            c0, c1 = int(cached.times_ms[0]), int(cached.times_ms[-1])
            inside = (times >= c0) & (times <= c1)
            if inside.any():
                lo = int(np.searchsorted(cached.times_ms, times[inside][0]))
                hi = lo + int(inside.sum())
                head, tail = times[times < c0], times[times > c1]
                if len(head):
                    parts.append(await self._evaluate(tenant, node, head, step_ms, tier, stats, warnings, deadline))
                parts.append((times[inside], cached.labels, cached.data[:, lo:hi]))
                reuse = (cached, lo, hi, len(head))
                if len(tail):
                    parts.append(await self._evaluate(tenant, node, tail, step_ms, tier, stats, warnings, deadline))
                stats["cache"] = "hit" if not len(head) and not len(tail) else "partial"
        if not parts:
            parts.append(await self._evaluate(tenant, node, times, step_ms, tier, stats, warnings, deadline))
            if use_cache and step_ms:
                stats["cache"] = "miss"
        out_times, labels, data = merge_parts(parts)
        if not len(out_times):
            out_times, labels, data = times, [], np.empty((0, len(times)))
        if result_type != "scalar":  # sorted before caching: a cached extent's rows stay in order
            labels, data = _sorted(labels, data)
        if use_cache and step_ms and closed[0]:
            n_closed = int(np.argmin(closed)) if not closed.all() else len(closed)
            # A partial hit replaces its extent when the query starts before it, when every
            # step is closed, or when enough steps closed after it: in between, the extent
            # keeps its encoded rows (the API splices them, tally.api.encode) while a live
            # range's open tail advances.
            newly = n_closed - len(head) - (reuse[2] - reuse[1]) if reuse else n_closed
            if reuse is None or len(head) or (newly > 0 and (closed.all() or
                                                             newly >= max(32, (reuse[2] - reuse[1]) // 8))):
                keep = ~np.all(np.isnan(data[:, :n_closed]), axis=1) if len(labels) else np.zeros(0, dtype=bool)
                extent = Extent(result_type, out_times[:n_closed].copy(), [l for l, k in zip(labels, keep) if k],
                                data[keep, :n_closed].copy())
                self.cache.put(key, extent)
                reuse = (extent, 0, n_closed, 0)
        stats["seconds"] = round(time.perf_counter() - started, 6)
        return QueryResult(result_type, out_times, labels, data, tier.name, warnings, stats, bool(closed.all()),
                           [u.as_dict() for u in uses], reuse, version)

    async def _plan_rollups(self, tenant: str, node, earliest_ms: int, instant: bool):
        """Rewrite the aggregations a rollup rule answers (tally.query.rollups), given the
        metric types and the rules whose rollup series exist in the tenant's index."""
        names = rollup_metric_names(node, self.rollups)
        if not names:
            return node, []
        mtypes, available = {}, set()
        for name in sorted(names):
            metas = await self.storage.series(tenant, name)
            rolled = {dict(m.tags).get(ROLLUP_LABEL) for m in metas} - {None}
            mtypes[name] = next((m.mtype for m in metas if m.mtype), None)
            available |= rolled
        return plan_rollups(node, self.rollups, mtypes, available, earliest_ms, instant)

    async def _evaluate(self, tenant, node, times, step_ms, tier, stats, warnings, deadline):
        lookback_ms = max(self.limits.lookback_s * 1000, tier.resolution_ms)
        usages = _usages(node)
        data: dict = {}

        async def fetch(sel: A.VectorSelector):
            reach = _selector_window_ms(sel, node, lookback_ms, step_ms, tier.resolution_ms)
            start = int(times[0]) - sel.offset_ms - reach + 1
            end = int(times[-1]) - sel.offset_ms
            resolved = await self._resolve(tenant, sel)
            uses = usages.get(sel, {"instant"})
            # An instant query reading a selector only as a sample needs its newest bucket.
            latest_only = len(times) == 1 and uses == {"instant"}
            # A range query reading it only as samples needs buckets before the first step
            # only for the series without one at that step (see _read_samples).
            first = int(times[0]) - sel.offset_ms if len(times) > 1 and uses == {"instant"} else None
            by_view: dict = {}
            for meta, name, suffix in resolved:
                view = view_for(meta.mtype, suffix)
                by_view.setdefault(view, []).append((meta, name))
            series: list[SeriesData] = []
            for view, members in by_view.items():
                cols = columns_for(view, uses)
                got, warns = await _read_samples(self.storage, tenant, tier, [m for m, _ in members], start, end,
                                                 cols, latest_only, first)
                for w in warns:
                    if w not in warnings:
                        warnings.append(w)
                for meta, name in members:
                    b = got.get(meta.sid)
                    if b is None or not len(b.ts):
                        continue
                    if "sketch" in uses and "sketch" not in b.cols:
                        continue
                    stats["buckets_fetched"] += len(b.ts)
                    series.append(SeriesData((("__name__", name),) + meta.tags, view, b.ts, b.cols))
            stats["series_fetched"] += len(series)
            data[sel] = series

        await asyncio.gather(*(fetch(s) for s in set(A.selectors(node))))

        def check():
            if time.monotonic() > deadline:
                raise QueryTimeout("query timed out during evaluation")

        ctx = EvalContext(times, step_ms, tier.resolution_ms, data, lookback_ms, check)
        value = await asyncio.to_thread(evaluate, node, ctx)
        if isinstance(value, Scalar):
            return times, [()], value.values[None, :]
        assert isinstance(value, Vector)
        return times, value.labels, value.data

    async def _resolve(self, tenant: str, sel: A.VectorSelector, derived: bool = True):
        """(meta, name shown, suffix) for every series the selector matches."""
        name_matchers = [m for m in sel.matchers if m.name == "__name__"]
        tag_matchers = [m for m in sel.matchers if m.name != "__name__"]
        # Rollup series (tally.rollup) are seen only by selectors naming __rollup__, so an
        # ordinary selector never counts a sample twice (raw + rollup).
        see_rollups = is_rollup_selector(sel)
        candidates: list[tuple[str, str, str]] = []  # (stored name, shown name, suffix)
        if sel.name is not None:
            candidates.append((sel.name, sel.name, ""))
            split = split_derived(sel.name) if derived else None
            if split:
                candidates.append((split[0], sel.name, split[1]))
        else:
            for name in await self.storage.metric_names(tenant):
                if all(m.matches(name) for m in name_matchers):
                    candidates.append((name, name, ""))
        out = []
        stored_names = set()
        lists = await asyncio.gather(*(self.storage.series(tenant, stored) for stored, _, _ in candidates))
        for (stored, shown, suffix), metas in zip(candidates, lists):
            if suffix and shown in stored_names:
                continue  # a stored metric of that exact name wins over the derived one
            for meta in metas:
                tags = dict(meta.tags)
                if ROLLUP_LABEL in tags and not see_rollups:
                    continue
                if all(m.matches(tags.get(m.name)) for m in tag_matchers):
                    out.append((meta, shown, suffix))
                    if not suffix:
                        stored_names.add(shown)
        return out


async def _read_samples(storage, tenant, tier, metas, start, end, cols, latest_only, first=None,
                        max_latest_reads: int = 64):
    """storage.buckets, reading less when ``first`` (the first step of a range query whose
    selector is used only as samples) is given: the buckets of [first, end], then, for the
    series without a bucket at ``first``, what the steps before their first bucket look back
    to: the newest bucket of [start, first) (or all of it when many series need one).  A
    step at t ≥ first takes the newest bucket ≤ t, which is in [first, end] unless t is
    before the series' first bucket there, so nothing the evaluator reads is left out."""
    if first is None or first <= start:
        return await storage.buckets(tenant, tier, metas, start, end, cols, latest_only)
    got, warnings = await storage.buckets(tenant, tier, metas, first, end, cols)
    need = [m for m in metas if m.sid not in got or not len(got[m.sid].ts) or int(got[m.sid].ts[0]) > first]
    if not need:
        return got, warnings
    before, more = await storage.buckets(tenant, tier, need, start, first - 1, cols,
                                         len(need) <= max_latest_reads)
    warnings += [w for w in more if w not in warnings]
    for sid, b in before.items():
        a = got.get(sid)
        if a is None or not len(a.ts):
            got[sid] = b
        else:
            got[sid] = Buckets(np.concatenate([b.ts, a.ts]),
                               {c: np.concatenate([b.cols[c], a.cols[c]]) for c in a.cols})
    return got, warnings


def _sorted(labels: list, data: np.ndarray):
    if len(labels) < 2 or all(a <= b for a, b in zip(labels, labels[1:])):
        return labels, data
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    return [labels[i] for i in order], data[order]
