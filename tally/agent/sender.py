"""Delivery of flushed batches to Kafka, with the disk spool when Kafka is unreachable.

One sender thread per worker process, fed by a queue, so a slow or absent Kafka never
blocks the receive loop.  A batch is delivered when every one of its records (series
registrations first, then points) is acknowledged (acks=all, idempotent producer); any
failure spools the whole batch and recreates the Kafka client.  While the spool holds
anything, new batches go to its end too and no watermark tick is sent (a tick promises that
everything before it was sent); every ``retry_seconds`` the oldest spooled batch is tried,
and batches are replayed one by one, oldest first, with their original producer id and
sequence numbers.  Records of a failed batch that did reach Kafka are thus sent again with
the same (pid, seq) and dropped by the job's deduplication: no loss, no double count.

The job's event time is per Kafka partition, and every worker of an agent writes to every
partition, so one worker running ahead of a sibling would make the sibling's points late
beyond grace (fault suite: under load, a worker whose batch lagged by more than the grace
lost it).  The workers therefore share their progress (:class:`Progress`, one small file per
worker): a worker sends a batch only when no live sibling is more than the grace behind it,
and a tick only up to what every live sibling has delivered.  A sibling that has not
advanced for ``Progress.stale_seconds`` (dead, or its Kafka gone) no longer holds the others.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from tally import point as points
from tally.agent.spool import Batch, Spool
from tally.config import TallyConfig
from tally.producer import PointProducer, series_key_bytes
from tally.series import parse_key

log = logging.getLogger("tally.agent")


class AgentProducer(PointProducer):
    """PointProducer that reports per-record delivery (the agent must know what to spool)."""

    def __init__(self, cfg: TallyConfig, producer_id: str, max_block_ms: int = 2000):
        super().__init__(cfg, producer_id)
        # Metadata waits (send, partitions_for) must fail fast when the broker is gone.
        self._producer.config["max_block_ms"] = max_block_ms

    def deliver(self, batch: Batch, timeout_s: float) -> None:
        """Send the batch's registrations and points and wait for every ack; raises on any failure."""
        futures = []
        new = [sid for sid in batch.series if sid not in self._registered]
        for sid in new:
            key, mtype = batch.series[sid]
            record = points.encode(points.series_record(parse_key(key), mtype))
            futures.append(self._producer.send(self.series_topic, key=series_key_bytes(sid), value=record))
        for sid, record in batch.points:
            futures.append(self._producer.send(self.points_topic, key=series_key_bytes(sid), value=record))
        self._producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=0)  # raises the delivery error, if any
        self._registered.update(new)

    def abort(self) -> None:
        """Close without waiting for pending records (they are spooled by the caller)."""
        try:
            self._producer.close(timeout=0)
        except Exception:  # noqa: BLE001 - closing a broken client must not fail the agent
            pass


class Progress:
    """What each worker of one agent has delivered, shared through one file per worker in
    ``directory``: worker i's file holds P (epoch ms) such that every point of worker i
    before P is acknowledged by Kafka.  A file not rewritten for ``stale_seconds`` is
    ignored: its worker is dead or cannot reach Kafka, and must not hold the others."""

    def __init__(self, directory: Path, index: int, workers: int, stale_seconds: float = 10.0):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.stale_seconds = stale_seconds
        self._siblings = [directory / f"worker-{i}" for i in range(workers) if i != index]
        self._own = directory / f"worker-{index}"

    def publish(self, through_ms: int) -> None:
        tmp = self._own.with_suffix(".tmp")
        tmp.write_text(str(int(through_ms)))
        os.replace(tmp, self._own)

    def refresh(self) -> None:
        """Keep the own file live without moving it (a restart with a spool to replay: the
        spooled points come after what the file says)."""
        try:
            os.utime(self._own)
        except FileNotFoundError:
            pass

    def siblings_through(self) -> int | None:
        """The smallest P of the live siblings, None when no sibling is live."""
        low = None
        now = time.time()
        for path in self._siblings:
            try:
                if now - path.stat().st_mtime > self.stale_seconds:
                    continue
                value = int(path.read_text())
            except (FileNotFoundError, ValueError):
                continue  # not written yet, or replaced between stat and read
            low = value if low is None else min(low, value)
        return low


class Sender(threading.Thread):
    """Delivers batches in order; spools and replays while Kafka is away."""

    def __init__(self, spool: Spool, make_producer: Callable[[], AgentProducer], stats: dict,
                 retry_seconds: float = 5.0, ack_timeout_seconds: float = 10.0,
                 hold_ticks: Callable[[], bool] | None = None, progress: Progress | None = None,
                 grace_ms: int = 0):
        super().__init__(name="tally-agent-sender", daemon=True)
        self.spool = spool
        # True while another producer of this agent still replays spooled points: the job's
        # event time is per Kafka partition, not per producer, so a tick now would make
        # those points late beyond grace.
        self.hold_ticks = hold_ticks
        # The sibling workers' progress (None: a lone sender) and the job's grace: a batch
        # waits while a live sibling is more than the grace behind it.
        self.progress = progress
        self.grace_ms = grace_ms
        self.make_producer = make_producer
        self.stats = stats
        self.retry_seconds = retry_seconds
        self.ack_timeout_seconds = ack_timeout_seconds
        self.queue: queue.Queue = queue.Queue()
        self._producer: AgentProducer | None = None
        self._next_try = 0.0
        self._tick_due: int | None = None
        self._stopping = threading.Event()
        for name in ("points_flushed", "points_spooled", "spool_dropped", "points_replayed", "batches_failed",
                     "sibling_waits", "sibling_wait_seconds"):
            stats.setdefault(name, 0)
        stats["kafka_up"] = 0
        self._update_spool_stats()

    def submit(self, batch: Batch, tick_ms: int | None) -> None:
        """Queue a batch (may be empty) and the watermark tick that follows it."""
        self.queue.put((batch, tick_ms))

    def stop(self, timeout_s: float = 30) -> None:
        """Deliver or spool everything queued, then close the Kafka client."""
        self._stopping.set()
        self.queue.put(None)
        self.join(timeout_s)

    def run(self) -> None:
        if self.progress is not None:
            if len(self.spool):
                self.progress.refresh()
            else:
                self.progress.publish(int(time.time()) * 1000)  # nothing older is pending
        if not len(self.spool):
            self._connect()  # now, not with the first batch: a slow start would make it late
        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                batch, tick_ms = item
                self._handle(batch, tick_ms)
            elif len(self.spool) and time.monotonic() >= self._next_try:
                self._replay()
        if len(self.spool) and not self._stopping.is_set():
            self._replay()
        if self._producer is not None:
            try:
                self._producer.flush(5)
                self._producer.close()
            except Exception:  # noqa: BLE001
                self._producer.abort()

    # -- internals --------------------------------------------------------------------

    def _handle(self, batch: Batch, tick_ms: int | None) -> None:
        if len(self.spool) and time.monotonic() >= self._next_try:
            self._replay()
        batch.tick_ms = tick_ms
        if batch.points:
            if not len(self.spool):
                self._wait_for_siblings(batch)
            if len(self.spool) or not self._try(batch):
                self._to_spool(batch)
            else:
                self.stats["points_flushed"] += len(batch.points)
        if tick_ms is not None:
            self._tick_due = tick_ms
            if not len(self.spool):
                self._delivered_through(tick_ms)
        self._send_tick()

    def _delivered_through(self, ts_ms: int) -> None:
        if self.progress is not None:
            self.progress.publish(ts_ms)

    def _wait_for_siblings(self, batch: Batch) -> None:
        """Hold a batch (fresh or replayed) that ends before its tick while a live sibling
        has not delivered every second before tick - 1 s - grace: delivered now, its last
        second would move the partitions' event time past the sibling's pending points.
        While it waits, the worker publishes the batch's first second as its own progress
        (everything before it is delivered), so a sibling waiting on it is never held."""
        if self.progress is None or batch.tick_ms is None:
            return
        need = batch.tick_ms - 1000 - self.grace_ms
        start = time.monotonic()
        waiting = False
        while not self._stopping.is_set():
            low = self.progress.siblings_through()
            if low is None or low >= need:
                break
            if not waiting:
                waiting = True
                self._delivered_through(min(json.loads(rec)["ts"] for _, rec in batch.points))
            time.sleep(0.05)
        if waiting:
            self.stats["sibling_waits"] += 1
            self.stats["sibling_wait_seconds"] += time.monotonic() - start

    def _send_tick(self) -> None:
        """Send the newest tick asked for, unless spooled points would make it a lie; never
        beyond what every live sibling worker has delivered."""
        if self._tick_due is None or len(self.spool) or self._producer is None:
            return
        if self.hold_ticks is not None and self.hold_ticks():
            return
        tick = self._tick_due
        if self.progress is not None:
            low = self.progress.siblings_through()
            if low is not None and low < tick:
                tick = low  # the rest follows with a later tick
        try:
            self._producer.tick(tick)
            self._tick_due = None
        except Exception as exc:  # noqa: BLE001 - a lost tick only delays event time
            log.warning("watermark tick failed: %s", exc)

    def _connect(self) -> bool:
        """Create the Kafka client if there is none and it is time to try; False when Kafka
        is unreachable (the next try is in ``retry_seconds``)."""
        if self._producer is not None:
            return True
        if time.monotonic() < self._next_try:
            return False
        try:
            self._producer = self.make_producer()
        except Exception as exc:  # noqa: BLE001 - Kafka unreachable: spool
            log.warning("Kafka unreachable (%s); spooling", exc)
            self._down()
            return False
        return True

    def _try(self, batch: Batch) -> bool:
        if not self._connect():
            return False
        try:
            self._producer.deliver(batch, self.ack_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - any delivery failure: spool the batch
            log.warning("delivery failed (%s); spooling", exc)
            self.stats["batches_failed"] += 1
            self._producer.abort()
            self._producer = None
            self._down()
            return False
        self.stats["kafka_up"] = 1
        return True

    def _down(self) -> None:
        self.stats["kafka_up"] = 0
        self._next_try = time.monotonic() + self.retry_seconds

    def _to_spool(self, batch: Batch) -> None:
        if self.spool.append(batch):
            self.stats["points_spooled"] += len(batch.points)
        else:
            self.stats["spool_dropped"] += len(batch.points)
            log.error("spool full (%d bytes): dropped %d points", self.spool.bytes, len(batch.points))
        self._update_spool_stats()

    def _replay(self) -> None:
        """Deliver spooled batches oldest first; stop at the first failure."""
        while True:
            head = self.spool.oldest()
            if head is None:
                break
            path, batch = head
            self._wait_for_siblings(batch)
            if not self._try(batch):
                break
            self.spool.remove(path)
            self.stats["points_replayed"] += len(batch.points)
            self.stats["points_flushed"] += len(batch.points)
            self._update_spool_stats()
            if batch.tick_ms is not None:
                self._delivered_through(batch.tick_ms)
            elif self.progress is not None:
                self.progress.refresh()
        if not len(self.spool) and self._tick_due is not None:
            self._delivered_through(self._tick_due)
        self._update_spool_stats()
        self._send_tick()

    def _update_spool_stats(self) -> None:
        self.stats["spool_bytes"] = self.spool.bytes
        self.stats["spool_batches"] = len(self.spool)
