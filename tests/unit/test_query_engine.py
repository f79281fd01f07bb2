"""Query engine around the evaluator: tier choice, result cache and late data, limits,
series/label lookups, and the bulk sketch reader against tally.sketch."""

import asyncio
import dataclasses

import numpy as np
import pytest

from tally.config import TallyConfig
from tally.promql import sketches
from tally.query.engine import QueryEngine, QueryTimeout, TooManyPoints
from tally.query.resolution import choose_tier
from tally.query.storage import MemoryStorage
from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS

T0 = 1_700_002_800_000
MIN = 60_000
DAY = 86_400_000


# -- tier choice ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step_s, windows_s, expected", [
    (1, (), "1s"), (15, (), "10s"), (60, (), "1m"), (300, (), "1m"), (3600, (), "1h"), (86400 * 2, (), "1d"),
    (60, (300,), "1m"), (60, (60,), "10s"), (3600, (3600,), "1m"), (0, (), "1s"), (0, (300,), "1m"),
])
def test_tier_is_coarsest_not_coarser_than_step_and_quarter_window(step_s, windows_s, expected):
    now = 1_800_000_000_000
    tier = choose_tier(now, now - 6 * 3_600_000, step_s * 1000, [w * 1000 for w in windows_s])
    assert tier.name == expected


def test_tier_must_hold_the_range():
    now = 1_800_000_000_000
    # 1 s buckets are kept 7 days, 10 s 30 days, 1 m 180 days.
    assert choose_tier(now, now - 8 * DAY, 1000).name == "10s"
    assert choose_tier(now, now - 31 * DAY, 1000).name == "1m"
    assert choose_tier(now, now - 200 * DAY, 60_000).name == "1h"
    assert choose_tier(now, now - 10 * 365 * DAY, 60_000).name == "1d"  # nothing holds it: coarsest
    assert choose_tier(now, now, 1000, forced="1h").name == "1h"
    with pytest.raises(KeyError, match="known tiers"):
        choose_tier(now, now, 1000, forced="5m")


def test_chosen_tier_is_reported():
    st = MemoryStorage()
    st.add("acme", "g", {}, "1h", T0, value=1)
    eng = QueryEngine(TallyConfig(), storage=st, clock=lambda: (T0 + DAY) / 1000)
    res = asyncio.run(eng.range("acme", "g", T0 / 1000, (T0 + 3_600_000) / 1000, 3600))
    assert res.tier == "1h" and res.stats["tier"] == "1h"
    assert res.series()[0].points == [(T0 / 1000, 1.0)]


# -- cache and late data -------------------------------------------------------------------------


class CountingStorage(MemoryStorage):
    def __init__(self):
        super().__init__()
        self.reads = []

    async def buckets(self, tenant, tier, metas, start_ms, end_ms, columns, latest_only=False):
        self.reads.append((start_ms, end_ms))
        return await super().buckets(tenant, tier, metas, start_ms, end_ms, columns, latest_only)


def test_closed_steps_are_cached_and_the_open_tail_sees_late_data():
    st = CountingStorage()
    for i in range(20):
        st.add("acme", "g", {"h": "a"}, "1m", T0 + i * MIN, value=i)
    clock = {"now": (T0 + 20 * MIN) / 1000}  # steps up to T0+18m are closed (grace 5 s + settle 30 s)
    eng = QueryEngine(TallyConfig(), storage=st, clock=lambda: clock["now"])
    q = ("acme", "sum(g)", T0 / 1000, (T0 + 19 * MIN) / 1000, 60)
    first = asyncio.run(eng.range(*q))
    assert first.stats["cache"] == "miss" and not first.closed
    # A late point arrives within grace for the open last bucket: the next query must see it.
    st.add("acme", "g", {"h": "a"}, "1m", T0 + 19 * MIN, value=100)
    st.reads.clear()
    second = asyncio.run(eng.range(*q))
    assert second.stats["cache"] == "partial"
    assert [v for _, v in second.series()[0].points] == [float(i) for i in range(19)] + [100.0]
    assert len(st.reads) == 1 and st.reads[0][1] == T0 + 19 * MIN  # only the open tail was read
    assert st.reads[0][0] > T0 + 10 * MIN
    # Later everything is closed: served from the cache without reading.
    clock["now"] = (T0 + 30 * MIN) / 1000
    asyncio.run(eng.range(*q))
    st.reads.clear()
    third = asyncio.run(eng.range(*q))
    assert third.stats["cache"] == "hit" and third.closed and st.reads == []
    # Bypass.
    asyncio.run(eng.range(*q, use_cache=False))
    assert len(st.reads) == 1


def test_sliding_range_reuses_cached_steps():
    st = CountingStorage()
    for i in range(60):
        st.add("acme", "g", {}, "1m", T0 + i * MIN, value=i)
    eng = QueryEngine(TallyConfig(), storage=st, clock=lambda: (T0 + 2 * 3_600_000) / 1000)
    asyncio.run(eng.range("acme", "g", T0 / 1000, (T0 + 40 * MIN) / 1000, 60))
    st.reads.clear()
    res = asyncio.run(eng.range("acme", "g", (T0 + 10 * MIN) / 1000, (T0 + 59 * MIN) / 1000, 60))
    assert res.stats["cache"] == "partial"
    assert [v for _, v in res.series()[0].points] == [float(i) for i in range(10, 60)]
    assert len(st.reads) == 1 and st.reads[0][0] > T0 + 35 * MIN


# -- limits --------------------------------------------------------------------------------------


class SlowStorage(MemoryStorage):
    def __init__(self, delay_s):
        super().__init__()
        self.delay_s = delay_s
        self.active = self.peak = 0

    async def buckets(self, *args, **kwargs):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay_s)
            return await super().buckets(*args, **kwargs)
        finally:
            self.active -= 1


def test_timeout_raises_query_timeout():
    st = SlowStorage(1.0)
    st.add("acme", "g", {}, "1s", T0, value=1)
    eng = QueryEngine(TallyConfig(), storage=st, clock=lambda: T0 / 1000)
    with pytest.raises(QueryTimeout, match="timed out after 0.1s"):
        asyncio.run(eng.instant("acme", "g", T0 / 1000, timeout_s=0.1))


def test_concurrency_limit_per_tenant():
    st = SlowStorage(0.05)
    st.add("acme", "g", {}, "1s", T0, value=1)
    st.add("beta", "g", {}, "1s", T0, value=1)
    cfg = dataclasses.replace(TallyConfig(), query_max_concurrent_per_tenant=2)
    eng = QueryEngine(cfg, storage=st, clock=lambda: T0 / 1000)

    async def run():
        return await asyncio.gather(*(eng.instant("acme", "g", T0 / 1000) for _ in range(6)))

    results = asyncio.run(run())
    assert all(r.series()[0].points[0][1] == 1.0 for r in results)
    assert st.peak == 2


def test_too_many_points():
    eng = QueryEngine(TallyConfig(), storage=MemoryStorage(), clock=lambda: T0 / 1000)
    with pytest.raises(TooManyPoints, match="exceeded maximum resolution of 11000 points"):
        asyncio.run(eng.range("acme", "g", 0, 20_000, 1))


# -- series and labels ---------------------------------------------------------------------------


def test_series_labels_and_values():
    st = MemoryStorage()
    st.add("acme", "cpu", {"host": "a", "region": "eu"}, "1m", T0, value=1)
    st.add("acme", "cpu", {"host": "b", "region": "us"}, "1m", T0, value=1)
    st.add("acme", "mem", {"host": "a"}, "1m", T0, value=1)
    st.add("other", "secret", {"team": "x"}, "1m", T0, value=1)
    eng = QueryEngine(TallyConfig(), storage=st, clock=lambda: T0 / 1000)
    found = asyncio.run(eng.find_series("acme", ['cpu{region="eu"}', "mem"]))
    assert sorted(map(sorted, (d.items() for d in found))) == [
        [("__name__", "cpu"), ("host", "a"), ("region", "eu")], [("__name__", "mem"), ("host", "a")]]
    assert asyncio.run(eng.label_names("acme")) == ["__name__", "host", "region"]
    assert asyncio.run(eng.label_values("acme", "__name__")) == ["cpu", "mem"]
    assert asyncio.run(eng.label_values("acme", "host", ["mem"])) == ["a"]
    assert asyncio.run(eng.label_values("acme", "team")) == []
    found = asyncio.run(eng.find_series("acme", ['{__name__=~"c.*|m.*"}']))
    assert len(found) == 3


# -- bulk sketch reader --------------------------------------------------------------------------


def test_bulk_sketch_merge_matches_sketch_merge():
    rng = np.random.default_rng(11)
    parts = []
    for i in range(60):
        s = Sketch()
        values = rng.normal(0, 50, 40) if i % 3 else rng.lognormal(2, 1.5, 40)
        s.add_many(values, count=1.0 if i % 5 else 0.3)  # float counts too
        if i % 7 == 0:
            s.add(0.0, 2)
        parts.append(s)
    merged = sketches.Merged()
    reference = Sketch()
    for s in parts:
        sketches.merge_into(merged, s.to_bytes())
        reference.merge(s)
    assert merged.count == pytest.approx(reference.count)
    for q in (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0):
        assert sketches.quantile(merged, q) == reference.quantile(q)
    assert sketches.quantile(sketches.Merged(), 0.5) is None
    with pytest.raises(ValueError, match="cannot merge sketches with alpha"):
        sketches.merge_into(sketches.decode(Sketch().add(1).to_bytes()), Sketch(alpha=0.02).add(1).to_bytes())


def test_vectorised_sketch_quantiles_per_step_match_sketch_merge():
    rng = np.random.default_rng(5)
    parts = []
    for i in range(300):
        s = Sketch()
        s.add_many(rng.normal(0, 50, 30) if i % 3 else rng.lognormal(2, 1.5, 30))
        if i % 7 == 0:
            s.add(0.0, 2)
        parts.append(s)
    weighted = Sketch().add_many(rng.lognormal(2, 1, 50), count=0.3)  # float counts: slow path
    blobs = [s.to_bytes() for s in parts] + [weighted.to_bytes(), None]
    table = sketches.decode_many(blobs)
    steps = np.repeat(np.arange(30), 10)  # step k merges sketches 10k .. 10k+9
    ids = np.arange(300)
    for q in (0.0, 0.01, 0.5, 0.9, 0.99, 1.0):
        got = sketches.quantiles_per_step(table, steps, ids, 32, q)
        for k in range(30):
            reference = Sketch()
            for s in parts[10 * k:10 * k + 10]:
                reference.merge(s)
            assert got[k] == reference.quantile(q)
        assert np.isnan(got[31])  # no sketch
    one = sketches.quantiles_per_step(table, np.array([30]), np.array([300]), 32, 0.5)
    assert one[30] == pytest.approx(weighted.quantile(0.5), rel=0.021)  # float counts: within a bucket
