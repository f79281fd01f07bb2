"""The dashboard in headless Chromium against the real API on data sent through the pipeline.

Points go through Kafka and the aggregation job into Redis/Cassandra; ``tally api``'s app
(``make_app`` + ``mount``) serves the page and the Prometheus API.  Chromium (Debian's
package, driven over the DevTools protocol with aiohttp's websocket client) opens the page,
picks the metric and a tag filter and a group-by through the DOM, and the test reads back
what the chart plotted and what the histogram marked (``window.tally`` and the SVG), checks
them against what was sent, and saves a screenshot under ``.tally/artifacts/``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from tally.api.app import make_app
from tally.config import REPO_ROOT
from tally.dashboard.mount import mount
from tally.producer import PointProducer
from tally.series import series_id
from tally.sketch import Sketch

pytestmark = pytest.mark.integration

TENANT = "dash-it"
METRIC = "request_latency"
SECONDS = 60
ARTIFACTS = REPO_ROOT / ".tally" / "artifacts"


def _values(region: str, host: str, s: int) -> list[float]:
    """Three values per series and second; per-bucket means vary with the second."""
    base = {("eu", "a"): (10, 20, 30), ("eu", "b"): (40, 50, 60),
            ("us", "a"): (100, 200, 300), ("us", "b"): (400, 500, 600)}[(region, host)]
    shift = s % 7 if host == "a" else s % 3
    return [float(v + shift) for v in base]


class Chromium:
    """Headless Chromium over the DevTools protocol (one page)."""

    def __init__(self, width: int = 1400, height: int = 1100):
        self.width, self.height = width, height
        self.errors: list[str] = []

    async def __aenter__(self):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            pytest.fail("chromium not installed: ./dev setup installs Debian's chromium")
        self.profile = tempfile.mkdtemp(prefix="tally-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.http = ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            page = next(t for t in await resp.json() if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._id = 0
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def send(self, method: str, **params):
        self._id += 1
        my_id = self._id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(msg["params"]["exceptionDetails"])[:400])
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description")))
                                            for a in msg["params"]["args"]))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        res = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait_js(self, expression: str, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        state = await self.js("JSON.stringify({error: window.tally && window.tally.error, "
                              "status: document.getElementById('status').textContent})")
        raise AssertionError(f"timed out waiting for {what}; page: {state}; errors: {self.errors}")

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def __aexit__(self, *exc):
        try:
            await self.ws.close()
            await self.http.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


def _send(cfg) -> tuple[int, dict]:
    """Send SECONDS seconds of a distribution over 4 series, one replayed point and one point
    late beyond grace; returns (base ms, {(region, host): sent values})."""
    producer = PointProducer(cfg)
    now = int(time.time() * 1000)
    base = now - 150_000
    base -= base % 10_000
    sent = {}
    replay = None
    series = {(region, host): series_id(TENANT, METRIC, {"region": region, "host": host})
              for region in ("eu", "us") for host in ("a", "b")}
    try:
        # In event-time order across series, as agents send: series share Kafka partitions,
        # and one series' minute after another's would put the second minute's first
        # seconds beyond grace whenever a watermark is emitted between the two.
        for s in range(SECONDS):
            for (region, host), sid in series.items():
                for k, v in enumerate(_values(region, host, s)):
                    point = producer.emit(sid, "d", base + s * 1000 + k * 100, v)
                    sent.setdefault((region, host), []).append(v)
                    replay = replay or point
        producer.send(replay)  # the same point again (same producer id and sequence): a duplicate
        producer.tick(base + SECONDS * 1000 + 10_000)
        producer.flush()
        time.sleep(3)  # the job's watermark passes base + SECONDS + grace before the late point arrives
        late_sid = series_id(TENANT, METRIC, {"region": "eu", "host": "a"})
        producer.emit(late_sid, "d", base + 1000, 9999.0)  # its window closed long ago: beyond grace
        producer.tick(base + SECONDS * 1000 + 20_000)
        producer.flush()
    finally:
        producer.close()
    return base, sent


async def _serve(app):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def test_dashboard_shows_pipeline_data_in_chromium(pipeline):
    cfg, _job = pipeline
    base, sent = _send(cfg)
    asyncio.run(_scenario(dataclasses.replace(cfg), base, sent))


async def _wait_api(http, url, predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        async with http.get(url) as resp:
            last = await resp.json()
        if resp.status == 200 and predicate(last["data"]):
            return last["data"]
        await asyncio.sleep(1)
    raise AssertionError(f"timed out waiting for {what}: {last}")


async def _scenario(cfg, base, sent):
    app = make_app(cfg)
    mount(app, cfg)
    runner, url = await _serve(app)
    eu_values = sent[("eu", "a")] + sent[("eu", "b")]
    try:
        async with ClientSession(headers={"X-Scope-OrgID": TENANT}) as http:
            # The pipeline has written every bucket and counted the duplicate and the late point.
            window = f"start={base / 1000 - 60}&end={time.time() + 60}&step=1&tier=1s"
            for region, n in (("eu", len(eu_values)), ("us", len(sent[("us", "a")]) * 2)):
                await _wait_api(http, f'{url}/api/v1/tally/histogram?match[]={METRIC}{{region="{region}"}}&{window}',
                                lambda d, n=n: d["count"] == n, 180, f"{region} buckets")
            await _wait_api(http, f"{url}/api/v1/tally/quality?match[]={METRIC}&{window}",
                            lambda d: d["counters"]["duplicates_dropped"] == 1 and d["counters"]["late_beyond_grace"] == 1,
                            120, "the duplicate and late counters")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        async with Chromium() as page:
            await page.send("Page.navigate", url=f"{url}/?tenant={TENANT}")
            await page.wait_js("window.tally && window.tally.ready && window.tally.renders >= 1", 60, "first render")
            # Pick the metric, then the tag filter region=eu, as a user does (DOM change events).
            options = await page.js("[...document.querySelectorAll('#metric option')].map(o => o.value)")
            assert options == [METRIC]
            renders = await page.js("window.tally.renders")
            await page.js(f"""(() => {{ const m = document.getElementById('metric'); m.value = '{METRIC}';
                              m.dispatchEvent(new Event('change')); }})()""")
            await page.wait_js(f"window.tally.renders > {renders} && !!document.getElementById('filter-region')",
                               30, "the metric's chart and its filters")
            regions = await page.js("[...document.querySelectorAll('#filter-region option')].map(o => o.value)")
            assert regions == ["", "eu", "us"]
            renders = await page.js("window.tally.renders")
            await page.js("""(() => { const f = document.getElementById('filter-region'); f.value = 'eu';
                             f.dispatchEvent(new Event('change')); })()""")
            expr = f'sum({METRIC}{{region="eu"}})'
            await page.wait_js(f"window.tally.renders > {renders} && window.tally.chart.expr === {json.dumps(expr)}",
                               60, "the filtered chart")
            await _check_chart(page, base, group_by=None)
            await _check_histogram(page, eu_values)
            await _check_quality(page)

            # Group the filtered series by host: one line per host.
            renders = await page.js("window.tally.renders")
            await page.js("""(() => { const g = document.getElementById('groupby'); g.value = 'host';
                             g.dispatchEvent(new Event('change')); })()""")
            expr = f'sum by (host) ({METRIC}{{region="eu"}})'
            await page.wait_js(f"window.tally.renders > {renders} && window.tally.chart.expr === {json.dumps(expr)}",
                               60, "the grouped chart")
            await _check_chart(page, base, group_by="host")
            await _check_histogram(page, eu_values)
            shot = ARTIFACTS / "dashboard.png"
            await page.screenshot(shot)
            assert shot.stat().st_size > 10_000
            assert page.errors == [], page.errors
    finally:
        await runner.cleanup()


async def _check_chart(page: Chromium, base: int, group_by: str | None):
    chart = await page.js("window.tally.chart")
    assert chart["step"] == 5 and chart["tier"] == "1s"
    got = {s["label"]: dict(zip(chart["times"], s["values"])) for s in chart["series"]}
    if group_by is None:
        assert list(got) == ["{}"]
        expected = {"{}": lambda s: (20 + s % 7) + (50 + s % 3)}
    else:
        assert sorted(got) == ['{host="a"}', '{host="b"}']
        expected = {'{host="a"}': lambda s: 20 + s % 7, '{host="b"}': lambda s: 50 + s % 3}
    checked = 0
    for label, points in got.items():
        for t, v in points.items():
            s = int(t - base // 1000)
            if 0 <= s < SECONDS:  # steps inside the data (after it, the lookback repeats the last bucket)
                assert v == pytest.approx(expected[label](s)), (label, s, v)
                checked += 1
    assert checked == len(got) * SECONDS // 5
    # uPlot drew it: a canvas with coloured pixels, and one legend entry per series.
    drawn = await page.js("""(() => { const c = document.querySelector('#chart canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i+3] > 0 && !(d[i] > 240 && d[i+1] > 240 && d[i+2] > 240)) n++;
        return n; })()""")
    assert drawn > 1000
    legend = await page.js("[...document.querySelectorAll('#chart .u-legend .u-series')].length")
    assert legend == len(got) + 1  # the time column plus one per series


async def _check_histogram(page: Chromium, values: list[float]):
    expected = Sketch()
    for v in values:  # exactly as the points were built: one sketch per value, merged
        expected.merge(Sketch().add(v))
    hist = await page.js("window.tally.histogram")
    assert hist["count"] == len(values)
    svg_total = await page.js("[...document.querySelectorAll('#histogram rect.bar')]"
                              ".reduce((n, r) => n + Number(r.dataset.count), 0)")
    assert svg_total == len(values)
    marks = await page.js("Object.fromEntries([...document.querySelectorAll('#histogram g.q')]"
                          ".map(g => [g.dataset.q, Number(g.dataset.value)]))")
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert marks[name] == pytest.approx(expected.quantile(q), rel=1e-12), name
    # and they are within the sketch's 1 % of the exact sample quantiles
    ordered = sorted(values)
    assert marks["p50"] == pytest.approx(ordered[int(0.5 * (len(values) - 1))], rel=0.01)
    assert marks["p99"] == pytest.approx(ordered[int(0.99 * (len(values) - 1))], rel=0.01)


async def _check_quality(page: Chromium):
    q = await page.js("window.tally.quality")
    assert q["counters"]["duplicates_dropped"] == 1 and q["counters"]["late_beyond_grace"] == 1
    assert q["tier"] == "1s" and q["grace_seconds"] == 2
    b = q["buckets"]
    chart = await page.js("window.tally.chart")
    assert b["total"] == chart["end"] - chart["start"] + 1  # every 1 s bucket of the shown range
    assert b["final"] + b["provisional"] + b["repaired"] == b["total"] and b["repaired"] == 0
    # Only the newest buckets (end + grace 2 s not yet passed) are provisional; the range ends
    # on a 5 s step at or before now, so that is 0 to 3 of them.
    assert 0 <= b["provisional"] <= 3 and q["repaired_known"], q
    assert q["ingestion_lag_seconds"] is not None and q["ingestion_lag_seconds"] > 30
    rows = await page.js("Object.fromEntries([...document.querySelectorAll('#quality tr')]"
                         ".map(r => [r.dataset.key, r.lastChild.textContent]))")
    assert rows["duplicates_dropped"] == "1" and rows["late_beyond_grace"] == "1"
    assert "provisional" in rows["buckets"] and "final" in rows["buckets"]
