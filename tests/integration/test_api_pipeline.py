"""Query API on data sent through the real pipeline (Kafka → Flink job → Cassandra + Redis):
promtool's query commands, Grafana's data-source call sequence, Redis and Cassandra paths
giving the same numbers (also with Redis down), and sketch percentiles by region.

One job run for the whole module (the `pipeline` fixture); `tally api` runs as its own
process on a free port with an API key file, as a user would run it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tally.producer import PointProducer
from tally.query.engine import QueryEngine
from tally.query.store import BucketStore
from tally.series import series_id
from tally.stack.process import free_port
from tests.integration.truth import exact_quantile, wait_for

pytestmark = pytest.mark.integration

TENANT = "qtest"
KEY = "query-test-key-123"
HOSTS = (("h1", "eu"), ("h2", "eu"), ("h3", "us"), ("h4", "us"))
PROMTOOL = "/usr/bin/promtool"


def cpu_value(hi: int, second: int) -> float:
    return 10.0 * hi + second * 0.1


@pytest.fixture(scope="module")
def loaded(pipeline):
    """Send 60 s of gauges, counters and distributions, wait until the buckets are stored."""
    cfg, _job = pipeline
    now = int(time.time() * 1000)
    base = now - 300_000
    base -= base % 60_000
    rng = np.random.default_rng(42)
    latencies = {"eu": [], "us": []}
    producer = PointProducer(cfg)
    for second in range(60):
        ts = base + second * 1000
        for hi, (host, region) in enumerate(HOSTS, start=1):
            tags = {"host": host, "region": region}
            producer.emit(series_id(TENANT, "cpu_usage", tags), "g", ts + 500, cpu_value(hi, second))
            for k in range(5):
                producer.emit(series_id(TENANT, "requests", tags), "c", ts + 100 * k, 1.0)
            values = rng.lognormal(3.0 if region == "eu" else 4.0, 0.5, 20)
            latencies[region].extend(values.tolist())
            for k, v in enumerate(values):
                producer.emit(series_id(TENANT, "request_latency", tags), "d", ts + 40 * k, float(v))
    producer.tick(base + 130_000)  # closes every 1 s, 10 s and 1 m window of the data
    producer.flush()
    producer.close()

    exprs = [("count(count_over_time(request_latency[1m]))", 59_000, "10s", 4.0),
             ("sum(count_over_time(request_latency[1m]))", 59_000, "10s", 4800.0),
             ("count(cpu_usage)", 50_000, "10s", 4.0),
             ("sum(increase(requests_count[1m]))", 59_000, "1s", 1200.0)]

    async def wait_stored(timeout_s=180):
        engine = QueryEngine(cfg, storage=BucketStore(cfg, use_redis=False, index_ttl_s=0))
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                got = []
                for expr, offset, tier, _ in exprs:
                    res = await engine.instant(TENANT, expr, (base + offset) / 1000, tier=tier)
                    got.append(res.series()[0].points[0][1] if res.series() else None)
                if got == [e[3] for e in exprs] or time.monotonic() > deadline:
                    return got
                await asyncio.sleep(3)
        finally:
            await engine.close()

    got = asyncio.run(wait_stored())
    assert got == [e[3] for e in exprs], f"buckets did not reach Cassandra: {got}"
    return cfg, base, latencies


@pytest.fixture(scope="module")
def api(loaded, tmp_path_factory):
    """`tally api` on a free port, reading the test keyspace, with an API key file."""
    cfg, base, latencies = loaded
    keys = tmp_path_factory.mktemp("api") / "keys.yaml"
    keys.write_text(f"keys:\n  - key: {KEY}\n    name: query-test\n    tenant: {TENANT}\n    permissions: [read]\n")
    port = free_port()
    env = dict(os.environ, TALLY_KEYSPACE=cfg.keyspace, TALLY_API_PORT=str(port), TALLY_API_KEYS_FILE=str(keys),
               TALLY_GRACE_SECONDS=str(cfg.grace_seconds))
    tally = Path(sys.executable).with_name("tally")
    log = tmp_path_factory.mktemp("api-log") / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(tally), "api"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                with urllib.request.urlopen(url + "/api/v1/status/buildinfo", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        assert wait_for(up, timeout_s=30, interval_s=0.3), log.read_text()
        yield url, base, latencies
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def http(url: str, path: str, params=None, method="GET", headers=None):
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    data = None
    query = urllib.parse.urlencode(params or {}, doseq=True)
    if method == "POST":
        data = query.encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif query:
        path += "?" + query
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def promtool(url: str, command: str, *flags: str, arg: str | None = None) -> str:
    authed = url.replace("http://", f"http://query-test:{KEY}@")  # basic auth, the key as password
    cmd = [PROMTOOL, "query", command, *flags, authed] + ([arg] if arg is not None else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


SAMPLE = re.compile(r"(\{[^}]*\}) => ([-+.eE0-9]+|NaN) @\[([0-9.]+)\]")


# -- promtool -----------------------------------------------------------------------------------


def test_promtool_instant_range_labels_series(api):
    url, base, _ = api
    t = (base + 50_000) // 1000
    # An instant query reads the finest tier: the 1 s bucket at t holds second 50's value.
    out = promtool(url, "instant", f"--time={t}", arg="sum(cpu_usage)")
    (labels, value, at), = SAMPLE.findall(out)
    assert (labels, at) == ("{}", str(t)) and float(value) == pytest.approx(
        sum(cpu_value(hi, 50) for hi in range(1, 5)))
    # A range query with a 10 s step reads 10 s buckets: the one at base+10w ends with
    # second 10w+9, whose value is the bucket's last.

    out = promtool(url, "range", f"--start={base // 1000}", f"--end={t}", "--step=10s",
                   arg="avg by (region) (cpu_usage)")
    got: dict = {}
    region = None
    for line in out.splitlines():
        header = re.match(r'\{region="(\w+)"\} =>$', line.strip())
        if header:
            region = header.group(1)
            continue
        m = re.match(r"([-+.eE0-9]+) @\[([0-9.]+)\]", line.strip())
        if m:
            got.setdefault(region, []).append((int(float(m.group(2))), float(m.group(1))))
    for region, (a, b) in (("eu", (1, 2)), ("us", (3, 4))):
        expected = [(base // 1000 + 10 * w, (cpu_value(a, 10 * w + 9) + cpu_value(b, 10 * w + 9)) / 2)
                    for w in range(6)]
        assert [p[0] for p in got[region]] == [p[0] for p in expected], out
        assert [p[1] for p in got[region]] == pytest.approx([p[1] for p in expected]), out

    out = promtool(url, "labels", f"--start={base // 1000}", arg="__name__")
    assert out.split() == ["cpu_usage", "request_latency", "requests"]
    out = promtool(url, "series", '--match=cpu_usage{region="eu"}')
    assert sorted(out.strip().splitlines()) == ['{__name__="cpu_usage", host="h1", region="eu"}',
                                                '{__name__="cpu_usage", host="h2", region="eu"}']


# -- Grafana ------------------------------------------------------------------------------------


def test_grafana_datasource_sequence(api):
    url, base, _ = api
    start, end = base // 1000, (base + 50_000) // 1000
    status, body = http(url, "/api/v1/query", {"query": "1+1", "time": str(end)}, "POST")
    assert status == 200 and body["data"]["resultType"] == "scalar" and body["data"]["result"][1] == "2.0"
    status, body = http(url, "/api/v1/status/buildinfo")
    assert status == 200 and body["data"]["version"].split(".")[0] == "2"
    status, body = http(url, "/api/v1/labels", {"start": start, "end": end})
    assert body["data"] == ["__name__", "host", "region"]
    status, body = http(url, "/api/v1/label/__name__/values", {"start": start, "end": end})
    assert body["data"] == ["cpu_usage", "request_latency", "requests"]
    status, body = http(url, "/api/v1/series", {"match[]": ['requests{host="h3"}'], "start": start, "end": end})
    assert body["data"] == [{"__name__": "requests", "host": "h3", "region": "us"}]
    status, body = http(url, "/api/v1/query_range", {"query": "sum by (region) (rate(requests[30s]))",
                                                     "start": start + 30, "end": start + 59, "step": "1"}, "POST")
    assert status == 200 and body["data"]["resultType"] == "matrix" and body["data"]["tier"] == "1s"
    for series in body["data"]["result"]:
        # 2 hosts × 5 events/s; windows (t-30s, t] fully inside the 60 s of data.
        assert [v for _, v in series["values"]] == ["10.0"] * 30, series
    status, body = http(url, "/api/v1/query", {"query": "sum(cpu_usage)"}, headers={"X-Scope-OrgID": "other"})
    assert status == 403


# -- storage paths ------------------------------------------------------------------------------


QUERIES = [
    ("avg by (region) (cpu_usage)", 10),
    ("sum(increase(requests[20s]))", 10),
    ("max_over_time(request_latency[20s])", 10),
    ("sketch_quantile(0.9, request_latency) by (region)", 10),
    ("sum(request_latency_count)", 1),
]


def _range_all(cfg, base, **store_kwargs):
    async def go():
        engine = QueryEngine(cfg, storage=BucketStore(cfg, **store_kwargs))
        try:
            out = []
            for expr, step in QUERIES:
                res = await engine.range(TENANT, expr, base / 1000, (base + 59_000) / 1000, step, use_cache=False)
                out.append(({tuple(sorted(s.labels.items())): s.points for s in res.series()}, res.warnings))
            return out, engine.storage.reads
        finally:
            await engine.close()

    return asyncio.run(go())


def test_redis_and_cassandra_paths_give_the_same_numbers(loaded):
    cfg, base, _ = loaded
    from_redis, redis_reads = _range_all(cfg, base)
    from_cassandra, cass_reads = _range_all(cfg, base, use_redis=False)
    assert redis_reads["redis_keys"] > 0 and redis_reads["cassandra_partitions"] == 0
    assert cass_reads["redis_keys"] == 0 and cass_reads["cassandra_partitions"] > 0
    for (a, _), (b, _), (expr, _) in zip(from_redis, from_cassandra, QUERIES):
        assert a and a == b, expr
    # A key evicted from Redis (maxmemory) or lost: that series is read from Cassandra.
    import redis

    from sinks.redis_cache import bucket_key

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        gone = series_id(TENANT, "cpu_usage", {"host": "h1", "region": "eu"})
        assert client.delete(*(bucket_key(cfg.keyspace, t, TENANT, gone.id) for t in ("1s", "10s"))) == 2
    finally:
        client.close()
    evicted, reads = _range_all(cfg, base)
    assert reads["redis_misses"] >= 1
    for (a, _), (b, _), (expr, _) in zip(from_cassandra, evicted, QUERIES):
        assert a == b, expr
    # Redis down (nothing listens on its port): same numbers from Cassandra, with a warning.
    down = dataclasses.replace(cfg, ports=dataclasses.replace(cfg.ports, redis=free_port()))
    fallback, reads = _range_all(down, base)
    assert reads["redis_fallbacks"] >= 1
    for (a, _), (b, warnings), (expr, _) in zip(from_redis, fallback, QUERIES):
        assert a == b, expr
        assert "redis unavailable: recent buckets read from Cassandra" in warnings


def test_sketch_percentile_by_region_within_one_percent(api):
    url, base, latencies = api
    t = (base + 59_000) / 1000
    for q in (0.5, 0.9, 0.99):
        status, body = http(url, "/api/v1/query", {"query": f"sketch_quantile({q}, request_latency[1m]) by (region)",
                                                   "time": str(t)})
        assert status == 200, body
        got = {r["metric"]["region"]: float(r["value"][1]) for r in body["data"]["result"]}
        for region in ("eu", "us"):
            exact = exact_quantile(latencies[region], q)
            assert abs(got[region] - exact) <= 0.01 * exact, (q, region, got[region], exact)
