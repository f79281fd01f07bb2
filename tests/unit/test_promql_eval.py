"""Evaluation semantics on an in-memory storage: sample per metric type, range functions from
bucket aggregates, Prometheus rate, aggregation, binary matching, sketch percentiles."""

import asyncio
import math

import numpy as np
import pytest

from tally.config import TallyConfig
from tally.promql.errors import PromQLExecError
from tally.query.engine import QueryEngine
from tally.query.storage import MemoryStorage
from tally.sketch import Sketch

T0 = 1_700_002_800_000  # an hour boundary (epoch ms)
MIN = 60_000


def engine(storage, now_ms=T0 + 24 * 3_600_000):
    return QueryEngine(TallyConfig(), storage=storage, clock=lambda: now_ms / 1000)


def instant(eng, q, t_ms, tenant="acme", tier="1m"):
    res = asyncio.run(eng.instant(tenant, q, t_ms / 1000, tier=tier))
    return {tuple(sorted(s.labels.items())): s.points[0][1] for s in res.series()}


def lbl(**kw):
    return tuple(sorted(kw.items()))


@pytest.fixture
def gauges():
    st = MemoryStorage()
    for h, region in (("a", "eu"), ("b", "eu"), ("c", "us")):
        for i in range(10):
            st.add("acme", "cpu", {"host": h, "region": region}, "1m", T0 + i * MIN, value=10 * "abc".index(h) + i)
    st.add("other", "cpu", {"host": "a", "region": "eu"}, "1m", T0, value=1e6)
    return st


def test_gauge_sample_is_last_with_lookback(gauges):
    st = gauges
    st.add("acme", "temp", {}, "1m", T0, count=3, sum=30, min=5, max=15, last=12)
    eng = engine(st)
    assert instant(eng, "temp", T0) == {lbl(__name__="temp"): 12.0}
    assert instant(eng, "temp", T0 + 4 * MIN) == {lbl(__name__="temp"): 12.0}  # within 5 min lookback
    assert instant(eng, "temp", T0 + 5 * MIN) == {}  # lookback is (t - 5m, t]
    assert instant(eng, "temp", T0 - 1) == {}


def test_aggregations(gauges):
    eng = engine(gauges)
    t = T0 + 9 * MIN
    assert instant(eng, "sum(cpu)", t) == {(): 9 + 19 + 29.0}
    assert instant(eng, "avg by (region) (cpu)", t) == {lbl(region="eu"): 14.0, lbl(region="us"): 29.0}
    assert instant(eng, "max without (host) (cpu)", t) == {lbl(region="eu"): 19.0, lbl(region="us"): 29.0}
    assert instant(eng, "min(cpu)", t) == {(): 9.0}
    assert instant(eng, "count by (region) (cpu)", t) == {lbl(region="eu"): 2.0, lbl(region="us"): 1.0}
    assert instant(eng, 'cpu{region!="eu", host=~"c|d"}', t) == {lbl(__name__="cpu", host="c", region="us"): 29.0}


def test_tenant_isolation(gauges):
    eng = engine(gauges)
    assert instant(eng, "sum(cpu)", T0, tenant="other") == {(): 1e6}
    assert 1e6 not in instant(eng, "cpu", T0, tenant="acme").values()
    assert instant(eng, "cpu", T0, tenant="nobody") == {}


def test_range_query_values_per_step(gauges):
    eng = engine(gauges)
    res = asyncio.run(eng.range("acme", "avg by (region) (cpu)", T0 / 1000, (T0 + 9 * MIN) / 1000, 60))
    assert res.result_type == "matrix" and res.tier == "1m"
    eu = next(s for s in res.series() if s.labels == {"region": "eu"})
    assert [v for _, v in eu.points] == [5.0 + i for i in range(10)]
    assert [t for t, _ in eu.points] == [T0 / 1000 + 60 * i for i in range(10)]


def test_groups_of_one_series_keep_each_series_value(gauges):
    st = gauges
    st.add("acme", "cpu", {"host": "d", "region": "us"}, "1m", T0 + 5 * MIN, value=-3.5)  # one bucket only
    eng = engine(st)
    start, end = T0 / 1000, (T0 + 9 * MIN) / 1000
    raw = asyncio.run(eng.range("acme", "cpu", start, end, 60))
    by_host = {s.labels["host"]: s.points for s in raw.series()}
    for op in ("sum", "avg", "min", "max", "count"):
        res = asyncio.run(eng.range("acme", f"{op} by (host) (cpu)", start, end, 60))
        got = {s.labels["host"]: s.points for s in res.series()}
        assert set(got) == set(by_host) == {"a", "b", "c", "d"}
        for host, points in by_host.items():
            want = [(t, 1.0 if op == "count" else v) for t, v in points]
            assert got[host] == want, (op, host)
        assert all(set(s.labels) == {"host"} for s in res.series())
    assert [t for t, _ in got["d"]] == [(T0 + 5 * MIN) / 1000 + 60 * i for i in range(5)]  # lookback 5 m


def test_counter_rate_and_increase_sum_deltas():
    st = MemoryStorage()
    for i in range(10):  # 2 events of value 3 per minute: bucket sum 6
        st.add("acme", "reqs", {"host": "a"}, "1m", T0 + i * MIN, mtype="c", count=2, sum=6.0, min=3, max=3, last=3)
    eng = engine(st)
    t = T0 + 9 * MIN
    assert instant(eng, "reqs", t) == {lbl(__name__="reqs", host="a"): 6.0}  # sample = bucket delta
    assert instant(eng, "increase(reqs[5m])", t) == {lbl(host="a"): 30.0}  # buckets (t-5m, t]: 5 of them
    assert instant(eng, "rate(reqs[5m])", t) == {lbl(host="a"): pytest.approx(30.0 / 300)}
    assert instant(eng, "count_over_time(reqs[5m])", t) == {lbl(host="a"): 5.0}  # buckets, not events
    assert instant(eng, "max_over_time(reqs[5m])", t) == {lbl(host="a"): 6.0}


def test_gauge_counter_rate_follows_prometheus():
    st = MemoryStorage()
    values = [100, 160, 220, 10, 70, 130]  # a reset after 220
    for i, v in enumerate(values):
        st.add("acme", "http_total", {}, "1m", T0 + i * MIN, value=v)
    eng = engine(st)
    t = T0 + 5 * MIN
    # Window (t-5m, t] holds samples 1..5: increase 60 + (10 after reset, +220) ... computed as
    # last - first + resets = 130 - 160 + 220 = 190 over 4 minutes, extrapolated: the window
    # starts 60 s before the first sample (< 1.1 * 60 s average spacing, so extrapolate fully
    # unless the zero point is nearer: 160/190*240 s > 60 s) and ends at the last sample.
    expected_increase = 190 * (240 + 60) / 240
    got = instant(eng, "increase(http_total[5m])", t)
    assert got == {(): pytest.approx(expected_increase)}
    assert instant(eng, "rate(http_total[5m])", t) == {(): pytest.approx(expected_increase / 300)}
    assert instant(eng, "rate(http_total[1m])", t) == {}  # one sample: no rate


def test_over_time_functions_use_raw_bucket_aggregates():
    st = MemoryStorage()
    # Three 1m buckets of a gauge, each aggregating several raw points.
    st.add("acme", "temp", {}, "1m", T0, count=3, sum=30, min=5, max=15, last=12)
    st.add("acme", "temp", {}, "1m", T0 + MIN, count=1, sum=7, min=7, max=7, last=7)
    st.add("acme", "temp", {}, "1m", T0 + 2 * MIN, count=2, sum=50, min=20, max=30, last=20)
    eng = engine(st)
    t = T0 + 2 * MIN
    assert instant(eng, "sum_over_time(temp[3m])", t) == {(): 87.0}
    assert instant(eng, "count_over_time(temp[3m])", t) == {(): 6.0}
    assert instant(eng, "avg_over_time(temp[3m])", t) == {(): 87.0 / 6}
    assert instant(eng, "min_over_time(temp[3m])", t) == {(): 5.0}
    assert instant(eng, "max_over_time(temp[3m])", t) == {(): 30.0}
    assert instant(eng, "max_over_time(temp[2m])", t) == {(): 30.0}
    assert instant(eng, "min_over_time(temp[2m])", t) == {(): 7.0}
    # Derived names expose the other aggregates as series of their own.
    assert instant(eng, "temp_max", t) == {lbl(__name__="temp_max"): 30.0}
    assert instant(eng, "temp_count", t) == {lbl(__name__="temp_count"): 2.0}
    assert instant(eng, "increase(temp_count[3m])", t) == {(): 6.0}
    assert instant(eng, "temp_avg", t) == {lbl(__name__="temp_avg"): 25.0}


def test_min_max_over_time_on_many_windows_match_brute_force():
    rng = np.random.default_rng(7)
    st = MemoryStorage()
    vals = rng.normal(size=200)
    for i, v in enumerate(vals):
        if i % 7 == 3:
            continue  # gaps
        st.add("acme", "g", {}, "1m", T0 + i * MIN, value=float(v))
    eng = engine(st)
    res = asyncio.run(eng.range("acme", "max_over_time(g[13m])", T0 / 1000, (T0 + 199 * MIN) / 1000, 60))
    got = dict(res.series()[0].points)
    for k in range(200):
        window = [vals[i] for i in range(max(0, k - 12), k + 1) if i % 7 != 3]
        assert got[(T0 + k * MIN) / 1000] == max(window)


def test_distribution_samples_and_sketch_quantile():
    rng = np.random.default_rng(3)
    st = MemoryStorage()
    raw = {"eu": [], "us": []}
    for host, region in (("a", "eu"), ("b", "eu"), ("c", "us")):
        for i in range(3):
            values = rng.lognormal(3 if region == "eu" else 5, 0.6, 500)
            raw[region].extend(values)
            st.add("acme", "latency", {"host": host, "region": region}, "1m", T0 + i * MIN, mtype="d",
                   count=len(values), sum=float(values.sum()), min=float(values.min()), max=float(values.max()),
                   last=float(values[-1]), sketch=Sketch().add_many(values).to_bytes())
    eng = engine(st)
    t = T0 + 2 * MIN
    got = instant(eng, "sketch_quantile(0.99, latency[3m]) by (region)", t)
    for region in ("eu", "us"):
        exact = float(np.quantile(raw[region], 0.99, method="lower"))
        assert got[lbl(region=region)] == pytest.approx(exact, rel=0.01)
    # Without a range: the buckets of that step only (here the bucket at t).
    one_step = instant(eng, "sketch_quantile(0.5, latency)", t)
    assert set(one_step) == {()}
    # The mean is the sample of a distribution; percentiles are never averaged.
    mean = instant(eng, 'latency{host="c"}', t)
    assert list(mean.values())[0] == pytest.approx(np.mean(raw["us"][-500:]))
    assert instant(eng, "sum(rate(latency[3m]))", t) == {(): pytest.approx(4500 / 180)}  # observations/s


def test_binary_operators_and_matching(gauges):
    eng = engine(gauges)
    t = T0 + 9 * MIN
    assert instant(eng, "cpu * 2 + 1", t)[lbl(host="a", region="eu")] == 19.0
    assert instant(eng, "cpu > 15", t) == {lbl(__name__="cpu", host="b", region="eu"): 19.0,
                                           lbl(__name__="cpu", host="c", region="us"): 29.0}
    assert instant(eng, "cpu > bool 15", t)[lbl(host="a", region="eu")] == 0.0
    assert instant(eng, "cpu - cpu", t) == {lbl(host=h, region=r): 0.0 for h, r in
                                            (("a", "eu"), ("b", "eu"), ("c", "us"))}
    assert instant(eng, 'cpu / on(host) cpu{region="us"}', t) == {lbl(host="c"): 1.0}
    assert instant(eng, 'cpu and cpu{host="a"}', t) == {lbl(__name__="cpu", host="a", region="eu"): 9.0}
    assert len(instant(eng, 'cpu unless cpu{host="a"}', t)) == 2
    assert len(instant(eng, 'cpu{host="a"} or cpu{host="b"}', t)) == 2
    assert instant(eng, "1 + 2 * 3 ^ 2", t) == {(): 19.0}
    assert instant(eng, "-cpu{host='a'} % 4", t) == {lbl(host="a", region="eu"): math.fmod(-9, 4)}
    with pytest.raises(PromQLExecError, match="many-to-many matching not allowed"):
        instant(eng, "cpu + on(region) cpu", t)
