"""Cardinality management through the real stack (issue 8): limits with their overflow
actions, relabel rules, and the cardinality view, on the `pipeline` fixture's private topics
and keyspace.

Everything is sent once, up front (module fixture `sent`), into future 10 s event-time
windows, one per sender in sending order, with timestamps rising within each (the job's
watermark follows the highest timestamp seen minus 2 s of grace, so a point sent after a
later one beyond that is late by design); then each test checks its part:

- gateway A (`tally gateway`, overflow `reject`, limit 500 values per label - each admitted
  series costs five bucket rows, and the default 10,000 took the job's sink over 15 minutes on
  the shared 2-core machine; unit tests cover the defaults): a metric with a ``request_id``
  label taking 50,000 distinct values and a well-behaved counter in the same requests; 500
  request_id series get in, the other 49,500 samples are refused with
  reason ``too_many_label_values``, counted per tenant/metric/label on /metrics; the
  well-behaved counter's buckets equal the ground truth;
- gateway B (``TALLY_LIMIT_LABEL_VALUES_OVERFLOW=hash:16``, limit 200 values, relabel
  rules): the same 50,000 values are all accepted, 49,800 of them into 16 ``hash_NN``
  series, and the metric's 10 s buckets add up to exactly 50,000; relabel rules (labeldrop,
  replace, hash, drop) show in the stored series;
- `tally agent` (1 worker, limit 50 values, the same relabel file): 500 request_id values
  over TCP, 450 refused and counted, a well-behaved counter exact (its ``trace_id`` label
  dropped by the relabel rules);
- the cardinality API over the real series index lists the offending metric and its
  ``request_id`` label first.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tally.agent.process import AgentProcess
from tally.cql import connect
from tally.series import series_id
from tally.tiers import DEFAULT_TIERS, partition_start_ms
from tests.integration.test_gateway import KEY, GatewayProcess, metric_value, post
from tests.integration.truth import expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration

TENANT_A = "gwtest"  # the key file of GatewayProcess binds its key to this tenant
N_VALUES = 50_000
LIMIT_A = 500
LIMIT_B = 200
LIMIT_AGENT = 50
LEAD_S = 90  # the window starts this far ahead, so everything is sent before event time reaches it
AGENT_TENANT = "it-card-agent"
AGENT_VALUES = 500
RULES = """
rules:
  - action: labeldrop
    regex: trace_id
  - action: replace
    metric: it\\.rl\\.http
    source_labels: [path]
    regex: /user/[0-9]+(/.*)?
    target_label: path
    replacement: /user/:id$1
  - action: hash
    metric: it\\.rl\\.sess
    source_labels: [session]
    buckets: 4
  - action: drop
    regex: it\\.rl\\.debug.*
"""


def push(gw, points, chunk=5_000):
    """POST points in chunks; returns the summed response counts."""
    total = {"accepted": 0, "rejected": 0, "dropped": 0, "reasons": {}}
    for i in range(0, len(points), chunk):
        status, _, body = post(gw.url + "/api/v1/push", json.dumps({"points": points[i:i + chunk]}).encode(),
                               {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert status in (200, 400), body
        for k in ("accepted", "rejected", "dropped"):
            total[k] += body[k]
        for r, n in body["reasons"].items():
            total["reasons"][r] = total["reasons"].get(r, 0) + n
    return total


def explosion(base_ms: int, ok_name: str, tenant: str):
    """50,000 request_id points interleaved with a well-behaved counter, timestamps rising
    over one 10 s window; (points, ok events)."""
    points, ok_events = [], []
    for i in range(N_VALUES):
        ts = base_ms + i * 10_000 // N_VALUES
        points.append({"name": "it.card.req", "tags": {"request_id": f"r{i:05d}"}, "type": "c", "value": 1, "ts": ts})
        if i % 100 == 0:
            host = "a" if i % 200 else "b"
            points.append({"name": ok_name, "tags": {"host": host}, "type": "c", "value": 1 + i % 7, "ts": ts})
            ok_events.append((series_id(tenant, ok_name, {"host": host}).id, ts, float(1 + i % 7), 1.0))
    return points, ok_events


@pytest.fixture(scope="module")
def sent(pipeline, tmp_path_factory):
    cfg, _job = pipeline
    tmp = tmp_path_factory.mktemp("cardinality")
    rules = tmp / "relabel.yaml"
    rules.write_text(RULES)
    # Both gateways' key files bind the test key to tenant gwtest; B's metrics are named it.cardb.*.
    gw_a = GatewayProcess(cfg, tmp, TALLY_LIMIT_MAX_LABEL_VALUES_PER_METRIC_LABEL=str(LIMIT_A))
    gw_b = GatewayProcess(cfg, tmp, TALLY_LIMIT_LABEL_VALUES_OVERFLOW="hash:16",
                          TALLY_LIMIT_MAX_LABEL_VALUES_PER_METRIC_LABEL=str(LIMIT_B),
                          TALLY_RELABEL_RULES_PATH=str(rules))
    agent = AgentProcess(tmp / "agent", cfg.points_topic, cfg.series_topic, AGENT_TENANT, cfg.ports.kafka, workers=1,
                         grace_seconds=cfg.grace_seconds,
                         extra_env={"TALLY_LIMIT_MAX_LABEL_VALUES_PER_METRIC_LABEL": str(LIMIT_AGENT),
                                    "TALLY_RELABEL_RULES_PATH": str(rules)}).start()
    try:
        now = int(time.time() * 1000)
        base = now - now % 10_000 + LEAD_S * 1000  # a whole future window: nothing behind the watermark
        t0 = time.monotonic()
        w_a, w_b, w_rl, w_agent = (base + k * 10_000 for k in range(4))  # one window per sender
        out = {"cfg": cfg, "w_a": w_a, "w_b": w_b, "w_rl": w_rl, "gw_a": gw_a, "gw_b": gw_b, "agent": agent}
        points, out["ok_a"] = explosion(w_a, "it.card.ok", TENANT_A)
        out["resp_a"] = push(gw_a, points)
        points_b, out["ok_b"] = explosion(w_b, "it.cardb.ok", TENANT_A)
        for p in points_b:
            p["name"] = p["name"].replace("it.card.req", "it.cardb.req")
        out["resp_b"] = push(gw_b, points_b)
        rl = []  # one request, all within 1 s (the gateway writes it grouped by series)
        for i in range(30):
            rl.append({"name": "it.rl.http", "tags": {"path": f"/user/{i}/orders", "trace_id": str(i), "host": "a"},
                       "type": "c", "value": 1, "ts": w_rl + i * 10})
        for i in range(100):
            rl.append({"name": "it.rl.sess", "tags": {"session": f"s{i}"}, "type": "c", "value": 1,
                       "ts": w_rl + i * 5})
        rl += [{"name": "it.rl.debug_heap", "type": "g", "value": 5, "ts": w_rl + 10} for _ in range(3)]
        out["resp_rl"] = push(gw_b, rl)
        # the agent: 1,000 request_id values and a well-behaved counter whose trace_id is relabeled away
        lines, agent_ok = [], []
        for i in range(AGENT_VALUES):
            sec = w_agent // 1000 + i * 10 // AGENT_VALUES  # the agent flushes second by second
            lines.append(f"it_card_agent_req:1|c|#request_id:q{i}|T{sec}")
            if i % 5 == 0:
                lines.append(f"it_card_agent_ok:{1 + i % 5}|c|#host:a,trace_id:{i}|T{sec}")
                agent_ok.append((series_id(AGENT_TENANT, "it_card_agent_ok", {"host": "a"}).id, sec * 1000,
                                 float(1 + i % 5), 1.0))
        with socket.create_connection(("127.0.0.1", agent.statsd_port)) as conn:
            conn.sendall(("\n".join(lines) + "\n").encode())
        out["agent_ok"] = agent_ok
        sent_s = time.monotonic() - t0
        print(f"sent {2 * N_VALUES + 133} points to 2 gateways and {len(lines)} lines to the agent in {sent_s:.1f} s")
        # The producers' watermark ticks follow the wall clock: data sent after it reached the
        # window would be late by design, and the exact comparisons below meaningless.
        assert time.time() * 1000 < w_a, f"sending took {sent_s:.0f} s, past the window start; raise LEAD_S"
        yield out
    finally:
        agent.stop()
        gw_a.stop()
        gw_b.stop()


def exact(cfg, tenant, events, timeout_s=300):
    """Wait until the 10 s buckets of the events' series equal the truth; return (got, want)."""
    truth = {k: v for k, v in expected_buckets(events).items() if k[0] == "10s"}
    want = {k: (t["count"], t["sum"], t["min"], t["max"]) for k, t in truth.items()}
    sids = sorted({e[0] for e in events})

    def got():
        rows = read_buckets(cfg, tenant, sids, truth)
        return {k: (r.count, r.sum, r.min, r.max) for k, r in rows.items() if k in truth}

    return wait_for(lambda: (lambda g: g if g == want else None)(got()), timeout_s=timeout_s) or got(), want


def index_rows(cfg, tenant, name):
    cluster, session = connect(cfg)
    try:
        return list(session.execute(f"SELECT sid, tags FROM {cfg.keyspace}.series WHERE tenant = %s AND name = %s",
                                    (tenant, name)))
    finally:
        cluster.shutdown()


def count_10s(cfg, tenant, sids, base):
    """Sum of the counts of the 10 s buckets at `base` of the given series."""
    cluster, session = connect(cfg)
    try:
        part = partition_start_ms(base, next(t for t in DEFAULT_TIERS if t.name == "10s"))
        stmt = session.prepare(f"SELECT count FROM {cfg.keyspace}.buckets_10s WHERE tenant = ? AND sid = ? "
                               "AND part = ? AND ts = ?")
        from cassandra.concurrent import execute_concurrent_with_args

        res = execute_concurrent_with_args(session, stmt, [(tenant, s, part, base) for s in sids], concurrency=64)
        return sum(r.count for ok, rows in res for r in rows)
    finally:
        cluster.shutdown()


def test_request_id_explosion_is_rejected_counted_and_the_good_metric_is_exact(sent):
    cfg, resp = sent["cfg"], sent["resp_a"]
    assert resp["accepted"] == LIMIT_A + len(sent["ok_a"])
    assert resp["rejected"] == N_VALUES - LIMIT_A and resp["reasons"] == {"too_many_label_values": N_VALUES - LIMIT_A}
    m = sent["gw_a"].metrics()
    assert metric_value(m, f'tally_gateway_series_limited_total{{label="request_id",metric="it.card.req",'
                           f'reason="too_many_label_values",tenant="{TENANT_A}"}}') == N_VALUES - LIMIT_A
    assert metric_value(m, 'tally_gateway_samples_rejected_total{reason="too_many_label_values"') == N_VALUES - LIMIT_A
    got, want = exact(cfg, TENANT_A, sent["ok_a"])
    assert got == want, sorted(set(want.items()) ^ set(got.items()))[:5]
    rows = wait_for(lambda: (lambda r: r if len(r) >= LIMIT_A else None)(index_rows(cfg, TENANT_A, "it.card.req")),
                    timeout_s=120) or index_rows(cfg, TENANT_A, "it.card.req")
    assert len(rows) == LIMIT_A  # exactly the admitted series, the rest never reached storage
    assert {r.tags["request_id"] for r in rows} == {f"r{i:05d}" for i in range(LIMIT_A)}


def test_hash_overflow_keeps_every_sample_in_16_buckets(sent):
    cfg, resp, base = sent["cfg"], sent["resp_b"], sent["w_b"]
    assert resp["rejected"] == 0 and resp["accepted"] == N_VALUES + len(sent["ok_b"])
    m = sent["gw_b"].metrics()
    assert metric_value(m, f'tally_gateway_series_overflowed_total{{action="hash:16",label="request_id",'
                           f'metric="it.cardb.req",reason="too_many_label_values",tenant="{TENANT_A}"}}') == N_VALUES - LIMIT_B
    rows = wait_for(lambda: (lambda r: r if len(r) >= LIMIT_B + 16 else None)(index_rows(cfg, TENANT_A, "it.cardb.req")),
                    timeout_s=120) or index_rows(cfg, TENANT_A, "it.cardb.req")
    values = {r.tags["request_id"] for r in rows}
    assert len(rows) == LIMIT_B + 16 and {v for v in values if v.startswith("hash_")} == {f"hash_{i:02d}" for i in range(16)}
    sids = [r.sid for r in rows]
    total = wait_for(lambda: (lambda n: n if n == N_VALUES else None)(count_10s(cfg, TENANT_A, sids, base)),
                     timeout_s=300) or count_10s(cfg, TENANT_A, sids, base)
    assert total == N_VALUES  # every sample is in some bucket: nothing lost, cardinality bounded
    got, want = exact(cfg, TENANT_A, sent["ok_b"])
    assert got == want


def test_relabel_rules_shape_the_stored_series(sent):
    cfg, resp, base = sent["cfg"], sent["resp_rl"], sent["w_rl"]
    assert resp["accepted"] == 130 and resp["rejected"] == 0 and resp["dropped"] == 3
    assert metric_value(sent["gw_b"].metrics(), 'tally_gateway_samples_dropped_total{reason="relabel_drop"') == 3
    http = series_id(TENANT_A, "it.rl.http", {"host": "a", "path": "/user/:id/orders"})
    got, want = exact(cfg, TENANT_A, [(http.id, base + i * 10, 1.0, 1.0) for i in range(30)])
    assert got == want and next(iter(got.values()))[0] == 30
    assert [r.tags for r in index_rows(cfg, TENANT_A, "it.rl.http")] == [{"host": "a", "path": "/user/:id/orders"}]
    sess = index_rows(cfg, TENANT_A, "it.rl.sess")
    assert 1 <= len(sess) <= 4 and all(r.tags["session"].startswith("hash_") for r in sess)
    assert wait_for(lambda: count_10s(cfg, TENANT_A, [r.sid for r in sess], base) == 100, timeout_s=120)
    assert index_rows(cfg, TENANT_A, "it.rl.debug_heap") == []


def test_agent_limits_and_relabel_on_the_same_path(sent):
    cfg, agent = sent["cfg"], sent["agent"]
    got, want = exact(cfg, AGENT_TENANT, sent["agent_ok"])
    assert got == want  # trace_id dropped by the relabel rule: one series, exact
    m = agent.metrics()
    assert m.get('tally_agent_rejected_lines_total{reason="too_many_label_values"}') == AGENT_VALUES - LIMIT_AGENT
    key = (f'tally_agent_series_limited_total{{tenant="{AGENT_TENANT}",metric="it_card_agent_req",'
           'label="request_id",reason="too_many_label_values"}')
    assert m.get(key) == AGENT_VALUES - LIMIT_AGENT
    rows = wait_for(lambda: (lambda r: r if len(r) >= LIMIT_AGENT else None)(
        index_rows(cfg, AGENT_TENANT, "it_card_agent_req")), timeout_s=60)
    assert len(rows) == LIMIT_AGENT


def test_cardinality_view_lists_the_offender_first(sent):
    from aiohttp.test_utils import TestClient, TestServer

    from tally.api.app import make_app
    from tally.query.engine import QueryEngine
    from tally.query.storage import MemoryStorage

    cfg = sent["cfg"]
    wait_for(lambda: len(index_rows(cfg, TENANT_A, "it.card.req")) >= LIMIT_A, timeout_s=120)

    async def calls():
        app = make_app(cfg, QueryEngine(cfg, storage=MemoryStorage()))  # the view reads the real index
        async with TestClient(TestServer(app)) as c:
            h = {"X-Scope-OrgID": TENANT_A}
            r1 = await c.get("/api/v1/status/cardinality", params={"limit": "5"}, headers=h)
            r2 = await c.get("/api/v1/status/tsdb", headers=h)
            r3 = await c.get("/api/v1/status/cardinality/metrics", headers=h)
            r4 = await c.get("/cardinality")
            return await r1.json(), await r2.json(), await r3.text(), r4.status

    t0 = time.monotonic()
    card, tsdb, text, page = asyncio.run(calls())
    elapsed = time.monotonic() - t0
    rep = card["data"]
    assert rep["metrics"][0]["name"] == "it.card.req" and rep["metrics"][0]["series"] == LIMIT_A
    assert rep["metrics"][0]["active_series"] == LIMIT_A  # each has its 10 s buckets in Redis
    assert rep["metrics"][0]["labels"][0] == {"name": "request_id", "values": LIMIT_A}
    assert rep["metrics"][1]["name"] == "it.cardb.req" and rep["metrics"][1]["series"] == LIMIT_B + 16
    assert rep["metrics"][1]["active_series"] == LIMIT_B + 16
    assert rep["labels"][0]["name"] == "request_id"
    assert rep["growth"]["series_added_last_hour"] == rep["series"]  # everything registered just now
    assert tsdb["data"]["seriesCountByMetricName"][0] == {"name": "it.card.req", "value": LIMIT_A}
    assert tsdb["data"]["labelValueCountByLabelName"][0]["name"] == "request_id"
    assert f'tally_cardinality_series{{tenant="{TENANT_A}",metric="it.card.req"}} {LIMIT_A}' in text
    assert page == 200
    print(f"cardinality view over {rep['series']} index rows: {elapsed:.2f} s (incl. connecting)")


def test_cardinality_page_in_chromium(sent):
    """The /cardinality page, in headless Chromium against the real index: the offender is the
    first row, its worst label request_id; a screenshot goes to .tally/artifacts/."""
    from tally.api.app import make_app
    from tally.dashboard.mount import mount
    from tally.query.engine import QueryEngine
    from tally.query.storage import MemoryStorage
    from tests.integration.test_dashboard_browser import ARTIFACTS, Chromium, _serve

    cfg = sent["cfg"]

    async def run():
        app = make_app(cfg, QueryEngine(cfg, storage=MemoryStorage()))
        mount(app, cfg)  # the dashboard's static files, as `tally api` serves them
        runner, url = await _serve(app)
        try:
            async with Chromium() as page:
                await page.send("Page.navigate", url=f"{url}/cardinality?tenant={TENANT_A}")
                await page.wait_js("window.tally && window.tally.ready && window.tally.report", 60, "the report")
                rows = await page.js("[...document.querySelectorAll('#metrics tbody tr')].map("
                                     "tr => [...tr.children].map(td => td.textContent))")
                labels = await page.js("[...document.querySelectorAll('#labels tbody tr')].map(tr => tr.dataset.label)")
                summary = await page.js("document.getElementById('summary').textContent")
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(ARTIFACTS / "cardinality.png")
                return rows, labels, summary, page.errors
        finally:
            await runner.cleanup()

    rows, labels, summary, errors = asyncio.run(run())
    assert not errors, errors
    # columns: metric, active, series, share, worst label, its values, added last hour, labels
    assert rows[0][:3] == ["it.card.req", str(LIMIT_A), str(LIMIT_A)] and rows[0][4:6] == ["request_id", str(LIMIT_A)]
    assert rows[1][0] == "it.cardb.req"
    assert labels[0] == "request_id"
    assert "active" in summary and "new series in the last hour" in summary
