"""The rollup query planner (tally.query.rollups) inside the engine: covered aggregations read
the rollup series with the same answer as the raw series; everything else reads the raw
series; ordinary selectors never see rollup series."""

import asyncio

import numpy as np
import pytest

from tally.aggregate import Aggregate
from tally.config import TallyConfig
from tally.promql.parser import parse
from tally.query.engine import QueryEngine
from tally.query.rollups import plan
from tally.query.storage import MemoryStorage
from tally.rollup import ROLLUP_LABEL, RollupSet, parse_rules, rollup_buckets
from tally.series import series_id

T0 = 1_700_002_800_000
MIN = 60_000
TENANT = "acme"
RULES = parse_rules({"rollups": [
    {"name": "cpu_by_region", "match": "cpu_usage", "by": ["region"]},
    {"name": "cpu_by_region_env", "match": "cpu_usage", "by": ["region", "env"]},
    {"name": "req_by_region", "match": "requests", "by": ["region"]},
    {"name": "lat_by_region", "match": "latency", "by": ["region"]},
    {"name": "lat_prod", "match": 'latency{env="prod"}', "by": ["route"]},
]})
HOSTS = [(f"h{i}", f"r{i % 3}", "prod" if i % 2 else "dev", f"/{i % 4}") for i in range(12)]


def _storage():
    """60 one-minute buckets per host: a gauge (one sample per bucket), a counter (several
    points per bucket) and a distribution with sketches; plus their rollup buckets, computed
    with the domain merge (as the job does)."""
    rng = np.random.default_rng(7)
    st = MemoryStorage()
    raw = {"cpu_usage": [], "requests": [], "latency": []}
    for host, region, env, route in HOSTS:
        tags = {"host": host, "region": region, "env": env, "route": route}
        for k in range(60):
            ts = T0 + k * MIN
            raw["cpu_usage"].append((series_id(TENANT, "cpu_usage", tags), ts,
                                     Aggregate.of(float(rng.uniform(0, 100)), ts + 5)))
            req = Aggregate.of(float(rng.integers(1, 5)), ts + 1)
            for j in range(int(rng.integers(0, 4))):
                req.add(float(rng.integers(1, 5)), ts + 2 + j)
            raw["requests"].append((series_id(TENANT, "requests", tags), ts, req))
            values = rng.lognormal(3, 0.7, 30)
            lat = Aggregate.of(float(values[0]), ts, with_sketch=True)
            for j, v in enumerate(values[1:]):
                lat.add(float(v), ts + j + 1)
            raw["latency"].append((series_id(TENANT, "latency", tags), ts, lat))
    mtypes = {"cpu_usage": "g", "requests": "c", "latency": "d"}
    for name, rows in raw.items():
        rolled = rollup_buckets(RULES, rows)
        for series, ts, agg in rows + [(s, ts, a) for (s, ts), a in rolled.items()]:
            st.add(TENANT, name, series.tag_dict, "1m", ts, mtype=mtypes[name], count=agg.count, sum=agg.sum,
                   min=agg.min, max=agg.max, last=agg.last,
                   sketch=agg.sketch.to_bytes() if agg.sketch is not None else None)
    return st


@pytest.fixture(scope="module")
def engines():
    st = _storage()
    clock = lambda: (T0 + 2 * 86_400_000) / 1000  # noqa: E731 - every bucket closed long ago
    with_rules = QueryEngine(TallyConfig(), storage=st, clock=clock, rollups=RULES)
    without = QueryEngine(TallyConfig(), storage=st, clock=clock, rollups=RollupSet())
    return with_rules, without


def run(engine, expr, start=T0 + 10 * MIN, end=T0 + 59 * MIN, step=60):
    return asyncio.run(engine.range(TENANT, expr, start / 1000, end / 1000, step, use_cache=False))


def as_dict(res):
    return {tuple(sorted(s.labels.items())): np.array([v for _, v in s.points]) for s in res.series()}


@pytest.mark.parametrize("expr, rule, rtol", [
    ('avg(cpu_usage{region="r1"})', "cpu_by_region", 1e-12),
    ("avg by (region) (cpu_usage)", "cpu_by_region", 1e-12),
    ("avg by (region, env) (cpu_usage)", "cpu_by_region_env", 1e-12),
    ('max by (region) (cpu_usage{region!="r2"})', "cpu_by_region", 0),
    ("sum(cpu_usage)", "cpu_by_region", 1e-12),
    ("min by (region) (min_over_time(cpu_usage[5m]))", "cpu_by_region", 0),
    ("sum by (region) (rate(requests[5m]))", "req_by_region", 1e-12),
    ("sum(increase(requests[10m]))", "req_by_region", 1e-12),
    ("sum by (region) (sum_over_time(requests[5m]))", "req_by_region", 1e-12),
    ("sum by (region) (count_over_time(latency[5m]))", "lat_by_region", 1e-12),
    ("sketch_quantile(0.99, latency[5m]) by (region)", "lat_by_region", 1e-12),
    ("sketch_quantile(0.5, latency) by (region)", "lat_by_region", 1e-12),
    ('sketch_quantile(0.9, latency{env="prod"}[5m]) by (route)', "lat_prod", 1e-12),
    ('sum by (region) (rate(requests[5m])) / on (region) sum by (region) (rate(latency[5m]))', "req_by_region",
     1e-12),
])
def test_covered_aggregations_answer_from_the_rollup_with_the_raw_answer(engines, expr, rule, rtol):
    with_rules, without = engines
    got, want = run(with_rules, expr), run(without, expr)
    assert rule in {u["rule"] for u in got.rollups}, got.rollups
    assert not want.rollups
    # The rollup reads a series per group (an avg: two, its _sum and _count), the raw query one per host.
    assert got.stats["series_fetched"] <= want.stats["series_fetched"]
    a, b = as_dict(got), as_dict(want)
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, err_msg=f"{expr} {key}")


@pytest.mark.parametrize("expr", [
    "avg by (host) (cpu_usage)",  # host is aggregated away by every rule
    'avg(cpu_usage{host="h1"})',  # a matcher on a label the rollup does not keep
    "avg without (host) (cpu_usage)",  # without: not planned
    "count by (region) (cpu_usage)",  # counts series, not samples
    "avg by (region) (latency)",  # mean of per-series means != Σsum/Σcount
    "sum by (region) (rate(cpu_usage[5m]))",  # rate of gauges: extrapolated per series
    "avg by (region) (rate(requests[5m]))",  # only sums of deltas are linear
    "sketch_quantile(0.9, latency[5m]) by (route)",  # lat_prod needs env="prod" in the query
    "cpu_usage",  # no aggregation
])
def test_uncovered_queries_read_the_raw_series(engines, expr):
    with_rules, without = engines
    got, want = run(with_rules, expr), run(without, expr)
    assert got.rollups == []
    a, b = as_dict(got), as_dict(want)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_ordinary_selectors_never_see_rollup_series(engines):
    with_rules, _ = engines
    assert len(run(with_rules, "cpu_usage").series()) == len(HOSTS)
    rolled = run(with_rules, f'cpu_usage{{{ROLLUP_LABEL}="cpu_by_region"}}').series()
    assert sorted(s.labels["region"] for s in rolled) == ["r0", "r1", "r2"]
    series = asyncio.run(with_rules.find_series(TENANT, ["cpu_usage"]))
    assert len(series) == len(HOSTS) and not any(ROLLUP_LABEL in s for s in series)
    assert ROLLUP_LABEL not in asyncio.run(with_rules.label_names(TENANT))


def test_response_names_the_rule_and_when_it_is_exact(engines):
    with_rules, _ = engines
    res = run(with_rules, 'avg(cpu_usage{region="r1"})')
    (use,) = res.rollups
    assert use["rule"] == "cpu_by_region" and use["selector"] == 'cpu_usage{region="r1"}'
    assert "one sample per bucket" in use["note"]
    (use,) = run(with_rules, "sum by (region) (rate(requests[5m]))").rollups
    assert use["note"].startswith("exact")
    from tally.api.encode import encode_result

    assert b'"rollups":[{"rule":"cpu_by_region"' in encode_result(res)


def test_planner_picks_the_smallest_covering_rule_and_respects_since_and_availability():
    node = parse('avg(cpu_usage{region="r1"})')
    mtypes = {"cpu_usage": "g"}
    everything = {"cpu_by_region", "cpu_by_region_env"}
    _, uses = plan(node, RULES, mtypes, everything, T0)
    assert [u.rule for u in uses] == ["cpu_by_region"]
    _, uses = plan(node, RULES, mtypes, {"cpu_by_region_env"}, T0)
    assert [u.rule for u in uses] == ["cpu_by_region_env"]  # the other has no series yet
    assert plan(node, RULES, mtypes, set(), T0) == (node, [])
    later = parse_rules({"rollups": [{"name": "cpu_by_region", "match": "cpu_usage", "by": ["region"],
                                      "since": "2023-11-15T00:00:00Z"}]})
    since_ms = later.rules[0].since_ms
    assert plan(node, later, mtypes, everything, since_ms - 1) == (node, [])
    rewritten, uses = plan(node, later, mtypes, everything, since_ms)
    assert uses and rewritten != node


def test_instant_queries_rewrite_only_exact_aggregations(engines):
    """An instant query reads the newest bucket of the finest tier, often holding some of the
    series only: gauge aggregations read the raw series there; exact rewrites still apply."""
    with_rules, without = engines
    t = (T0 + 30 * MIN) / 1000
    got = asyncio.run(with_rules.instant(TENANT, 'avg(cpu_usage{region="r1"})', t, tier="1m"))
    assert got.rollups == []
    want = asyncio.run(without.instant(TENANT, 'avg(cpu_usage{region="r1"})', t, tier="1m"))
    assert got.series()[0].points == want.series()[0].points
    expr = "sum by (region) (increase(requests[10m]))"
    got = asyncio.run(with_rules.instant(TENANT, expr, t, tier="1m"))
    want = asyncio.run(without.instant(TENANT, expr, t, tier="1m"))
    assert [u["rule"] for u in got.rollups] == ["req_by_region"]
    assert as_dict(got).keys() == as_dict(want).keys()
    for key, values in as_dict(got).items():
        np.testing.assert_allclose(values, as_dict(want)[key], rtol=1e-12)
