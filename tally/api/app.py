"""Tally's Prometheus-compatible HTTP API (aiohttp), served by ``tally api``.

Endpoints (GET, and POST with a form body, as Prometheus): ``/api/v1/query``,
``/api/v1/query_range``, ``/api/v1/labels``, ``/api/v1/label/<name>/values``,
``/api/v1/series``, ``/api/v1/metadata``, ``/api/v1/status/buildinfo``.  Responses use
Prometheus' envelope ``{status, data, errorType, error, warnings}``: 400 ``bad_data`` for
bad parameters and unsupported PromQL, 422 ``execution`` for queries that cannot run,
503 ``timeout`` past the query timeout.  Query results carry the tier read in
``data.tier`` (and ``data.stats``), which Prometheus clients ignore.  Extra parameters:
``tier=1s|10s|1m|1h|1d`` forces a resolution, ``nocache=1`` bypasses the result cache.

Tenant and key: ``tally.auth.KeyRing.authorize(headers, "read")`` (``Authorization: Bearer``
or basic auth, tenant from ``X-Scope-OrgID`` or the key's default); every engine call is
made for that tenant only.

Mounting more routes (dashboard, alerts)::

    app = make_app(cfg, engine, extra_routes=[web.get("/", index)])
    engine = request.app[ENGINE]; tenant = authorize(request)
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from datetime import datetime
from typing import Iterable

from aiohttp import web

from tally.api.encode import encode_response, envelope, error_body
from tally.auth import AuthError, KeyRing
from tally.config import TallyConfig
from tally.promql.errors import PromQLError
from tally.promql.lexer import parse_duration_ms
from tally.query.engine import QueryEngine, QueryTimeout

log = logging.getLogger(__name__)

__all__ = ["make_app", "ENGINE", "KEYRING", "authorize", "ParamError", "BUILD_INFO"]

ENGINE = web.AppKey("engine", QueryEngine)
KEYRING = web.AppKey("keyring", KeyRing)
_RESPONSES = web.AppKey("responses", object)
_OPEN_RESPONSES = web.AppKey("open_responses", object)

# Grafana reads the version to pick Prometheus features; we answer as the Prometheus
# release whose API we follow (Debian bookworm's promtool is 2.42).
BUILD_INFO = {"version": "2.42.0", "revision": "tally", "branch": "main", "buildUser": "tally",
              "buildDate": "20260101-00:00:00", "goVersion": "tally (python)", "application": "tally"}


class ParamError(ValueError):
    """A bad request parameter (400 bad_data)."""


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(status: int, error_type: str, message: str) -> web.Response:
    return _json(error_body(error_type, message), status)


def authorize(request: web.Request) -> str:
    """The tenant this request reads (AuthError for 400/401/403)."""
    return request.app[KEYRING].authorize(request.headers, "read")


async def _params(request: web.Request):
    """Query string and form body merged (a MultiDict; form values after query values)."""
    from multidict import MultiDict

    merged = MultiDict(request.query)
    if request.method == "POST" and request.content_type in ("application/x-www-form-urlencoded",
                                                              "multipart/form-data"):
        form = await request.post()
        merged.extend(form)
    return merged


def parse_time(text: str, name: str) -> float:
    """Unix seconds (float) or RFC 3339, as Prometheus accepts."""
    try:
        value = float(text)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ParamError(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp') from None


def parse_duration_s(text: str, name: str) -> float:
    """Seconds (float) or a Prometheus duration like ``15s``."""
    try:
        value = float(text)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        return parse_duration_ms(text) / 1000.0
    except PromQLError:
        raise ParamError(f'invalid parameter "{name}": cannot parse "{text}" to a valid duration') from None


def _flag(params, name: str) -> bool:
    return params.get(name, "").lower() in ("1", "true", "yes")


class _ResponseCache:
    """Encoded bodies of results whose every step is closed (see tally.query.cache), or of
    ranges with open steps with the write counter read before their buckets: a repeated
    dashboard query is answered without evaluating or encoding again."""

    def __init__(self, max_entries: int, ttl_s: float):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        item = self._items.get(key)
        if item is None or time.monotonic() - item[0] > self.ttl_s:
            self._items.pop(key, None)
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key, body) -> None:
        self._items[key] = (time.monotonic(), body)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


def _handler(fn):
    """Common error mapping for every API handler."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await fn(request)
        except AuthError as exc:
            kind = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "bad_data")
            return _error(exc.status, kind, exc.message)
        except ParamError as exc:
            return _error(400, "bad_data", str(exc))
        except PromQLError as exc:
            return _error(exc.status, exc.error_type, str(exc))
        except QueryTimeout as exc:
            return _error(503, "timeout", str(exc))
        except web.HTTPException:
            raise
        except Exception as exc:  # storage down and the like: say so, keep serving
            log.exception("query failed")
            return _error(503, "unavailable", f"{type(exc).__name__}: {exc}")

    return wrapped


def _timeout(params, engine: QueryEngine) -> float:
    limit = engine.limits.timeout_s
    if params.get("timeout"):
        return min(limit, parse_duration_s(params["timeout"], "timeout"))
    return limit


@_handler
async def query(request: web.Request) -> web.Response:
    tenant = authorize(request)
    params = await _params(request)
    engine = request.app[ENGINE]
    expr = params.get("query")
    if not expr:
        raise ParamError('invalid parameter "query": missing')
    time_s = parse_time(params["time"], "time") if params.get("time") else None
    nocache = _flag(params, "nocache")
    key = ("q", tenant, expr, params.get("time"), params.get("tier"))
    cache = request.app[_RESPONSES]
    if time_s is not None and not nocache:
        body = cache.get(key)
        if body is not None:
            return _json(body)
    result = await engine.instant(tenant, expr, time_s, tier=params.get("tier") or None,
                                  timeout_s=_timeout(params, engine))
    body = encode_response(result)
    if result.closed and time_s is not None and not nocache:
        cache.put(key, body)
    return _json(body)


@_handler
async def query_range(request: web.Request) -> web.Response:
    tenant = authorize(request)
    params = await _params(request)
    engine = request.app[ENGINE]
    expr = params.get("query")
    if not expr:
        raise ParamError('invalid parameter "query": missing')
    for name in ("start", "end", "step"):
        if not params.get(name):
            raise ParamError(f'invalid parameter "{name}": missing')
    start = parse_time(params["start"], "start")
    end = parse_time(params["end"], "end")
    step = parse_duration_s(params["step"], "step")
    if end < start:
        raise ParamError('invalid parameter "end": end timestamp must not be before start time')
    if step <= 0:
        raise ParamError('invalid parameter "step": zero or negative query resolution step widths are not '
                         'accepted. Try a positive integer')
    nocache = _flag(params, "nocache")
    key = ("r", tenant, expr, start, end, step, params.get("tier"))
    cache = request.app[_RESPONSES]
    if not nocache:
        body = cache.get(key)
        if body is not None:
            return _json(body)
        # A range with open steps: the same response while nothing of its tier was written.
        hit = request.app[_OPEN_RESPONSES].get(key)
        if hit is not None and await engine.write_version(tenant, hit[0]) == hit[1]:
            return _json(hit[2])
    result = await engine.range(tenant, expr, start, end, step, tier=params.get("tier") or None,
                                timeout_s=_timeout(params, engine), use_cache=not nocache)
    body = encode_response(result)
    if result.closed and not nocache:
        cache.put(key, body)
    elif result.write_version is not None and not nocache:
        request.app[_OPEN_RESPONSES].put(key, (result.tier, result.write_version, body))
    return _json(body)


def _matches(params) -> list[str]:
    return params.getall("match[]", [])


@_handler
async def labels(request: web.Request) -> web.Response:
    tenant = authorize(request)
    params = await _params(request)
    names = await request.app[ENGINE].label_names(tenant, _matches(params))
    return _json(envelope(_dumps(names)))


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@_handler
async def label_values(request: web.Request) -> web.Response:
    tenant = authorize(request)
    params = await _params(request)
    name = request.match_info["name"]
    if not _LABEL_NAME.fullmatch(name):
        raise ParamError(f"invalid label name: {name!r}")
    values = await request.app[ENGINE].label_values(tenant, name, _matches(params))
    return _json(envelope(_dumps(values)))


@_handler
async def series(request: web.Request) -> web.Response:
    tenant = authorize(request)
    params = await _params(request)
    matches = _matches(params)
    if not matches:
        raise ParamError("no match[] parameter provided")
    for name in ("start", "end"):
        if params.get(name):
            parse_time(params[name], name)
    found = await request.app[ENGINE].find_series(tenant, matches)
    return _json(envelope(_dumps(found)))


@_handler
async def metadata(request: web.Request) -> web.Response:
    tenant = authorize(request)
    params = await _params(request)
    meta = await request.app[ENGINE].metadata(tenant, params.get("metric") or None)
    if params.get("limit"):
        try:
            limit = int(params["limit"])
        except ValueError:
            raise ParamError(f'invalid parameter "limit": {params["limit"]!r}') from None
        if limit >= 0:
            meta = dict(list(meta.items())[:limit])
    return _json(envelope(_dumps(meta)))


@_handler
async def buildinfo(request: web.Request) -> web.Response:
    return _json(envelope(_dumps(BUILD_INFO)))


def _dumps(value) -> bytes:
    import orjson

    return orjson.dumps(value)


def make_app(cfg: TallyConfig, engine: QueryEngine | None = None,
             extra_routes: Iterable[web.AbstractRouteDef] = (), keyring: KeyRing | None = None,
             cardinality_source=None) -> web.Application:
    """The aiohttp application: the Prometheus API plus ``extra_routes`` (dashboard, alerts).

    The cardinality view (``tally.api.cardinality``: ``/api/v1/status/tsdb``,
    ``/api/v1/status/cardinality``, its ``/metrics`` text and the ``/cardinality`` page) reads
    ``cardinality_source`` (default: the Cassandra series index, connected on first use).

    ``engine`` defaults to a QueryEngine over Cassandra + Redis (closed with the app);
    ``keyring`` to the key file ``cfg.api_keys_file`` (authentication off without one).
    """
    app = web.Application(client_max_size=8 * 1024 * 1024)
    own_engine = engine is None
    app[ENGINE] = engine or QueryEngine(cfg)
    if keyring is None:
        keyring = KeyRing.from_file(cfg.api_keys_file) if cfg.api_keys_file else KeyRing.open()
    app[KEYRING] = keyring
    app[_RESPONSES] = _ResponseCache(cfg.query_cache_max_entries, cfg.query_cache_ttl_seconds)
    # Ranges with open steps, kept while the tier's write counter is unchanged and at most
    # the settle time (a write Redis missed while it was down bumps no counter).
    app[_OPEN_RESPONSES] = _ResponseCache(cfg.query_cache_max_entries, cfg.query_cache_settle_seconds)
    routes = []
    for path, handler in (("/api/v1/query", query), ("/api/v1/query_range", query_range),
                          ("/api/v1/labels", labels), ("/api/v1/label/{name}/values", label_values),
                          ("/api/v1/series", series), ("/api/v1/metadata", metadata),
                          ("/api/v1/status/buildinfo", buildinfo)):
        routes.append(web.get(path, handler, allow_head=False))
        if "label/" not in path and "buildinfo" not in path and "metadata" not in path:
            routes.append(web.post(path, handler))
    app.add_routes(routes)
    app.add_routes(list(extra_routes))
    from tally.api.cardinality import IndexReader, cardinality_routes

    own_source = cardinality_source is None
    cardinality_source = cardinality_source or IndexReader(cfg)
    app.add_routes(cardinality_routes(cardinality_source, authorize))
    if own_source:
        async def close_source(app):
            await cardinality_source.close()

        app.on_cleanup.append(close_source)
    if own_engine:
        async def close_engine(app):
            await app[ENGINE].close()

        app.on_cleanup.append(close_engine)
    return app


def tune_memory() -> list[str]:
    """Keep a query's page faults off its latency (the tunings applied, named).

    A large range query allocates tens of MB of arrays and bytes, and each fresh page costs
    a fault.  Measured on a 1,000 series x 900 steps query and a 15 min x 20 series sketch
    percentile: (1) numpy asks the kernel for transparent huge pages for arrays of 4 MB and
    more (madvise); faulting them in cost 600-800 ms of kernel time in every twentieth or so
    query (130 ms without), so it is turned off; (2) glibc maps big blocks with mmap and
    returns freed heap tops to the kernel, so the next query faults the same memory back in
    (200-300 ms of kernel time in some queries, 30 ms without): blocks up to 32 MB come from
    the heap and up to 256 MB of free heap is kept."""
    import ctypes
    import ctypes.util

    import numpy as np

    done = []
    set_madvise = getattr(np.core.multiarray, "_set_madvise_hugepage", None)
    if set_madvise is not None:
        set_madvise(False)
        done.append("numpy huge pages off")
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        return done
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    if (mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20)
            and mallopt(m_top_pad, 64 << 20)):
        done.append("glibc keeps freed memory")
    return done


def run(cfg: TallyConfig, use_redis: bool = True) -> None:
    """Serve the API on ``cfg.host:cfg.ports.api`` until interrupted (``tally api``);
    ``use_redis=False`` reads every bucket from Cassandra (``tally api --no-redis``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("memory tuning: %s", ", ".join(tune_memory()) or "none (not glibc, old numpy)")
    from tally.dashboard.mount import mount  # dashboard at /, alert rules + /api/v1/rules|alerts
    from tally.query.store import BucketStore

    engine = QueryEngine(cfg, storage=BucketStore(cfg, use_redis=use_redis))
    app = make_app(cfg, engine)

    async def close_engine(app):
        await engine.close()

    app.on_cleanup.append(close_engine)
    mount(app, cfg)
    web.run_app(app, host=cfg.host, port=cfg.ports.api, print=lambda *_: None,
                access_log=None)
