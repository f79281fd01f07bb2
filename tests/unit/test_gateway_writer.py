"""PointWriter's decisions (group commit, ack check, 503 after any failure, fail-fast window,
reconnect) with a scripted producer; the real broker path is tests/integration/test_gateway.py."""

from __future__ import annotations

import asyncio

import pytest

from tally.config import TallyConfig
from tally.gateway.ingest import Sample
from tally.gateway.writer import KafkaUnavailable, PointWriter
from tally.series import series_id


class Fut:
    def __init__(self):
        self.is_done, self.exception = False, None

    def succeeded(self):
        return self.is_done and self.exception is None


class Recorder:
    def __init__(self):
        self.futures = []


class ScriptedProducer:
    """Records what it is asked to send; ``flush`` acks, fails chosen values, or raises."""

    instances: list["ScriptedProducer"] = []

    def __init__(self, cfg, fail_values=(), flush_error=None):
        self.recorder, self.sent, self.ticks, self.closed = Recorder(), [], [], False
        self.fail_values, self.flush_error = set(fail_values), flush_error
        self.producer_id = f"p{len(self.instances)}"
        self._pending: list[Fut] = []
        self.instances.append(self)

    def emit(self, series, metric_type, ts_ms, value, count=1.0):
        fut = Fut()
        fut.value = value
        self.recorder.futures.append(fut)
        self._pending.append(fut)
        self.sent.append((series.key, metric_type, ts_ms, value, count))

    def tick(self, ts_ms):
        self.ticks.append(ts_ms)

    def flush(self, timeout_s):
        if self.flush_error:
            raise self.flush_error
        for f in self._pending:
            f.is_done = True
            if f.value in self.fail_values:
                f.exception = RuntimeError(f"record {f.value} failed")
        self._pending = []

    def close_now(self):
        self.closed = True

    def close(self):
        self.closed = True


def samples(*values):
    s = series_id("t", "m", {"k": "v"})
    return [Sample(s, "g", 1000 + i, v) for i, v in enumerate(values)]


def make_writer(clock, **producer_kw):
    ScriptedProducer.instances = []
    # The scripted producer answers at once; the ack timeout only bounds the wait for the
    # writer's thread, which a heavily loaded machine may not schedule within a second.
    return PointWriter(TallyConfig(), ack_timeout_s=10, retry_after_s=5,
                       producer_factory=lambda cfg: ScriptedProducer(cfg, **producer_kw),
                       clock=lambda: clock[0], probe=lambda cfg: None)


def run(coro):
    return asyncio.run(coro)


def test_acknowledged_write_returns_and_sends_every_sample():
    clock = [0.0]
    w = make_writer(clock)
    try:
        run(w.write(samples(1.0, 2.0)))
        (p,) = ScriptedProducer.instances
        assert [v for *_, v, _c in p.sent] == [1.0, 2.0]
        assert w.healthy
    finally:
        w.close()


def test_concurrent_writes_are_each_answered():
    clock = [0.0]
    w = make_writer(clock)

    async def go():
        await asyncio.gather(*(w.write(samples(float(i))) for i in range(20)))
    try:
        run(go())
        assert sorted(v for p in ScriptedProducer.instances for *_, v, _c in p.sent) == [float(i) for i in range(20)]
    finally:
        w.close()


def test_flush_timeout_is_503_then_fail_fast_then_reconnect():
    clock = [0.0]
    w = make_writer(clock, flush_error=TimeoutError("no ack"))
    try:
        with pytest.raises(KafkaUnavailable) as info:
            run(w.write(samples(1.0)))
        assert info.value.retry_after_s == 5 and "no ack" in str(info.value)
        assert ScriptedProducer.instances[0].closed and not w.healthy
        with pytest.raises(KafkaUnavailable):  # fails fast inside the window, no new producer
            run(w.write(samples(2.0)))
        assert len(ScriptedProducer.instances) == 1
        clock[0] = 6.0
        with pytest.raises(KafkaUnavailable):
            run(w.write(samples(3.0)))
        assert len(ScriptedProducer.instances) == 2  # reconnected (and failed again: same script)
    finally:
        w.close()


def test_a_failed_record_fails_its_request():
    clock = [0.0]
    w = make_writer(clock, fail_values={2.0})
    try:
        with pytest.raises(KafkaUnavailable, match="record 2.0 failed"):
            run(w.write(samples(1.0, 2.0, 3.0)))
        assert not w.healthy
    finally:
        w.close()


def test_refused_connection_is_503():
    clock = [0.0]

    def refuse(cfg):
        raise ConnectionRefusedError("refused")

    w = PointWriter(TallyConfig(), ack_timeout_s=1, retry_after_s=3, producer_factory=ScriptedProducer,
                    clock=lambda: clock[0], probe=refuse)
    try:
        with pytest.raises(KafkaUnavailable, match="refused") as info:
            run(w.write(samples(1.0)))
        assert info.value.retry_after_s == 3 and "refused" in w.last_error
    finally:
        w.close()


def test_ticks_follow_writes_and_are_skipped_before_a_producer_exists():
    clock = [0.0]
    w = make_writer(clock)
    try:
        w.tick(5)  # no producer yet: nothing to promise
        run(w.write(samples(1.0)))
        w.tick(10)
        run(w.write(samples(2.0)))  # processed after the tick (one queue)
        (p,) = ScriptedProducer.instances
        assert p.ticks == [10]
    finally:
        w.close()
