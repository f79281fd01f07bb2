"""Kafka → aggregation job on the standalone Flink cluster → Cassandra, exact numbers
(the walking-skeleton acceptance: several series, several windows, out of order)."""

from __future__ import annotations

import time

import pytest

from sinks.redis_cache import bucket_key, decode_member, write_version_key
from tally.cql import connect
from tally.producer import PointProducer
from tally.series import series_id
from tests.integration.truth import expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration


def test_known_points_give_exact_10s_buckets_and_index(pipeline):
    cfg, _job = pipeline
    base = int(time.time() * 1000) - 300_000
    base -= base % 10_000
    series = [series_id("acme", "http.requests", {"host": h}) for h in ("a", "b")] + [
        series_id("acme", "queue.depth", {"queue": "jobs"})]
    events = []
    for window in range(4):
        for i, s in enumerate(series):
            for k in range(window + i + 1):
                events.append((s, base + window * 10_000 + k * 700, float(10 * window + k + i)))
    # Out of order within grace: reverse every block of 5 (at most 2.8 s back).
    events = [e for i in range(0, len(events), 5) for e in events[i:i + 5][::-1]]

    producer = PointProducer(cfg)
    for s, ts, v in events:
        producer.emit(s, "c", ts, v)
    producer.tick(base + 60_000)  # watermark ticks on every partition close every test window
    producer.flush()
    producer.close()

    truth = {k: v for k, v in expected_buckets([(s.id, ts, v, 1.0) for s, ts, v in events]).items()
             if k[0] == "10s"}
    assert len(truth) == 12
    got = wait_for(lambda: (lambda rows: rows if len(rows) >= len(truth) else None)(
        read_buckets(cfg, "acme", [s.id for s in series], truth)), timeout_s=120)
    assert got, "buckets did not appear in Cassandra"
    assert {k: (r.count, r.sum, r.min, r.max) for k, r in got.items()} == {
        k: (t["count"], t["sum"], t["min"], t["max"]) for k, t in truth.items()}

    # Recent buckets were written through to Redis with the same values.
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        cached = {}
        for s in series:
            for member in client.zrange(bucket_key(cfg.keyspace, "10s", "acme", s.id), 0, -1):
                b = decode_member(member)
                cached[("10s", s.id, b["ts"])] = (b["count"], b["sum"], b["min"], b["max"])
        # Every batch write bumped the tier's write counter (the query API's open-range reuse).
        versions = {t: client.get(write_version_key(cfg.keyspace, t, "acme")) for t in ("1s", "10s")}
    finally:
        client.close()
    assert cached == {k: (r.count, r.sum, r.min, r.max) for k, r in got.items()}
    assert all(v is not None and int(v) >= 1 for v in versions.values()), versions

    # The series registrations reached the series index.
    def indexed():
        cluster, session = connect(cfg)
        try:
            rows = session.execute(f"SELECT series, tags FROM {cfg.keyspace}.series "
                                   "WHERE tenant = 'acme' AND name = 'http.requests'")
            return {(r.series, tuple(sorted((r.tags or {}).items()))) for r in rows}
        finally:
            cluster.shutdown()

    assert wait_for(lambda: len(indexed()) == 2, timeout_s=60)
    assert indexed() == {("acme|http.requests|host=a", (("host", "a"),)),
                         ("acme|http.requests|host=b", (("host", "b"),))}
