"""The cardinality view: report figures (tally.cardinality), the API endpoints and their
tenant rules (tally.api.cardinality), and the page's table building (static/cardinality_view.js)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tally.api.app import make_app
from tally.auth import KeyRing
from tally.cardinality import HOUR_MS, IndexRow, render_metrics, report, tsdb_status
from tally.config import TallyConfig
from tally.dashboard import STATIC_DIR
from tally.query.engine import QueryEngine
from tally.query.storage import MemoryStorage

NOW = 1_700_000_000_000


def rows():
    out = [IndexRow("http_requests", {"request_id": str(i), "host": f"h{i % 3}"}, NOW - 10 * HOUR_MS)
           for i in range(500)]
    out += [IndexRow("http_requests", {"request_id": f"new{i}", "host": "h0"}, NOW - 60_000) for i in range(40)]
    out += [IndexRow("cpu", {"host": f"h{i}", "region": "eu" if i % 2 else "us"}, NOW - 2 * HOUR_MS)
            for i in range(20)]
    out += [IndexRow("up", {}, NOW - 30 * HOUR_MS)]
    return out


def test_report_orders_metrics_and_labels_by_cardinality():
    rep = report("acme", rows(), NOW, limit=2)
    assert rep["series"] == 561 and rep["metrics_total"] == 3
    assert [(m["name"], m["series"]) for m in rep["metrics"]] == [("http_requests", 540), ("cpu", 20)]
    first = rep["metrics"][0]
    assert first["labels"] == [{"name": "request_id", "values": 540}, {"name": "host", "values": 3}]
    assert first["series_added_last_hour"] == 40
    assert rep["labels"] == [{"name": "request_id", "values": 540}, {"name": "host", "values": 20}]
    g = rep["growth"]
    assert g["series_added_last_hour"] == 40 and g["series_added_last_24h"] == 560
    assert g["series_per_hour"] == 40.0 and g["series_per_hour_24h_avg"] == pytest.approx(560 / 24)
    assert g["oldest_registration_ms"] == NOW - 30 * HOUR_MS


def test_prometheus_tsdb_shape_and_text_metrics():
    rep = report("acme", rows(), NOW, limit=10)
    st = tsdb_status(rep)
    assert set(st) == {"headStats", "seriesCountByMetricName", "labelValueCountByLabelName",
                       "memoryInBytesByLabelName", "seriesCountByLabelValuePair"}
    assert st["headStats"]["numSeries"] == 561
    assert st["seriesCountByMetricName"][0] == {"name": "http_requests", "value": 540}
    assert st["labelValueCountByLabelName"][0] == {"name": "request_id", "value": 540}
    assert st["seriesCountByLabelValuePair"][0] == {"name": "host=h0", "value": 40 + 167 + 1}
    text = render_metrics(rep)
    assert 'tally_cardinality_series{tenant="acme",metric="http_requests"} 540' in text
    assert 'tally_cardinality_label_values{tenant="acme",metric="http_requests",label="request_id"} 540' in text
    assert 'tally_cardinality_series_added{tenant="acme",window="1h"} 40' in text
    assert 'tally_cardinality_series_growth_per_hour{tenant="acme"} 40' in text


class Source:
    """The series index of several tenants, in memory (the real one: tally.api.cardinality.IndexReader)."""

    def __init__(self):
        self.tenants = {"acme": rows(), "beta": [IndexRow("only_beta", {"a": "1"}, NOW)]}
        self.reads = []

    async def rows(self, tenant):
        self.reads.append(tenant)
        return self.tenants.get(tenant, [])


def run(calls, keyring=None):
    cfg = TallyConfig()
    source = Source()

    async def go():
        engine = QueryEngine(cfg, storage=MemoryStorage())
        app = make_app(cfg, engine, keyring=keyring, cardinality_source=source)
        async with TestClient(TestServer(app)) as client:
            return await calls(client), source

    return asyncio.run(go())


def test_endpoints_bind_the_tenant_and_validate_limit():
    async def calls(c):
        out = {}
        r = await c.get("/api/v1/status/cardinality", params={"limit": "1"}, headers={"X-Scope-OrgID": "acme"})
        out["card"] = (r.status, await r.json())
        r = await c.get("/api/v1/status/tsdb", headers={"X-Scope-OrgID": "beta"})
        out["tsdb"] = (r.status, await r.json())
        r = await c.get("/api/v1/status/cardinality/metrics", headers={"X-Scope-OrgID": "acme"})
        out["text"] = (r.status, await r.text())
        r = await c.get("/api/v1/status/cardinality", params={"limit": "0"})
        out["bad"] = (r.status, await r.json())
        r = await c.get("/cardinality")
        out["page"] = (r.status, await r.text())
        return out

    out, source = run(calls)
    status, body = out["card"]
    assert status == 200 and body["status"] == "success"
    assert body["data"]["tenant"] == "acme" and [m["name"] for m in body["data"]["metrics"]] == ["http_requests"]
    status, body = out["tsdb"]
    assert status == 200 and body["data"]["seriesCountByMetricName"] == [{"name": "only_beta", "value": 1}]
    assert out["text"][0] == 200 and 'metric="http_requests"} 540' in out["text"][1]
    assert out["bad"][0] == 400 and "limit" in out["bad"][1]["error"]
    assert out["page"][0] == 200 and "cardinality.js" in out["page"][1]
    assert source.reads == ["acme", "beta"]  # acme's second request read the cached index rows


def test_keys_decide_the_tenant():
    ring = KeyRing.from_dict({"keys": [{"key": "key-acme-1", "name": "a", "tenant": "acme", "permissions": ["read"]}]})

    async def calls(c):
        r1 = await c.get("/api/v1/status/cardinality")
        r2 = await c.get("/api/v1/status/cardinality", headers={"Authorization": "Bearer key-acme-1"})
        r3 = await c.get("/api/v1/status/tsdb", headers={"Authorization": "Bearer key-acme-1", "X-Scope-OrgID": "beta"})
        return [(r.status, await r.json()) for r in (r1, r2, r3)]

    (s1, _), (s2, b2), (s3, _) = run(calls, ring)[0]
    assert s1 == 401
    assert s2 == 200 and b2["data"]["tenant"] == "acme"
    assert s3 == 403


def test_page_table_rows_built_in_node():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: ./dev setup needs Node.js and npm for the dashboard")
    rep = report("acme", rows(), NOW, limit=3)
    script = ("const m = await import(process.argv[1]); const rep = JSON.parse(process.argv[2]);"
              "console.log(JSON.stringify({rows: m.metricRows(rep), growth: m.growthText(rep.growth),"
              " pct: [m.percent(0.5), m.percent(0.036)]}));")
    out = subprocess.run([node, "--input-type=module", "-e", script, str(STATIC_DIR / "cardinality_view.js"),
                          json.dumps(rep)], capture_output=True, text=True, check=True, timeout=30).stdout
    got = json.loads(out)
    first = got["rows"][0]
    assert first["metric"] == "http_requests" and first["worstLabel"] == "request_id" and first["active"] == "unknown"
    assert first["worstValues"] == 540 and first["addedLastHour"] == 40
    assert first["share"] == pytest.approx(540 / 561)
    assert first["labels"] == "request_id (540), host (3)"
    assert got["growth"] == "40 new series in the last hour, 560 in 24 h (23.3/h on average)"
    assert got["pct"] == ["50 %", "3.6 %"]


def test_active_series_rank_metrics_when_known():
    # "big" has more series in the index but most went idle; "busy" is ranked first by active series
    rows = [IndexRow("big", {"i": str(i)}, NOW, active=i < 5) for i in range(100)]
    rows += [IndexRow("busy", {"i": str(i)}, NOW, active=True) for i in range(20)]
    rep = report("t", rows, NOW, active_window_s=7200)
    assert [(m["name"], m["active_series"], m["series"]) for m in rep["metrics"]] == [("busy", 20, 20), ("big", 5, 100)]
    assert rep["active_series"] == 25 and rep["series"] == 120 and rep["active_window_seconds"] == 7200
    st = tsdb_status(rep)
    assert st["headStats"]["numSeries"] == 25
    assert st["seriesCountByMetricName"] == [{"name": "busy", "value": 20}, {"name": "big", "value": 5}]
    assert 'tally_cardinality_active_series{tenant="t",metric="big"} 5' in render_metrics(rep)
    # unknown activity (Redis unreachable): index rows rank, active fields are None
    rep = report("t", [IndexRow(r.name, r.tags, r.written_ms) for r in rows], NOW, active_window_s=7200)
    assert [m["name"] for m in rep["metrics"]] == ["big", "busy"] and rep["active_series"] is None
    assert rep["metrics"][0]["active_series"] is None and "tally_cardinality_active_series{" not in render_metrics(rep)
