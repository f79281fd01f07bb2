"""`tally demo`: realistic demo traffic through the running job, checked end to end.

Sends points for a few services × hosts (a handful of hot series, a long tail) at the
current time, then a heartbeat series until the watermark has closed every demo window,
and compares each closed 10 s bucket in Cassandra with what it sent.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

from tally.config import TallyConfig
from tally.cql import connect
from tally.producer import PointProducer
from tally.series import series_id
from tally.tiers import bucket_start_ms, tier_by_name

TIER = tier_by_name("10s")
# Prometheus-style names (the agent normalizes StatsD dots the same way), so PromQL selects them.
METRICS = (("http_requests", "c"), ("http_latency_ms", "ms"), ("queue_depth", "g"))
SERVICES = ("checkout", "search", "auth")
HOSTS = tuple(f"host-{i:02d}" for i in range(10))


def demo_series(tenant: str = "demo"):
    """Every demo series: metric × service × host."""
    return [
        (series_id(tenant, name, {"service": svc, "host": host}), mtype)
        for name, mtype in METRICS for svc in SERVICES for host in HOSTS
    ]


def send_traffic(cfg: TallyConfig, seconds: float, rate_per_s: float, rng: random.Random, log=print):
    """Send demo points for ``seconds``; returns the expected {(sid, bucket_ms): (count, sum)}."""
    all_series = demo_series()
    # Zipf-like skew: the first series are hot, the tail is quiet.
    weights = [1.0 / (rank + 1) for rank in range(len(all_series))]
    producer = PointProducer(cfg)
    expected: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    started = time.time()
    sent = 0
    last_tick_s = 0.0
    while time.time() - started < seconds:
        now_ms = int(time.time() * 1000)
        if time.time() - last_tick_s >= 1.0:  # keep every partition's event time moving
            producer.tick(now_ms)
            last_tick_s = time.time()
        for _ in range(max(1, int(rate_per_s / 10))):
            series, mtype = rng.choices(all_series, weights)[0]
            value = float(rng.randint(1, 5)) if mtype == "c" else round(rng.lognormvariate(3, 0.6), 3)
            producer.emit(series, mtype, now_ms, value)
            acc = expected[(series.id, bucket_start_ms(now_ms, TIER))]
            acc[0] += 1
            acc[1] += value
            sent += 1
        time.sleep(0.1)
    producer.flush()
    log(f"  sent {sent} points for {len({k[0] for k in expected})} series over {seconds:.0f}s")
    return dict(expected), producer


def close_windows(cfg: TallyConfig, producer: PointProducer, last_bucket_ms: int) -> None:
    """Send watermark ticks until event time passes the last demo window plus grace."""
    close_at_ms = last_bucket_ms + TIER.resolution_ms + cfg.grace_seconds * 1000 + 1000
    while True:
        now_ms = int(time.time() * 1000)
        producer.tick(now_ms)
        producer.flush()
        if now_ms > close_at_ms:
            return
        time.sleep(1)


def read_buckets(cfg: TallyConfig, keys) -> dict[tuple[int, int], tuple[float, float]]:
    """Read (count, sum) of the given (sid, bucket_ms) buckets from Cassandra."""
    cluster, session = connect(cfg)
    try:
        stmt = session.prepare(
            f"SELECT count, sum FROM {cfg.keyspace}.buckets_{TIER.name} "
            "WHERE tenant = 'demo' AND sid = ? AND part = ? AND ts = ?"
        )
        found = {}
        for sid, ts in keys:
            row = session.execute(stmt, (sid, (ts // TIER.partition_ms) * TIER.partition_ms, ts)).one()
            if row:
                found[(sid, ts)] = (row.count, row.sum)
        return found
    finally:
        cluster.shutdown()


def main(cfg: TallyConfig, seconds: float = 30, rate_per_s: float = 200, wait_s: float = 60) -> int:
    """Run the demo; exit status 0 when every closed bucket matches what was sent."""
    print(f"demo: sending ~{rate_per_s:.0f} points/s to topic {cfg.points_topic} for {seconds:.0f}s ...")
    expected, producer = send_traffic(cfg, seconds, rate_per_s, random.Random(7))
    close_windows(cfg, producer, max(ts for _, ts in expected))
    producer.close()
    deadline = time.monotonic() + wait_s
    while True:
        found = read_buckets(cfg, expected)
        if len(found) == len(expected) or time.monotonic() > deadline:
            break
        time.sleep(2)
    exact = sum(1 for k, (c, s) in expected.items() if k in found and found[k][0] == c
                and abs(found[k][1] - s) <= 1e-6 * max(1.0, abs(s)))
    print(f"demo: {len(expected)} buckets expected, {len(found)} found in Cassandra, {exact} exact")
    print(f"  see them:  tally buckets --tenant demo --limit 20")
    print(f"  Flink UI:  {cfg.flink_rest_url}   logs: tally stack logs")
    return 0 if exact == len(expected) else 1
