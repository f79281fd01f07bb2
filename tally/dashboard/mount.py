"""Mounting the dashboard and alerting on the query API's aiohttp app (``tally api``).

``mount(app, cfg)`` adds the dashboard's routes (the page at ``/``, static files,
``/api/v1/tally/*``) and the alert evaluator (``/api/v1/rules``, ``/api/v1/alerts`` and its
evaluation loop, started and stopped with the app), all over the app's own query engine
and tenant/key check, so they see exactly what the Prometheus API sees.
"""

from __future__ import annotations

from aiohttp import web

from tally.alerts.evaluator import AlertEvaluator
from tally.config import TallyConfig
from tally.dashboard.routes import dashboard_routes

EVALUATOR = web.AppKey("alert_evaluator", AlertEvaluator)


def mount(app: web.Application, cfg: TallyConfig) -> AlertEvaluator:
    """Add the dashboard and the alert evaluator to an app made by ``tally.api.make_app``."""
    from tally.api.app import ENGINE, authorize

    engine = app[ENGINE]
    routes, close = dashboard_routes(cfg, engine, tenant_of=authorize)
    app.add_routes(routes)

    async def close_dashboard(app):
        await close()

    app.on_cleanup.append(close_dashboard)
    from tally.api.quality import routes as quality_routes  # /api/v1/tally/dq, /metrics (data quality)

    app.add_routes(quality_routes(cfg, authorize))
    evaluator = AlertEvaluator(cfg, engine)
    app.add_routes(evaluator.routes(tenant_of=authorize))
    app.cleanup_ctx.append(evaluator.cleanup_ctx)
    app[EVALUATOR] = evaluator
    return evaluator
