"""Idempotency-Key on the gateway's write endpoints: a retried request is a replay (pure parts)."""

from __future__ import annotations

from tally.gateway.app import idempotency_id
from tally.gateway.ingest import Sample
from tally.gateway.writer import _emit_as
from tally.series import series_id


def test_same_tenant_key_and_body_give_the_same_producer_id():
    a = idempotency_id("t1", "req-1", b"body")
    assert a == idempotency_id("t1", "req-1", b"body") and a.startswith("idem-")
    assert idempotency_id("t2", "req-1", b"body") != a  # tenants never share ids
    assert idempotency_id("t1", "req-2", b"body") != a
    assert idempotency_id("t1", "req-1", b"other body") != a  # a reused key is counted, not dropped
    assert idempotency_id("t1", None, b"body") is None and idempotency_id("t1", "", b"body") is None


class _Recorder:
    """Stands in for PointProducer.emit's numbering (producer_id, seq) only."""

    def __init__(self):
        self.producer_id, self.seq, self.sent = "own", 41, []

    def emit(self, series, metric_type, ts_ms, value, count=1.0):
        self.seq += 1
        self.sent.append((self.producer_id, self.seq, ts_ms))


def test_points_of_an_idempotent_request_are_numbered_from_one_and_the_producer_keeps_its_own_ids():
    s = series_id("t1", "m", {})
    samples = [Sample(s, "c", 1000 + i, 1.0) for i in range(3)]
    producer = _Recorder()
    _emit_as(producer, "idem-x", samples)
    _emit_as(producer, "idem-x", samples)  # the retry: the same ids again
    assert producer.sent == [("idem-x", n, 1000 + n - 1) for n in (1, 2, 3)] * 2
    assert (producer.producer_id, producer.seq) == ("own", 41)


def test_a_request_is_sent_in_event_time_order_not_series_by_series():
    import asyncio

    from tests.unit.test_gateway_writer import ScriptedProducer, make_writer

    a, b = series_id("t", "a", {}), series_id("t", "b", {})
    grouped = [Sample(a, "c", 1000, 1.0), Sample(a, "c", 30_000, 2.0), Sample(b, "c", 500, 3.0),
               Sample(b, "c", 20_000, 4.0)]  # as ingest hands them over: grouped by series
    w = make_writer([0.0])
    try:
        asyncio.run(w.write(grouped))
        (p,) = ScriptedProducer.instances
        assert [ts for _k, _t, ts, _v, _c in p.sent] == [500, 1000, 20_000, 30_000]
    finally:
        w.close()
