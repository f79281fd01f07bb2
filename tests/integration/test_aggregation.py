"""The aggregation engine on the real stack: every tier against an independent ground truth,
late data (on time, within grace, beyond grace), replays, hot keys, TaskManager kill -9.

All tests share one job run (module fixture), whose watermark only moves forward, so each
test works in its own event-time region, later than the previous test's (``regions``).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request

import pytest

from tally.producer import PointProducer
from tally.series import series_id
from tally.sketch import Sketch
from tally.stack import launcher
from tally.stack.process import Managed
from tests.integration.faults_support import job_running, kill9, task_attempts
from tests.integration.truth import dq_counters, exact_quantile, expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
# Far in the past, so no test region is ever "now"; each test gets the next few days.
FIRST_REGION_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z


class Regions:
    """Hands out whole UTC days of event time, in increasing order.  A test sends points
    from ``start + 1 h`` and moves the watermark no further than ``end - 1 h``."""

    def __init__(self):
        self.next_ms = FIRST_REGION_MS

    def take(self, days: int) -> int:
        start = self.next_ms
        self.next_ms += days * DAY_MS
        return start + 3_600_000


@pytest.fixture(scope="module")
def regions():
    return Regions()


def send(cfg, events, producer=None, close=True):
    """Emit (SeriesId, type, ts, value) events in order; returns the producer."""
    producer = producer or PointProducer(cfg)
    for s, mtype, ts, value in events:
        producer.emit(s, mtype, ts, value)
    producer.flush()
    if close:
        producer.close()
    return producer


def tick(cfg, ts_ms):
    """Watermark ticks at ts_ms on every partition: event time moves to ts_ms - grace."""
    producer = PointProducer(cfg)
    producer.tick(ts_ms)
    producer.flush()
    producer.close()


def assert_buckets_equal_truth(cfg, tenant, series, events, tiers=None, timeout_s=240):
    truth = expected_buckets([(s.id, ts, v, 1.0) for s, _t, ts, v in events])
    if tiers:
        truth = {k: v for k, v in truth.items() if k[0] in tiers}
    sids = [s.id for s in series]
    rows = wait_for(lambda: (lambda r: r if len(r) >= len(truth) else None)(
        read_buckets(cfg, tenant, sids, truth)), timeout_s=timeout_s)
    if not rows:
        present = read_buckets(cfg, tenant, sids, truth)
        missing = sorted(set(truth) - set(present))
        raise AssertionError(f"only {len(present)} of {len(truth)} buckets appeared; missing e.g. {missing[:5]}")
    assert set(rows) == set(truth)
    checked = 0
    for key, t in truth.items():
        r = rows[key]
        assert (r.count, r.min, r.max, r.last) == (t["count"], t["min"], t["max"], t["last"]), key
        assert r.sum == pytest.approx(t["sum"], rel=1e-12, abs=1e-9), key
        if r.sketch is not None:
            sketch = Sketch.from_bytes(r.sketch)
            assert sketch.count == t["count"]
            for q in (0.5, 0.9, 0.99, 0.999):
                exact = exact_quantile(t["values"], q)
                assert sketch.quantile(q) == pytest.approx(exact, rel=0.01), (key, q)
            checked += 1
    return truth, checked


def test_every_tier_equals_ground_truth(pipeline, regions):
    cfg, _ = pipeline
    base = regions.take(4)
    rng = random.Random(3)
    latency = series_id("t-tiers", "http.latency_ms", {"host": "a"})
    requests = series_id("t-tiers", "http.requests", {"host": "a"})
    depth = series_id("t-tiers", "queue.depth", {"queue": "q"})
    events = []
    # 50 hours: crosses 1 d, 1 h, 1 m, 10 s and 1 s boundaries; bursts give many values per bucket.
    for minute in range(0, 50 * 60, 7):
        t0 = base + minute * 60_000 + rng.randint(0, 59_000)
        for k in range(rng.randint(1, 40)):
            ts = t0 + k * 37  # within one or two seconds
            events.append((latency, "ms", ts, round(rng.lognormvariate(3, 1), 3)))
        events.append((requests, "c", t0, float(rng.randint(1, 9))))
        events.append((depth, "g", t0, float(rng.randint(0, 100))))
    send(cfg, events)
    # Events end 51 h into the region: the day-2 bucket closes once event time passes its end.
    tick(cfg, base - 3_600_000 + 3 * DAY_MS + 5_000)
    truth, checked = assert_buckets_equal_truth(cfg, "t-tiers", [latency, requests, depth], events)
    tiers = {k[0] for k in truth}
    assert tiers == {"1s", "10s", "1m", "1h", "1d"}
    print(f"every tier: {len(events)} points, {len(truth)} buckets equal to ground truth "
          f"({checked} sketches within 1 % at p50/p90/p99/p99.9)")
    assert checked > 0


def read_late_topic(cfg, tenant, timeout_s=30):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(cfg.late_topic, bootstrap_servers=cfg.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=timeout_s * 1000, group_id=None)
    try:
        found = []
        for message in consumer:
            record = json.loads(message.value)
            if record["tenant"] == tenant:
                found.append(record)
                break
        return found
    finally:
        consumer.close()


def test_late_data_on_time_within_grace_beyond_grace(pipeline, regions):
    cfg, _ = pipeline
    t = regions.take(1)
    s = series_id("t-late", "jobs.done", {})
    producer = PointProducer(cfg)
    # on_time: in order.  within_grace: a point 1.5 s behind the newest (grace is 2 s).
    on_time = [(s, "c", t + 100, 1.0), (s, "c", t + 5_200, 2.0), (s, "c", t + 7_000, 3.0)]
    within_grace = [(s, "c", t + 5_500, 4.0)]
    send(cfg, on_time + within_grace, producer, close=False)
    send(cfg, [(s, "c", t + 10_100, 5.0), (s, "c", t + 20_000, 6.0)], producer, close=False)
    tick(cfg, t + 20_000)
    # Wait until the bucket at t+10 s has fired (the watermark passed it), then send beyond grace.
    closed = wait_for(lambda: read_buckets(cfg, "t-late", [s.id], {("1s", s.id, t + 10_000)}).get(
        ("1s", s.id, t + 10_000)), timeout_s=120)
    assert closed is not None and closed.count == 1.0
    beyond_grace = [(s, "c", t + 10_300, 100.0)]
    send(cfg, beyond_grace, producer, close=False)
    send(cfg, [(s, "c", t + 60_000, 7.0)], producer)
    tick(cfg, t + 2 * 3_600_000)

    kept = on_time + within_grace + [(s, "c", t + 10_100, 5.0), (s, "c", t + 20_000, 6.0), (s, "c", t + 60_000, 7.0)]
    truth, _ = assert_buckets_equal_truth(cfg, "t-late", [s], kept, tiers={"1s", "10s", "1m"})
    assert truth[("1s", s.id, t + 5_000)]["count"] == 2  # within grace landed in its bucket
    bucket = read_buckets(cfg, "t-late", [s.id], {("1s", s.id, t + 10_000)})[("1s", s.id, t + 10_000)]
    assert (bucket.count, bucket.sum) == (1.0, 5.0)  # beyond grace left the bucket unchanged
    late = read_late_topic(cfg, "t-late")
    assert [(r["ts"], r["sum"]) for r in late] == [(t + 10_300, 100.0)]
    counters = wait_for(lambda: (lambda c: c if c.get("late_beyond_grace:1s") else None)(
        dq_counters(cfg, "t-late")), timeout_s=60)
    assert counters["late_beyond_grace:1s"] == 1.0 and counters["late_beyond_grace:1d"] == 1.0


def test_replays_are_counted_once(pipeline, regions):
    cfg, _ = pipeline
    base = regions.take(1)
    s = series_id("t-dup", "orders", {"shop": "x"})
    timer = series_id("t-dup", "latency", {"shop": "x"})
    events = [(s, "c", base + i * 450, float(i % 7)) for i in range(200)]
    events += [(timer, "ms", base + i * 450, float(5 + i % 13)) for i in range(200)]
    producer = PointProducer(cfg)
    points = []
    for sid, mtype, ts, v in events:
        points.append(producer.emit(sid, mtype, ts, v))
    producer.flush()
    # The same points (same producer id and sequence numbers) twice more: a replay storm.
    for _ in range(2):
        producer.send_all(points)
    producer.close()
    tick(cfg, base + 3_600_000 * 2)
    assert_buckets_equal_truth(cfg, "t-dup", [s, timer], events, tiers={"1s", "10s", "1m", "1h"})
    counters = wait_for(lambda: (lambda c: c if c.get("duplicates_dropped", 0) >= 800 else None)(
        dq_counters(cfg, "t-dup")), timeout_s=60)
    assert counters and counters["duplicates_dropped"] == 800.0


def _rest(cfg, path):
    with urllib.request.urlopen(f"{cfg.flink_rest_url}{path}", timeout=10) as resp:
        return json.load(resp)


def test_hot_key_is_spread_over_phase1_subtasks(pipeline, regions):
    cfg, job_id = pipeline
    base = regions.take(1)
    hot = series_id("t-hot", "hot.metric", {})
    cold = [series_id("t-hot", "cold.metric", {"i": str(i)}) for i in range(40)]
    events = []
    for i in range(4000):
        ts = base + i * 5
        events.append((hot, "c", ts, 1.0))
        events.append((cold[i % len(cold)], "c", ts, 1.0))
    vertex = _phase1_vertex(cfg, job_id)
    before = _subtask_records_in(cfg, job_id, vertex)
    send(cfg, events)
    tick(cfg, base + 3_600_000)
    truth, _ = assert_buckets_equal_truth(cfg, "t-hot", [hot, *cold], events, tiers={"1m"})

    def settled():
        """The per-subtask counts once two readings across a REST metrics refresh (every 2 s)
        agree: a reading cached mid-stream can hold one subtask's count from before its share."""
        first = _subtask_records_in(cfg, job_id, vertex)
        time.sleep(2.5)
        again = _subtask_records_in(cfg, job_id, vertex)
        return again if again == first and sum(again) > sum(before) else None

    after = wait_for(settled, timeout_s=60)
    assert after, "phase-1 record counts did not settle"
    load = [a - b for a, b in zip(after, before)]
    print(f"hot key: {len(events)} points (half on one series); phase-1 subtask records in: {load}")
    assert len(load) == 2 and min(load) > 0
    assert max(load) / min(load) < 1.5


def _phase1_vertex(cfg, job_id):
    """The vertex fed by stage 1 (the classified stream): its first operator is the global
    part of the 1 s windows keyed by (tenant, sid, salt), i.e. phase 1."""
    nodes = _rest(cfg, f"/jobs/{job_id}/plan")["plan"]["nodes"]
    stage1 = next(n["id"] for n in nodes if "OverAggregate" in n["description"])
    # Stage 1 also feeds the late-within-grace count (a window keyed by tenant alone).
    phase1 = [n for n in nodes if any(i["id"] == stage1 for i in n.get("inputs", []))
              and "GlobalWindowAggregate" in n["description"] and "groupBy=[tenant, sid" in n["description"]]
    assert len(phase1) == 1, [n["description"][:200] for n in nodes]
    assert "MOD(seq" in phase1[0]["description"] or "$f" in phase1[0]["description"]
    return phase1[0]["id"]


def _restarts(cfg, job_id):
    metrics = _rest(cfg, f"/jobs/{job_id}/metrics?get=numRestarts")
    return int(float(metrics[0]["value"])) if metrics else 0


def _subtask_records_in(cfg, job_id, vertex):
    detail = _rest(cfg, f"/jobs/{job_id}/vertices/{vertex}")
    return [s["metrics"]["read-records"] for s in detail["subtasks"]]


def test_taskmanager_kill_9_recovers_exactly(pipeline, regions, stack_cfg):
    cfg, job_id = pipeline
    base = regions.take(1)
    rng = random.Random(9)
    series = [series_id("t-kill", "work.items", {"w": str(i)}) for i in range(20)]
    timer = series_id("t-kill", "work.latency", {})
    events = []
    for i in range(6000):
        ts = base + i * 100
        events.append((series[i % 20], "c", ts, float(rng.randint(1, 5))))
        if i % 3 == 0:
            events.append((timer, "ms", ts, round(rng.lognormvariate(2, 0.5), 3)))

    producer = PointProducer(cfg)
    half = len(events) // 2

    def send_rest():  # the second half trickles in while the TaskManager dies and comes back
        for i in range(half, len(events), 200):
            send(cfg, events[i:i + 200], producer, close=False)
            time.sleep(0.05)

    sender = threading.Thread(target=send_rest)
    send(cfg, events[:half], producer, close=False)
    time.sleep(6)  # let a checkpoint complete mid-stream
    assert Managed("flink-taskmanager", stack_cfg.run_dir, stack_cfg.log_dir).pid(), \
        "the TaskManager was not started by the launcher"
    restarts_before = _restarts(cfg, job_id)
    attempts_before = task_attempts(cfg, job_id)
    assert attempts_before is not None
    sender.start()
    killed_at = time.monotonic()
    kill9(stack_cfg, "flink-taskmanager")  # and gone before the launcher looks
    sender.join()
    launcher.up(stack_cfg, ["flink"])  # the project's own command restarts the TaskManager
    producer.close()

    def recovered():  # every task redeployed since the kill (tests.integration.faults_support.task_attempts) and running
        return job_running(cfg, job_id) and (task_attempts(cfg, job_id) or 0) > attempts_before

    assert wait_for(recovered, timeout_s=240, interval_s=0.5), "job did not restart and recover"
    recovered_s = time.monotonic() - killed_at
    print(f"numRestarts metric {restarts_before} -> {_restarts(cfg, job_id)}")
    tick(cfg, base + 3_600_000 * 2)
    truth, _ = assert_buckets_equal_truth(cfg, "t-kill", [*series, timer], events, tiers={"1s", "10s", "1m", "1h"})
    print(f"TaskManager kill -9: job RUNNING again after {recovered_s:.1f}s; {len(events)} points, "
          f"{len(truth)} buckets equal to ground truth")
