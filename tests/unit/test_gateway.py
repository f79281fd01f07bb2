"""The gateway's HTTP handling against aiohttp's test server: every limit and auth failure
with its status code and message; the Kafka writer is a recording double (the real one is
exercised in tests/integration/test_gateway.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tally.auth import KeyRing
from tally.config import TallyConfig
from tally.gateway.app import Gateway, make_app
from tally.gateway.writer import KafkaUnavailable
from tally.limits import Limits
from tally.series import series_id
from tests.unit.test_remote_write import STALE_NAN, encode_request

NOW = 1_700_000_000_000
RW_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
              "X-Prometheus-Remote-Write-Version": "0.1.0"}
KEYS = {"keys": [{"key": "prom-key-0001", "name": "prom", "tenant": "acme", "permissions": ["write"]},
                 {"key": "read-key-0001", "name": "grafana", "tenant": "acme", "permissions": ["read"]}]}


class RecordingWriter:
    """Stands in for the Kafka writer: keeps what it was asked to write, or fails like it."""

    def __init__(self):
        self.samples, self.ticks, self.fail, self.healthy = [], [], None, True

    async def write(self, samples):
        if self.fail:
            raise self.fail
        self.samples.extend(samples)

    def tick(self, ts_ms):
        self.ticks.append(ts_ms)


def gateway(limits=Limits(), keyring=None, clock=None):
    t = clock or [0.0]
    return Gateway(cfg=TallyConfig(), writer=RecordingWriter(), keyring=keyring or KeyRing.open(), limits=limits,
                   wall_ms=lambda: NOW, monotonic=lambda: t[0])


def call(gw, requests):
    """Run (method, path, kwargs) requests in order; returns [(status, headers, body json|text)]."""
    async def go():
        out = []
        async with TestClient(TestServer(make_app(gw, ticks=False))) as client:
            for method, path, kw in requests:
                resp = await client.request(method, path, **kw)
                text = await resp.text()
                try:
                    body = json.loads(text)
                except ValueError:
                    body = text
                out.append((resp.status, resp.headers, body))
        return out
    return asyncio.run(go())


def rw(series, headers=None, **kw):
    return ("POST", "/api/v1/write", {"data": encode_request(series), "headers": {**RW_HEADERS, **(headers or {})},
                                      **kw})


def push(points, headers=None):
    return ("POST", "/api/v1/push", {"data": json.dumps({"points": points}), "headers": headers or {}})


def one(gw, request):
    return call(gw, [request])[0]


# --- remote_write -------------------------------------------------------------------------

def test_remote_write_samples_become_gauge_samples_of_the_tenant():
    gw = gateway()
    status, _, body = one(gw, rw([
        ([("__name__", "up"), ("job", "node"), ("empty", "")], [(1.0, NOW - 1000), (STALE_NAN, NOW)]),
        ([("__name__", "http_requests_total"), ("code", "200")], [(10.0, NOW - 2000), (12.0, NOW - 1000)]),
    ], headers={"X-Scope-OrgID": "acme"}))
    assert status == 200, body
    assert body["accepted"] == 3 and body["rejected"] == 0 and body["stale_markers_skipped"] == 1
    up = series_id("acme", "up", {"job": "node"})  # an empty label is an absent label
    req = series_id("acme", "http_requests_total", {"code": "200"})
    assert [(s.series, s.metric_type, s.ts_ms, s.value, s.count) for s in gw.writer.samples] == [
        (up, "g", NOW - 1000, 1.0, 1.0), (req, "g", NOW - 2000, 10.0, 1.0), (req, "g", NOW - 1000, 12.0, 1.0)]
    assert gw.metrics.value("tally_gateway_stale_markers_skipped_total", tenant="acme") == 1


def test_partly_bad_batch_writes_the_good_samples_and_answers_400_with_reasons():
    gw = gateway(Limits(max_future_seconds=300, max_age_seconds=3600))
    good = ([("__name__", "ok_metric"), ("a", "b")], [(1.0, NOW), (2.0, NOW - 3_600_000)])
    status, _, body = one(gw, rw([
        good,
        ([("__name__", "bad.name")], [(1.0, NOW)]),
        ([("__name__", "m")] + [(f"l{i}", "v") for i in range(31)], [(1.0, NOW), (2.0, NOW)]),
        ([("__name__", "m"), ("path", "x" * 2049)], [(1.0, NOW)]),
        ([("__name__", "m"), ("bad-label", "v")], [(1.0, NOW)]),
        ([("__name__", "m"), ("a", "1"), ("a", "2")], [(1.0, NOW)]),
        ([("job", "nameless")], [(1.0, NOW)]),
        ([("__name__", "ok_metric"), ("a", "c")], [(1.0, NOW + 300_001), (1.0, NOW - 3_600_001),
                                                   (float("inf"), NOW), (float("nan"), NOW), (5.0, NOW)]),
    ]))
    assert status == 400
    assert body["accepted"] == 3 and body["rejected"] == 11
    assert body["reasons"] == {"bad_metric_name": 1, "too_many_labels": 2, "label_value_too_long": 1,
                               "bad_label_name": 1, "duplicate_label_name": 1, "missing_metric_name": 1,
                               "future_timestamp": 1, "too_old": 1, "non_finite_value": 2}
    text = "\n".join(body["errors"])
    for needle in ["'bad.name'", "31 labels", "limit of 30", "2049 characters", "'bad-label'", "repeats label(s) ['a']",
                   "no __name__", "in the future", "older than the accepted lateness of 3600 s", "not a finite number"]:
        assert needle in text, needle
    assert "11 sample(s) rejected" in body["error"]
    assert sorted((s.series.tag_dict["a"], s.value) for s in gw.writer.samples) == [("b", 1.0), ("b", 2.0), ("c", 5.0)]
    assert gw.metrics.value("tally_gateway_samples_rejected_total", tenant="default", reason="too_many_labels") == 2
    assert gw.metrics.value("tally_gateway_samples_accepted_total", tenant="default", endpoint="write") == 3
    assert gw.metrics.value("tally_gateway_requests_total", endpoint="write", status="400") == 1


def test_series_limits_over_http():
    gw = gateway(Limits(max_series_per_tenant=5, max_series_per_metric=3, max_label_values_per_metric_label=2))
    res = call(gw, [
        rw([([("__name__", "a"), ("i", str(i))], [(1.0, NOW)]) for i in range(2)]),  # 2 values of i
        rw([([("__name__", "a"), ("i", "2")], [(1.0, NOW)])]),                        # 3rd value of i on a
        rw([([("__name__", "a"), ("j", "x")], [(1.0, NOW)])]),                        # 3rd series of a
        rw([([("__name__", "a"), ("j", "y")], [(1.0, NOW)])]),                        # 4th series of a
        rw([([("__name__", "b"), ("k", str(i))], [(1.0, NOW)]) for i in range(2)]),   # tenant at 5
        rw([([("__name__", "c")], [(1.0, NOW)])]),                                   # 6th series of tenant
        rw([([("__name__", "a"), ("i", "0")], [(7.0, NOW)])]),                        # existing series flow
    ])
    statuses = [r[0] for r in res]
    assert statuses == [200, 400, 200, 400, 200, 400, 200]
    assert res[1][2]["reasons"] == {"too_many_label_values": 1}
    assert "label 'i' of metric 'a' already has 2 distinct values" in res[1][2]["errors"][0]
    assert res[3][2]["reasons"] == {"too_many_series_metric": 1} and "metric 'a'" in res[3][2]["errors"][0]
    assert res[5][2]["reasons"] == {"too_many_series_tenant": 1} and "tenant 'default'" in res[5][2]["errors"][0]
    assert gw.writer.samples[-1].value == 7.0
    status, _, text = one(gw, ("GET", "/metrics", {}))
    assert 'tally_gateway_series_limited_total{label="i",metric="a",reason="too_many_label_values",tenant="default"} 1' in text
    assert 'tally_gateway_active_series{tenant="default"} 5' in text


def test_rate_limit_is_429_with_retry_after_and_writes_nothing():
    clock = [0.0]
    gw = gateway(Limits(samples_per_second_per_tenant=10, samples_burst_per_tenant=20), clock=clock)
    batch = [([("__name__", "m"), ("i", str(i))], [(1.0, NOW)]) for i in range(15)]
    first, second = call(gw, [rw(batch), rw(batch)])
    assert first[0] == 200
    status, headers, body = second
    assert status == 429 and headers["Retry-After"] == "1"
    assert "over its limit of 10 samples/s" in body["error"] and body["reason"] == "rate_limited"
    assert len(gw.writer.samples) == 15
    assert gw.metrics.value("tally_gateway_samples_rejected_total", tenant="default", reason="rate_limited") == 15
    clock[0] = 1.0  # 5 + 10 tokens: the retry passes
    assert one(gw, rw(batch))[0] == 200


def test_kafka_unavailable_is_503_with_retry_after():
    gw = gateway()
    gw.writer.fail = KafkaUnavailable("Kafka unavailable: connection refused", 5)
    status, headers, body = one(gw, rw([([("__name__", "m")], [(1.0, NOW)])]))
    assert status == 503 and headers["Retry-After"] == "5"
    assert "connection refused" in body["error"] and "nothing of this request was written" in body["error"]
    assert gw.metrics.value("tally_gateway_samples_rejected_total", tenant="default", reason="kafka_unavailable") == 1
    status, _, body = one(gw, push([{"name": "x", "value": 1}]))
    assert status == 503


@pytest.mark.parametrize("data, headers, status, needle", [
    (b"\x00garbage", {}, 400, "malformed remote_write body"),
    (b"", {}, 400, "empty body"),
    (encode_request([]), {"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip' not supported"),
    (encode_request([]), {"Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"}, 415,
     "remote_write 2.0 is not supported"),
])
def test_bad_remote_write_bodies(data, headers, status, needle):
    gw = gateway()
    got, _, body = one(gw, ("POST", "/api/v1/write", {"data": data, "headers": {**RW_HEADERS, **headers}}))
    assert got == status and needle in body["error"]


def test_body_too_large_is_413(monkeypatch):
    import tally.gateway.app as app_module

    monkeypatch.setattr(app_module, "MAX_BODY_BYTES", 1000)
    status, _, body = one(gateway(), ("POST", "/api/v1/write", {"data": b"\x00" * 5000, "headers": RW_HEADERS}))
    assert status == 413


def test_an_empty_write_request_is_fine():
    status, _, body = one(gateway(), rw([]))
    assert status == 200 and body["accepted"] == 0


# --- auth ----------------------------------------------------------------------------------

def test_auth_failures_and_successes():
    gw = gateway(keyring=KeyRing.from_dict(KEYS))
    series = [([("__name__", "m")], [(1.0, NOW)])]
    basic = "Basic " + base64.b64encode(b"prometheus:prom-key-0001").decode()
    res = call(gw, [
        rw(series),
        rw(series, {"Authorization": "Bearer wrong-key-000"}),
        rw(series, {"Authorization": "Bearer prom-key-0001", "X-Scope-OrgID": "other"}),
        rw(series, {"Authorization": "Bearer read-key-0001"}),
        push([{"name": "m", "value": 1}], {"Authorization": "Bearer read-key-0001"}),
        rw(series, {"Authorization": "Bearer prom-key-0001"}),
        rw(series, {"Authorization": basic}),
        push([{"name": "m", "value": 1}], {"Authorization": "Bearer prom-key-0001", "X-Scope-OrgID": "acme"}),
        rw(series, {"Authorization": "Bearer prom-key-0001", "X-Scope-OrgID": "bad/tenant"}),
    ])
    assert [r[0] for r in res] == [401, 401, 403, 403, 403, 200, 200, 200, 400]
    assert "missing API key" in res[0][2]["error"] and "Bearer" in res[0][1]["WWW-Authenticate"]
    assert res[1][2]["error"] == "invalid API key"
    assert res[2][2]["error"] == "API key 'prom' may not write tenant 'other'"
    assert "may not write" in res[3][2]["error"] and "may not write" in res[4][2]["error"]
    assert "'bad/tenant' is not valid" in res[8][2]["error"]
    assert {s.series.tenant for s in gw.writer.samples} == {"acme"} and len(gw.writer.samples) == 3
    assert gw.metrics.value("tally_gateway_requests_total", endpoint="write", status="401") == 2


# --- push ----------------------------------------------------------------------------------

def test_push_types_rates_sets_and_defaults():
    gw = gateway()
    status, _, body = one(gw, push([
        {"name": "http.requests", "tags": {"host": "a"}, "type": "c", "value": 2, "rate": 0.5, "ts": NOW - 5},
        {"name": "queue.depth", "type": "g", "value": 7.5},
        {"name": "db.query", "tags": {"db": "main"}, "type": "ms", "value": 12.5, "rate": 0.25, "ts": NOW},
        {"name": "users", "type": "s", "members": ["u1", "u2", "u1", 3]},
        {"name": "users", "type": "s", "value": "u9", "ts": NOW - 1},
    ], {"X-Scope-OrgID": "acme"}))
    assert status == 200 and body["accepted"] == 5, body
    got = {(s.series.name, s.ts_ms): (s.metric_type, s.value, s.count, s.series.tenant) for s in gw.writer.samples}
    assert got == {("http.requests", NOW - 5): ("c", 2.0, 2.0, "acme"), ("queue.depth", NOW): ("g", 7.5, 1.0, "acme"),
                   ("db.query", NOW): ("ms", 12.5, 4.0, "acme"), ("users", NOW): ("s", 3.0, 1.0, "acme"),
                   ("users", NOW - 1): ("s", 1.0, 1.0, "acme")}


def test_push_bad_points_are_rejected_alone():
    gw = gateway()
    status, _, body = one(gw, push([
        {"name": "ok.metric", "value": 1},
        "not an object",
        {"name": "x", "value": 1, "color": "red"},
        {"name": "9x", "value": 1},
        {"name": "x", "type": "q", "value": 1},
        {"name": "x", "value": "high"},
        {"name": "x", "value": 10 ** 400},
        {"name": "x", "value": 1e308, "type": "c", "rate": 0.01},
        {"name": "x", "value": 1, "rate": 2},
        {"name": "x", "value": 1, "ts": "yesterday"},
        {"name": "x", "value": 1, "ts": NOW + 400_000},
        {"name": "x", "tags": {"t": 5}, "value": 1},
        {"name": "x", "tags": {f"t{i}": "v" for i in range(31)}, "value": 1},
        {"name": "x", "type": "s"},
        {"value": 1},
    ]))
    assert status == 400
    assert body["accepted"] == 1 and body["rejected"] == 14
    assert body["reasons"] == {"bad_point": 2, "bad_metric_name": 2, "bad_type": 1, "bad_value": 4, "bad_rate": 1,
                               "bad_timestamp": 1, "future_timestamp": 1, "bad_label_value": 1, "too_many_labels": 1}
    assert any("points[2] has unknown field(s) ['color']" in e for e in body["errors"])
    assert [s.series.name for s in gw.writer.samples] == ["ok.metric"]


@pytest.mark.parametrize("data, needle", [("{", "not JSON"), ("[1, 2]", '{"points": [...]}'),
                                          ('{"points": 5}', '{"points": [...]}')])
def test_push_unreadable_body_is_400(data, needle):
    status, _, body = one(gateway(), ("POST", "/api/v1/push", {"data": data}))
    assert status == 400 and needle in body["error"]


# --- metrics and health --------------------------------------------------------------------

def test_metrics_and_health_endpoints():
    gw = gateway()
    res = call(gw, [rw([([("__name__", "m")], [(1.0, NOW), (STALE_NAN, NOW)])]), ("GET", "/metrics", {}),
                    ("GET", "/-/healthy", {}), ("GET", "/-/ready", {})])
    text = res[1][2]
    assert "# TYPE tally_gateway_samples_received_total counter" in text
    assert 'tally_gateway_samples_received_total{endpoint="write",tenant="default"} 1' in text
    assert 'tally_gateway_requests_total{endpoint="write",status="200"} 1' in text
    assert 'tally_gateway_stale_markers_skipped_total{tenant="default"} 1' in text
    assert "tally_gateway_kafka_up 1" in text
    assert res[2][0] == 200 and res[3][0] == 200
    gw.writer.healthy = False
    assert one(gw, ("GET", "/-/ready", {}))[0] == 503


def test_ticker_sends_lagging_watermark_ticks():
    gw = gateway()

    async def go():
        async with TestClient(TestServer(make_app(gw, ticks=True))):
            await asyncio.sleep(2.3)
    asyncio.run(go())
    assert len(gw.writer.ticks) >= 2
    assert set(gw.writer.ticks) == {NOW - TallyConfig().gateway_tick_lag_seconds * 1000}


def test_server_build_takes_keys_and_limits_from_the_config(tmp_path):
    import dataclasses

    from tally.gateway.server import build

    keys = tmp_path / "keys.yaml"
    keys.write_text(json.dumps(KEYS))  # JSON is YAML
    cfg = dataclasses.replace(TallyConfig(), api_keys_file=keys, limit_max_age_seconds=60,
                              limit_max_series_per_metric=7)
    gw = build(cfg)
    try:
        assert gw.keyring.enabled and gw.keyring.authorize({"Authorization": "Bearer prom-key-0001"}, "write") == "acme"
        assert gw.limits.max_age_seconds == 60 and gw.limits.max_series_per_metric == 7
    finally:
        gw.writer.close()
    gw = build(TallyConfig())
    try:
        assert not gw.keyring.enabled  # no key file: auth off
    finally:
        gw.writer.close()


def test_large_remote_write_bodies_decode_off_the_loop_with_the_same_result():
    series = [([("__name__", "big"), ("i", str(i)), ("pad", "p" * 40)], [(float(i), NOW)]) for i in range(3000)]
    gw = gateway()
    status, _, body = one(gw, rw(series))
    assert len(encode_request(series)) > 64 * 1024  # over OFFLOAD_DECODE_BYTES
    assert status == 200 and body["accepted"] == 3000
    assert sorted(s.value for s in gw.writer.samples) == [float(i) for i in range(3000)]
