"""The instant selector's one-lookup path for series on a shared bucket grid gives exactly
what the per-series path gives (lookback, gaps before the first bucket, offsets, views)."""

import numpy as np

from tally.promql.ast import VectorSelector
from tally.promql.evaluator import EvalContext, SeriesData, _instant_selector, _shared_grid
from tally.promql.parser import parse
from tally.promql.views import view_for

MIN = 60_000


def _series(n_series, ts, rng, mtype=None):
    out = []
    for i in range(n_series):
        cols = {"last": rng.normal(size=len(ts)), "sum": rng.normal(size=len(ts)),
                "count": rng.integers(1, 5, len(ts)) * 1.0}
        out.append(SeriesData((("__name__", "m"), ("host", f"h{i}")), view_for(mtype), ts.copy(), cols))
    return out


def _per_series(sel, ctx):
    """The reference: the same selector with the grid broken by one extra one-bucket series."""
    series = ctx.data[sel]
    odd = SeriesData((("__name__", "m"), ("host", "zz")), series[0].view, series[0].ts[:1].copy(),
                     {k: v[:1].copy() for k, v in series[0].cols.items()})
    ref_ctx = EvalContext(ctx.times_ms, ctx.step_ms, ctx.resolution_ms, {sel: series + [odd]}, ctx.lookback_ms)
    ref = _instant_selector(sel, ref_ctx)
    assert _shared_grid(series + [odd]) is None
    keep = [i for i, l in enumerate(ref.labels) if l != odd.labels]
    return [ref.labels[i] for i in keep], ref.data[keep]


def test_shared_grid_matches_per_series_path():
    rng = np.random.default_rng(3)
    # Buckets every minute with a 20-minute hole; steps of 30 s from before the first bucket to after the last.
    ts = np.concatenate([np.arange(0, 60) * MIN, np.arange(80, 120) * MIN]).astype(np.int64) + 10 * MIN
    times = np.arange(-5 * MIN, 140 * MIN, 30_000, dtype=np.int64)
    for text, mtype in (("m", None), ("m offset 7m", None), ("m", "d")):
        sel = parse(text)
        assert isinstance(sel, VectorSelector)
        series = _series(50, ts, rng, mtype)
        ctx = EvalContext(times, 30_000, MIN, {sel: series}, 300_000)
        assert _shared_grid(series) is not None
        got = _instant_selector(sel, ctx)
        labels, data = _per_series(sel, ctx)
        assert got.labels == labels
        np.testing.assert_array_equal(got.data, data)
        assert np.isnan(got.data).any() and not np.isnan(got.data).all()


def test_shared_grid_with_a_step_per_bucket_is_the_samples_themselves():
    rng = np.random.default_rng(4)
    ts = (np.arange(0, 30) * 1000 + 5_000).astype(np.int64)
    sel = parse("m")
    for times in (ts.copy(), ts[3:-2].copy(), ts - 500):  # exactly the buckets, a sub-range, off the grid
        series = _series(20, ts, rng)
        ctx = EvalContext(times, 1000, 1000, {sel: series}, 300_000)
        got = _instant_selector(sel, ctx)
        labels, data = _per_series(sel, ctx)
        assert got.labels == labels
        np.testing.assert_array_equal(got.data, data)


def _range_values(n_gappy, max_latest_reads):
    import asyncio

    from tally.config import TallyConfig
    from tally.query import engine as E
    from tally.query.storage import MemoryStorage

    t0 = 1_700_002_800_000
    st = MemoryStorage()
    st.add("acme", "cpu", {"host": "dense"}, "1m", t0 - 10 * MIN, value=-1.0)
    for i in range(12):
        st.add("acme", "cpu", {"host": "dense"}, "1m", t0 + i * MIN, value=float(i))
    for g in range(n_gappy):  # buckets at t0, t0+1m, then a gap until t0+8m
        for i in (0, 1, 8, 9, 10):
            st.add("acme", "cpu", {"host": f"gap{g:03d}"}, "1m", t0 + i * MIN, value=100.0 * g + i)
    st.add("acme", "cpu", {"host": "late"}, "1m", t0 + 9 * MIN, value=7.0)  # nothing before the range
    reads = []
    orig = st.buckets

    async def counting(*a, **k):
        reads.append((a[3], a[4], len(a[2]), a[6] if len(a) > 6 else k.get("latest_only", False)))
        return await orig(*a, **k)

    st.buckets = counting
    eng = E.QueryEngine(TallyConfig(), storage=st, clock=lambda: (t0 + 86_400_000) / 1000)
    old = E._read_samples.__defaults__
    E._read_samples.__defaults__ = (None, max_latest_reads)
    try:
        res = asyncio.run(eng.range("acme", "cpu", (t0 + 3 * MIN) / 1000, (t0 + 10 * MIN) / 1000, 60))
    finally:
        E._read_samples.__defaults__ = old
    return {s.labels["host"]: [v for _, v in s.points] for s in res.series()}, reads, t0


def test_range_reads_the_lookback_only_for_series_without_a_bucket_at_the_first_step():
    for n_gappy, limit in ((3, 64), (5, 2)):  # newest-bucket reads, or the whole lookback read
        got, reads, t0 = _range_values(n_gappy, limit)
        assert got["dense"] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
        for g in range(n_gappy):  # t0+3m..t0+5m look back to t0+1m; t0+6m, 7m: nothing within 5 min
            assert got[f"gap{g:03d}"] == [100.0 * g + 1] * 3 + [100.0 * g + v for v in (8, 9, 10)]
        assert got["late"] == [7.0, 7.0]
        (first_start, first_end, n, _), (lb_start, lb_end, n_lb, latest) = reads
        assert (first_start, first_end, n) == (t0 + 3 * MIN, t0 + 10 * MIN, n_gappy + 2)
        assert lb_end == t0 + 3 * MIN - 1 and n_lb == n_gappy + 1 and latest == (n_gappy + 1 <= limit)
