"""Kafka down for 60 s under load: the agent spools, replays in order, every point arrives once.

A PRIVATE Kafka broker (own TALLY_HOME and ports, started and stopped through the project's
launcher; the shared stack is never touched) receives the agent's points.  A steady StatsD
load runs while the broker is stopped for 60 s and started again.  Then the private topic is
read back and the job's deduplication rule is applied to it (per producer id and partition,
a record counts only if its seq is above every seq seen before it): every sequence number
each worker stamped must count exactly once, and the counted points must add up to exactly
the lines sent.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections import defaultdict

import pytest

from tally.agent.process import AgentProcess
from tally.producer import ensure_topic
from tally.stack import launcher
from tally.stack.process import free_port

pytestmark = pytest.mark.integration
OUTAGE_S = 60


@pytest.fixture(scope="module")
def private_kafka(stack_cfg, tmp_path_factory):
    home = tmp_path_factory.mktemp("kafka-home")
    (home / "cache").symlink_to(stack_cfg.cache_dir)  # reuse the stack's downloaded jars
    cfg = dataclasses.replace(stack_cfg, home=home, points_topic="tally.outage.points",
                              series_topic="tally.outage.series",
                              ports=dataclasses.replace(stack_cfg.ports, kafka=free_port(),
                                                        kafka_controller=free_port()))
    launcher.up(cfg, ["kafka"], timeout_s=120, log=lambda _msg: None)
    try:
        yield cfg
    finally:
        launcher.down(cfg, ["kafka"], log=lambda _msg: None)


class Load(threading.Thread):
    """A steady StatsD load: 10-line datagrams of counters (value 1) over 40 series."""

    def __init__(self, port: int, datagrams_per_s: int = 200):
        super().__init__(daemon=True)
        self.port, self.rate = port, datagrams_per_s
        self.sent_lines = 0
        self.running = True

    def run(self):
        # Several source ports, so SO_REUSEPORT spreads the load over the agent's workers.
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        try:
            i = 0
            next_t = time.monotonic()
            while self.running:
                lines = [f"outage.requests:1|c|#shard:{(i + k) % 40}" for k in range(10)]
                socks[i % len(socks)].sendto("\n".join(lines).encode(), ("127.0.0.1", self.port))
                self.sent_lines += len(lines)
                i += 1
                next_t += 1 / self.rate
                time.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            for s in socks:
                s.close()


def _metric_sum(metrics, prefix):
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def test_kafka_outage_of_60s_under_load_loses_and_duplicates_nothing(private_kafka, tmp_path):
    cfg = private_kafka
    for topic in (cfg.points_topic, cfg.series_topic):
        ensure_topic(cfg, topic, cfg.kafka_partitions)
    agent = AgentProcess(tmp_path / "agent", cfg.points_topic, cfg.series_topic, "it-outage",
                         cfg.ports.kafka).start()
    load = Load(agent.statsd_port)
    try:
        load.start()
        time.sleep(10)
        assert _metric_sum(agent.metrics(), "tally_agent_points_flushed_total") > 0

        launcher.down(cfg, ["kafka"], log=lambda _msg: None)
        time.sleep(OUTAGE_S)
        during = agent.metrics()
        assert _metric_sum(during, "tally_agent_points_spooled_total") > 0
        assert _metric_sum(during, "tally_agent_kafka_up{") == 0
        assert _metric_sum(during, "tally_agent_spool_batches{") > 0

        launcher.up(cfg, ["kafka"], timeout_s=120, log=lambda _msg: None)
        time.sleep(10)
        load.running = False
        load.join()

        def drained():
            m = agent.metrics()
            return _metric_sum(m, "tally_agent_spool_batches{") == 0 and \
                m["tally_agent_received_lines_total"] >= load.sent_lines
        deadline = time.monotonic() + 90
        while not drained():
            assert time.monotonic() < deadline, f"spool not drained: {agent.metrics()}"
            time.sleep(1)
    finally:
        load.running = False
        agent.stop()

    records = _consume(cfg)
    counted, duplicates = _dedup(records)
    seqs = defaultdict(set)
    for pid, seq, _count in counted:
        seqs[pid].add(seq)
    assert seqs  # one producer id per worker that received load
    for pid, got in seqs.items():
        assert got == set(range(1, max(got) + 1)), f"{pid}: missing seqs {sorted(set(range(1, max(got) + 1)) - got)[:20]}"
    total = sum(count for _pid, _seq, count in counted)
    assert total == load.sent_lines, (total, load.sent_lines, duplicates)
    print(f"outage test: {load.sent_lines} lines sent, {len(counted)} points counted once, "
          f"{duplicates} replayed duplicates dropped by the dedup rule")


def _consume(cfg):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(cfg.points_topic, bootstrap_servers=cfg.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        return [(m.partition, m.offset, json.loads(m.value)) for m in consumer]
    finally:
        consumer.close()


def _dedup(records):
    """The job's rule: per (pid, partition) in offset order, keep a point only if its seq is
    above every seq seen before; ticks are never deduplicated (and carry no data)."""
    highest: dict[tuple[str, int], int] = {}
    counted, duplicates = [], 0
    for partition, _offset, p in sorted(records, key=lambda r: (r[0], r[1])):
        if p["type"] == "w":
            continue
        key = (p["pid"], partition)
        if p["seq"] <= highest.get(key, 0):
            duplicates += 1
            continue
        highest[key] = p["seq"]
        counted.append((p["pid"], p["seq"], p["count"]))
    return counted, duplicates
