"""What a stored series looks like to PromQL: one sample per bucket, chosen by metric type.

Tally stores buckets (count, sum, min, max, last, last_ts, sketch), not raw samples.  A bucket
behaves like one sample stamped at the bucket's start.  Its value depends on the series'
metric type (``mtype`` in the series index; a series without one is a gauge):

========================  ============================  =====================================
name queried              sample value per bucket       range functions (window ``(t-w, t]``)
========================  ============================  =====================================
gauge ``g`` (also         ``last``                      ``*_over_time`` exact over the raw
Prometheus samples)                                     points: sum→Σsum, count→Σcount,
                                                        avg→Σsum/Σcount, min→min(min),
                                                        max→max(max); ``rate``/``increase``:
                                                        Prometheus counter semantics on the
                                                        ``last`` values (resets, extrapolation)
counter ``c``             ``sum`` (the bucket's delta)  ``increase`` = Σsum, ``rate`` = Σsum/w;
                                                        ``*_over_time`` over the per-bucket
                                                        deltas (count = number of buckets)
set ``s``                 ``count`` (events)            like a counter, on ``count``
timer/histogram/distr.    ``sum/count`` (the mean)      ``*_over_time`` exact over raw points
``ms``, ``h``, ``d``                                    (as gauges); ``rate``/``increase``
                                                        count observations: Σcount(/w)
``<name>_count``          ``count``                     delta: increase = Σcount
``<name>_sum``            ``sum``                       delta: increase = Σsum
``<name>_min``/``_max``   ``min`` / ``max``             over per-bucket samples (so
                                                        ``max_over_time(x_max[1h])`` is exact)
``<name>_avg``            ``sum/count``                 over per-bucket samples
========================  ============================  =====================================

Derived names (``_count``, ``_sum``, ``_min``, ``_max``, ``_avg``) exist for every stored
metric whose name plus suffix is not itself stored.  Percentiles come from
``sketch_quantile`` (see :mod:`tally.promql.evaluator`), never from these samples.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["View", "view_for", "SUFFIXES", "split_derived", "columns_for"]

SUFFIXES = ("_count", "_sum", "_min", "_max", "_avg")
SKETCH_MTYPES = frozenset({"ms", "h", "d"})


@dataclass(frozen=True)
class View:
    """How a series' buckets become samples.

    ``sample``: the per-bucket value ("last", "sum", "count", "min", "max" or "avg" = sum/count);
    ``raw``: count/sum/min/max describe raw points, so ``*_over_time`` use them directly;
    ``delta``: a sample is an increment, so ``increase`` sums ``rate_column`` over the window;
    ``mtype``: the stored metric type; ``suffix``: "" or the derived-name suffix.
    """

    mtype: str
    suffix: str
    sample: str
    raw: bool
    delta: bool
    rate_column: str = "sum"


def view_for(mtype: str | None, suffix: str = "") -> View:
    """The view of a series of type ``mtype`` (None/unknown = gauge) under a name suffix."""
    mtype = mtype or "g"
    if suffix == "_count":
        return View(mtype, suffix, "count", False, True, "count")
    if suffix == "_sum":
        return View(mtype, suffix, "sum", False, True, "sum")
    if suffix in ("_min", "_max"):
        return View(mtype, suffix, suffix[1:], False, False)
    if suffix == "_avg":
        return View(mtype, suffix, "avg", False, False)
    if suffix:
        raise ValueError(f"unknown suffix {suffix!r}")
    if mtype == "c":
        return View(mtype, "", "sum", False, True, "sum")
    if mtype == "s":
        return View(mtype, "", "count", False, True, "count")
    if mtype in SKETCH_MTYPES:
        return View(mtype, "", "avg", True, True, "count")
    return View(mtype, "", "last", True, False)


def split_derived(name: str) -> tuple[str, str] | None:
    """``latency_count`` → ("latency", "_count"); None when no derived suffix."""
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


_SAMPLE_COLUMNS = {"last": ("last",), "sum": ("sum",), "count": ("count",), "min": ("min",),
                   "max": ("max",), "avg": ("sum", "count")}


def columns_for(view: View, usages: set[str]) -> set[str]:
    """Bucket columns a view needs for the given uses ("instant", "rate", "increase",
    "<fn>_over_time", "sketch")."""
    cols = set(_SAMPLE_COLUMNS[view.sample])
    for use in usages:
        if use == "sketch":
            cols.add("sketch")
        elif use in ("rate", "increase") and view.delta:
            cols.add(view.rate_column)
        elif use.endswith("_over_time") and view.raw:
            fn = use[: -len("_over_time")]
            cols.update({"sum": ("sum",), "count": ("count",), "avg": ("sum", "count"), "min": ("min",),
                         "max": ("max",)}[fn])
    return cols
