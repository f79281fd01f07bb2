"""Agent pieces without sockets or Kafka: aggregation semantics, points, spool, sender order."""

import math
import time

import numpy as np
import pytest

from tally import point as points
from tally.agent.aggregator import Aggregator
from tally.agent.sender import Sender
from tally.agent.server import render_metrics
from tally.agent.spool import Batch, Spool
from tally.agent.worker import point_record
from tally.limits import Limits
from tally.series import series_id

NOW = 1_800_000_000


def agg(**kw):
    return Aggregator("acme", clock=lambda: NOW, **kw)


def by_name(flushed):
    return {(f.series.name, f.type, f.ts_ms): f for f in flushed}


def test_counters_weight_by_rate_and_timers_count_one_over_rate():
    a = agg()
    a.ingest("req:1|c|#env:prod\nreq:3|c|@0.5|#env:prod\nreq:2|c|#env:prod\n", NOW)
    a.ingest("lat:10|ms|@0.1\nlat:20:30|ms", NOW)
    out = by_name(a.flush())
    c = out[("req", "c", NOW * 1000)]
    assert c.series == series_id("acme", "req", {"env": "prod"})
    assert (c.count, c.sum, c.min, c.max) == (4.0, 9.0, 1.0, 3.0)  # 1 + 3/0.5 + 2; 1 + 2 + 1
    t = out[("lat", "ms", NOW * 1000)]
    assert (t.count, t.sum, t.min, t.max, t.last) == (12.0, 150.0, 10.0, 30.0, 30.0)
    assert t.sketch.count == 12.0
    assert t.sketch.quantile(0.0) == pytest.approx(10, rel=0.01)


def test_one_point_per_series_per_second_of_event_time():
    a = agg()
    a.ingest("x:1|c", NOW)
    a.ingest("x:2|c", NOW + 1)
    a.ingest(f"x:5|c|T{NOW - 100}\nx:7|c|T{NOW - 100}", NOW + 1)  # |T wins over arrival time
    assert [p.ts_ms for p in a.flush(before_sec=NOW + 1)] == [(NOW - 100) * 1000, NOW * 1000]
    assert a.pending_seconds() == [NOW + 1]
    (late,) = a.flush()
    assert late.sum == 2.0
    assert a.counters()["parsed"] == 4


def test_timestamped_points_merge_with_untimestamped_ones_of_the_same_second():
    a = agg()
    a.ingest(f"x:1|c\nx:2|c|T{NOW}", NOW)
    (p,) = a.flush()
    assert (p.count, p.sum) == (2.0, 3.0)


def test_gauges_apply_deltas_across_seconds():
    a = agg()
    a.ingest("q:10|g\nq:+5|g\nq:-3|g", NOW)
    (p,) = a.flush()
    assert (p.count, p.min, p.max, p.last, p.sum) == (3.0, 10.0, 15.0, 12.0, 37.0)
    a.ingest("q:-2|g", NOW + 1)
    (p,) = a.flush()
    assert p.last == 10.0
    a.ingest("q:4|g\nq:+1:+1|g", NOW + 2)
    assert a.flush()[0].last == 6.0


def test_sets_emit_the_exact_distinct_count_per_second():
    a = agg()
    a.ingest("users:alice|s\nusers:bob|s\nusers:alice:carol|s", NOW)
    a.ingest("users:alice|s", NOW + 1)
    s0, s1 = a.flush()
    assert (s0.count, s0.sum, s0.min, s0.max, s0.last) == (1.0, 3.0, 3.0, 3.0, 3.0)
    assert s1.sum == 1.0


def test_bad_lines_are_counted_by_reason_and_good_ones_kept():
    a = agg()
    a.ingest("ok:1|c\nbad:x|c\nnovalue\nok:2|c\nq:1|zz\n" + f"t:1|c|T{NOW + 10_000}\nold:1|c|T{NOW - 7200}", NOW)
    (p,) = a.flush()
    assert p.sum == 3.0
    c = a.counters()
    assert c["received"] == 7 and c["parsed"] == 2
    assert c["rejected"] == {"bad_value": 1, "no_value": 1, "bad_type": 1, "future_timestamp": 1, "too_old": 1}


def test_limits_reject_series_with_their_reason():
    a = agg(limits=Limits(max_labels_per_series=2, max_series_per_metric=2))
    a.ingest("m:1|c|#a:1,b:2,c:3\nm:1|c|#k:1\nm:1|c|#k:2\nm:1|c|#k:3\nm:1|c|#k:3", NOW)
    assert len(a.flush()) == 2
    assert a.counters()["rejected"] == {"too_many_labels": 1, "too_many_series_metric": 2}


def test_same_series_with_different_tag_order_is_one_point():
    a = agg()
    a.ingest("m:1|c|#a:1,b:2\nm:2|c|#b:2,a:1\nm.x:1|s|#a:1\nm.x:1|s", NOW)
    pts = a.flush()
    assert sorted((p.series.name, p.sum) for p in pts) == [("m", 3.0), ("m_x", 1.0), ("m_x", 1.0)]


def test_numeric_aggregates_match_numpy_on_random_load():
    rng = np.random.default_rng(7)
    values = rng.lognormal(3, 1, 5000).round(3)
    a = agg()
    for i in range(0, len(values), 20):
        a.ingest("\n".join(f"lat:{v}|d" for v in values[i:i + 20]), NOW)
    (p,) = a.flush()
    assert p.count == len(values)
    assert math.isclose(p.sum, float(values.sum()), rel_tol=1e-12)
    assert (p.min, p.max) == (values.min(), values.max())
    for q in (0.5, 0.9, 0.99):
        assert p.sketch.quantile(q) == pytest.approx(float(np.quantile(values, q, method="lower")), rel=0.01)


def test_point_records_are_valid_points():
    a = agg()
    a.ingest("c:1|c\ng:1|g\nt:1|ms\nh:1|h\nd:1|d\ns:a|s", NOW)
    for seq, f in enumerate(a.flush(), 1):
        record = points.decode(points.encode(point_record(f, "agent-x", seq)))
        assert record["type"] == f.type and record["seq"] == seq and record["ts"] == NOW * 1000


def test_spool_is_fifo_bounded_and_survives_reopening(tmp_path):
    spool = Spool(tmp_path, max_bytes=1000)
    b1 = Batch([(1, b'{"a":1}')], {1: ("t|a|", "c")})
    b2 = Batch([(2, b'{"a":2}'), (3, b'{"a":3}')], {2: ("t|b|", "g")})
    assert spool.append(b1) and spool.append(b2)
    assert not spool.append(Batch([(9, b"x" * 2000)]))  # over the bound: refused, nothing written
    reopened = Spool(tmp_path, max_bytes=1000)
    assert len(reopened) == 2 and reopened.bytes == spool.bytes
    path, first = reopened.oldest()
    assert first == b1
    reopened.remove(path)
    assert reopened.oldest()[1] == b2
    assert reopened.append(b1) and len(reopened) == 2  # numbering continues after the newest


class FlakyKafka:
    """Records delivered batches; fails while ``down`` is true (a stand-in for the broker in
    unit tests; the real broker outage is tests/integration/test_agent_outage.py)."""

    def __init__(self, log):
        self.log = log
        self.producer_id = "p"

    def deliver(self, batch, timeout_s):
        if self.log["down"]:
            raise OSError("broker down")
        self.log["delivered"].extend(seq for seq, _ in batch.points)

    def tick(self, ts_ms):
        self.log["ticks"].append(ts_ms)

    def abort(self):
        pass

    def flush(self, timeout_s=None):
        pass

    def close(self):
        pass


def test_sender_spools_while_down_and_replays_in_order_before_new_batches(tmp_path):
    log = {"down": False, "delivered": [], "ticks": []}
    stats = {}
    sender = Sender(Spool(tmp_path, 10**6), lambda: FlakyKafka(log), stats, retry_seconds=0.2)
    sender.start()
    sender.submit(Batch([(1, b"{}")]), 1000)
    _wait(lambda: log["delivered"] == [1])
    log["down"] = True
    for seq in (2, 3, 4):
        sender.submit(Batch([(seq, b"{}")]), seq * 1000)
    _wait(lambda: stats["points_spooled"] == 3)
    assert log["ticks"] == [1000]  # no tick while points are waiting in the spool
    log["down"] = False
    sender.submit(Batch([(5, b"{}")]), 5000)
    _wait(lambda: log["delivered"] == [1, 2, 3, 4, 5])
    sender.stop()
    # batch 5 may itself have gone through the spool (it came before the retry time)
    assert stats["points_replayed"] in (3, 4) and stats["points_flushed"] == 5 and stats["spool_batches"] == 0
    assert log["ticks"][-1] == 5000


def test_sender_counts_spool_dropped_when_the_bound_is_hit(tmp_path):
    log = {"down": True, "delivered": [], "ticks": []}
    stats = {}
    sender = Sender(Spool(tmp_path, 300), lambda: FlakyKafka(log), stats, retry_seconds=60)
    sender.start()
    for seq in range(1, 11):
        sender.submit(Batch([(seq, b'{"x":"' + b"y" * 50 + b'"}')]), None)
    sender.stop()
    assert stats["points_spooled"] + stats["spool_dropped"] == 10
    assert stats["spool_dropped"] > 0 and stats["spool_bytes"] <= 300


def test_metrics_text_sums_workers_and_labels_reasons():
    text = render_metrics({
        (0, "receiver"): {"worker": 0, "role": "receiver", "received": 5, "parsed": 3, "rejected": {"bad_value": 2}},
        (1, "receiver"): {"worker": 1, "role": "receiver", "received": 1, "parsed": 1, "rejected": {}},
        (0, "sender"): {"worker": 0, "role": "sender", "kafka_up": 1, "points_flushed": 7},
        (1, "sender"): {"worker": 1, "role": "sender", "kafka_up": 0, "points_flushed": 2}})
    assert "tally_agent_received_lines_total 6\n" in text
    assert 'tally_agent_rejected_lines_total{reason="bad_value"} 2\n' in text
    assert 'tally_agent_kafka_up{worker="1"} 0\n' in text
    assert "# TYPE tally_agent_parsed_lines_total counter" in text
    assert "tally_agent_points_flushed_total 9\n" in text and "tally_agent_workers 2\n" in text


def _wait(cond, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_worker_flushes_in_slices_with_increasing_seqs_then_ticks(tmp_path):
    import dataclasses
    import json

    from tally.agent.worker import Worker
    from tally.config import TallyConfig

    cfg = dataclasses.replace(TallyConfig(), home=tmp_path, agent_tenant="acme")
    log = {"down": False, "delivered": [], "ticks": []}

    class Recorder(FlakyKafka):
        def deliver(self, batch, timeout_s):
            log["delivered"].extend(json.loads(rec) for _sid, rec in batch.points)

    w = Worker(cfg, 0, make_producer=lambda: Recorder(log))
    w.sender.start()
    w.agg.ingest("\n".join(f"m{i}:1|c" for i in range(300)), NOW)
    w.agg.ingest("m0:1|c", NOW + 1)
    w.start_flush(NOW + 1)
    slices = 0
    while w._pending:
        w._advance(0.0)  # one aggregate per slice
        slices += 1
    w.flush(None)  # shutdown: everything left
    w.sender.stop()
    assert slices == 301  # one aggregate per slice, then the call that hands the batch over
    delivered = log["delivered"]
    assert [p["seq"] for p in delivered] == list(range(1, 302))
    assert {p["pid"] for p in delivered} == {w.pid}
    assert [p["ts"] for p in delivered] == [NOW * 1000] * 300 + [(NOW + 1) * 1000]
    assert log["ticks"][0] == (NOW + 1) * 1000


def test_values_a_sketch_cannot_hold_are_rejected_and_the_rest_kept():
    # 1e306 is finite but beyond what a sketch indexes (and sums of such values overflow):
    # the bulk path and the per-line path both reject it as bad_value, never crash at flush.
    for datagram in ("lat:1e306|ms\nlat:2|ms\nlat:4|ms", "lat:2:1e306|ms\nlat:2|ms\nlat:4|ms",
                     "c:1e306|c\nc:1e306|c\nc:3|c", "g:-1e306|g\ng:5|g"):
        a = agg()
        a.ingest(datagram, NOW)
        pts = a.flush()
        assert a.counters()["rejected"] == {"bad_value": datagram.count("e306")}
        assert len(pts) == 1 and all(math.isfinite(p.sum) for p in pts)
    assert pts[0].last == 5.0


def test_sketch_is_built_from_the_samples_like_a_direct_one():
    # The receive loop keeps a timer's values as samples; whoever encodes the point builds the
    # sketch: the same bytes as adding the values (with their weights) to a sketch directly.
    from tally.sketch import Sketch

    a = agg()
    values = [round(1.5 ** i, 3) for i in range(-20, 60)]
    a.ingest("\n".join(f"lat:{v}|ms" for v in values) + "\nlat:7|ms|@0.25", NOW)
    (p,) = a.flush()
    direct = Sketch().add_many(values).add(7.0, 4.0)
    assert p.sketch.to_bytes() == direct.to_bytes()
    assert (p.count, p.last) == (len(values) + 4.0, 7.0)


def test_bounded_head_cache_keeps_pending_values_when_it_forgets_keys():
    a = agg(max_heads=3)
    a.ingest("\n".join(f"old{i}:1|c" for i in range(5)), NOW)
    a.flush()
    a.ingest("q:5|g\nq:+1|g\nt:2|ms\ns:x|s\nc:4|c\nbad:1|zz", NOW + 1)
    a.flush(before_sec=NOW)  # nothing closed, but the cache is over its bound: forgets old keys
    assert len(a.heads) == 4  # the keys of the open second; old and bad ones forgotten
    a.ingest("c:6|c\nt:3|ms\nq:+1|g", NOW + 1)
    pts = by_name(a.flush())
    ts = (NOW + 1) * 1000
    assert pts[("c", "c", ts)].sum == 10.0
    assert (pts[("t", "ms", ts)].count, pts[("t", "ms", ts)].sketch.count) == (2.0, 2.0)
    assert (pts[("q", "g", ts)].last, pts[("q", "g", ts)].count) == (7.0, 3.0)
    assert pts[("s", "s", ts)].sum == 1.0

