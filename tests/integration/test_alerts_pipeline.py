"""An alert rule fires and resolves on data sent through the pipeline (Kafka → job →
Redis/Cassandra → query engine), and a real webhook receiver gets both notifications in
Alertmanager's format; /api/v1/alerts and /api/v1/rules show the states meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime

import pytest
from aiohttp import ClientSession, web

from tally.alerts.evaluator import AlertEvaluator
from tally.alerts.state import fingerprint
from tally.producer import PointProducer
from tally.query.engine import QueryEngine
from tally.series import series_id

pytestmark = pytest.mark.integration

TENANT = "alerts-it"
RULES = f"""
groups:
  - name: queues
    interval: 1s
    tenant: {TENANT}
    rules:
      - alert: QueueTooDeep
        expr: queue_depth{{queue="jobs"}} > 100
        for: 3s
        labels:
          severity: page
        annotations:
          summary: "queue {{{{ $labels.queue }}}} has {{{{ $value }}}} jobs"
"""


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _serve(app: web.Application):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_rule_fires_and_resolves_with_webhooks(pipeline, tmp_path):
    cfg, _job = pipeline
    asyncio.run(_scenario(cfg, tmp_path))


async def _scenario(cfg, tmp_path):
    received = []

    async def hook(request: web.Request) -> web.Response:
        received.append((time.time(), await request.json()))
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.add_routes([web.post("/hook", hook)])
    recv_runner, recv_url = await _serve(receiver)

    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    acfg = dataclasses.replace(cfg, alert_rules_files=(rules,), alert_webhook_urls=(f"{recv_url}/hook",))
    engine = QueryEngine(acfg)
    evaluator = AlertEvaluator(acfg, engine)
    api = web.Application()
    api.add_routes(evaluator.routes(tenant_of=lambda r: r.headers.get("X-Scope-OrgID", "default")))
    api.cleanup_ctx.append(evaluator.cleanup_ctx)
    api_runner, api_url = await _serve(api)
    producer = PointProducer(acfg)
    jobs = series_id(TENANT, "queue_depth", {"queue": "jobs"})
    mail = series_id(TENANT, "queue_depth", {"queue": "mail"})
    try:
        async with ClientSession(headers={"X-Scope-OrgID": TENANT}) as http:
            async def api_get(path):
                async with http.get(api_url + path) as resp:
                    assert resp.status == 200
                    return (await resp.json())["data"]

            # Phase 1: the jobs queue is deep (500) for 6 s, the mail queue is fine.
            t0 = int(time.time() * 1000) // 1000 * 1000
            for k in range(6):
                producer.emit(jobs, "g", t0 - 8000 + k * 1000, 500.0)
                producer.emit(mail, "g", t0 - 8000 + k * 1000, 3.0)
            producer.tick(t0)  # closes the windows up to t0 - grace
            await asyncio.to_thread(producer.flush)

            await _wait(lambda: any(p["status"] == "firing" for _, p in received), 150, "the firing webhook")
            fired_at = time.time()
            alerts = (await api_get("/api/v1/alerts"))["alerts"]
            assert [(a["state"], a["labels"]["queue"], a["value"]) for a in alerts] == [("firing", "jobs", "500")]
            rule = (await api_get("/api/v1/rules"))["groups"][0]["rules"][0]
            assert (rule["name"], rule["state"], rule["health"], rule["duration"]) == ("QueueTooDeep", "firing", "ok", 3.0)
            (state,) = evaluator.groups[0][3]
            (alert,) = state.alerts()
            # pending first, firing once 'for' (3 s) had passed
            assert alert.fired_at_s - alert.active_at_s >= 3.0

            # Phase 2: the queue drains (5): newer buckets, the alert resolves.
            t1 = int(time.time() * 1000) // 1000 * 1000
            assert t1 - 4000 > t0, "phase 2 points must be after the phase 1 tick"
            for k in range(3):
                producer.emit(jobs, "g", t1 - 4000 + k * 1000, 5.0)
            producer.tick(t1)
            await asyncio.to_thread(producer.flush)
            await _wait(lambda: any(p["status"] == "resolved" for _, p in received), 150, "the resolved webhook")
            assert (await api_get("/api/v1/alerts"))["alerts"] == []
    finally:
        producer.close()
        await api_runner.cleanup()
        await recv_runner.cleanup()
        await engine.close()

    statuses = [p["status"] for _, p in received]
    assert statuses == ["firing", "resolved"], statuses  # each transition notified exactly once
    firing, resolved = received[0][1], received[1][1]
    labels = {"alertname": "QueueTooDeep", "queue": "jobs", "severity": "page"}
    for body in (firing, resolved):
        assert body["version"] == "4" and body["groupLabels"] == {"alertname": "QueueTooDeep"}
        assert body["groupKey"] == '{}:{alertname="QueueTooDeep"}' and body["truncatedAlerts"] == 0
        assert body["commonLabels"] == labels
        (alert,) = body["alerts"]
        assert alert["labels"] == labels and alert["fingerprint"] == fingerprint(labels)
        assert alert["annotations"] == {"summary": "queue jobs has 500 jobs"}
        assert alert["generatorURL"].endswith("/?expr=queue_depth%7Bqueue%3D%22jobs%22%7D%20%3E%20100")
    # The firing notification came 'for' (3 s) after the alert first went pending.
    starts = _ts(firing["alerts"][0]["startsAt"])
    assert firing["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["alerts"][0]["startsAt"] == firing["alerts"][0]["startsAt"]
    assert starts <= fired_at and _ts(resolved["alerts"][0]["endsAt"]) > starts
