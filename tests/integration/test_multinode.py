"""Multi-node topology on one machine under load: kill -9 one Cassandra node and one Kafka
broker, ingestion and queries go on, the job keeps running with parallelism 2, and every
1 s / 10 s / 1 m bucket equals an independent ground truth afterwards (no point lost, none
counted twice).

The stack is a private one started through the launcher (tally.stack.topology "multi":
3 Cassandra nodes on 127.0.0.1-3 with RF 3 and QUORUM, 3 KRaft brokers with replication 3
and min.insync.replicas 2, a JobManager and 2 TaskManagers), with its own home and ports
beside the shared single-node stack.  It takes minutes (three JVM nodes bootstrap one at a
time on 2 shared cores), so the test is marked ``slow`` and runs when selected:

    .venv/bin/python -m pytest -m slow tests/integration/test_multinode.py -s

It prints its figures (nodes, load, points, buckets compared, recovery, query latency).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tally import jobctl
from tally import point as points
from tally.producer import PointProducer
from tally.series import series_id
from tally.stack import launcher, topology
from tally.tiers import DEFAULT_TIERS, partition_start_ms
from tests.integration.faults_support import kill9
from tests.integration.truth import expected_buckets, read_buckets, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT_BASE = 28000  # the CLI's multi-node default is 29000: a user's multi stack can stay up
TENANT = "mn"
METRIC = "mn_load"
SERIES = 40
STEP_S = 0.1  # one point per series every STEP_S: SERIES / STEP_S points/s
KILL_AT_S = 25.0  # at the earliest; later if the pipeline is not yet answering for every series
AFTER_KILL_S = 55.0  # load after the kill
WARM_TIMEOUT_S = 240.0
COMPARED_TIERS = ("1s", "10s", "1m")


def _selected_explicitly(request) -> bool:
    return "slow" in (request.config.getoption("markexpr") or "")


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """(config, job id, api url, startup seconds): the multi-node stack with the job running."""
    if not _selected_explicitly(request):
        pytest.skip("slow (multi-node stack, 8 to 15 min): run with `pytest -m slow tests/integration/test_multinode.py`")
    home = tmp_path_factory.mktemp("multinode")
    cfg = topology.multi_config({}, home=home, port_base=PORT_BASE)
    t0 = time.monotonic()
    try:
        launcher.up(cfg, timeout_s=600)
        startup_s = time.monotonic() - t0
        job_cfg = dataclasses.replace(cfg, grace_seconds=2, source_idle_timeout_seconds=0,
                                      checkpoint_interval_seconds=5)
        assert job_cfg.job_parallelism == 2
        # Topics (replication 3) and keyspace (RF 3) from this config: jobctl.submit prepares
        # them from the job's flags and the calling process' TALLY_* environment, which here is
        # the shared single-node stack's (replication 1); what exists already is kept.
        jobctl.prepare(job_cfg)
        job_id = jobctl.submit(cfg, "aggregate", jobctl.job_flags(job_cfg), wait_running_s=400)
        assert _replication(job_cfg) == (3, 3)
        # The query API as a user runs it, reading every bucket from Cassandra (QUORUM).
        env = dict(os.environ, **topology.stack_env(cfg), TALLY_GRACE_SECONDS="2")
        log = home / "api.log"
        with open(log, "wb") as out:
            api = subprocess.Popen([str(Path(sys.executable).with_name("tally")), "api", "--no-redis"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://{cfg.host}:{cfg.ports.api}"
        try:
            assert wait_for(lambda: _get(url, "/api/v1/status/buildinfo")[0] == 200, timeout_s=60, interval_s=0.5), \
                log.read_text()
            yield job_cfg, job_id, url, startup_s
        finally:
            api.terminate()
            api.wait(timeout=15)
    finally:
        launcher.down(cfg)


def _get(url: str, path: str, params=None, timeout_s: float = 30):
    req = urllib.request.Request(url + path + ("?" + urllib.parse.urlencode(params) if params else ""),
                                 headers={"X-Scope-OrgID": TENANT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError as exc:
        return 0, {"error": str(exc)}


def _kafka_leaders(cfg) -> dict[int, int]:
    """{partition: leader node id} of the points topic."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="tally-test")
    try:
        (topic,) = admin.describe_topics([cfg.points_topic])
    finally:
        admin.close()
    return {p["partition_index"]: p["leader_id"] for p in topic["partitions"]}


def _replication(cfg) -> tuple[int, int]:
    """(replicas of every points-topic partition, keyspace replication factor)."""
    from kafka import KafkaAdminClient

    from tally.cql import connect

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="tally-test")
    try:
        (topic,) = admin.describe_topics([cfg.points_topic])
    finally:
        admin.close()
    (kafka_rf,) = {len(p["replica_nodes"]) for p in topic["partitions"]}
    cluster, session = connect(cfg)
    try:
        row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                              (cfg.keyspace,)).one()
    finally:
        cluster.shutdown()
    return kafka_rf, int(row.replication["replication_factor"])


def _flink(cfg, path: str):
    with urllib.request.urlopen(f"{cfg.flink_rest_url}{path}", timeout=10) as r:
        return json.load(r)


def test_node_failures_under_load_lose_nothing(cluster):
    cfg, job_id, url, startup_s = cluster
    sids = [series_id(TENANT, METRIC, {"host": f"h{i:02d}"}) for i in range(SERIES)]
    rng = np.random.default_rng(7)
    events: list[tuple[int, int, float, float]] = []
    ack_latency: list[tuple[float, float]] = []  # (send time, seconds to the broker's ack)
    errors: list[str] = []
    probe_errors: list[str] = []  # the test's own freshness reads (driver, QUORUM), reported
    dq: list[tuple[float, object, object]] = []  # (t, event-time lag s, Kafka consumer lag records)
    queries: list[tuple[float, float, int, object]] = []  # (t, latency s, status, value)
    freshness: list[tuple[float, float]] = []  # (t, s from the newest stored 1 s bucket's end to now)
    stop = threading.Event()

    def query_loop():
        """Every second: the query API (Cassandra reads), and how fresh the stored buckets are."""
        from tally.cql import connect

        cluster_, session = connect(cfg)
        tier = next(t for t in DEFAULT_TIERS if t.name == "1s")
        stmt = f"SELECT max(ts) AS ts FROM {cfg.keyspace}.buckets_1s WHERE tenant = %s AND sid = %s AND part = %s"
        try:
            while not stop.is_set():
                t = time.monotonic()
                status, body = _get(url, "/api/v1/query", {"query": f"count({METRIC})", "nocache": "1"})
                value = None
                if status == 200 and body["data"]["result"]:
                    value = float(body["data"]["result"][0]["value"][1])
                queries.append((t, time.monotonic() - t, status, value))
                if len(queries) % 5 == 1:  # the data-quality report: where a delay comes from
                    status, body = _get(url, "/api/v1/tally/dq")
                    if status == 200:
                        data = body.get("data") or {}
                        dq.append((t, data.get("event_time_lag_seconds"), data.get("kafka_consumer_lag_records")))
                now_ms = int(time.time() * 1000)
                part = partition_start_ms(now_ms, tier)
                try:
                    newest = [session.execute(stmt, (TENANT, sids[0].id, p)).one().ts for p in (part, part - tier.partition_ms)]
                    newest = max((n for n in newest if n is not None), default=None)
                    if newest is not None:
                        freshness.append((t, (now_ms - newest - 1000) / 1000))
                except Exception as exc:  # a probe read failing is recorded, not fatal here
                    probe_errors.append(f"{time.monotonic() - t:.1f}s {exc!r}")
                stop.wait(max(0.0, 1.0 - (time.monotonic() - t)))
        finally:
            cluster_.shutdown()

    def acked(sent_at):
        return lambda _meta: ack_latency.append((sent_at, time.monotonic() - sent_at))

    producer = PointProducer(cfg)
    querier = threading.Thread(target=query_loop, daemon=True)
    killed: dict[str, float] = {}
    victims: dict[str, str] = {}
    step = 0
    last_tick = 0.0
    start = time.monotonic()
    querier.start()
    try:
        while not killed or time.monotonic() < min(killed.values()) + AFTER_KILL_S:
            elapsed = time.monotonic() - start
            # The fault comes once the query API answers for every series: on busy cores the
            # job can take longer than KILL_AT_S to store its first buckets.
            warm = any(q[3] == SERIES for q in queries)
            assert warm or elapsed < WARM_TIMEOUT_S, f"no complete answer from the query API in {elapsed:.0f} s"
            if not killed and elapsed >= KILL_AT_S and warm:
                leaders = list(_kafka_leaders(cfg).values())
                broker = max(set(leaders), key=leaders.count)
                victims = {"kafka": f"kafka-{broker}", "cassandra": "cassandra-1"}
                for name in victims.values():
                    kill9(cfg, name)
                    killed[name] = time.monotonic()
            ts = int(time.time() * 1000)
            for sid in sids:
                value = float(rng.integers(0, 1000))
                producer.register(sid, "g")
                point = points.from_value(sid, "g", ts, value, producer.producer_id, producer.next_seq())
                future = producer.send(point, validate=False)
                future.add_callback(acked(time.monotonic()))
                future.add_errback(lambda exc: errors.append(f"point: {exc!r}"))
                events.append((sid.id, ts, value, 1.0))
            step += 1
            if time.monotonic() - last_tick >= 1.0:
                for f in producer.tick(ts + 1):
                    f.add_errback(lambda exc: errors.append(f"tick: {exc!r}"))
                last_tick = time.monotonic()
            time.sleep(max(0.0, start + step * STEP_S - time.monotonic()))
        load_s = time.monotonic() - start
        producer.flush(timeout_s=120)
        last_ts = max(e[1] for e in events)
        closing = producer.tick(last_ts + 61_000 + 2_000)  # closes every 1 m window of the load
        producer.flush(timeout_s=120)
        producer.close()
        assert all(f.succeeded() for f in closing), [f.exception for f in closing if f.failed()]
        assert killed, "the load ended before the fault"
        # Ingestion went on: every point and tick was acknowledged (acks=all, 2 of 3 in sync).
        assert len(ack_latency) == len(events) and not errors, (len(ack_latency), len(events), errors[:5])

        # Ground truth: every point sent, aggregated independently of the job.
        truth = {k: v for k, v in expected_buckets(events).items() if k[0] in COMPARED_TIERS}
        sid_ints = [s.id for s in sids]

        def stored():
            rows = read_buckets(cfg, TENANT, sid_ints, truth)
            return rows if sum(1 for k in rows if k[0] in COMPARED_TIERS) >= len(truth) else None

        wait_start = time.monotonic()
        wait_for(stored, timeout_s=300, interval_s=5)
        drain_s = time.monotonic() - wait_start
    finally:
        stop.set()
        querier.join(timeout=60)
    rows = read_buckets(cfg, TENANT, sid_ints, truth)
    got = {k: (r.count, r.sum, r.min, r.max, r.last) for k, r in rows.items() if k[0] in COMPARED_TIERS}
    want = {k: (t["count"], t["sum"], t["min"], t["max"], t["last"]) for k, t in truth.items()}
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    wrong = [(k, got[k], want[k]) for k in sorted(set(got) & set(want)) if got[k] != want[k]][:5]
    assert not missing and not extra and not wrong, (len(set(want) - set(got)), missing, extra, wrong)

    # The job survived, parallelism 2 over the 2 TaskManagers.
    job = _flink(cfg, f"/jobs/{job_id}")
    assert job["state"] == "RUNNING"
    parallelism = sorted({v["parallelism"] for v in job["vertices"]})
    assert max(parallelism) == 2, parallelism
    assert all(v["status"] == "RUNNING" for v in job["vertices"]), [(v["name"], v["status"]) for v in job["vertices"]]
    tms = _flink(cfg, "/taskmanagers")["taskmanagers"]
    assert len(tms) == 2
    restarts = _flink(cfg, f"/jobs/{job_id}/metrics?get=numRestarts")
    restarts = int(float(restarts[0]["value"])) if restarts else "?"

    # Queries went on through the fault, with the right answer.
    kill_t = min(killed.values())
    warm_t = min(q[0] for q in queries if q[3] == SERIES)
    before = [q for q in queries if q[0] < kill_t]
    after = [q for q in queries if q[0] >= kill_t]
    failed = [q for q in after if q[2] != 200]
    assert before and after and not failed, failed[:5]
    assert all(q[3] == SERIES for q in after), [q for q in after if q[3] != SERIES][:5]

    # Recovery: ingestion (the longest wait for an ack of a point sent after the kill) and
    # the pipeline (until the newest stored bucket is as fresh as before the fault for good).
    ack_after = [lat for sent, lat in ack_latency if sent >= kill_t]
    ack_before = [lat for sent, lat in ack_latency if sent < kill_t]
    lag_before = [lag for t, lag in freshness if t < kill_t]
    lag_after = [(t, lag) for t, lag in freshness if t >= kill_t]
    assert lag_before and lag_after, "no stored bucket seen before or after the fault"
    threshold = max(lag_before) + 1.0
    late_probes = [t for t, lag in lag_after if lag > threshold]
    recover_s = (late_probes[-1] + 1.0 - kill_t) if late_probes else 0.0

    def dq_range(index, pick):
        values = [d[index] for d in dq if d[index] is not None and pick(d[0])]
        return f"{min(values):.1f}..{max(values):.1f}" if values else "n/a"

    def ms(values, q):
        return f"{np.quantile(values, q) * 1000:.0f} ms"

    per_tier = ", ".join(f"{t} {sum(1 for k in truth if k[0] == t)}" for t in COMPARED_TIERS)
    print(f"\nmulti-node figures: 3 Cassandra nodes (RF 3, QUORUM), 3 Kafka brokers (replication 3, "
          f"min.insync.replicas 2), Flink JobManager + {len(tms)} TaskManagers, job parallelism 2; "
          f"stack start-up {startup_s:.0f} s")
    print(f"  load: {len(events)} points, {SERIES} series, {load_s:.1f} s = {len(events) / load_s:.0f} points/s; "
          f"kill -9 of {victims['cassandra']} and {victims['kafka']} (leader of most points partitions) "
          f"at {kill_t - start:.1f} s (query API complete for every series from {warm_t - start:.1f} s)")
    print(f"  ingestion: every point acknowledged; ack latency before the fault p50 {ms(ack_before, 0.5)} "
          f"max {ms(ack_before, 1)}, after p50 {ms(ack_after, 0.5)} max {ms(ack_after, 1)}")
    print(f"  buckets compared with the ground truth: {len(truth)} ({per_tier}): all equal, none missing, "
          f"none extra (stored {drain_s:.0f} s after the load)")
    print(f"  job: RUNNING, every task running, operator parallelism {parallelism}, 2 TaskManagers, "
          f"{restarts} restart(s)")
    print(f"  time to recover: freshness of the newest stored 1 s bucket {statistics.median(lag_before):.1f} s "
          f"before the fault (max {max(lag_before):.1f} s), worst {max(lag for _, lag in lag_after):.1f} s after; "
          f"back within {threshold:.1f} s for good {recover_s:.0f} s after the kill; "
          f"{len(probe_errors)} freshness reads failed {probe_errors[:2]}; data-quality report before/after the "
          f"fault: event-time lag {dq_range(1, lambda t: t < kill_t)} / {dq_range(1, lambda t: t >= kill_t)} s, "
          f"Kafka consumer lag {dq_range(2, lambda t: t < kill_t)} / {dq_range(2, lambda t: t >= kill_t)} records")
    print(f"  machine: load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end (2 shared cores)")
    print(f"  query API count({METRIC}) with Cassandra reads (--no-redis): {len(before)} before the fault "
          f"p50 {ms([q[1] for q in before], 0.5)} max {ms([q[1] for q in before], 1)}; {len(after)} during/after "
          f"p50 {ms([q[1] for q in after], 0.5)} p95 {ms([q[1] for q in after], 0.95)} "
          f"max {ms([q[1] for q in after], 1)}; {len(failed)} failed")
