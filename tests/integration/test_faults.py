"""Fault-injection suite: one fault at a time under a steady load, on a PRIVATE stack.

The module starts its own Kafka, Cassandra, Redis and Flink (JobManager + TaskManager)
through the project's launcher, with its own TALLY_HOME and free ports for every component,
and runs the aggregation job on it; the shared stack is never touched.  Each fault gets its
own tenant and its own UTC day of event time (days after tomorrow, so each phase can close
its day: the 1 d bucket is compared too):

  a steady load (Kafka client mode: 150 points/s over 16 counters and one timer, a
  watermark tick every 0.5 s; every point kept as the ground truth) → the fault → recovery
  through the project's own commands → more load → the last tick closes the day → every
  bucket of every tier (1 s .. 1 d) must equal the ground truth computed in the test from
  the points sent (tests/integration/truth.py): nothing lost, nothing counted twice.

Each test prints one ``FAULT`` line: the fault, its recovery time (component healthy again
and every task of the job RUNNING), the time until every bucket equalled the truth, and the
counts compared.  The three slowest faults (TaskManager, JobManager, Cassandra) are marked
``slow`` and run only with ``-m slow``:

    .venv/bin/python -m pytest -s tests/integration/test_faults.py             # CI's part
    .venv/bin/python -m pytest -s -m slow tests/integration/test_faults.py     # the slow faults  The agent's fault uses StatsD lines with ``|T`` timestamps (near the wall
clock, which the agent requires), so it runs first, on today's event time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time

import pytest

from tally import jobctl
from tally.agent.process import AgentProcess
from tally.config import TallyConfig
from tally.producer import PointProducer
from tally.series import series_id
from tally.stack import launcher
from tally.stack.process import free_port
from tests.integration.faults_support import (DAY_MS, Load, compare_with_truth, descendants, job_running, kill9,
                                              private_config, restarts, task_attempts)
from tests.integration.truth import dq_counters, expected_buckets, wait_for

pytestmark = pytest.mark.integration


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(autouse=True)
def _slow_only_when_selected(request):
    """The slowest faults (TaskManager, JobManager, Cassandra: minutes each on 2 shared
    cores) run only with ``-m slow``, like the multi-node test; ``./dev test`` (CI) runs the
    rest of the suite."""
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow fault case: run with `pytest -m slow tests/integration/test_faults.py`")


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    """{"cfg", "job_id"} of a private stack with the aggregation job running."""
    cfg = private_config(TallyConfig.from_env(), tmp_path_factory.mktemp("fault-stack"))
    state = {"cfg": cfg, "job_id": None}
    try:
        took = launcher.up(cfg, timeout_s=480, log=_quiet)
        state["job_id"] = jobctl.submit(cfg, "aggregate", jobctl.job_flags(cfg), wait_running_s=240)
        print(f"\nprivate stack under {cfg.home}: healthy in {took:.0f}s, ports {cfg.ports}", flush=True)
        yield state
    finally:
        try:
            if state["job_id"]:
                jobctl.cancel(cfg, state["job_id"])
        except Exception as exc:  # noqa: BLE001 - the stack goes down anyway
            print(f"cancel failed: {exc}")
        launcher.down(cfg, log=_quiet)


class Days:
    """Whole UTC days of event time, in increasing order, starting the day after tomorrow."""

    def __init__(self):
        now = int(time.time() * 1000)
        self.next_ms = now - now % DAY_MS + 2 * DAY_MS

    def take(self) -> int:
        start = self.next_ms
        self.next_ms += DAY_MS
        return start


@pytest.fixture(scope="module")
def days():
    return Days()


def _report(name: str, recovered_s: float, equal_s: float, figures: dict, extra: str = "") -> None:
    print(f"\nFAULT {name}: recovered in {recovered_s:.1f}s, every bucket equal to the truth "
          f"{equal_s:.1f}s after the fault; {figures['points']} points sent, {figures['buckets']} buckets "
          f"compared over tiers {'/'.join(figures['tiers'])}, total count {figures['count_total']:g}"
          f"{'; ' + extra if extra else ''}", flush=True)


def _wait_job(cfg, job_id, timeout_s=300) -> None:
    assert wait_for(lambda: job_running(cfg, job_id), timeout_s=timeout_s, interval_s=0.5), \
        f"job {job_id} not RUNNING again; see {cfg.log_dir}"


def run_phase(state, days, name: str, tenant: str, inject, warm_s: float = 8, after_s: float = 8) -> dict:
    """Load → inject() (returns {"recovered_s", "extra"}) → load → close the day → compare."""
    cfg = state["cfg"]
    day = days.take()
    load = Load(cfg, tenant, day + 3_600_000)
    load.start()
    time.sleep(warm_s)
    started = time.monotonic()
    try:
        result = inject(load)
        time.sleep(after_s)
    finally:
        load.stop(day + DAY_MS + 5_000)
    figures = compare_with_truth(cfg, tenant, [(s.id, ts, v, 1.0) for s, ts, v in load.events])
    _report(name, result["recovered_s"], time.monotonic() - started, figures, result.get("extra", ""))
    return {**figures, **result}


# --- the agent: kill -9 with a full spool; the restarted agent replays it ------------------

class StatsdLoad(threading.Thread):
    """Counter lines (value 1) over 8 series, each stamped ``|T<second>`` so the test knows
    every line's bucket; ``lines`` is the ground truth ((tags shard, second) per line)."""

    def __init__(self, port: int, datagrams_per_s: int = 100):
        super().__init__(daemon=True)
        self.port, self.rate = port, datagrams_per_s
        self.lines: list[tuple[int, int]] = []
        self.running = True

    def run(self):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            i = 0
            next_t = time.monotonic()
            while self.running:
                sec = int(time.time())
                batch = [((i + k) % 8, sec) for k in range(5)]
                payload = "\n".join(f"fault_agent_requests:1|c|#shard:{shard}|T{sec}" for shard, sec in batch)
                socks[i % len(socks)].sendto(payload.encode(), ("127.0.0.1", self.port))
                self.lines.extend(batch)
                i += 1
                next_t += 1 / self.rate
                time.sleep(max(0.0, next_t - time.monotonic()))
        finally:
            for s in socks:
                s.close()


def _agent_sum(metrics: dict, prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def _kill_tree(pid: int) -> int:
    """SIGKILL a process and everything below it (the agent's workers and senders)."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def test_agent_kill_9_spool_replays_on_restart(fault_stack, tmp_path):
    """The agent's Kafka is unreachable (wrong port), so every flushed batch goes to its disk
    spool; the load pauses until the agent spooled all it received, the agent and all its
    processes are killed -9 and started again on the real broker: the spool replays (same
    producer ids and sequences) and the load goes on.  Every line sent must count once.
    (What is only in the agent's memory when it is killed - lines of the open 1 s window,
    flushed batches queued for its sender process while that one waits on a connection
    attempt - is lost: the agent has no write-ahead log.  A first version killed it 2.5 s
    after the load paused and 19 of 224 buckets came up short; waiting until the spool stops
    growing makes the test about the spool.)"""
    cfg = fault_stack["cfg"]
    tenant = "f-agent"
    home = tmp_path / "agent"
    topics = (cfg.points_topic, cfg.series_topic)
    agent = AgentProcess(home, *topics, tenant, kafka_port=free_port(),  # nothing listens there
                         grace_seconds=cfg.grace_seconds).start()
    load = StatsdLoad(agent.statsd_port)
    load.start()
    time.sleep(10)
    load.running = False
    load.join()

    def flushed_into_spool():
        m = agent.metrics()
        return (m.get("tally_agent_received_lines_total", 0) >= len(load.lines)
                and _agent_sum(m, "tally_agent_points_spooled_total") > 0 and m)
    assert wait_for(flushed_into_spool, timeout_s=30, interval_s=0.5), agent.metrics()
    # Flushed batches reach the disk when the sender is between two connection attempts
    # (retried every 5 s, each blocking until the bootstrap times out): wait until the spool
    # has not grown for 12 s, i.e. nothing is left in memory.
    spooled, stable_since = -1.0, time.monotonic()
    while time.monotonic() - stable_since < 12:
        now_spooled = _agent_sum(agent.metrics(), "tally_agent_points_spooled_total")
        if now_spooled != spooled:
            spooled, stable_since = now_spooled, time.monotonic()
        time.sleep(0.5)
    batches = sorted((home / "data" / "agent" / "spool").glob("worker-*/*.batch"))
    assert batches, "nothing in the spool"
    killed_at = time.monotonic()
    killed = _kill_tree(agent.proc.pid)
    agent.proc.wait()

    restarted = AgentProcess(home, *topics, tenant, kafka_port=cfg.ports.kafka, grace_seconds=cfg.grace_seconds)
    restarted.statsd_port, restarted.http_port = agent.statsd_port, agent.http_port
    restarted.env.update(TALLY_STATSD_PORT=str(agent.statsd_port), TALLY_AGENT_HTTP_PORT=str(agent.http_port))
    restarted.start()
    try:
        def replayed():
            m = restarted.metrics()
            return _agent_sum(m, "tally_agent_spool_batches{") == 0 and _agent_sum(m, "tally_agent_kafka_up{") > 0 and m
        assert wait_for(replayed, timeout_s=120, interval_s=0.5), restarted.metrics()
        recovered_s = time.monotonic() - killed_at
        replayed_points = _agent_sum(restarted.metrics(), "tally_agent_points_replayed_total")
        before = len(load.lines)
        load2 = StatsdLoad(restarted.statsd_port)
        load2.start()
        time.sleep(8)
        load2.running = False
        load2.join()
        assert wait_for(lambda: restarted.metrics().get("tally_agent_received_lines_total", 0) >= len(load2.lines),
                        timeout_s=30, interval_s=0.5)
        time.sleep(3)  # the last flush delivered
        agent_after = {k: v for k, v in restarted.metrics().items()
                       if k.startswith(("tally_agent_batches_failed", "tally_agent_points_", "tally_agent_sibling_"))}
    finally:
        restarted.stop()
    # Close today's day (every later phase works on later days).
    now = int(time.time() * 1000)
    producer = PointProducer(cfg)
    producer.tick(now - now % DAY_MS + DAY_MS + 5_000)
    producer.flush()
    producer.close()

    events = [(series_id(tenant, "fault_agent_requests", {"shard": str(shard)}).id, sec * 1000, 1.0, 1.0)
              for shard, sec in load.lines + load2.lines]
    try:
        figures = compare_with_truth(cfg, tenant, events)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrestarted agent: {agent_after}; job's late counters: "
                             f"{dq_counters(cfg, tenant)}") from None
    _report("agent kill -9 (spool replay)", recovered_s, time.monotonic() - killed_at, figures,
            f"{killed} agent processes killed with {len(batches)} batches / {spooled:g} points spooled; "
            f"{replayed_points:g} points replayed; {before} + {len(load2.lines)} lines sent; batches held for a "
            f"sibling worker {_agent_sum(agent_after, 'tally_agent_sibling_waits_total'):g} "
            f"({_agent_sum(agent_after, 'tally_agent_sibling_wait_seconds_total'):.1f} s)")
    assert figures["count_total"] == len(load.lines) + len(load2.lines)


# --- Kafka, Flink, Cassandra, Redis -----------------------------------------------------

def test_kafka_broker_kill_9(fault_stack, days):
    cfg = fault_stack["cfg"]

    def inject(_load):
        t0 = time.monotonic()
        kill9(cfg, "kafka")
        time.sleep(10)  # down for 10 s under load: producers buffer and retry
        launcher.up(cfg, ["kafka"], timeout_s=180, log=_quiet)
        _wait_job(cfg, fault_stack["job_id"])
        return {"recovered_s": time.monotonic() - t0, "extra": "broker down 10 s"}

    run_phase(fault_stack, days, "Kafka broker kill -9", "f-kafka", inject)


@pytest.mark.slow
def test_taskmanager_kill_9(fault_stack, days):
    cfg = fault_stack["cfg"]
    job_id = fault_stack["job_id"]

    def inject(_load):
        before = restarts(cfg, job_id)
        attempts_before = task_attempts(cfg, job_id)
        assert attempts_before is not None
        t0 = time.monotonic()
        kill9(cfg, "flink-taskmanager")
        launcher.up(cfg, ["flink"], timeout_s=180, log=_quiet)  # the project's command restarts it
        assert wait_for(lambda: job_running(cfg, job_id) and (task_attempts(cfg, job_id) or 0) > attempts_before,
                        timeout_s=300, interval_s=0.5), "job did not restart and recover"
        return {"recovered_s": time.monotonic() - t0,
                "extra": f"job restarted from its checkpoint (task attempts {attempts_before} -> "
                         f"{task_attempts(cfg, job_id)}, numRestarts {before} -> {restarts(cfg, job_id)})"}

    run_phase(fault_stack, days, "Flink TaskManager kill -9", "f-taskmanager", inject)


@pytest.mark.slow
def test_jobmanager_kill_9_job_resumed_from_checkpoint(fault_stack, days):
    cfg = fault_stack["cfg"]

    def inject(_load):
        t0 = time.monotonic()
        kill9(cfg, "flink-jobmanager")
        time.sleep(3)
        launcher.up(cfg, ["flink"], timeout_s=180, log=_quiet)  # a JobManager without the job
        job_id, checkpoint = jobctl.resume(cfg, "aggregate", jobctl.job_flags(cfg))  # `tally job resume`
        assert checkpoint is not None and job_id != fault_stack["job_id"]
        fault_stack["job_id"] = job_id
        _wait_job(cfg, job_id)
        return {"recovered_s": time.monotonic() - t0, "extra": f"resumed as {job_id[:8]} from {checkpoint.parent.name[:8]}/"
                                                               f"{checkpoint.name}"}

    run_phase(fault_stack, days, "Flink JobManager kill -9 + tally job resume", "f-jobmanager", inject)


@pytest.mark.slow
def test_cassandra_stopped_30s(fault_stack, days):
    from tally.api.quality import consumer_lag
    cfg = fault_stack["cfg"]
    job_id = fault_stack["job_id"]

    def inject(_load):
        before = restarts(cfg, job_id)
        t0 = time.monotonic()
        launcher.down(cfg, ["cassandra"], log=_quiet)
        max_lag = 0
        while time.monotonic() - t0 < 30:
            try:
                max_lag = max(max_lag, consumer_lag(cfg)["total"])
            except Exception:  # noqa: BLE001 - a lag probe must not end the outage early
                pass
            time.sleep(2)
        launcher.up(cfg, ["cassandra"], timeout_s=300, log=_quiet)
        _wait_job(cfg, job_id)
        return {"recovered_s": time.monotonic() - t0,
                "extra": f"down 30 s; consumer lag peaked at {max_lag} records (back-pressure); "
                         f"{restarts(cfg, job_id) - before} job restart(s)"}

    run_phase(fault_stack, days, "Cassandra stopped 30 s", "f-cassandra", inject)


def _query_1s(cfg, load, start_ms, end_ms):
    """The 1 s buckets (count, sum) of the load's counter metric as the query API reads them
    (Redis for the recent part, clocked by the load's event time)."""
    from tally.query.store import BucketStore
    from tally.tiers import DEFAULT_TIERS

    store = BucketStore(cfg, clock=lambda: load.now_ms() / 1000.0)

    async def run():
        try:
            metas = await store.series(load.tenant, "fault.work.items")
            return await store.buckets(load.tenant, DEFAULT_TIERS[0], metas, start_ms, end_ms, {"count", "sum"})
        finally:
            await store.close()
    return asyncio.run(run())


def _truth_1s(load, start_ms, end_ms) -> dict:
    """{(tier, sid, bucket start): count} of the load's counter series in [start, end]."""
    from tally.tiers import DEFAULT_TIERS

    counters = {c.id for c in load.counters}  # the queried metric (not the timer)
    truth = expected_buckets([(s.id, ts, v, 1.0) for s, ts, v in load.events
                              if s.id in counters and start_ms <= ts - ts % 1000 <= end_ms], tiers=[DEFAULT_TIERS[0]])
    return {k: v["count"] for k, v in truth.items()}


def _check_1s(load, found, start_ms, end_ms) -> int:
    """Every 1 s bucket the query found equals the truth; returns how many were compared."""
    got = {("1s", sid, int(t)): c for sid, b in found.items() for t, c in zip(b.ts, b.cols["count"])}
    want = _truth_1s(load, start_ms, end_ms)
    missing = [k for k in want if got.get(k) != want[k]]
    assert not missing, f"{len(missing)} of {len(want)} 1 s buckets wrong or missing, e.g. {missing[:3]}"
    return len(want)


def test_redis_stopped_queries_fall_back_and_cache_refills(fault_stack, days):
    """Redis down: the job keeps writing Cassandra (cache writes fail, counted), a query of
    the recent range falls back to Cassandra with a warning and equals the truth; after the
    restart the cache refills with the buckets written since, and a query reading Redis
    again equals the truth for the whole range."""
    import redis

    cfg = fault_stack["cfg"]
    notes = {}

    def inject(load):
        t0 = time.monotonic()
        launcher.down(cfg, ["redis"], log=_quiet)
        time.sleep(12)
        # Buckets already final (event time passed them plus grace): read while Redis is down.
        end = load.now_ms() - 6_000
        end -= end % 1000
        found, warnings = _query_1s(cfg, load, load.base_ms, end)
        assert any("redis unavailable" in w for w in warnings), warnings
        notes["fallback"] = _check_1s(load, found, load.base_ms, end)
        launcher.up(cfg, ["redis"], timeout_s=120, log=_quiet)
        restarted_ms = load.now_ms()
        client = redis.Redis.from_url(cfg.redis_url)
        key = f"{cfg.keyspace}:b:1s:{load.tenant}:{load.counters[0].id}"
        try:
            assert wait_for(lambda: client.zcount(key, restarted_ms, "+inf") > 0, timeout_s=120, interval_s=0.5), \
                "the cache did not refill after the restart"
            refilled = client.zcount(key, restarted_ms, "+inf")
        finally:
            client.close()
        return {"recovered_s": time.monotonic() - t0,
                "extra": f"while Redis was down a query of the recent range fell back to Cassandra and its "
                         f"{notes['fallback']} 1 s buckets equalled the truth; {refilled} new buckets of one "
                         "series in Redis after the restart"}

    result = run_phase(fault_stack, days, "Redis stopped", "f-redis", inject)
    assert result


def test_redis_refusing_writes_the_failed_range_is_read_from_cassandra(fault_stack, days):
    """Redis up but refusing writes (maxmemory reached, noeviction) for a few seconds: the
    sink's write-throughs fail (counted) while the series' keys keep the buckets before and
    get the ones after, so the keys have a hole; once Redis takes writes again the sink marks
    the failed range (schemas/redis.json ``gap``) and a query of the whole recent range, Redis
    part included, equals the truth: it reads the failed range from Cassandra."""
    import redis

    from sinks.redis_cache import bucket_key, gap_key

    cfg = fault_stack["cfg"]

    def inject(load):
        t0 = time.monotonic()
        client = redis.Redis.from_url(cfg.redis_url)
        try:
            policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            try:
                time.sleep(6)
            finally:
                client.config_set("maxmemory", 0)
                client.config_set("maxmemory-policy", policy)
            key = gap_key(cfg.keyspace, "1s", load.tenant)
            assert wait_for(lambda: client.get(key) is not None, timeout_s=60, interval_s=0.5), \
                "the sink did not mark the failed range"
            gap = int(client.get(key))
            # Buckets after the failure reach Redis again, so a key has neighbours on both sides.
            sent = {s.id for s, _, _ in list(load.events)}  # (the load's rotation skips some counters)
            keys = {c.id: bucket_key(cfg.keyspace, "1s", load.tenant, c.id) for c in load.counters if c.id in sent}
            assert wait_for(lambda: all(client.zcount(k, gap + 2_000, "+inf") > 0 for k in keys.values()),
                            timeout_s=60, interval_s=0.5), \
                (f"the cache did not take buckets after the failure: gap {gap}, event time now {load.now_ms()}, "
                 f"newest bucket per key {[client.zrange(k, -1, -1, withscores=True) for k in keys.values()][:4]}")
            end = load.now_ms() - 6_000
            end -= end % 1000
            truth = _truth_1s(load, load.base_ms, end)
            in_redis = {("1s", sid, int(score)) for sid, k in keys.items()
                        for _, score in client.zrangebyscore(k, load.base_ms, end, withscores=True)}
            hole = [k for k in truth if k not in in_redis]
        finally:
            client.close()
        assert hole, "no bucket missing from Redis: the case tests nothing"
        found, warnings = _query_1s(cfg, load, load.base_ms, end)
        assert not warnings, warnings
        compared = _check_1s(load, found, load.base_ms, end)
        return {"recovered_s": time.monotonic() - t0,
                "extra": f"writes refused 6 s; {len(hole)} 1 s buckets missing from Redis keys that hold their "
                         f"neighbours; a query of {compared} 1 s buckets reading Redis equalled the truth"}

    result = run_phase(fault_stack, days, "Redis refusing writes", "f-redis-oom", inject)
    assert result


def test_duplicate_storm_kafka_client_mode(fault_stack, days):
    """The same points (same producer id and sequence numbers) sent three times."""
    cfg = fault_stack["cfg"]
    day = days.take()
    producer = PointProducer(cfg)
    s = series_id("f-dup-kafka", "orders", {"shop": "x"})
    timer = series_id("f-dup-kafka", "latency", {"shop": "x"})
    sent = []
    for i in range(600):
        ts = day + 3_600_000 + i * 300
        sent.append(producer.emit(s if i % 2 else timer, "c" if i % 2 else "ms", ts, float(1 + i % 7)))
    producer.flush()
    for _ in range(2):
        producer.send_all(sent)
    producer.tick(day + DAY_MS + 5_000)
    producer.flush()
    producer.close()
    events = [(p["sid"], p["ts"], p["last"], 1.0) for p in sent]
    figures = compare_with_truth(cfg, "f-dup-kafka", events)
    print(f"\nDUPLICATE STORM Kafka client mode: {len(sent)} points sent 3 times, {figures['buckets']} buckets "
          f"equal to the truth of one copy (total count {figures['count_total']:g})", flush=True)
    assert figures["count_total"] == len(sent)


def test_duplicate_storm_agent_spool_replayed_three_times(fault_stack, days, tmp_path):
    """Three copies of the same spooled batch (same producer id and sequences) in an agent's
    spool: the agent replays all three at start, the job counts them once."""
    import uuid

    from tally import point as points
    from tally.agent.spool import Batch, Spool
    from tally.agent.worker import spool_dir

    cfg = fault_stack["cfg"]
    tenant = "f-dup-spool"
    day = days.take()
    series = [series_id(tenant, "spool.jobs", {"q": str(i)}) for i in range(5)]
    pid = f"storm-spool-{uuid.uuid4().hex[:8]}"
    batch, sent = Batch(), []
    for i in range(500):
        s, ts, v = series[i % 5], day + 3_600_000 + i * 200, float(1 + i % 9)
        batch.points.append((s.id, points.encode(points.from_value(s, "c", ts, v, pid, i + 1))))
        batch.series[s.id] = (s.key, "c")
        sent.append((s.id, ts, v, 1.0))
    home = tmp_path / "agent"
    agent_cfg = TallyConfig(home=home)
    spool = Spool(spool_dir(agent_cfg, 0), 64 * 1024 * 1024)
    for _ in range(3):
        assert spool.append(batch)
    agent = AgentProcess(home, cfg.points_topic, cfg.series_topic, tenant, cfg.ports.kafka,
                         grace_seconds=cfg.grace_seconds).start()
    try:
        m = wait_for(lambda: (lambda m: m if _agent_sum(m, "tally_agent_spool_batches{") == 0
                              and _agent_sum(m, "tally_agent_points_replayed_total") >= 1500 else None)(agent.metrics()),
                     timeout_s=120, interval_s=0.5)
        assert m, agent.metrics()
    finally:
        agent.stop()
    producer = PointProducer(cfg)
    producer.tick(day + DAY_MS + 5_000)
    producer.flush()
    producer.close()
    figures = compare_with_truth(cfg, tenant, sent)
    print(f"\nDUPLICATE STORM agent spool: one batch of {len(sent)} points spooled 3 times, "
          f"{_agent_sum(m, 'tally_agent_points_replayed_total'):g} points replayed, {figures['buckets']} buckets "
          f"equal to the truth of one copy (total count {figures['count_total']:g})", flush=True)
    assert figures["count_total"] == len(sent)


def test_duplicate_storm_gateway_retries_with_idempotency_key(fault_stack, days):
    """The same push and remote_write requests POSTed three times with an Idempotency-Key are
    counted once; without the header a retried push counts again (documented: clients
    that retry must send the key)."""
    import cramjam
    from aiohttp.test_utils import TestClient, TestServer

    from tally.auth import KeyRing
    from tally.gateway.app import Gateway, make_app
    from tally.gateway.writer import PointWriter
    from tally.limits import Limits
    from tests.unit.test_remote_write import pb_request

    cfg = fault_stack["cfg"]
    tenant, plain = "f-dup-gateway", "f-dup-gateway-nokey"
    day = days.take()
    base = day + 3_600_000
    # Each request spans more than the grace (2 s) of event time (the gateway must send it in
    # event-time order: sent series by series, the early points of later series were late
    # beyond grace) and comes after the previous one (an older request would be late).
    push_points = [{"name": "gw_orders", "tags": {"shop": str(i % 4)}, "type": "c", "value": float(1 + i % 5),
                    "ts": base + i * 100} for i in range(300)]
    rw_series = [([("__name__", "gw_temperature"), ("room", str(r))],
                  [(20.0 + (i % 7), base + 35_000 + i * 250) for i in range(40)]) for r in range(5)]
    rw_body = bytes(cramjam.snappy.compress_raw(pb_request(rw_series)))
    push_body = json.dumps({"points": push_points}).encode()
    plain_points = [{**p, "ts": p["ts"] + 50_000} for p in push_points[:20]]
    plain_body = json.dumps({"points": plain_points}).encode()

    async def storm():
        gw = Gateway(cfg=cfg, writer=PointWriter(cfg), keyring=KeyRing.open(), limits=Limits.from_config(cfg),
                     wall_ms=lambda: base + 60_000)  # the gateway's clock in this phase's event time
        statuses = []
        try:
            async with TestClient(TestServer(make_app(gw, ticks=False))) as client:
                for _ in range(3):
                    r = await client.post("/api/v1/push", data=push_body,
                                          headers={"X-Scope-OrgID": tenant, "Idempotency-Key": "push-0001"})
                    statuses.append(r.status)
                    r = await client.post("/api/v1/write", data=rw_body,
                                          headers={"X-Scope-OrgID": tenant, "Idempotency-Key": "rw-0001",
                                                   "Content-Encoding": "snappy",
                                                   "Content-Type": "application/x-protobuf"})
                    statuses.append(r.status)
                for _ in range(2):
                    r = await client.post("/api/v1/push", data=plain_body, headers={"X-Scope-OrgID": plain})
                    statuses.append(r.status)
        finally:
            gw.writer.close()
        return statuses

    statuses = asyncio.run(storm())
    assert statuses == [200] * 8, statuses
    producer = PointProducer(cfg)
    producer.tick(day + DAY_MS + 5_000)
    producer.flush()
    producer.close()
    events = [(series_id(tenant, p["name"], p["tags"]).id, p["ts"], p["value"], 1.0) for p in push_points]
    events += [(series_id(tenant, "gw_temperature", dict(labels[1:])).id, ts, v, 1.0)
               for labels, samples in rw_series for v, ts in samples]
    figures = compare_with_truth(cfg, tenant, events)
    twice = [(series_id(plain, p["name"], p["tags"]).id, p["ts"], p["value"], 1.0) for p in plain_points] * 2
    plain_figures = compare_with_truth(cfg, plain, twice)
    print(f"\nDUPLICATE STORM gateway: push ({len(push_points)} points) and remote_write ({len(rw_series) * 40} "
          f"samples) each POSTed 3 times with an Idempotency-Key: {figures['buckets']} buckets equal to one copy "
          f"(total count {figures['count_total']:g}); a push retried without the key counts twice "
          f"({plain_figures['count_total']:g} for 20 points)", flush=True)
    assert figures["count_total"] == len(events)
    assert plain_figures["count_total"] == 2 * len(plain_points)
