"""An agent's workers never run ahead of each other by more than the grace: no watermark
tick while a sibling worker still holds spooled batches, no tick beyond what a live sibling
has delivered, no batch while a live sibling is more than the grace behind (the job's event
time is per partition, not per producer: the sibling's points would be late beyond grace).
Found by tests/integration/test_faults.py."""

from __future__ import annotations

import os
import time

from tally import point as points
from tally.agent.sender import Progress, Sender
from tally.agent.spool import Batch, Spool
from tally.agent.worker import siblings_spooling, spool_dir
from tally.config import TallyConfig
from tally.series import series_id
from tests.unit.test_agent import FlakyKafka


def _wait(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_ticks_wait_until_no_sibling_spools(tmp_path):
    log = {"down": False, "delivered": [], "ticks": []}
    held = {"on": True}
    sender = Sender(Spool(tmp_path, 10**6), lambda: FlakyKafka(log), {}, retry_seconds=0.2,
                    hold_ticks=lambda: held["on"])
    sender.start()
    sender.submit(Batch([(1, b"{}")]), 1000)
    _wait(lambda: log["delivered"] == [1])
    time.sleep(0.1)
    assert log["ticks"] == []  # delivered, but the tick is held
    held["on"] = False
    sender.submit(Batch([(2, b"{}")]), 2000)
    _wait(lambda: log["ticks"] == [2000])  # the newest tick once released
    sender.stop()


def test_siblings_spooling_looks_at_the_other_workers_spools_on_disk(tmp_path):
    cfg = TallyConfig(home=tmp_path, agent_workers=3)
    assert not siblings_spooling(cfg, 0)
    Spool(spool_dir(cfg, 2), 10**6).append(Batch([(1, b"{}")], {}))
    assert siblings_spooling(cfg, 0) and siblings_spooling(cfg, 1)
    assert not siblings_spooling(cfg, 2)  # its own spool is the Sender's business


def _point(seq: int, ts_ms: int) -> tuple[int, bytes]:
    """A (key, encoded point) pair keyed by seq, which FlakyKafka logs as delivered."""
    s = series_id("t", "m", {})
    return seq, points.encode(points.from_value(s, "c", ts_ms, 1.0, "p", seq))


def _sibling(tmp_path, workers=2):
    """Worker 1's view of the progress board and a handle to write as worker 0."""
    return Progress(tmp_path / "progress", 1, workers, stale_seconds=1.0), Progress(tmp_path / "progress", 0, workers)


def test_progress_reads_live_siblings_only(tmp_path):
    mine, sibling = _sibling(tmp_path, workers=3)
    assert mine.siblings_through() is None  # nobody wrote yet
    sibling.publish(5000)
    Progress(tmp_path / "progress", 2, 3).publish(7000)
    mine.publish(1000)  # its own file is not a sibling's
    assert mine.siblings_through() == 5000
    old = time.time() - 5
    os.utime(tmp_path / "progress" / "worker-0", (old, old))
    assert mine.siblings_through() == 7000  # worker 0 went stale: it no longer holds the others
    sibling.refresh()
    assert mine.siblings_through() == 5000


def test_batch_waits_for_a_sibling_more_than_the_grace_behind(tmp_path):
    log = {"down": False, "delivered": [], "ticks": []}
    stats = {}
    mine, sibling = _sibling(tmp_path)
    sibling.publish(10_000)
    sender = Sender(Spool(tmp_path / "spool", 10**6), lambda: FlakyKafka(log), stats, retry_seconds=0.2,
                    progress=mine, grace_ms=2000)
    sender.start()
    sender.submit(Batch([_point(1, 12_000)]), 13_000)  # needs the sibling through 13 s - 1 s - grace = 10 s: ok
    _wait(lambda: log["delivered"] == [1])
    sender.submit(Batch([_point(2, 13_000)]), 14_000)  # needs 11 s: waits
    time.sleep(0.4)
    assert log["delivered"] == [1]
    # waiting, it says everything before the held batch's first second is delivered
    assert (tmp_path / "progress" / "worker-1").read_text() == "13000"
    assert log["ticks"] == [10_000]  # the tick after batch 1 stopped at the sibling's progress
    sibling.publish(11_000)
    _wait(lambda: log["delivered"] == [1, 2])
    _wait(lambda: log["ticks"][-1] == 11_000)
    sender.stop()
    assert stats["sibling_waits"] == 1 and stats["sibling_wait_seconds"] >= 0.4


def test_a_stale_sibling_stops_holding_batches(tmp_path):
    log = {"down": False, "delivered": [], "ticks": []}
    mine, sibling = _sibling(tmp_path)
    sibling.publish(1000)
    sender = Sender(Spool(tmp_path / "spool", 10**6), lambda: FlakyKafka(log), {}, retry_seconds=0.2,
                    progress=mine, grace_ms=2000)
    sender.start()
    t0 = time.monotonic()
    sender.submit(Batch([_point(1, 59_000)]), 60_000)
    _wait(lambda: log["delivered"] == [1], timeout_s=5)
    assert time.monotonic() - t0 >= 0.5  # held until the sibling's file was a second old
    sender.stop()


def test_replay_publishes_each_batch_tick_and_spool_keeps_it(tmp_path):
    log = {"down": True, "delivered": [], "ticks": []}
    mine, _ = _sibling(tmp_path)
    spool = Spool(tmp_path / "spool", 10**6)
    sender = Sender(spool, lambda: FlakyKafka(log), {}, retry_seconds=0.2, progress=mine)
    started_ms = int(time.time()) * 1000
    sender.start()
    sender.submit(Batch([(1, b"{}")]), 4000)
    _wait(lambda: len(spool) == 1)
    assert spool.oldest()[1].tick_ms == 4000  # the tick travels with the spooled batch
    # an empty spool at start: nothing older pending, so the start second; the spooled
    # batch did not move it
    assert int((tmp_path / "progress" / "worker-1").read_text()) in (started_ms, started_ms + 1000)
    log["down"] = False
    _wait(lambda: log["delivered"] == [1])
    _wait(lambda: (tmp_path / "progress" / "worker-1").read_text() == "4000")
    sender.stop()


def test_two_workers_replaying_with_gaps_hold_each_other_in_event_time_order(tmp_path):
    """Worker 0's spool: seconds 100 and 200; worker 1's: second 150 (restart after an
    outage, both files at 100 s).  Worker 0 must not deliver second 200 before worker 1
    delivered 150, and neither may wait for the other until it goes stale."""
    board = tmp_path / "progress"
    delivered = []

    class Logged(FlakyKafka):
        def __init__(self, worker):
            super().__init__({"down": False, "delivered": [], "ticks": []})
            self.worker = worker

        def deliver(self, batch, timeout_s):
            delivered.append((self.worker, batch.tick_ms))

    senders = []
    for worker, seconds in ((0, (100, 200)), (1, (150,))):
        spool = Spool(tmp_path / f"spool-{worker}", 10**6)
        for sec in seconds:
            spool.append(Batch([_point(sec, sec * 1000)], tick_ms=(sec + 1) * 1000))
        progress = Progress(board, worker, 2, stale_seconds=30)
        progress.publish(100_000)
        senders.append(Sender(spool, lambda w=worker: Logged(w), {}, retry_seconds=0.2,
                              progress=progress, grace_ms=2000))
    t0 = time.monotonic()
    for sender in senders:
        sender.start()
    _wait(lambda: (1, 151_000) in delivered)
    senders[1].submit(Batch(), 300_000)  # worker 1's next flush: nothing new, its tick
    _wait(lambda: len(delivered) == 3)
    assert time.monotonic() - t0 < 5  # nobody waited for a stale file (30 s)
    assert delivered.index((1, 151_000)) < delivered.index((0, 201_000))
    assert senders[0].stats["sibling_waits"] == 1
    for sender in senders:
        sender.stop()
