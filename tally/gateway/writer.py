"""The gateway's Kafka side: accepted samples → points → broker ack, off the event loop.

One :class:`PointProducer` lives on one writer thread (it is not thread-safe, and one
thread keeps its sequence numbers in send order).  Requests hand their samples to the
thread through a queue; the thread takes every request waiting, sends them all, flushes
once (group commit: one broker round trip for many concurrent requests) and then resolves
each request from the futures of its own records.  A request is answered 2xx only when
every record of it was acknowledged (acks=all); anything else is :class:`KafkaUnavailable`
and the handler answers 503 with Retry-After.

After a failure the producer is closed without waiting (its unsent records fail rather
than arrive after the client was told 503) and for ``retry_after_s`` requests fail fast;
the next attempt first probes the broker's port so a refused connection costs
milliseconds, not the client's 30-second bootstrap timeout.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tally.config import TallyConfig
from tally.gateway.ingest import Sample
from tally.producer import PointProducer

log = logging.getLogger(__name__)

_GROUP_MAX = 256  # requests sent together before one flush


class KafkaUnavailable(Exception):
    """The records were not acknowledged by Kafka; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _RecordingSender:
    """Wraps a KafkaProducer and keeps the future of every ``send`` so the writer can tell
    which records were acknowledged (PointProducer's own methods return None)."""

    def __init__(self, inner):
        self._inner = inner
        self.futures: list = []

    def send(self, *args, **kwargs):
        fut = self._inner.send(*args, **kwargs)
        self.futures.append(fut)
        return fut

    def __getattr__(self, name):
        return getattr(self._inner, name)


class AckedPointProducer(PointProducer):
    """A PointProducer whose sends can be checked for broker acknowledgement."""

    def __init__(self, cfg: TallyConfig, producer_id: str | None = None):
        super().__init__(cfg, producer_id)
        self._producer = self.recorder = _RecordingSender(self._producer)

    def close_now(self) -> None:
        """Close without waiting: records not yet acknowledged fail."""
        inner = self.recorder._inner
        try:
            inner.close(timeout=0)
        except Exception as exc:
            # kafka-python 3.0 flushes even with timeout 0 and raises while records are pending,
            # leaving its sender thread running (it would deliver them after we answered 503,
            # and leak a thread per outage): force the sender closed so they fail now.
            sender = getattr(inner, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(5)
            log.info("Kafka producer force-closed after %s", type(exc).__name__)


@dataclass
class _Item:
    kind: str  # "points" or "tick"
    samples: list[Sample] = field(default_factory=list)
    tick_ms: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False
    records: list = field(default_factory=list)
    idempotency_id: str | None = None  # points numbered 1..n under this producer id


def _emit_as(producer: PointProducer, producer_id: str, samples: list[Sample]) -> None:
    """Emit samples as points 1..n of ``producer_id`` through the producer's one emit path,
    then give the producer its own id and sequence back."""
    own = (producer.producer_id, producer.seq)
    producer.producer_id, producer.seq = producer_id, 0
    try:
        for s in samples:
            producer.emit(s.series, s.metric_type, s.ts_ms, s.value, s.count)
    finally:
        producer.producer_id, producer.seq = own


def probe_broker(cfg: TallyConfig, timeout_s: float = 1.0) -> None:
    """Raise OSError if nothing accepts TCP connections on the Kafka bootstrap address."""
    with socket.create_connection((cfg.host, cfg.ports.kafka), timeout=timeout_s):
        pass


class PointWriter:
    """Writes accepted samples to Kafka and waits for the broker's acknowledgement."""

    def __init__(self, cfg: TallyConfig, ack_timeout_s: float | None = None, retry_after_s: float = 5.0,
                 producer_factory: Callable[[TallyConfig], AckedPointProducer] = AckedPointProducer,
                 clock: Callable[[], float] = time.monotonic,
                 probe: Callable[[TallyConfig], None] = probe_broker):
        self.cfg = cfg
        self._probe = probe
        self.ack_timeout_s = cfg.gateway_ack_timeout_seconds if ack_timeout_s is None else ack_timeout_s
        self.retry_after_s = retry_after_s
        self._factory = producer_factory
        self._clock = clock
        self._producer: AckedPointProducer | None = None
        self._down_until = 0.0
        self.last_error = ""
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tally-gateway-writer", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._down_until

    async def write(self, samples: list[Sample], idempotency_id: str | None = None) -> None:
        """Return once Kafka acknowledged every sample as a point; raise KafkaUnavailable if not.
        ``idempotency_id``: the samples become points 1..n of that producer id (instead of
        the writer's own), so a retried request is a replay the job drops."""
        if not samples:
            return
        if not self.healthy:
            raise KafkaUnavailable(f"Kafka unavailable: {self.last_error}", self.retry_after_s)
        # In event-time order, not in the body's order (ingest groups samples by series): on
        # a partition the job's event time follows the newest point, so a request spanning
        # more than the grace sent series by series had the early points of its later series
        # judged late beyond grace (fault suite).  Stable, so a retried body is numbered alike.
        samples = sorted(samples, key=lambda s: s.ts_ms)
        loop = asyncio.get_running_loop()
        item = _Item("points", samples=samples, loop=loop, future=loop.create_future(),
                     idempotency_id=idempotency_id)
        self._queue.put(item)
        try:
            # The thread may itself wait ack_timeout_s for a flush: allow for it plus the queue.
            await asyncio.wait_for(asyncio.shield(item.future), timeout=2 * self.ack_timeout_s + 1)
        except asyncio.TimeoutError:
            item.cancelled = True
            raise KafkaUnavailable(f"no Kafka acknowledgement within {2 * self.ack_timeout_s + 1:.0f} s",
                                   self.retry_after_s) from None

    def tick(self, ts_ms: int) -> None:
        """Queue a watermark tick behind everything already queued (skipped while Kafka is down)."""
        if self.healthy and self._producer is not None:
            self._queue.put(_Item("tick", tick_ms=ts_ms))

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._producer is not None:
            try:
                self._producer.flush(timeout_s)
            except Exception:
                log.exception("final flush failed")
            self._producer.close()
            self._producer = None

    # --- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < _GROUP_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self._write_group([i for i in items if not i.cancelled])
            if stop:
                return

    def _write_group(self, items: list[_Item]) -> None:
        if not items:
            return
        try:
            if not self.healthy:
                raise KafkaUnavailable(self.last_error, self.retry_after_s)
            producer = self._connect()
            for item in items:
                start = len(producer.recorder.futures)
                if item.kind == "tick":
                    producer.tick(item.tick_ms)
                elif item.idempotency_id:
                    _emit_as(producer, item.idempotency_id, item.samples)
                else:
                    for s in item.samples:
                        producer.emit(s.series, s.metric_type, s.ts_ms, s.value, s.count)
                item.records = producer.recorder.futures[start:]
            producer.recorder.futures.clear()
            producer.flush(self.ack_timeout_s)
            failed = None
            for item in items:
                error = next((f.exception or "not acknowledged" for f in item.records
                              if not (f.is_done and f.succeeded())), None)
                if error is not None:
                    failed = failed or error
                    self._resolve(item, KafkaUnavailable(f"Kafka did not acknowledge: {error}", self.retry_after_s))
                else:
                    self._resolve(item, None)
            if failed is not None:
                self._mark_down(f"a record failed: {failed}")
        except Exception as exc:  # any producer failure: answer 503, never 2xx
            reason = exc.args[0] if isinstance(exc, KafkaUnavailable) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, KafkaUnavailable):
                self._mark_down(reason)
            for item in items:
                self._resolve(item, KafkaUnavailable(f"Kafka unavailable: {reason}", self.retry_after_s))

    def _connect(self) -> AckedPointProducer:
        if self._producer is None:
            self._probe(self.cfg)
            self._producer = self._factory(self.cfg)
            log.info("gateway producer %s connected to %s", self._producer.producer_id, self.cfg.kafka_bootstrap)
        return self._producer

    def _mark_down(self, reason: str) -> None:
        log.warning("Kafka unavailable (%s); failing writes for %.0f s", reason, self.retry_after_s)
        self.last_error = reason
        self._down_until = self._clock() + self.retry_after_s
        if self._producer is not None:
            self._producer.close_now()
            self._producer = None

    @staticmethod
    def _resolve(item: _Item, error: Exception | None) -> None:
        if item.future is None or item.loop is None:
            return

        def settle(fut: asyncio.Future = item.future) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        try:
            item.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

