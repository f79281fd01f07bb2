"""The rule evaluator (adapter): every group's rules are queried through the query engine on
the group's interval, the pure state machine (``tally.alerts.state``) advances, and due
notifications go to the webhooks.  Also serves ``/api/v1/rules`` and ``/api/v1/alerts``.

Wiring (``tally api``): ``AlertEvaluator(cfg, engine)``; add ``evaluator.routes()`` to the
app and ``evaluator.cleanup_ctx`` to ``app.cleanup_ctx`` so the loop runs with the server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Callable

from aiohttp import web

from tally.alerts.payload import alerts_data, rules_data, webhook_payload
from tally.alerts.rules import RuleGroup, load_rule_files
from tally.alerts.state import FIRING, RESOLVED, RuleState
from tally.alerts.webhook import WebhookSender
from tally.auth import AuthError
from tally.config import TallyConfig

log = logging.getLogger(__name__)


def samples_of(result) -> list[tuple[dict, float]]:
    """The (labels, value) pairs of an instant query result, as the state machine wants them.

    ``result`` is a ``tally.query.engine.QueryResult`` (labels + a series × steps matrix, NaN
    = no sample) or Prometheus JSON (``{"resultType", "result"}``).  A scalar result is one
    sample without labels (Prometheus refuses scalar alert expressions; Tally alerts on them
    like a one-element vector)."""
    if isinstance(result, dict):
        kind, res = result["resultType"], result["result"]
        if kind == "scalar":
            return [({}, float(res[1]))]
        if kind == "vector":
            return [(dict(s["metric"]), float(s["value"][1])) for s in res]
        raise ValueError(f"alert expression must give an instant vector, got a {kind}")
    if result.result_type not in ("vector", "scalar"):
        raise ValueError(f"alert expression must give an instant vector, got a {result.result_type}")
    out = []
    for labels, row in zip(result.labels, result.data):
        value = float(row[-1])
        if value == value:  # NaN: the series has no sample at this time
            out.append((dict(labels), value))
    return out


class AlertEvaluator:
    """Evaluates every rule group on its interval; holds the rule states."""

    def __init__(self, cfg: TallyConfig, engine, groups: tuple[RuleGroup, ...] | None = None,
                 sender: WebhookSender | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.engine = engine
        self.clock = clock
        groups = load_rule_files(cfg.alert_rules_files) if groups is None else groups
        self.groups = [
            (g, g.interval_seconds or cfg.alert_eval_interval_seconds, g.tenant or cfg.alert_default_tenant,
             [RuleState(r, g.labels) for r in g.rules])
            for g in groups
        ]
        self.sender = sender or WebhookSender(cfg.alert_webhook_urls, timeout_s=cfg.alert_webhook_timeout_seconds)
        self.external_url = cfg.alert_external_url or f"http://{cfg.host}:{cfg.ports.api}"
        self._tasks: list[asyncio.Task] = []
        self.evaluations = 0

    async def _query(self, tenant: str, expr: str, now_s: float):
        result = self.engine.instant(tenant, expr, now_s)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def evaluate_group(self, index: int, now_s: float | None = None) -> list[dict]:
        """Evaluate one group's rules at ``now_s`` (default: the clock); send and return the
        webhook payloads that became due."""
        group, _interval, tenant, states = self.groups[index]
        now_s = self.clock() if now_s is None else now_s
        payloads = []
        for st in states:
            started = time.perf_counter()
            try:
                notes = st.evaluate(samples_of(await self._query(tenant, st.rule.expr, now_s)), now_s)
            except Exception as exc:  # a bad query or the storage down: the rule reports it
                st.record_error(str(exc) or repr(exc), now_s)
                log.warning("alert rule %s/%s failed: %s", group.name, st.rule.name, exc)
                notes = []
            st.eval_duration_s = time.perf_counter() - started
            for status in (FIRING, RESOLVED):
                if any(n.status == status for n in notes):
                    payloads.append(webhook_payload(st.rule.name, st.rule.expr, notes, status, self.external_url))
        self.evaluations += 1
        for p in payloads:
            await self.sender.send(p)
        return payloads

    async def _loop(self, index: int) -> None:
        interval = self.groups[index][1]
        while True:
            started = self.clock()
            try:
                await self.evaluate_group(index, started)
            except Exception:  # never let one bad evaluation stop the loop
                log.exception("alert group %s evaluation failed", self.groups[index][0].name)
            await asyncio.sleep(max(0.0, interval - (self.clock() - started)))

    def start(self) -> None:
        """Start one evaluation loop per group on the running event loop."""
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._loop(i)) for i in range(len(self.groups))]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.sender.close()

    async def cleanup_ctx(self, app: web.Application):
        """aiohttp ``cleanup_ctx`` hook: run the loops while the app runs."""
        self.start()
        yield
        await self.stop()

    # -- HTTP: /api/v1/rules and /api/v1/alerts (Prometheus' response format) --------------

    def _groups_of(self, tenant: str | None):
        return [g for g in self.groups if tenant is None or g[2] == tenant]

    def routes(self, tenant_of: Callable[[web.Request], str] | None = None) -> list:
        """The two handlers; ``tenant_of(request)`` (the API's tenant/auth check) limits the
        answer to the rules reading that tenant's series."""

        def tenant(request):
            return tenant_of(request) if tenant_of else None

        def checked(fn):
            async def handler(request: web.Request) -> web.Response:
                try:
                    return await fn(request, tenant(request))
                except AuthError as exc:
                    return web.json_response({"status": "error", "errorType": "bad_data" if exc.status == 400
                                              else "unauthorized", "error": exc.message}, status=exc.status)
            return handler

        async def rules(request: web.Request, tenant_name: str | None) -> web.Response:
            kind = request.query.get("type")
            if kind not in (None, "", "alert", "record"):
                return web.json_response({"status": "error", "errorType": "bad_data",
                                          "error": f"unsupported type {kind!r}: expected alert or record"},
                                         status=400)
            data = rules_data([(g, iv, sts) for g, iv, _t, sts in self._groups_of(tenant_name)], kind or None)
            return web.json_response({"status": "success", "data": data})

        async def alerts(request: web.Request, tenant_name: str | None) -> web.Response:
            states = [st for _g, _iv, _t, sts in self._groups_of(tenant_name) for st in sts]
            return web.json_response({"status": "success", "data": alerts_data(states)})

        return [web.get("/api/v1/rules", checked(rules)), web.get("/api/v1/alerts", checked(alerts))]
