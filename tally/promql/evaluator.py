"""Evaluation of a parsed PromQL expression over fetched buckets, all steps at once.

Pure (numpy only).  The caller (``tally.query.engine``) fetches, for every vector selector
of the expression, the buckets of its matching series (``SeriesData``) and calls
:func:`evaluate` with the evaluation times.  Every value is held for all steps at once: a
scalar is an array over steps, an instant vector a ``(series, steps)`` matrix with NaN where
a series has no sample; an instant query is a range query with one step.

Semantics (see :mod:`tally.promql.views` for what a bucket's sample is):

- A bucket is a sample stamped at its start.  An instant selector at time t takes the
  newest bucket with start in ``(t - lookback, t]``; lookback = max(5 min, tier resolution).
- A range selector ``x[w]`` at t covers buckets with start in ``(t - w, t]``; range
  functions use the bucket aggregates (exact over the raw points where the view is raw).
- ``rate``/``increase`` of delta views (StatsD counters, ``_count``, ``_sum``) are
  Σ deltas (/ w seconds); of other views they follow Prometheus (counter resets,
  extrapolation to the window edges) on the sample values.
- ``sketch_quantile(φ, x[w]) by (labels)`` merges, per group and step, the DDSketches of
  every bucket of every matching series in ``(t - w, t]`` and answers the φ-quantile of
  the merged sketch (relative error ≤ the sketch alpha, 1 %); with a plain selector the
  window is max(step, tier resolution), i.e. exactly the buckets of that step.
  Percentiles are never averaged.
- Aggregations ignore missing samples; arithmetic drops ``__name__``; comparisons without
  ``bool`` filter; vector/vector operations match one-to-one on all labels but the name
  (or ``on``/``ignoring``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tally.promql import sketches
from tally.promql.ast import Aggregate, Binary, Call, MatrixSelector, Number, Unary, VectorSelector
from tally.promql.errors import PromQLExecError, PromQLUnsupported
from tally.promql.parser import COMPARISONS, SET_OPS
from tally.promql.views import View

__all__ = ["SeriesData", "Scalar", "Vector", "EvalContext", "evaluate", "DEFAULT_LOOKBACK_MS"]

DEFAULT_LOOKBACK_MS = 300_000
Labels = tuple  # sorted tuple of (name, value) pairs, including "__name__" when present


@dataclass
class SeriesData:
    """One series' buckets as the evaluator sees them.

    ``labels``: sorted (name, value) pairs with ``__name__`` (the queried name);
    ``ts``: bucket starts (int64 ms, ascending); ``cols``: column → array aligned with ts
    (float64 for count/sum/min/max/last, object arrays of bytes/None for sketch).
    """

    labels: Labels
    view: View
    ts: np.ndarray
    cols: dict = field(default_factory=dict)

    def samples(self) -> np.ndarray:
        """The per-bucket sample values of this series' view."""
        kind = self.view.sample
        if kind == "avg":
            with np.errstate(divide="ignore", invalid="ignore"):
                return self.cols["sum"] / self.cols["count"]
        return self.cols[kind]


@dataclass
class Scalar:
    values: np.ndarray  # (steps,)


@dataclass
class Vector:
    labels: list  # list[Labels]
    data: np.ndarray  # (series, steps), NaN = no sample

    def compact(self) -> "Vector":
        """Drop series without any sample."""
        if not len(self.labels):
            return self
        keep = ~np.all(np.isnan(self.data), axis=1)
        if keep.all():
            return self
        return Vector([l for l, k in zip(self.labels, keep) if k], self.data[keep])


@dataclass
class EvalContext:
    """Evaluation times and the fetched data.

    ``times_ms``: int64 evaluation timestamps; ``step_ms``: 0 for an instant query;
    ``resolution_ms``: the tier's bucket width; ``data``: selector → list[SeriesData].
    """

    times_ms: np.ndarray
    step_ms: int
    resolution_ms: int
    data: dict
    lookback_ms: int = DEFAULT_LOOKBACK_MS
    # Called between heavy steps so the engine can enforce its timeout.
    check: object = None

    @property
    def lookback(self) -> int:
        return max(self.lookback_ms, self.resolution_ms)


def evaluate(node, ctx: EvalContext):
    """Evaluate ``node`` at every time of ``ctx``; returns a Scalar or a Vector."""
    if ctx.check:
        ctx.check()
    if isinstance(node, Number):
        return Scalar(np.full(len(ctx.times_ms), node.value, dtype=float))
    if isinstance(node, VectorSelector):
        return _instant_selector(node, ctx)
    if isinstance(node, MatrixSelector):
        raise PromQLExecError("a range vector cannot be the result of a query or operand; "
                              "use it inside a function like rate() or avg_over_time()")
    if isinstance(node, Call):
        return _call(node, ctx)
    if isinstance(node, Aggregate):
        return _aggregate(node, ctx)
    if isinstance(node, Unary):
        value = evaluate(node.expr, ctx)
        if isinstance(value, Scalar):
            return Scalar(-value.values)
        return Vector([_drop_name(l) for l in value.labels], -value.data)
    if isinstance(node, Binary):
        return _binary(node, ctx)
    raise PromQLUnsupported(f"unsupported expression {type(node).__name__}")


# -- selectors -----------------------------------------------------------------------------


def _window_bounds(ts: np.ndarray, times: np.ndarray, window_ms: int):
    """Index ranges [lo, hi) of buckets with start in (t - window, t] for every t."""
    lo = np.searchsorted(ts, times - window_ms, side="right")
    hi = np.searchsorted(ts, times, side="right")
    return lo, hi


def _instant_selector(node: VectorSelector, ctx: EvalContext) -> Vector:
    times = ctx.times_ms - node.offset_ms
    series = ctx.data.get(node, [])
    shared = _shared_grid(series)
    if shared is not None:  # every series has buckets at the same starts: one lookup for all
        idx = np.searchsorted(shared, times, side="right") - 1
        ok = idx >= 0
        idx = np.where(ok, idx, 0)
        ok &= shared[idx] > times - ctx.lookback
        samples = np.concatenate([s.samples() for s in series]).reshape(len(series), len(shared))
        if ok.all() and len(idx) == len(shared) and (idx == np.arange(len(idx))).all():
            return Vector([s.labels for s in series], samples).compact()  # a step per bucket
        out = np.where(ok[None, :], samples[:, idx], np.nan)
        return Vector([s.labels for s in series], out).compact()
    out = np.full((len(series), len(times)), np.nan)
    for row, s in enumerate(series):
        if not len(s.ts):
            continue
        idx = np.searchsorted(s.ts, times, side="right") - 1
        ok = idx >= 0
        idx = np.where(ok, idx, 0)
        ok &= s.ts[idx] > times - ctx.lookback
        out[row] = np.where(ok, s.samples()[idx], np.nan)
    return Vector([s.labels for s in series], out).compact()


def _shared_grid(series: list) -> np.ndarray | None:
    """The bucket starts of every series when they are all the same (dense series of one
    range, the common case of a dashboard query over many hosts), else None."""
    if len(series) < 2:
        return None
    first = series[0].ts
    n = len(first)
    if not n or any(len(s.ts) != n for s in series):
        return None
    grid = np.concatenate([s.ts for s in series]).reshape(len(series), n)
    return first if (grid == first).all() else None


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(values, dtype=float)))


def _range_min_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, reducer) -> np.ndarray:
    """reducer (np.fmin/np.fmax) over values[lo:hi] for every window, via a sparse table."""
    n = len(values)
    out = np.full(len(lo), np.nan)
    nonempty = hi > lo
    if not n or not nonempty.any():
        return out
    table = [values]
    span = 1
    while span * 2 <= n:
        prev = table[-1]
        table.append(reducer(prev[:-span], prev[span:]))
        span *= 2
    l, h = lo[nonempty], hi[nonempty]
    level = np.floor(np.log2(h - l)).astype(int)
    res = np.empty(len(l))
    for lv in np.unique(level):
        sel = level == lv
        arr = table[lv]
        res[sel] = reducer(arr[l[sel]], arr[h[sel] - (1 << lv)])
    out[nonempty] = res
    return out


def _range_function(func: str, arg: MatrixSelector, ctx: EvalContext) -> Vector:
    sel = arg.selector
    times = ctx.times_ms - sel.offset_ms
    window = arg.range_ms
    series = ctx.data.get(sel, [])
    out = np.full((len(series), len(times)), np.nan)
    for row, s in enumerate(series):
        if not len(s.ts):
            continue
        lo, hi = _window_bounds(s.ts, times, window)
        n = hi - lo
        empty = n == 0
        view = s.view
        with np.errstate(divide="ignore", invalid="ignore"):
            if func in ("rate", "increase") and view.delta:
                cs = _prefix(s.cols[view.rate_column])
                val = cs[hi] - cs[lo]
                if func == "rate":
                    val = val / (window / 1000.0)
            elif func in ("rate", "increase"):
                val = _extrapolated_rate(s.ts, s.samples(), times, window, lo, hi, func == "rate")
            elif func == "count_over_time":
                val = (_prefix(s.cols["count"])[hi] - _prefix(s.cols["count"])[lo]) if view.raw else n.astype(float)
            elif func == "sum_over_time":
                cs = _prefix(s.cols["sum"] if view.raw else s.samples())
                val = cs[hi] - cs[lo]
            elif func == "avg_over_time":
                if view.raw:
                    total, cnt = _prefix(s.cols["sum"]), _prefix(s.cols["count"])
                    val = (total[hi] - total[lo]) / (cnt[hi] - cnt[lo])
                else:
                    cs = _prefix(s.samples())
                    val = (cs[hi] - cs[lo]) / n
            elif func in ("min_over_time", "max_over_time"):
                is_min = func == "min_over_time"
                col = (s.cols["min"] if is_min else s.cols["max"]) if view.raw else s.samples()
                val = _range_min_max(np.asarray(col, dtype=float), lo, hi, np.fmin if is_min else np.fmax)
            else:  # pragma: no cover - the parser admits only the functions above
                raise PromQLUnsupported(f"unsupported function '{func}'")
        val = np.asarray(val, dtype=float)
        val[empty] = np.nan
        out[row] = val
    return Vector([_drop_name(s.labels) for s in series], out).compact()


def _extrapolated_rate(ts, values, times, window, lo, hi, is_rate) -> np.ndarray:
    """Prometheus' extrapolatedRate (counter semantics) for every window [lo, hi)."""
    values = np.asarray(values, dtype=float)
    n = hi - lo
    out = np.full(len(times), np.nan)
    ok = n >= 2
    if not ok.any():
        return out
    # Counter resets: a drop adds the previous value back; prefix sums make it per window.
    drops = np.concatenate(([0.0], np.where(values[1:] < values[:-1], values[:-1], 0.0)))
    resets = np.cumsum(drops)
    first, last = lo[ok], hi[ok] - 1
    result = values[last] - values[first] + (resets[last] - resets[first])
    t_first, t_last = ts[first] / 1000.0, ts[last] / 1000.0
    range_start = (times[ok] - window) / 1000.0
    range_end = times[ok] / 1000.0
    sampled = t_last - t_first
    avg_between = sampled / (n[ok] - 1)
    to_start = t_first - range_start
    to_end = range_end - t_last
    v_first = values[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        to_zero = np.where((result > 0) & (v_first >= 0), sampled * (v_first / result), np.inf)
    to_start = np.minimum(to_start, to_zero)
    threshold = avg_between * 1.1
    interval = sampled + np.where(to_start < threshold, to_start, avg_between / 2)
    interval = interval + np.where(to_end < threshold, to_end, avg_between / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = result * (interval / sampled)
    if is_rate:
        result = result / (window / 1000.0)
    out[ok] = result
    return out


# -- functions -----------------------------------------------------------------------------


def _call(node: Call, ctx: EvalContext):
    func = node.func
    if func in ("rate", "increase") or func.endswith("_over_time"):
        return _range_function(func, node.args[0], ctx)
    if func == "time":
        return Scalar(ctx.times_ms / 1000.0)
    if func == "vector":
        value = evaluate(node.args[0], ctx)
        return Vector([()], value.values[None, :].copy())
    if func == "scalar":
        value = evaluate(node.args[0], ctx)
        present = ~np.isnan(value.data)
        single = present.sum(axis=0) == 1
        out = np.full(len(ctx.times_ms), np.nan)
        if len(value.labels):
            out[single] = np.nansum(np.where(present, value.data, 0.0), axis=0)[single]
        return Scalar(out)
    if func == "abs":
        value = evaluate(node.args[0], ctx)
        return Vector([_drop_name(l) for l in value.labels], np.abs(value.data))
    raise PromQLUnsupported(f"unsupported function '{func}'")


# -- aggregation ---------------------------------------------------------------------------


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def _group_key(labels: Labels, grouping: tuple, without: bool) -> Labels:
    if without:
        drop = set(grouping) | {"__name__"}
        return tuple(kv for kv in labels if kv[0] not in drop)
    keep = set(grouping)
    return tuple(kv for kv in labels if kv[0] in keep)


def _groups(labels: list, grouping: tuple, without: bool) -> tuple[list, np.ndarray]:
    keys: dict = {}
    index = np.empty(len(labels), dtype=np.int64)
    for i, l in enumerate(labels):
        index[i] = keys.setdefault(_group_key(l, grouping, without), len(keys))
    return list(keys), index


def _aggregate(node: Aggregate, ctx: EvalContext) -> Vector:
    if node.op == "sketch_quantile":
        return _sketch_quantile(node, ctx)
    value = evaluate(node.expr, ctx)
    keys, index = _groups(value.labels, node.grouping, node.without)
    steps = len(ctx.times_ms)
    if not keys:
        return Vector([], np.empty((0, steps)))
    data = value.data
    present = ~np.isnan(data)
    if len(keys) == len(index) and node.op in ("sum", "avg", "min", "max", "count"):  # groups of one series
        if node.op == "count":
            data = np.where(present, 1.0, np.nan)
        return Vector(keys, data).compact()
    order = np.argsort(index, kind="stable")
    sorted_idx = index[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_idx[1:] != sorted_idx[:-1])))
    counts = np.add.reduceat(present[order].astype(float), starts, axis=0)
    if node.op in ("sum", "avg"):
        totals = np.add.reduceat(np.where(present, data, 0.0)[order], starts, axis=0)
        result = totals if node.op == "sum" else totals / np.where(counts > 0, counts, 1.0)
    elif node.op == "count":
        result = counts.copy()
    elif node.op == "min":
        result = np.fmin.reduceat(data[order], starts, axis=0)
    elif node.op == "max":
        result = np.fmax.reduceat(data[order], starts, axis=0)
    else:  # pragma: no cover
        raise PromQLUnsupported(f"unsupported aggregation '{node.op}'")
    result = np.where(counts > 0, result, np.nan)
    group_order = sorted_idx[starts]
    return Vector([keys[g] for g in group_order], result).compact()


def _sketch_quantile(node: Aggregate, ctx: EvalContext) -> Vector:
    q = node.param.value
    if isinstance(node.expr, MatrixSelector):
        sel, window = node.expr.selector, node.expr.range_ms
    else:
        sel, window = node.expr, max(ctx.step_ms, ctx.resolution_ms)
    times = ctx.times_ms - sel.offset_ms
    series = [s for s in ctx.data.get(sel, []) if "sketch" in s.cols]
    keys, index = _groups([s.labels for s in series], node.grouping, node.without)
    steps = len(times)
    out = np.full((len(keys), steps), np.nan)
    if not series:
        return Vector([], out)
    # All sketches of all series decoded together; sketch id = series offset + bucket index.
    blobs = [b for s in series for b in s.cols["sketch"]]
    try:
        table = sketches.decode_many(blobs)
    except ValueError as exc:
        raise PromQLExecError(f"sketch_quantile: {exc}") from None
    if ctx.check:
        ctx.check()
    base = np.concatenate(([0], np.cumsum([len(s.ts) for s in series])))
    pairs: dict[int, list] = {}
    for i, s in enumerate(series):
        lo, hi = _window_bounds(s.ts, times, window)
        n = hi - lo
        total = int(n.sum())
        if not total:
            continue
        step_ids = np.repeat(np.arange(steps), n)
        bucket = np.arange(total) + np.repeat(lo - np.concatenate(([0], np.cumsum(n)[:-1])), n)
        pairs.setdefault(int(index[i]), []).append((step_ids, bucket + base[i]))
    for g, parts in pairs.items():
        step_ids = np.concatenate([p[0] for p in parts])
        ids = np.concatenate([p[1] for p in parts])
        out[g] = sketches.quantiles_per_step(table, step_ids, ids, steps, q)
    return Vector(keys, out).compact()


# -- binary operators ----------------------------------------------------------------------


_ARITH = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
    "%": np.fmod, "^": np.power,
}
_CMP = {"==": np.equal, "!=": np.not_equal, ">": np.greater, "<": np.less, ">=": np.greater_equal,
        "<=": np.less_equal}


def _apply(op: str, a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op in _ARITH:
            return _ARITH[op](a, b)
        return _CMP[op](a, b)


def _binary(node: Binary, ctx: EvalContext):
    lhs, rhs = evaluate(node.lhs, ctx), evaluate(node.rhs, ctx)
    op = node.op
    if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
        res = _apply(op, lhs.values, rhs.values)
        return Scalar(res.astype(float))
    if isinstance(lhs, Scalar) or isinstance(rhs, Scalar):
        vec, sca = (lhs, rhs) if isinstance(lhs, Vector) else (rhs, lhs)
        a, b = (vec.data, sca.values[None, :]) if vec is lhs else (sca.values[None, :], vec.data)
        res = _apply(op, a, b)
        if op in COMPARISONS:
            if node.return_bool:
                data = np.where(np.isnan(vec.data), np.nan, res.astype(float))
                return Vector([_drop_name(l) for l in vec.labels], data).compact()
            return Vector(list(vec.labels), np.where(res, vec.data, np.nan)).compact()
        return Vector([_drop_name(l) for l in vec.labels], res).compact()
    if op in SET_OPS:
        return _set_op(node, lhs, rhs)
    return _vector_vector(node, lhs, rhs)


def _match_key(labels: Labels, node: Binary) -> Labels:
    if node.matching is None:
        return _drop_name(labels)
    names = set(node.matching)
    if node.on:
        return tuple(kv for kv in labels if kv[0] in names)
    return tuple(kv for kv in labels if kv[0] not in names and kv[0] != "__name__")


def _index_unique(vec: Vector, node: Binary, side: str) -> dict:
    out: dict = {}
    for i, l in enumerate(vec.labels):
        key = _match_key(l, node)
        if key in out:
            raise PromQLExecError(
                f"many-to-many matching not allowed: found duplicate series for the match group "
                f"{{{', '.join(f'{k}={v!r}' for k, v in key)}}} on the {side} hand-side of '{node.op}'")
        out[key] = i
    return out


def _result_labels(labels: Labels, node: Binary, drop_name: bool) -> Labels:
    if node.matching is not None:
        names = set(node.matching)
        labels = tuple(kv for kv in labels if (kv[0] in names) == node.on or kv[0] == "__name__")
    return _drop_name(labels) if drop_name else labels


def _vector_vector(node: Binary, lhs: Vector, rhs: Vector) -> Vector:
    right = _index_unique(rhs, node, "right")
    _index_unique(lhs, node, "left")
    labels, rows = [], []
    drop_name = node.op not in COMPARISONS or node.return_bool
    for i, l in enumerate(lhs.labels):
        j = right.get(_match_key(l, node))
        if j is None:
            continue
        a, b = lhs.data[i], rhs.data[j]
        both = ~np.isnan(a) & ~np.isnan(b)
        res = _apply(node.op, a, b)
        if node.op in COMPARISONS:
            res = res.astype(float) if node.return_bool else np.where(res, a, np.nan)
        res = np.where(both, res, np.nan)
        labels.append(_result_labels(l, node, drop_name))
        rows.append(res)
    data = np.array(rows) if rows else np.empty((0, lhs.data.shape[1]))
    return Vector(labels, data).compact()


def _set_op(node: Binary, lhs: Vector, rhs: Vector) -> Vector:
    steps = lhs.data.shape[1]

    def presence(vec: Vector) -> dict:
        out: dict = {}
        for i, l in enumerate(vec.labels):
            key = _match_key(l, node)
            mask = ~np.isnan(vec.data[i])
            out[key] = out[key] | mask if key in out else mask
        return out

    right = presence(rhs)
    none = np.zeros(steps, dtype=bool)
    if node.op == "and":
        data = np.array([np.where(right.get(_match_key(l, node), none), lhs.data[i], np.nan)
                         for i, l in enumerate(lhs.labels)]).reshape(-1, steps)
        return Vector(list(lhs.labels), data).compact()
    if node.op == "unless":
        data = np.array([np.where(right.get(_match_key(l, node), none), np.nan, lhs.data[i])
                         for i, l in enumerate(lhs.labels)]).reshape(-1, steps)
        return Vector(list(lhs.labels), data).compact()
    left = presence(lhs)
    labels = list(lhs.labels)
    rows = [lhs.data[i] for i in range(len(lhs.labels))]
    for j, l in enumerate(rhs.labels):
        rows.append(np.where(left.get(_match_key(l, node), none), np.nan, rhs.data[j]))
        labels.append(l)
    data = np.array(rows).reshape(-1, steps)
    return Vector(labels, data).compact()


def finite_or_none(value: float) -> float | None:
    """NaN (no sample) as None; other floats unchanged."""
    return None if math.isnan(value) else value
