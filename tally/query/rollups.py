"""Query planner for rollup series: answer covered aggregations from rollup rules.

Pure (PromQL AST in, AST out).  A rollup series (tally.rollup) holds, per bucket, the merge
of the buckets of every raw series of its group: Σcount, Σsum, min, max, the last value by
event time and the merged sketch.  The engine hides rollup series from selectors that do
not name ``__rollup__`` and calls :func:`plan` with the tenant's rules; :func:`plan`
rewrites an aggregation over a selector only where reading the rollup series gives the
same result as reading the raw series:

===========================================  ====================================  =========
query (``by (G)``, G ⊆ the rule's ``by``)    read from the rollup series           same when
===========================================  ====================================  =========
``sketch_quantile(φ, x[w]) by (G)``,         the merged sketches (ms/h/d)          always (a
``sketch_quantile(φ, x) by (G)``                                                   merge of
                                                                                   merges)
``sum by (G) (rate(x[w]))``, ``increase``    Σ of the deltas (c, s, ms/h/d)        always
``sum by (G) (sum_over_time(x[w]))``         Σ sums / Σ per-bucket samples          always
``sum by (G) (count_over_time(x[w]))``       Σ counts (g, ms/h/d)                  always
``min by (G) (min_over_time(x[w]))``, max    min of mins, max of maxes (g, ms/h/d)  always
``avg by (G) (x)`` for gauges ``g``          ``sum(x_sum) / sum(x_count)``         [1]
``sum`` / ``min`` / ``max by (G) (x)``, g    ``sum(x_sum)``, ``min(x_min)``, max    [1]
===========================================  ====================================  =========

[1] A gauge's sample is the ``last`` value of each series' newest bucket.  The rollup
bucket has one sum/count/min/max over all samples of the group's series in that bucket, so
these equal the raw answer when every series of the group has exactly one sample in every
bucket of the tier read (a host reporting once a minute, read at 1 m; Prometheus scraped once
per bucket width).  With several samples per bucket ``avg`` becomes the sample-weighted mean
of the bucket (the mean over series when they report at equal rates) and ``sum``/``min``/
``max`` cover every sample instead of the last one.  Instant queries never get this rewrite:
they read the newest bucket of the finest tier, which often holds only some of the series.
The response says which rule answered (``data.rollups``) with that note.

Everything else (``without``, ``avg`` of distributions, ``count`` by, rates of gauges,
selectors with matchers on labels the rule aggregates away, ranges older than the rule's
``since``) reads the raw series.  Only rules whose rollup series exist for the tenant are
used (the engine checks the series index).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Collection, Mapping

from tally.promql import ast as A
from tally.rollup import ROLLUP_LABEL, RollupRule, RollupSet

__all__ = ["RollupUse", "plan", "is_rollup_selector", "rollup_metric_names"]

SKETCH_MTYPES = frozenset({"ms", "h", "d"})
DELTA_MTYPES = frozenset({"c", "s"}) | SKETCH_MTYPES  # rate/increase = Σ of a bucket column
RAW_MTYPES = frozenset({"g"}) | SKETCH_MTYPES  # count/sum/min/max describe the raw points

EXACT = "exact: the rollup buckets are the merge of the raw series' buckets"
GAUGE_NOTE = ("equal to the raw answer when every series of the group reports one sample per bucket; "
              "otherwise the sample-weighted aggregate of each bucket")


@dataclass(frozen=True)
class RollupUse:
    """A rewrite the planner made: the rule used, the selector it replaced, and why it holds."""

    rule: str
    selector: str
    note: str

    def as_dict(self) -> dict:
        return {"rule": self.rule, "selector": self.selector, "note": self.note}


def is_rollup_selector(sel: A.VectorSelector) -> bool:
    """Does the selector name the reserved label (so it may see rollup series)?"""
    return any(m.name == ROLLUP_LABEL for m in sel.matchers)


def rollup_metric_names(node, rules: RollupSet) -> set[str]:
    """Metric names of the expression's selectors that have rollup rules."""
    return {s.name for s in A.selectors(node) if s.name is not None and rules.for_metric(s.name)}


def _selector_text(sel: A.VectorSelector) -> str:
    inner = ",".join(f'{m.name}{m.op}"{m.value}"' for m in sel.matchers)
    return f"{sel.name or ''}{{{inner}}}" if inner or not sel.name else sel.name


def _covers(rule: RollupRule, sel: A.VectorSelector, grouping: tuple[str, ...]) -> bool:
    if sel.name != rule.metric or any(m.name in ("__name__", ROLLUP_LABEL) for m in sel.matchers):
        return False
    if not set(grouping) <= set(rule.by):
        return False
    # The rule's own matchers must be in the query (then the rollup holds exactly the
    # series the query selects once the other matchers, all on kept labels, are applied).
    if not all(m in sel.matchers for m in rule.matchers):
        return False
    return all(m in rule.matchers or m.name in rule.by for m in sel.matchers)


def _rewrite_selector(rule: RollupRule, sel: A.VectorSelector, suffix: str = "") -> A.VectorSelector:
    kept = tuple(m for m in sel.matchers if m not in rule.matchers)
    return A.VectorSelector(sel.name + suffix, kept + (A.Matcher.make(ROLLUP_LABEL, "=", rule.name),), sel.offset_ms)


class _Planner:
    def __init__(self, rules: RollupSet, mtypes: Mapping[str, str | None], available: Collection[str],
                 earliest_ms: int, instant: bool):
        self.rules, self.mtypes, self.available, self.earliest_ms = rules, mtypes, available, earliest_ms
        self.instant = instant
        self.uses: list[RollupUse] = []

    def rule_for(self, sel: A.VectorSelector, grouping: tuple[str, ...]) -> RollupRule | None:
        if sel.name is None:
            return None
        found = [r for r in self.rules.for_metric(sel.name)
                 if r.name in self.available and (r.since_ms is None or self.earliest_ms >= r.since_ms)
                 and _covers(r, sel, grouping)]
        # Fewest kept labels: the fewest series to read.
        return min(found, key=lambda r: (len(r.by), r.name)) if found else None

    def used(self, rule: RollupRule, sel: A.VectorSelector, note: str) -> None:
        self.uses.append(RollupUse(rule.name, _selector_text(sel), note))

    def aggregate(self, node: A.Aggregate):
        """The rewritten aggregation, or None when it must read the raw series."""
        if node.without:
            return None
        expr, grouping = node.expr, node.grouping
        if node.op == "sketch_quantile":
            sel = expr.selector if isinstance(expr, A.MatrixSelector) else expr
            if not isinstance(sel, A.VectorSelector) or self.mtypes.get(sel.name) not in SKETCH_MTYPES:
                return None
            rule = self.rule_for(sel, grouping)
            if rule is None:
                return None
            self.used(rule, sel, EXACT + " (merged sketches, within the sketch's 1 % guarantee)")
            new_sel = _rewrite_selector(rule, sel)
            new_expr = replace(expr, selector=new_sel) if isinstance(expr, A.MatrixSelector) else new_sel
            return replace(node, expr=new_expr)
        if isinstance(expr, A.Call) and len(expr.args) == 1 and isinstance(expr.args[0], A.MatrixSelector):
            func, matrix = expr.func, expr.args[0]
            mtype = self.mtypes.get(matrix.selector.name) or "g"
            ok = ((node.op == "sum" and func in ("rate", "increase") and mtype in DELTA_MTYPES)
                  or (node.op == "sum" and func == "sum_over_time")
                  or (node.op == "sum" and func == "count_over_time" and mtype in RAW_MTYPES)
                  or (node.op == "min" and func == "min_over_time" and mtype in RAW_MTYPES)
                  or (node.op == "max" and func == "max_over_time" and mtype in RAW_MTYPES))
            if not ok:
                return None
            rule = self.rule_for(matrix.selector, grouping)
            if rule is None:
                return None
            self.used(rule, matrix.selector, EXACT)
            new_matrix = replace(matrix, selector=_rewrite_selector(rule, matrix.selector))
            return replace(node, expr=replace(expr, args=(new_matrix,)))
        if isinstance(expr, A.VectorSelector) and (self.mtypes.get(expr.name) or "g") == "g" \
                and node.op in ("avg", "sum", "min", "max") and not self.instant:
            rule = self.rule_for(expr, grouping)
            if rule is None:
                return None
            self.used(rule, expr, GAUGE_NOTE)
            if node.op == "avg":
                total = A.Aggregate("sum", _rewrite_selector(rule, expr, "_sum"), None, grouping)
                count = A.Aggregate("sum", _rewrite_selector(rule, expr, "_count"), None, grouping)
                return A.Binary("/", total, count)
            column = {"sum": "_sum", "min": "_min", "max": "_max"}[node.op]
            return A.Aggregate(node.op, _rewrite_selector(rule, expr, column), None, grouping)
        return None

    def visit(self, node):
        if isinstance(node, A.Aggregate):
            rewritten = self.aggregate(node)
            if rewritten is not None:
                return rewritten
            return replace(node, expr=self.visit(node.expr))
        if isinstance(node, A.Call):
            return replace(node, args=tuple(self.visit(a) for a in node.args))
        if isinstance(node, A.Binary):
            return replace(node, lhs=self.visit(node.lhs), rhs=self.visit(node.rhs))
        if isinstance(node, A.Unary):
            return replace(node, expr=self.visit(node.expr))
        return node


def plan(node, rules: RollupSet, mtypes: Mapping[str, str | None], available: Collection[str],
         earliest_ms: int, instant: bool = False) -> tuple[object, list[RollupUse]]:
    """Rewrite the aggregations of ``node`` that a rollup rule answers with the same result.

    ``mtypes``: metric name → stored metric type (None = gauge); ``available``: names of the
    rules whose rollup series exist for the tenant; ``earliest_ms``: the oldest time the
    query reads (rules with a later ``since`` are not used); ``instant``: an instant query
    (its gauges read the newest bucket of the finest tier, where series that report less
    often than every bucket are missing: no gauge rewrite [1]).  Returns the (possibly
    unchanged) expression and the rewrites made."""
    if not rules:
        return node, []
    planner = _Planner(rules, mtypes, available, earliest_ms, instant)
    return planner.visit(node), planner.uses
