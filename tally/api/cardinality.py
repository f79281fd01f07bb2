"""Cardinality endpoints of the query API (adapter over the Cassandra series index).

``GET /api/v1/status/tsdb[?limit=N]``
    Prometheus' shape: ``headStats``, ``seriesCountByMetricName``,
    ``labelValueCountByLabelName``, ``seriesCountByLabelValuePair`` (top N, default 10).
``GET /api/v1/status/cardinality[?limit=N]``
    Tally's view (``tally.cardinality.report``): top N metrics by series, each with its
    labels by distinct values and its series added in the last hour; top labels; growth.
``GET /api/v1/status/cardinality/metrics[?limit=N]``
    the same figures in Prometheus text format.
``GET /cardinality``
    the dashboard page showing them (static/cardinality.html; its script and style come from
    ``/static``, which ``tally.dashboard.mount`` serves, as ``tally api`` does).

The tenant is the query API's (API key, ``X-Scope-OrgID``); only its rows are read.  The
index is scanned per request (every metric's partition, with ``WRITETIME(series)``), each
series' activity asked of Redis (does its ``ACTIVE_TIER`` sorted set of recent buckets exist:
one pipelined EXISTS per series; Redis unreachable = activity unknown) and the rows kept
``CACHE_SECONDS`` per tenant.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

from aiohttp import web

from tally.cardinality import IndexRow, render_metrics, report, tsdb_status
from tally.config import TallyConfig
from tally.dashboard import STATIC_DIR

__all__ = ["IndexReader", "cardinality_routes", "CACHE_SECONDS", "MAX_LIMIT"]

CACHE_SECONDS = 10.0
MAX_LIMIT = 1000
ACTIVE_TIER = "10s"  # its Redis sorted set expires 2 h after the series' last bucket (schemas/redis.json)


class IndexReader:
    """Reads a tenant's series index rows (name, tags, write time) from Cassandra and whether
    each series is active from Redis."""

    def __init__(self, cfg: TallyConfig, use_redis: bool = True):
        self.cfg = cfg
        self.use_redis = use_redis
        self._cluster = self._session = None
        self._stmt = None
        self._redis = None
        self._lock = threading.Lock()

    @property
    def active_window_s(self) -> int:
        from tally.schema import redis_layout

        return int(redis_layout()["keys"]["bucket"]["window_seconds"][ACTIVE_TIER])

    def _active(self, tenant: str, sids: list[int]) -> list[bool] | None:
        """Whether each series' recent-bucket key exists; None if Redis cannot be asked."""
        if not self.use_redis:
            return None
        import redis

        from sinks.redis_cache import bucket_key

        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.cfg.redis_url, socket_timeout=10, socket_connect_timeout=5)
            out: list[bool] = []
            for i in range(0, len(sids), 20_000):
                pipe = self._redis.pipeline(transaction=False)
                for sid in sids[i:i + 20_000]:
                    pipe.exists(bucket_key(self.cfg.keyspace, ACTIVE_TIER, tenant, sid))
                out.extend(bool(n) for n in pipe.execute())
            return out
        except redis.RedisError:
            return None

    def _rows(self, tenant: str) -> list[IndexRow]:
        from cassandra.concurrent import execute_concurrent_with_args

        from tally.cql import connect

        ks = self.cfg.keyspace
        with self._lock:
            if self._session is None:
                self._cluster, self._session = connect(self.cfg)
                self._stmt = self._session.prepare(
                    f"SELECT name, sid, tags, WRITETIME(series) AS w FROM {ks}.series WHERE tenant = ? AND name = ?")
        names = [r.name for r in self._session.execute(f"SELECT DISTINCT tenant, name FROM {ks}.series")
                 if r.tenant == tenant]
        results = execute_concurrent_with_args(self._session, self._stmt, [(tenant, n) for n in names],
                                               concurrency=16, raise_on_first_error=True)
        found = [r for _ok, rows in results for r in rows]
        active = self._active(tenant, [r.sid for r in found])
        return [IndexRow(r.name, r.tags or {}, r.w // 1000 if r.w is not None else None,
                         None if active is None else active[i]) for i, r in enumerate(found)]

    async def rows(self, tenant: str) -> list[IndexRow]:
        return await asyncio.to_thread(self._rows, tenant)

    async def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = self._session = None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "10")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIMIT:
        raise ValueError(f"invalid parameter 'limit': must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    return n


def cardinality_routes(source, tenant_of: Callable[[web.Request], str],
                       clock: Callable[[], float] = time.time) -> list:
    """The routes over ``source`` (``async rows(tenant) -> list[IndexRow]``, e.g.
    :class:`IndexReader`); ``tenant_of(request)`` authorizes (raises tally.auth.AuthError)."""
    from tally.auth import AuthError

    cache: dict = {}

    async def build(request: web.Request) -> dict:
        tenant = tenant_of(request)
        limit = _limit(request)
        hit = cache.get(tenant)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            rows = hit[1]
        else:
            rows = await source.rows(tenant)
            if len(cache) > 64:
                cache.clear()
            cache[tenant] = (time.monotonic(), rows)
        return report(tenant, rows, int(clock() * 1000), limit=limit,
                      active_window_s=getattr(source, "active_window_s", None))

    def endpoint(render):
        async def handler(request: web.Request) -> web.Response:
            try:
                rep = await build(request)
            except AuthError as exc:
                kind = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "bad_data")
                return web.json_response({"status": "error", "errorType": kind, "error": exc.message},
                                         status=exc.status)
            except ValueError as exc:
                return web.json_response({"status": "error", "errorType": "bad_data", "error": str(exc)}, status=400)
            except Exception as exc:  # index unreachable: say so in the envelope
                return web.json_response({"status": "error", "errorType": "unavailable",
                                          "error": f"series index: {type(exc).__name__}: {exc}"}, status=503)
            return render(rep)
        return handler

    def as_json(data) -> web.Response:
        return web.json_response({"status": "success", "data": data})

    def as_text(rep) -> web.Response:
        return web.Response(text=render_metrics(rep), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=(STATIC_DIR / "cardinality.html").read_bytes(), content_type="text/html",
                            charset="utf-8")

    return [
        web.get("/api/v1/status/tsdb", endpoint(lambda rep: as_json(tsdb_status(rep))), allow_head=False),
        web.get("/api/v1/status/cardinality", endpoint(as_json), allow_head=False),
        web.get("/api/v1/status/cardinality/metrics", endpoint(as_text), allow_head=False),
        web.get("/cardinality", page, allow_head=False),
    ]
