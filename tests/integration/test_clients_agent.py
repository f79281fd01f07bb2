"""Unmodified real StatsD clients -> `tally agent` -> Kafka -> aggregation job -> Cassandra buckets.

The PyPI clients `statsd` (pystatsd 4.0.1) and `datadog` (DogStatsd 0.56.0) send a known
workload to a running agent (2 SO_REUSEPORT workers).  Each round of the workload is sent
inside one 10 s window (seconds 1..7 of it), so the ground truth of every ``buckets_10s`` row
is computed here from the workload alone (tests/integration/truth.py, no tally code):
count, sum, min, max exactly, quantiles from the sketch within 1 %.  The direct Kafka mode
of tally.client.KafkaClient is checked the same way.  Sampled DogStatsD calls go through a
small UDP relay that records what the client really sent, so their truth is exact too.
"""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from tally.agent.process import AgentProcess
from tally.client import KafkaClient
from tally.series import series_id
from tally.sketch import Sketch
from tally.stack.process import free_port
from tests.integration.truth import exact_quantile, expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration
TENANT = "it-clients"


@pytest.fixture(scope="module")
def agent(pipeline, tmp_path_factory):
    cfg, _job = pipeline
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), cfg.points_topic, cfg.series_topic, TENANT,
                        cfg.ports.kafka, grace_seconds=cfg.grace_seconds).start()
    yield cfg, proc
    proc.stop()


class Relay(threading.Thread):
    """UDP relay to the agent that keeps every datagram it forwards."""

    def __init__(self, target_port: int):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.target = ("127.0.0.1", target_port)
        self.seen: list[tuple[float, bytes]] = []  # (arrival time, datagram)
        self.running = True

    def run(self):
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while self.running:
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            self.seen.append((time.time(), data))
            out.sendto(data, self.target)


def wait_window_start(offset_s: float = 1.0) -> int:
    """Sleep until `offset_s` into the next 10 s window; returns the window start (ms)."""
    now = time.time()
    start = (int(now) // 10 + 1) * 10
    time.sleep(start + offset_s - now)
    return start * 1000


def sid(name, tags=()):
    return series_id(TENANT, name, tags).id


def compare(cfg, events, sketches=()):
    """Wait until buckets_10s of the events' series equal the truth; check sketch quantiles."""
    truth = {k: v for k, v in expected_buckets(events).items() if k[0] == "10s"}
    sids = sorted({k[1] for k in truth})

    def got():
        rows = read_buckets(cfg, TENANT, sids, truth)
        rows = {k: r for k, r in rows.items() if k in truth}
        return rows if len(rows) == len(truth) and all(r.count == truth[k]["count"] for k, r in rows.items()) else None

    rows = wait_for(got, timeout_s=150)
    assert rows, f"buckets missing: have {sorted(read_buckets(cfg, TENANT, sids, truth))}, want {sorted(truth)}"
    for key, t in truth.items():
        r = rows[key]
        assert (r.count, r.min, r.max) == (t["count"], t["min"], t["max"]), key
        assert r.sum == pytest.approx(t["sum"], rel=1e-12), key
        if key[1] in sketches:
            sketch = Sketch.from_bytes(r.sketch)
            for q in (0.5, 0.9, 0.99):
                assert sketch.quantile(q) == pytest.approx(exact_quantile(t["values"], q), rel=0.01), (key, q)


def test_pystatsd_and_dogstatsd_workloads_give_exact_buckets(agent):
    import statsd
    from datadog.dogstatsd import DogStatsd

    cfg, proc = agent
    rng = random.Random(4)
    py = statsd.StatsClient("127.0.0.1", proc.statsd_port, prefix="pystatsd")
    relay = Relay(proc.statsd_port)
    relay.start()
    dd = DogStatsd(host="127.0.0.1", port=relay.port, disable_telemetry=True, constant_tags=["env:it"])
    events = []  # (sid, ts_ms, value, weight)
    gauge_now = 0.0
    sketch_sids = {sid("pystatsd_latency"), sid("dd_size", {"env": "it", "route": "/a"}),
                   sid("dd_payload", {"env": "it"}), sid("dd_render", {"env": "it"})}
    for _round in range(3):
        w = wait_window_start()
        for i in range(40):
            v = rng.randint(1, 9)
            py.incr("requests", v)
            events.append((sid("pystatsd_requests"), w, float(v), 1.0))
            ms = rng.randint(1, 500)
            py.timing("latency", ms)
            events.append((sid("pystatsd_latency"), w, float(ms), 1.0))
        gauge_now = 50.0
        py.gauge("temperature", 50)
        for delta in (5, -3, 7):
            py.gauge("temperature", delta, delta=True)
        for value in (50.0, 55.0, 52.0, 59.0):
            events.append((sid("pystatsd_temperature"), w, value, 1.0))
        with py.pipeline() as pipe:  # one datagram: one arrival second for the set
            for user in ("ann", "bob", "ann", "cid", "bob"):
                pipe.set("visitors", user)
        events.append((sid("pystatsd_visitors"), w, 3.0, 1.0))

        for i in range(60):
            dd.increment("dd.hits", rng.randint(1, 3) if i % 2 else 1, tags=["route:/a"])
            dd.histogram("dd.size", rng.lognormvariate(5, 1), tags=["route:/a"])
            dd.distribution("dd.payload", rng.randint(100, 100_000))
            dd.timing("dd.render", rng.uniform(0.5, 80))
            dd.gauge("dd.conns", i)
            dd.increment("dd.sampled", 2, sample_rate=0.5)
        # |T: the point lands in that second, not the arrival one (1 s ahead: past seconds that
        # the agent's watermark ticks already closed would be late for the job, by design).
        dd.count_with_timestamp("dd.backfill", 7, timestamp=int(time.time()) + 1, tags=["src:replay"])
        dd.flush()
        time.sleep(0.5)
        assert time.time() * 1000 < w + 8_000, "round overran its 10 s window"
    time.sleep(1)
    relay.running = False
    py.close()
    dd.close_socket()

    # DogStatsD truth from what the client really sent (it samples: this checks the weighting);
    # a line without |T belongs to the 10 s window it was relayed in.
    names = {"dd.hits": ("dd_hits", {"env": "it", "route": "/a"}), "dd.size": ("dd_size", {"env": "it", "route": "/a"}),
             "dd.payload": ("dd_payload", {"env": "it"}), "dd.render": ("dd_render", {"env": "it"}),
             "dd.conns": ("dd_conns", {"env": "it"}), "dd.sampled": ("dd_sampled", {"env": "it"}),
             "dd.backfill": ("dd_backfill", {"env": "it", "src": "replay"})}
    sampled_sent = 0
    rounds = set()
    for arrived, data in relay.seen:
        for ln in data.decode().split("\n"):
            if not ln:
                continue
            name, rest = ln.split(":", 1)
            value, mtype, *fields = rest.split("|")
            rate = next((float(f[1:]) for f in fields if f.startswith("@")), 1.0)
            ts = next((int(f[1:]) * 1000 for f in fields if f.startswith("T")), None)
            window = int(arrived) // 10 * 10_000
            rounds.add(window)
            n, tags = names[name]
            weight = 1.0 / rate if mtype in ("c", "ms", "h", "d") else 1.0
            sampled_sent += name == "dd.sampled"
            events.append((sid(n, tags), window if ts is None else ts, float(value), weight))
    assert len(rounds) == 3
    assert 0 < sampled_sent < 180  # sampling happened in the client
    compare(cfg, events, sketch_sids)

    # The sampled counter: weighted by 1/rate, summed over the rounds.
    sampled = sid("dd_sampled", {"env": "it"})
    rows = read_buckets(cfg, TENANT, [sampled], [("10s", sampled, r) for r in rounds])
    assert sum(r.count for r in rows.values()) == 2.0 * sampled_sent
    assert sum(r.sum for r in rows.values()) == 4.0 * sampled_sent

    m = proc.metrics()
    assert m["tally_agent_received_lines_total"] == m["tally_agent_parsed_lines_total"]
    assert m["tally_agent_points_flushed_total"] > 0


def test_bad_lines_are_rejected_and_counted_while_good_ones_arrive(agent):
    cfg, proc = agent
    before = proc.metrics()
    w = wait_window_start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"good.one:4|c\nbad.one:x|c\nno_type:1\ngood.one:6|c|#\n_e{1,1}:a|b\ngood.one:5|c", ("127.0.0.1", proc.statsd_port))
    compare(cfg, [(sid("good_one"), w, 4.0, 1.0), (sid("good_one"), w, 5.0, 1.0)])
    after = proc.metrics()
    rejected = {k: after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("tally_agent_rejected")}
    assert rejected == {'tally_agent_rejected_lines_total{reason="bad_value"}': 1,
                        'tally_agent_rejected_lines_total{reason="no_type"}': 1,
                        'tally_agent_rejected_lines_total{reason="bad_tags"}': 1,
                        'tally_agent_rejected_lines_total{reason="event"}': 1}


def test_tally_client_over_tcp_and_unix_socket_and_direct_kafka(agent):
    from tally.client import StatsClient, TCPTransport, UnixTransport

    cfg, proc = agent
    w = wait_window_start()
    tcp = StatsClient(transport=TCPTransport("127.0.0.1", proc.statsd_port), flush_interval_seconds=0)
    unix = StatsClient(transport=UnixTransport(proc.home / "data" / "agent" / "statsd.sock"), flush_interval_seconds=0)
    kafka = KafkaClient(cfg, tenant=TENANT)
    events = []
    for i in range(1, 21):
        tcp.incr("via.tcp", i)
        unix.timing("via.unix", i * 1.5)
        kafka.incr("via.kafka", i, tags={"mode": "direct"})
        kafka.distribution("via.kafka.dist", i * 10.0)
        events += [(sid("via_tcp"), w, float(i), 1.0), (sid("via_unix"), w, i * 1.5, 1.0),
                   (sid("via_kafka", {"mode": "direct"}), w, float(i), 1.0), (sid("via_kafka_dist"), w, i * 10.0, 1.0)]
    for c in (tcp, unix, kafka):
        c.close()
    assert time.time() * 1000 < w + 8_000
    assert tcp.stats()["dropped_lines"] == unix.stats()["dropped_lines"] == 0
    assert kafka.stats()["dropped_points"] == 0 and kafka.stats()["sent_points"] >= 2
    # The direct Kafka client's watermark ticks stop when it closes: the agent's keep time moving.
    compare(cfg, events, {sid("via_unix"), sid("via_kafka_dist")})
