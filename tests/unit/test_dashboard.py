"""Dashboard: the page and its assets are served and reference only local files; the
histogram endpoint merges the sketches the engine's storage holds."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tally.config import TallyConfig
from tally.dashboard import STATIC_DIR, VENDORED
from tally.dashboard.routes import dashboard_routes
from tally.query.engine import QueryEngine
from tally.query.storage import MemoryStorage
from tally.sketch import Sketch

_HTML_REF = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
_JS_REF = re.compile(r"""(?:^|[\s;}])(?:import|from)(?:\s+|\s*\(\s*)["']([^"']+)["']""", re.M)


def _refs(path):
    return (_HTML_REF if path.suffix == ".html" else _JS_REF).findall(path.read_text())


def _app(engine=None):
    app = web.Application()
    routes, _close = dashboard_routes(TallyConfig(), engine or QueryEngine(TallyConfig(), MemoryStorage()))
    app.add_routes(routes)
    return app


def test_every_asset_reference_is_a_local_file_that_exists():
    for name in VENDORED:
        assert (STATIC_DIR / name).is_file(), f"{name} missing: run ./dev setup (npm ci + vendor copy)"
    pages = [STATIC_DIR / "index.html", *STATIC_DIR.glob("*.js")]
    seen = set()
    for page in pages:
        for ref in _refs(page):
            assert not re.match(r"^(?:[a-z]+:)?//", ref, re.I), f"{page.name} references remote {ref}"
            if page.suffix == ".html":
                target = STATIC_DIR / ref[len("static/"):]
            else:
                target = (page.parent / ref).resolve()
            assert target.is_file(), f"{page.name} references {ref}, which does not exist"
            seen.add(target.name)
    assert {"app.js", "uPlot.esm.js", "uPlot.min.css", "style.css", "chart.js", "histogram.js"} <= seen
    # The vendored library itself loads nothing from the network.
    assert not re.search(r"""import\s*\(?\s*["']https?:""", (STATIC_DIR / "vendor/uPlot.esm.js").read_text())


def test_page_and_static_files_are_routed():
    app = _app()

    async def check():
        req = make_mocked_request("GET", "/", app=app)
        match = await app.router.resolve(req)
        resp = await match.handler(req)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert b'<script type="module" src="static/app.js">' in resp.body
        for path in ("/static/app.js", "/static/vendor/uPlot.esm.js", "/static/style.css"):
            match = await app.router.resolve(make_mocked_request("GET", path, app=app))
            assert match.http_exception is None, path

    asyncio.run(check())


def _get(app, url, tenant="acme"):
    async def call():
        req = make_mocked_request("GET", url, headers={"X-Scope-OrgID": tenant}, app=app)
        match = await app.router.resolve(req)
        resp = await match.handler(req)
        return resp.status, json.loads(resp.body)

    return asyncio.run(call())


def test_histogram_merges_sketches_of_matching_series_only():
    storage = MemoryStorage()
    values = {("eu", "a"): [1.0, 2.0, 3.0], ("eu", "b"): [10.0, 20.0], ("us", "a"): [500.0]}
    t0 = 1_700_000_000_000
    for (region, host), vs in values.items():
        for i, v in enumerate(vs):
            storage.add("acme", "latency", {"region": region, "host": host}, "1s", t0 + i * 1000, mtype="d",
                        value=v, sketch=Sketch().add(v).to_bytes())
    storage.add("other", "latency", {"region": "eu", "host": "a"}, "1s", t0, mtype="d", value=7.0,
                sketch=Sketch().add(7.0).to_bytes())
    app = _app(QueryEngine(TallyConfig(), storage))
    status, body = _get(app, f'/api/v1/tally/histogram?match[]=latency{{region="eu"}}&start={t0 / 1000 - 10}'
                             f'&end={t0 / 1000 + 10}&step=1&tier=1s')
    assert status == 200 and body["status"] == "success"
    data = body["data"]
    expected = Sketch().add_many([1.0, 2.0, 3.0, 10.0, 20.0])
    assert (data["count"], data["series"], data["buckets"], data["tier"]) == (5, 2, 5, "1s")
    assert data["quantiles"] == {"p50": expected.quantile(0.5), "p90": expected.quantile(0.9),
                                 "p99": expected.quantile(0.99)}
    assert sum(b["count"] for b in data["bins"]) == 5

    status, body = _get(app, "/api/v1/tally/histogram?match[]=latency{")
    assert status == 400 and body["errorType"] == "bad_data" and "match[]" in body["error"]
    status, body = _get(app, "/api/v1/tally/histogram?match[]=sum(latency)")
    assert status == 400 and "series selector" in body["error"]
    status, body = _get(app, "/api/v1/tally/histogram?match[]=latency&tier=2s")
    assert status == 400 and "tier" in body["error"]
    status, body = _get(app, "/api/v1/tally/histogram?match[]=latency", tenant="bad tenant!")
    assert status == 400


@pytest.mark.parametrize("query", ["", "match[]=a&match[]=b", "match[]=x&start=abc", "match[]=x&start=10&end=5"])
def test_bad_parameters_are_400(query):
    status, body = _get(_app(), f"/api/v1/tally/histogram?{query}")
    assert status == 400 and body["status"] == "error", body
