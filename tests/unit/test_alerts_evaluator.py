"""The alert evaluator over the real query engine (in-memory storage), with an injected clock:
rule groups evaluated, notifications produced once per transition, API handlers' format."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import make_mocked_request

from tally.alerts.evaluator import AlertEvaluator
from tally.alerts.rules import parse_rule_file
from tally.config import TallyConfig
from tally.query.engine import QueryEngine
from tally.query.storage import MemoryStorage

RULES = """
groups:
  - name: queues
    tenant: acme
    interval: 5s
    rules:
      - alert: QueueTooDeep
        expr: queue_depth > 100
        for: 10s
        labels: {severity: page}
        annotations: {summary: "{{ $labels.queue }} at {{ $value }}"}
"""


class RecordingSender:
    """Collects payloads instead of POSTing them (the HTTP sender is covered by the
    integration test with a real receiver)."""

    def __init__(self):
        self.sent = []

    async def send(self, payload):
        self.sent.append(payload)

    async def close(self):
        pass


def test_evaluator_drives_states_from_engine_results():
    storage = MemoryStorage()
    now = {"t": 1_000_000.0}
    cfg = TallyConfig()
    engine = QueryEngine(cfg, storage, clock=lambda: now["t"])
    sender = RecordingSender()
    ev = AlertEvaluator(cfg, engine, groups=parse_rule_file(RULES, "q.yml"), sender=sender, clock=lambda: now["t"])

    def gauge(ts_s, value, queue="jobs"):
        storage.add("acme", "queue_depth", {"queue": queue}, "1s", int(ts_s * 1000), mtype="g", value=value)

    async def step(ts_s):
        now["t"] = ts_s
        return await ev.evaluate_group(0)

    async def scenario():
        gauge(999_999, 500)
        gauge(999_999, 50, queue="mail")     # below the threshold: never alerts
        assert await step(1_000_000) == []   # pending
        state = ev.groups[0][3][0]
        assert state.state == "pending"
        gauge(1_000_009, 400)
        assert await step(1_000_010) != []   # 10 s: firing
        assert [p["status"] for p in sender.sent] == ["firing"]
        firing = sender.sent[0]["alerts"][0]
        assert firing["labels"] == {"alertname": "QueueTooDeep", "queue": "jobs", "severity": "page"}
        assert firing["annotations"] == {"summary": "jobs at 400"}
        assert await step(1_000_015) == []   # still firing (lookback keeps the 400): no repeat
        gauge(1_000_019, 20)
        assert (await step(1_000_020))[0]["status"] == "resolved"
        assert [p["status"] for p in sender.sent] == ["firing", "resolved"]
        assert sender.sent[1]["alerts"][0]["fingerprint"] == firing["fingerprint"]

        # /api/v1/rules and /api/v1/alerts, only for the tenant asking
        rules_h, alerts_h = [r.handler for r in ev.routes(tenant_of=lambda req: req.headers.get("X-Scope-OrgID"))]
        resp = await rules_h(make_mocked_request("GET", "/api/v1/rules", headers={"X-Scope-OrgID": "acme"}))
        body = json.loads(resp.body)
        rule = body["data"]["groups"][0]["rules"][0]
        assert (body["status"], rule["name"], rule["state"], rule["health"]) == ("success", "QueueTooDeep",
                                                                                  "inactive", "ok")
        other = json.loads((await rules_h(make_mocked_request("GET", "/api/v1/rules",
                                                              headers={"X-Scope-OrgID": "other"}))).body)
        assert other["data"]["groups"] == []
        bad = await rules_h(make_mocked_request("GET", "/api/v1/rules?type=nope", headers={"X-Scope-OrgID": "acme"}))
        assert bad.status == 400
        gauge(1_000_024, 900)
        await step(1_000_025)
        alerts = json.loads((await alerts_h(make_mocked_request("GET", "/api/v1/alerts",
                                                                headers={"X-Scope-OrgID": "acme"}))).body)
        assert [(a["state"], a["value"]) for a in alerts["data"]["alerts"]] == [("pending", "900")]

    asyncio.run(scenario())


def test_a_failing_rule_reports_its_error_and_others_still_run():
    rules = RULES + """      - alert: Broken
        expr: nosuchfunction(queue_depth)
"""
    cfg = TallyConfig()
    ev = AlertEvaluator(cfg, QueryEngine(cfg, MemoryStorage()), groups=parse_rule_file(rules),
                        sender=RecordingSender(), clock=lambda: 100.0)
    asyncio.run(ev.evaluate_group(0))
    ok, broken = ev.groups[0][3]
    assert ok.health == "ok" and broken.health == "err" and "nosuchfunction" in broken.last_error
