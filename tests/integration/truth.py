"""Independent ground truth for the aggregation tests: plain dicts and numpy, no tally code
beyond the tier sizes, and the helpers the tests share to send points and read buckets."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from sinks.redis_cache import quality_key
from tally.cql import connect
from tally.tiers import DEFAULT_TIERS


def expected_buckets(events, tiers=DEFAULT_TIERS):
    """{(tier, sid, bucket_ms): dict(count, sum, min, max, last, values)} from raw events
    (sid, ts_ms, value, count); last is the value of the latest ts, the larger on ties."""
    out = {}
    for tier in tiers:
        size = tier.resolution_seconds * 1000
        acc = defaultdict(lambda: {"count": 0.0, "sum": 0.0, "min": float("inf"), "max": float("-inf"),
                                   "last_key": None, "values": []})
        for sid, ts, value, count in events:
            b = acc[(tier.name, sid, ts - ts % size)]
            b["count"] += count
            b["sum"] += value * count
            b["min"] = min(b["min"], value)
            b["max"] = max(b["max"], value)
            key = (ts, value)
            b["last_key"] = key if b["last_key"] is None else max(b["last_key"], key)
            b["values"].append(value)
        for k, b in acc.items():
            b["last"] = b.pop("last_key")[1]
            out[k] = b
    return out


def exact_quantile(values, q):
    """The sample at rank floor(q * (n - 1)) (numpy 'lower'), the rank a sketch answers for."""
    return float(np.quantile(np.asarray(values, dtype=float), q, method="lower"))


def read_buckets(cfg, tenant, sids, keys):
    """Read every bucket of the given (tier, sid, bucket_ms) keys' partitions from Cassandra."""
    tiers = {t.name: t for t in DEFAULT_TIERS}
    parts = {(tier, sid, ts - ts % tiers[tier].partition_ms) for tier, sid, ts in keys}
    cluster, session = connect(cfg)
    try:
        rows = {}
        for tier, sid, part in sorted(parts):
            for r in session.execute(
                    f"SELECT ts, count, sum, min, max, last, last_ts, sketch FROM {cfg.keyspace}.buckets_{tier} "
                    "WHERE tenant = %s AND sid = %s AND part = %s", (tenant, sid, part)):
                rows[(tier, sid, r.ts)] = r
        return rows
    finally:
        cluster.shutdown()


def wait_for(predicate, timeout_s=180, interval_s=2.0):
    """Poll until predicate() returns a truthy value; returns the last value."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value


def dq_counters(cfg, tenant) -> dict[str, float]:
    """The job's data-quality counters of a tenant (late, duplicates, ...) from Redis."""
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        return {k.decode(): float(v) for k, v in client.hgetall(quality_key(cfg.keyspace, tenant)).items()}
    finally:
        client.close()
