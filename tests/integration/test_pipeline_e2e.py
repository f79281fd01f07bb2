"""Kafka → aggregation job on the standalone Flink cluster → Cassandra, exact numbers."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from tally import point as points
from tally.cql import connect
from tally.producer import PointProducer
from tally.series import series_id
from tally.tiers import bucket_start_ms, partition_start_ms, tier_by_name

pytestmark = pytest.mark.integration
TIER = tier_by_name("10s")


def known_points(base_ms: int):
    """Three series over four windows; some points out of order (within grace)."""
    series = [series_id("acme", "http.requests", {"host": h}) for h in ("a", "b")] + [
        series_id("acme", "queue.depth", {"queue": "jobs"})
    ]
    events = []
    for window in range(4):
        for i, s in enumerate(series):
            for k in range(window + i + 1):  # different counts per series and window
                ts = base_ms + window * 10_000 + k * 700
                events.append((s, ts, float(10 * window + k + i)))
    # Shuffle within a bounded distance: reverse every block of 5 (max lateness 3.5 s < window).
    blocks = [events[i:i + 5][::-1] for i in range(0, len(events), 5)]
    return series, [e for block in blocks for e in block]


def read_all(cfg, sids, parts):
    cluster, session = connect(cfg)
    try:
        rows = {}
        for sid in sids:
            for part in parts:
                for r in session.execute(
                    f"SELECT ts, count, sum, min, max FROM {cfg.keyspace}.buckets_10s "
                    "WHERE tenant = 'acme' AND sid = %s AND part = %s", (sid, part)):
                    rows[(sid, r.ts)] = (r.count, r.sum, r.min, r.max)
        return rows
    finally:
        cluster.shutdown()


def test_known_points_give_exact_buckets(pipeline_cfg):
    cfg, _job = pipeline_cfg
    # Event times aligned to a 10 s bucket, in the recent past.
    base = bucket_start_ms(int(time.time() * 1000) - 120_000, TIER)
    series, events = known_points(base)

    expected = defaultdict(lambda: [0.0, 0.0, float("inf"), float("-inf")])
    for s, ts, v in events:
        e = expected[(s.id, (ts // 10_000) * 10_000)]
        e[0] += 1
        e[1] += v
        e[2] = min(e[2], v)
        e[3] = max(e[3], v)
    expected = {k: tuple(v) for k, v in expected.items()}
    assert len(expected) == 12

    producer = PointProducer(cfg)
    sent = producer.send_all(
        points.from_value(s, "c", ts, v, producer.producer_id, producer.next_seq()) for s, ts, v in events)
    # A later point of another series moves the watermark past every test window.
    tick = series_id("acme", "tick", {})
    producer.send_all([points.from_value(tick, "g", base + 60_000, 0.0, producer.producer_id, producer.next_seq())])
    producer.close()
    assert sent == len(events)

    sids = [s.id for s in series]
    parts = sorted({partition_start_ms(ts, TIER) for _, ts in expected})
    deadline = time.monotonic() + 120
    rows = {}
    while time.monotonic() < deadline:
        rows = read_all(cfg, sids, parts)
        if len(rows) >= len(expected):
            break
        time.sleep(2)
    assert rows == expected

    # The sink also indexed each series with its name and tags.
    cluster, session = connect(cfg)
    try:
        rows = session.execute(f"SELECT series, tags FROM {cfg.keyspace}.series "
                               "WHERE tenant = 'acme' AND name = 'http.requests'")
        indexed = {(r.series, tuple(sorted((r.tags or {}).items()))) for r in rows}
    finally:
        cluster.shutdown()
    assert indexed == {("acme|http.requests|host=a", (("host", "a"),)),
                       ("acme|http.requests|host=b", (("host", "b"),))}
