"""The ingest gateway on the real stack: Debian's Prometheus scrapes a small target and
remote-writes to `tally gateway`; JSON push with exact buckets; Kafka down gives 503.

The gateway runs as its own process (`tally gateway`, configured through TALLY_* variables
like a deployment) against the `pipeline` fixture's private topics, with an API key file.
Ground truth is what the target served (values and the explicit timestamps it attached) and
what the test pushed, aggregated independently by tests/integration/truth.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tally.series import series_id
from tally.stack.process import free_port
from tests.integration.truth import expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration

PROMETHEUS = Path("/usr/bin/prometheus")
KEY = "it-gateway-key-1"
TENANT = "gwtest"
TICK_LAG_S = 5


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def metric_value(text: str, prefix: str) -> float:
    """Sum of the samples of /metrics lines starting with prefix (name{labels...)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


class GatewayProcess:
    """`tally gateway` in a subprocess with the given TALLY_* overrides."""

    def __init__(self, cfg, tmp: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keys = tmp / "keys.yaml"
        keys.write_text(f"keys:\n  - key: {KEY}\n    name: it\n    tenant: {TENANT}\n    permissions: [write]\n")
        self.log = open(tmp / f"gateway-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tally.cli", "gateway"], stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "TALLY_GATEWAY_PORT": str(self.port), "TALLY_API_KEYS_FILE": str(keys),
                 "TALLY_POINTS_TOPIC": cfg.points_topic, "TALLY_SERIES_TOPIC": cfg.series_topic,
                 "TALLY_GATEWAY_TICK_LAG_SECONDS": str(TICK_LAG_S), **env})
        wait_http(self.url + "/-/healthy")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def gateway(pipeline, tmp_path_factory):
    cfg, _job = pipeline
    gw = GatewayProcess(cfg, tmp_path_factory.mktemp("gateway"))
    yield cfg, gw
    gw.stop()


# --- Prometheus → remote_write -----------------------------------------------------------------

class Target:
    """A scrape target serving a gauge and a counter with explicit timestamps (so the truth
    knows each sample's event time) and an untimed gauge, for ``scrapes`` scrapes; then an
    empty page, so Prometheus marks the untimed series stale."""

    def __init__(self, scrapes: int):
        self.scrapes = scrapes
        self.served: list[tuple[int, float, float]] = []  # (ts_ms, gauge, counter)
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = target.page().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self) -> str:
        with self.lock:
            k = len(self.served)
            if k >= self.scrapes:
                return ""
            ts = int(time.time() * 1000)
            if self.served and ts <= self.served[-1][0]:
                ts = self.served[-1][0] + 1
            gauge = 20.0 + (k * 7 % 13) * 0.25
            counter = (self.served[-1][2] if self.served else 1000.0) + (k % 5) + 1
            self.served.append((ts, gauge, counter))
        return ("# TYPE it_room_temperature gauge\n"
                f'it_room_temperature{{room="lab"}} {gauge} {ts}\n'
                "# TYPE it_http_requests_total counter\n"
                f'it_http_requests_total{{code="200"}} {counter} {ts}\n'
                "# TYPE it_untimed gauge\n"
                "it_untimed 42\n")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def prometheus_config(target_port: int, gateway_url: str) -> str:
    return f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: it
    honor_timestamps: true
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
remote_write:
  - url: {gateway_url}/api/v1/write
    authorization:
      credentials: {KEY}
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 500
      min_backoff: 50ms
      max_backoff: 1s
"""


@pytest.mark.skipif(not PROMETHEUS.exists(), reason="Debian's prometheus is installed by ./dev setup")
def test_prometheus_remote_write_gives_exact_buckets(gateway, tmp_path):
    cfg, gw = gateway
    scrapes = 12
    target = Target(scrapes)
    (tmp_path / "prometheus.yml").write_text(prometheus_config(target.port, gw.url))
    prom_log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{free_port()}", "--log.level=warn"],
        stdout=prom_log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: len(target.served) >= scrapes or prom.poll() is not None, 60, 0.5)
        assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        # Everything served was remote-written and acknowledged, and the untimed series went stale.
        assert wait_for(lambda: metric_value(gw.metrics(), f'tally_gateway_stale_markers_skipped_total{{tenant="{TENANT}"')
                        >= 1, 60, 0.5), gw.metrics()
    finally:
        prom.terminate()
        prom.wait(30)
        prom_log.close()
        target.close()
    served = target.served
    assert len(served) == scrapes

    gauge = series_id(TENANT, "it_room_temperature", {"room": "lab", "job": "it", "instance": f"127.0.0.1:{target.port}"})
    counter = series_id(TENANT, "it_http_requests_total",
                        {"code": "200", "job": "it", "instance": f"127.0.0.1:{target.port}"})
    untimed = series_id(TENANT, "it_untimed", {"job": "it", "instance": f"127.0.0.1:{target.port}"})
    events = [(gauge.id, ts, g, 1.0) for ts, g, _ in served] + [(counter.id, ts, c, 1.0) for ts, _, c in served]
    truth = {k: v for k, v in expected_buckets(events).items() if k[0] in ("1s", "10s")}

    def columns(rows):
        return {k: (r.count, r.sum, r.min, r.max, r.last) for k, r in rows.items() if k in truth}

    want = {k: (t["count"], t["sum"], t["min"], t["max"], t["last"]) for k, t in truth.items()}
    assert len(want) >= 2 * (scrapes + 2)  # a 1 s bucket per scrape and 10 s buckets, for both series
    got = wait_for(lambda: (lambda c: c if c == want else None)(
        columns(read_buckets(cfg, TENANT, [gauge.id, counter.id], truth))), timeout_s=120)
    assert got == want, (sorted(set(want.items()) ^ set(columns(read_buckets(cfg, TENANT, [gauge.id, counter.id],
                                                                                  truth)).items()))[:10])

    # The untimed gauge: one sample of 42 per scrape, whatever second Prometheus stamped it with.
    first, last = served[0][0] - 5_000, served[-1][0] + 5_000
    keys = [("1s", untimed.id, t) for t in range(first - first % 1000, last, 1000)]
    rows = read_buckets(cfg, TENANT, [untimed.id], keys)
    ones = [r for (tier, _sid, _ts), r in rows.items() if tier == "1s"]
    assert sum(r.count for r in ones) == scrapes and {r.last for r in ones} == {42.0}

    text = gw.metrics()
    assert metric_value(text, f'tally_gateway_samples_rejected_total{{reason="') == 0
    assert metric_value(text, 'tally_gateway_requests_total{endpoint="write",status="200"') >= 1


# --- JSON push ---------------------------------------------------------------------------------

def test_push_api_gives_exact_buckets(gateway):
    cfg, gw = gateway
    # The next full 10 s window (up to 20 s ahead: within the 5-minute future limit), so no
    # point is behind the job's watermark, which trails the gateway's ticks.
    now = int(time.time() * 1000)
    base = now - now % 10_000 + 10_000
    hosts = ["a", "b"]
    points, events = [], []
    for i in range(40):
        host = hosts[i % 2]
        ts = base + (i * 237) % 10_000
        points.append({"name": "it.push.requests", "tags": {"host": host}, "type": "c", "value": 1 + i % 3,
                       "rate": 0.5, "ts": ts})
        events.append((series_id(TENANT, "it.push.requests", {"host": host}).id, ts, float(1 + i % 3), 2.0))
        points.append({"name": "it.push.queue_depth", "type": "g", "value": float(i), "ts": ts})
        events.append((series_id(TENANT, "it.push.queue_depth", {}).id, ts, float(i), 1.0))
    bad = [{"name": "it push bad", "value": 1}, {"name": "it.push.requests", "value": 1, "ts": now + 3_600_000}]
    status, _, body = post(gw.url + "/api/v1/push", json.dumps({"points": points + bad}).encode(),
                           {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert status == 400, body
    assert body["accepted"] == 80 and body["reasons"] == {"bad_metric_name": 1, "future_timestamp": 1}

    truth = {k: v for k, v in expected_buckets(events).items() if k[0] in ("1s", "10s")}
    want = {k: (t["count"], t["sum"], t["min"], t["max"], t["last"]) for k, t in truth.items()}
    assert len(want) == 3 + len({(e[0], e[1] // 1000) for e in events})  # 3 series x one 10 s window + 1 s buckets
    sids = sorted({e[0] for e in events})

    def columns():
        rows = read_buckets(cfg, TENANT, sids, truth)
        return {k: (r.count, r.sum, r.min, r.max, r.last) for k, r in rows.items() if k in truth}

    got = wait_for(lambda: (lambda c: c if c == want else None)(columns()), timeout_s=120)
    assert got == want, sorted(set(want.items()) ^ set(columns().items()))[:10]


# --- Kafka down ----------------------------------------------------------------------------------

def test_kafka_refusing_connections_gives_503_with_retry_after(pipeline, tmp_path):
    cfg, _job = pipeline
    closed = free_port()  # nothing listens there: a real refused broker connection
    gw = GatewayProcess(cfg, tmp_path, TALLY_KAFKA_PORT=str(closed))
    try:
        started = time.monotonic()
        status, headers, body = post(gw.url + "/api/v1/push", json.dumps({"points": [{"name": "x", "value": 1}]}).encode(),
                                     {"Authorization": f"Bearer {KEY}"})
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "Kafka unavailable" in body["error"] and "nothing of this request was written" in body["error"]
        assert time.monotonic() - started < 10  # refused fast, not after a client timeout
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(gw.url + "/-/ready", timeout=5)
        assert info.value.code == 503
        assert "tally_gateway_kafka_up 0" in gw.metrics()
    finally:
        gw.stop()


def test_kafka_stopped_gives_503_and_every_acknowledged_point_is_in_kafka(stack_cfg, tmp_path):
    """A PRIVATE broker (own TALLY_HOME and ports through the launcher; the shared stack is
    untouched) is stopped under the gateway and started again: while it is down writes get
    503 + Retry-After; every write answered 200 is in the topic afterwards."""
    import dataclasses

    from kafka import KafkaConsumer

    from tally.point import decode as decode_point
    from tally.producer import ensure_topic
    from tally.stack import launcher

    home = tmp_path / "kafka-home"
    home.mkdir()
    (home / "cache").symlink_to(stack_cfg.cache_dir)  # reuse the stack's downloaded jars
    cfg = dataclasses.replace(stack_cfg, home=home, points_topic="tally.gw.outage.points",
                              series_topic="tally.gw.outage.series",
                              ports=dataclasses.replace(stack_cfg.ports, kafka=free_port(), kafka_controller=free_port()))
    quiet = lambda _msg: None  # noqa: E731
    launcher.up(cfg, ["kafka"], timeout_s=120, log=quiet)
    gw = None
    try:
        for topic in (cfg.points_topic, cfg.series_topic):
            ensure_topic(cfg, topic, cfg.kafka_partitions)
        gw = GatewayProcess(cfg, tmp_path, TALLY_KAFKA_PORT=str(cfg.ports.kafka))
        acked: list[float] = []

        def push_value(v: float) -> tuple[int, dict, dict]:
            status, headers, body = post(gw.url + "/api/v1/push",
                                         json.dumps({"points": [{"name": "it.outage", "value": v}]}).encode(),
                                         {"Authorization": f"Bearer {KEY}"})
            if status == 200:
                acked.append(v)
            return status, headers, body

        assert push_value(1.0)[0] == 200
        launcher.down(cfg, ["kafka"], log=quiet)
        statuses = []
        for i in range(3):
            status, headers, body = push_value(100.0 + i)
            statuses.append(status)
            assert status == 503 and int(headers["Retry-After"]) >= 1, body
            assert "nothing of this request was written" in body["error"]
        assert "tally_gateway_kafka_up 0" in gw.metrics()

        launcher.up(cfg, ["kafka"], timeout_s=120, log=quiet)
        deadline = time.monotonic() + 90
        v = 200.0
        while push_value(v)[0] != 200:
            assert time.monotonic() < deadline, "the gateway did not recover after Kafka came back"
            time.sleep(1)
            v += 1
        assert push_value(999.0)[0] == 200

        consumer = KafkaConsumer(cfg.points_topic, bootstrap_servers=cfg.kafka_bootstrap,
                                 auto_offset_reset="earliest")
        stored: list[float] = []
        try:
            deadline = time.monotonic() + 30
            while not set(acked) <= set(stored) and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=1000).values():
                    stored += [p["last"] for p in map(decode_point, (r.value for r in records)) if p["type"] == "g"]
        finally:
            consumer.close()
        assert set(acked) <= set(stored), (acked, stored)
        assert {1.0, 999.0} <= set(acked)
    finally:
        if gw is not None:
            gw.stop()
        launcher.down(cfg, ["kafka"], log=quiet)
