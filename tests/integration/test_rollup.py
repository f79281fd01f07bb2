"""Rollup rules through the real pipeline: producer (rsids) → Kafka → aggregation job on the
Flink cluster → Cassandra + series index → query API.

One job run (the `pipeline` fixture).  Points are sent in a day of event time far in the
past (2020-01-01), then watermark ticks close every window up to the 1 d bucket.  Checked:
every tier's rollup buckets against an independent ground truth of the grouped raw events
and against the merge of the raw series' buckets read back from Cassandra; a drop_raw rule
writes only the rollup; `tally api` answers covered queries from the rollup, says so, and
gives the raw series' answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tally.aggregate import Aggregate
from tally.cql import connect
from tally.producer import PointProducer
from tally.rollup import ROLLUP_LABEL, load_rules
from tally.series import series_id
from tally.sketch import Sketch
from tally.stack.process import free_port
from tests.integration.truth import exact_quantile, expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration

TENANT = "t-rollup"
DAY_MS = 86_400_000
BASE = 1_577_836_800_000 + 1_800_000  # 2020-01-01T00:30:00Z
MINUTES = 150
REGIONS = ("r0", "r1", "r2")
RULES_YAML = """
rollups:
  - name: cpu_by_region
    match: cpu_usage
    by: [region]
  - name: lat_by_region
    match: request_latency
    by: [region]
  - name: jobs_by_queue
    match: jobs_done
    by: [queue]
    drop_raw: true
"""


def rollup_sid(name: str, rule: str, **kept) -> int:
    """The rollup series id, built here from the documented tag layout (not by tally.rollup)."""
    return series_id(TENANT, name, {**kept, ROLLUP_LABEL: rule}).id


@pytest.fixture(scope="module")
def sent(pipeline, tmp_path_factory):
    """Send gauges, distributions and a drop_raw counter with the rules; close every window."""
    cfg, _job = pipeline
    rules_path = tmp_path_factory.mktemp("rollup") / "rollups.yaml"
    rules_path.write_text(RULES_YAML)
    rng = np.random.default_rng(11)
    cpu = [series_id(TENANT, "cpu_usage", {"host": f"h{i}", "region": REGIONS[i % 3]}) for i in range(12)]
    lat = [series_id(TENANT, "request_latency", {"host": f"a{i}", "region": REGIONS[i % 3]}) for i in range(6)]
    jobs = [series_id(TENANT, "jobs_done", {"host": f"w{i}", "queue": f"q{i % 2}"}) for i in range(4)]
    events = []  # (SeriesId, type, ts, value)
    for minute in range(MINUTES):
        t0 = BASE + minute * 60_000
        for s in cpu:  # one sample per host per minute
            events.append((s, "g", t0 + int(rng.integers(0, 59_000)), float(np.round(rng.uniform(0, 100), 2))))
        for s in lat:
            for ts in np.sort(rng.integers(0, 60_000, 8)):
                events.append((s, "d", t0 + int(ts), float(np.round(rng.lognormal(3, 0.8), 3))))
        for s in jobs:
            events.append((s, "c", t0 + int(rng.integers(0, 60_000)), float(rng.integers(1, 5))))
    events.sort(key=lambda e: e[2])
    producer = PointProducer(cfg, rollups=load_rules(rules_path))
    for s, mtype, ts, value in events:
        producer.emit(s, mtype, ts, value)
    producer.tick(BASE - 1_800_000 + DAY_MS + 60_000)  # past the end of the day: the 1 d bucket closes
    producer.flush()
    producer.close()
    return cfg, rules_path, cpu, lat, jobs, events


def grouped_truth(events, name, rule, label):
    """Ground truth of the rollup series: the raw events of a metric regrouped by one label."""
    return expected_buckets([(rollup_sid(name, rule, **{label: s.tag_dict[label]}), ts, v, 1.0)
                             for s, _t, ts, v in events if s.name == name])


def check_rows(rows, truth):
    checked = 0
    assert set(rows) == set(truth)
    for key, t in truth.items():
        r = rows[key]
        assert (r.count, r.min, r.max, r.last) == (t["count"], t["min"], t["max"], t["last"]), key
        assert r.sum == pytest.approx(t["sum"], rel=1e-12, abs=1e-9), key
        if r.sketch is not None:
            sketch = Sketch.from_bytes(r.sketch)
            assert sketch.count == t["count"]
            for q in (0.5, 0.9, 0.99):
                assert sketch.quantile(q) == pytest.approx(exact_quantile(t["values"], q), rel=0.01), (key, q)
            checked += 1
    return checked


def test_rollup_buckets_of_every_tier_equal_the_grouped_raw_events(sent):
    cfg, _rules, _cpu, _lat, _jobs, events = sent
    truth = {**grouped_truth(events, "cpu_usage", "cpu_by_region", "region"),
             **grouped_truth(events, "request_latency", "lat_by_region", "region"),
             **grouped_truth(events, "jobs_done", "jobs_by_queue", "queue")}
    sids = sorted({k[1] for k in truth})
    assert len(sids) == 3 + 3 + 2
    rows = wait_for(lambda: (lambda r: r if len(r) >= len(truth) else None)(read_buckets(cfg, TENANT, sids, truth)),
                    timeout_s=240)
    present = read_buckets(cfg, TENANT, sids, truth)
    assert rows, f"only {len(present)} of {len(truth)} rollup buckets appeared"
    checked = check_rows(rows, truth)
    assert {k[0] for k in truth} == {"1s", "10s", "1m", "1h", "1d"} and checked > 0
    print(f"rollups: {len(truth)} rollup buckets in 5 tiers equal the grouped raw events "
          f"({checked} sketches within 1 %)")


def test_rollup_buckets_are_the_merge_of_the_raw_buckets(sent):
    cfg, _rules, cpu, lat, _jobs, events = sent
    for name, rule, raw in (("cpu_usage", "cpu_by_region", cpu), ("request_latency", "lat_by_region", lat)):
        raw_truth = expected_buckets([(s.id, ts, v, 1.0) for s, _t, ts, v in events if s.name == name])
        roll_truth = grouped_truth(events, name, rule, "region")
        raw_rows = wait_for(lambda: (lambda r: r if len(r) >= len(raw_truth) else None)(
            read_buckets(cfg, TENANT, [s.id for s in raw], raw_truth)), timeout_s=120)
        assert raw_rows, f"raw {name} buckets missing"
        roll_rows = read_buckets(cfg, TENANT, sorted({k[1] for k in roll_truth}), roll_truth)
        region_of = {s.id: s.tag_dict["region"] for s in raw}
        merged: dict = {}
        for (tier, sid, ts), r in raw_rows.items():
            agg = Aggregate(r.count, r.sum, r.min, r.max, r.last, r.last_ts,
                            Sketch.from_bytes(r.sketch) if r.sketch else None)
            key = (tier, rollup_sid(name, rule, region=region_of[sid]), ts)
            merged[key] = merged[key].merge(agg) if key in merged else agg
        assert set(merged) == set(roll_rows)
        for key, m in merged.items():
            r = roll_rows[key]
            assert (r.count, r.min, r.max, r.last, r.last_ts) == (m.count, m.min, m.max, m.last, m.last_time_ms), key
            assert r.sum == pytest.approx(m.sum, rel=1e-12, abs=1e-9), key
            if m.sketch is not None:
                assert Sketch.from_bytes(r.sketch) == m.sketch, key  # the merge of the hosts' sketches


def test_drop_raw_writes_only_the_rollup_and_the_index_names_rollup_series(sent):
    cfg, _rules, _cpu, _lat, jobs, events = sent
    raw_truth = expected_buckets([(s.id, ts, v, 1.0) for s, _t, ts, v in events if s.name == "jobs_done"])
    assert read_buckets(cfg, TENANT, [s.id for s in jobs], raw_truth) == {}

    def index(name):
        cluster, session = connect(cfg)
        try:
            return {(tuple(sorted((r.tags or {}).items())), r.mtype) for r in session.execute(
                f"SELECT tags, mtype FROM {cfg.keyspace}.series WHERE tenant = %s AND name = %s", (TENANT, name))}
        finally:
            cluster.shutdown()

    assert wait_for(lambda: len(index("jobs_done")) == 2, timeout_s=60)
    assert index("jobs_done") == {(((ROLLUP_LABEL, "jobs_by_queue"), ("queue", q)), "c") for q in ("q0", "q1")}
    cpu_index = index("cpu_usage")
    assert len(cpu_index) == 12 + 3
    assert ((((ROLLUP_LABEL, "cpu_by_region"), ("region", "r1")), "g")) in cpu_index


@pytest.fixture(scope="module")
def api(sent, tmp_path_factory):
    cfg, rules_path, *_ = sent
    port = free_port()
    env = dict(os.environ, TALLY_KEYSPACE=cfg.keyspace, TALLY_API_PORT=str(port),
               TALLY_ROLLUP_RULES_FILE=str(rules_path), TALLY_GRACE_SECONDS=str(cfg.grace_seconds))
    env.pop("TALLY_API_KEYS_FILE", None)
    log = tmp_path_factory.mktemp("rollup-api") / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("tally")), "api"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                with urllib.request.urlopen(url + "/api/v1/status/buildinfo", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        assert wait_for(up, timeout_s=30, interval_s=0.3), log.read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def query_range(url, expr, start_ms, end_ms, step_s, tier):
    params = {"query": expr, "start": start_ms / 1000, "end": end_ms / 1000, "step": step_s, "tier": tier,
              "nocache": 1}
    req = urllib.request.Request(f"{url}/api/v1/query_range?{urllib.parse.urlencode(params)}",
                                 headers={"X-Scope-OrgID": TENANT})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def values(data):
    return {tuple(sorted(r["metric"].items())): [(t, float(v)) for t, v in r["values"]] for r in data["result"]}


@pytest.mark.parametrize("covered, raw, rule, tier, step_s, rel", [
    # host=~".+" is a matcher on a label the rule aggregates away: the same query on the raw series.
    ('avg(cpu_usage{region="r1"})', 'avg(cpu_usage{region="r1", host=~".+"})', "cpu_by_region", "1m", 60, 1e-12),
    ("max by (region) (cpu_usage)", 'max by (region) (cpu_usage{host=~".+"})', "cpu_by_region", "1m", 60, 0),
    ("sketch_quantile(0.99, request_latency[10m]) by (region)",
     'sketch_quantile(0.99, request_latency{host=~".+"}[10m]) by (region)', "lat_by_region", "1m", 600, 1e-12),
    ("sum by (region) (rate(request_latency[1h]))", 'sum by (region) (rate(request_latency{host=~".+"}[1h]))',
     "lat_by_region", "10s", 3600, 1e-12),
])
def test_api_answers_covered_queries_from_the_rollup_with_the_raw_answer(api, covered, raw, rule, tier, step_s, rel):
    start, end = BASE + 10 * 60_000, BASE + (MINUTES - 1) * 60_000
    got = query_range(api, covered, start, end, step_s, tier)
    assert [u["rule"] for u in got.get("rollups", [])] == [rule], got.get("rollups")
    want = query_range(api, raw, start, end, step_s, tier)
    assert "rollups" not in want
    a, b = values(got), values(want)
    assert a.keys() == b.keys() and a
    for key in a:
        assert [t for t, _ in a[key]] == [t for t, _ in b[key]]
        np.testing.assert_allclose([v for _, v in a[key]], [v for _, v in b[key]], rtol=rel, err_msg=covered)
