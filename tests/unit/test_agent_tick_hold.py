"""An agent worker sends no watermark tick while a sibling worker still holds spooled
batches (the job's event time is per partition, not per producer: the tick would make the
sibling's replayed points late beyond grace).  Found by tests/integration/test_faults.py."""

from __future__ import annotations

import time

from tally.agent.sender import Sender
from tally.agent.spool import Batch, Spool
from tally.agent.worker import siblings_spooling, spool_dir
from tally.config import TallyConfig
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
