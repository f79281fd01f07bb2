"""HTTP routes of the dashboard (adapter): the page, its static files, and two small Tally
endpoints its panels need, in the Prometheus response envelope.

``GET /api/v1/tally/histogram?match[]=<selector>&start=&end=[&step=][&tier=]``
    the merged DDSketch of every matching series over the range (the tier the query API
    would choose for that step): bins ``{lo, hi, count}``, total count, p50/p90/p99.
``GET /api/v1/tally/quality?match[]=<selector>&start=&end=[&step=][&tier=]``
    the job's counters for the tenant (duplicates removed, rejected, late beyond grace),
    ingestion lag and points per second of the matching series (their 1 s buckets), and the
    status of the shown buckets (provisional / final / repaired; see ``tally.quality``).

Both read through the query engine's ``Storage`` (series index, Redis for recent buckets,
Cassandra for older ones) and the Redis data-quality hash; the tenant comes from the same
API-key check as the query API.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from datetime import datetime
from typing import Callable

from aiohttp import web

from tally.auth import AuthError, KeyRing
from tally.config import TallyConfig
from tally.dashboard import STATIC_DIR
from tally.promql.ast import VectorSelector
from tally.promql.errors import PromQLError
from tally.promql.parser import parse
from tally.quality import bucket_status, dq_counters, histogram, ingestion_figures
from tally.query.resolution import choose_tier
from tally.sketch import Sketch, SketchDecodeError
from tally.tiers import DEFAULT_TIERS, partition_start_ms

__all__ = ["dashboard_routes", "BadRequest", "RepairedReader"]

log = logging.getLogger(__name__)

MAX_SKETCHES = 200_000  # buckets merged by one histogram request; beyond: 422 with a hint


class BadRequest(ValueError):
    """A parameter that cannot be used (400 bad_data)."""


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"status": "error", "errorType": kind, "error": message}, status=status)


def _time_s(raw: str | None, name: str, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise BadRequest(f"invalid parameter {name!r}: cannot parse {raw!r} to a timestamp") from None
    if not math.isfinite(value):
        raise BadRequest(f"invalid parameter {name!r}: {raw!r} is not finite")
    return value


async def _params(request: web.Request) -> dict:
    merged = dict(request.query)
    matches = request.query.getall("match[]", [])
    if request.method == "POST":
        form = await request.post()
        merged.update({k: v for k, v in form.items() if k != "match[]"})
        matches = matches + form.getall("match[]", [])
    if len(matches) != 1:
        raise BadRequest("exactly one match[] selector is required, e.g. match[]=request_latency{region=\"eu\"}")
    now = time.time()
    end = _time_s(merged.get("end"), "end", now)
    start = _time_s(merged.get("start"), "start", end - 900)
    if end < start:
        raise BadRequest("invalid parameter 'end': end timestamp must not be before start time")
    step = _time_s(merged.get("step"), "step", max(1.0, (end - start) / 300))
    if step <= 0:
        raise BadRequest("invalid parameter 'step': zero or negative query resolution step widths are not accepted")
    try:
        node = parse(matches[0])
    except PromQLError as exc:
        raise BadRequest(f"invalid match[] {matches[0]!r}: {exc}") from None
    if not isinstance(node, VectorSelector) or not node.name:
        raise BadRequest(f"match[] must be a series selector with a metric name, got {matches[0]!r}")
    return {"selector": node, "start": start, "end": end, "step": step, "tier": merged.get("tier") or None,
            "now": now}


async def _matching(engine, tenant: str, sel: VectorSelector):
    # The engine's own selector resolution (series index + matchers), so the panels see
    # exactly the series a query of the same selector reads.
    return [meta for meta, _name, _suffix in await engine._resolve(tenant, sel, derived=False)]


def _tier(p: dict):
    try:
        return choose_tier(int(p["now"] * 1000), int(p["start"] * 1000), int(p["step"] * 1000),
                           forced=p["tier"])
    except KeyError as exc:
        raise BadRequest(f"invalid parameter 'tier': {exc.args[0] if exc.args else p['tier']}") from None


class RepairedReader:
    """Which buckets the nightly reconciliation rewrote (``repaired_ms`` set), read from
    Cassandra directly: the engine's storage serves bucket values, and Redis copies never
    carry the reconciliation column.  Bounded: at most ``max_series`` series per request."""

    def __init__(self, cfg: TallyConfig, max_series: int = 50):
        self.cfg = cfg
        self.max_series = max_series
        self._cluster = self._session = None
        self._statements: dict = {}
        self._lock = threading.Lock()

    def _read(self, tenant, tier, sids, start_ms, end_ms) -> list[float]:
        from cassandra.concurrent import execute_concurrent_with_args

        from tally.cql import connect
        from tally.schema import bucket_table

        with self._lock:
            if self._session is None:
                self._cluster, self._session = connect(self.cfg)
            stmt = self._statements.get(tier.name)
            if stmt is None:
                stmt = self._statements[tier.name] = self._session.prepare(
                    f"SELECT ts, repaired_ms FROM {self.cfg.keyspace}.{bucket_table(tier)} "
                    "WHERE tenant = ? AND sid = ? AND part = ? AND ts >= ? AND ts <= ?")
        parts = range(partition_start_ms(start_ms, tier), partition_start_ms(end_ms, tier) + 1, tier.partition_ms)
        args = [(tenant, sid, part, start_ms, end_ms) for sid in sids for part in parts]
        results = execute_concurrent_with_args(self._session, stmt, args, concurrency=32, raise_on_first_error=True)
        return sorted({row.ts / 1000 for _ok, rows in results for row in rows if row.repaired_ms})

    async def starts_s(self, tenant: str, tier, metas, start_ms: int, end_ms: int) -> list[float]:
        """Starts (epoch seconds) of repaired buckets of these series in [start, end]."""
        if len(metas) > self.max_series:
            raise ValueError(f"{len(metas)} series: more than {self.max_series} to check")
        if not metas:
            return []
        return await asyncio.to_thread(self._read, tenant, tier, [m.sid for m in metas], start_ms, end_ms)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = self._session = None


async def _job_figures(cfg: TallyConfig, now_s: float, warnings: list) -> tuple:
    """(Kafka consumer lag in records, event-time lag in seconds) of the aggregation job
    (tally.api.quality); None with a warning when Kafka or Flink cannot be asked."""
    from tally.api.quality import consumer_lag, job_watermark_ms

    out = []
    for name, probe in (("Kafka consumer lag", lambda: consumer_lag(cfg)["total"]),
                        ("job watermark", lambda: job_watermark_ms(cfg))):
        try:
            out.append(await asyncio.to_thread(probe))
        except Exception as exc:  # one component down: the rest of the panel still shows
            out.append(None)
            warnings.append(f"{name} unknown: {exc!r}"[:300])
    lag, watermark = out
    return lag, None if watermark is None else max(0.0, now_s - watermark / 1000.0)


def dashboard_routes(cfg: TallyConfig, engine, tenant_of: Callable[[web.Request], str] | None = None,
                     redis_client=None) -> tuple[list, Callable]:
    """The dashboard's routes over the query engine (``tally.query.engine.QueryEngine``) and
    its storage, and an async ``close()`` for the connections they open.

    ``tenant_of(request)`` returns the tenant or raises ``tally.auth.AuthError``; by default
    the API-key file of ``cfg`` decides, exactly as for the query API."""
    keyring = KeyRing.from_file(cfg.api_keys_file) if cfg.api_keys_file else KeyRing.open()
    tenant_of = tenant_of or (lambda request: keyring.authorize(request.headers, "read"))
    state = {"redis": redis_client}
    storage = engine.storage
    repaired_reader = RepairedReader(cfg)

    def redis():
        if state["redis"] is None:
            import redis.asyncio as aioredis

            state["redis"] = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=5)
        return state["redis"]

    def endpoint(fn):
        async def handler(request: web.Request) -> web.Response:
            try:
                tenant = tenant_of(request)
                data = await fn(tenant, await _params(request))
            except AuthError as exc:
                return _error(exc.status, "bad_data" if exc.status == 400 else "unauthorized", exc.message)
            except BadRequest as exc:
                return _error(400, "bad_data", str(exc))
            except PromQLError as exc:
                return _error(exc.status, exc.error_type, str(exc))
            except Exception as exc:  # storage unreachable or failing: say so, in the envelope
                log.warning("%s failed: %r", request.path, exc)
                return _error(503, "unavailable", f"storage error: {exc}")
            return web.json_response({"status": "success", "data": data})
        return handler

    async def hist(tenant: str, p: dict) -> dict:
        sel, tier = p["selector"], _tier(p)
        metas = await _matching(engine, tenant, sel)
        found, warnings = await storage.buckets(tenant, tier, metas, int(p["start"] * 1000), int(p["end"] * 1000),
                                                {"sketch", "count"})
        merged, buckets, undecodable = None, 0, 0
        for b in found.values():
            for raw in b.cols["sketch"]:
                if raw is None:
                    continue
                buckets += 1
                if buckets > MAX_SKETCHES:
                    raise BadRequest(f"more than {MAX_SKETCHES} sketches in range: choose a coarser resolution")
                try:
                    sk = Sketch.from_bytes(raw)
                except SketchDecodeError:
                    undecodable += 1  # counted and reported, never silently skipped
                    continue
                merged = sk if merged is None else merged.merge(sk)
        data = histogram(merged)
        data.update({"metric": sel.name, "series": len(metas), "buckets": buckets, "tier": tier.name,
                     "warnings": list(warnings) + ([f"{undecodable} undecodable sketches skipped"] if undecodable else [])})
        if merged is None:
            types = sorted({m.mtype or "g" for m in metas})
            data["message"] = (f"{sel.name} has no sketches in this range (metric type {', '.join(types) or 'unknown'}); "
                               "histograms need a timer or distribution") if metas else f"no series match {sel.name}"
        return data

    async def quality(tenant: str, p: dict) -> dict:
        from sinks.redis_cache import quality_key

        sel, tier = p["selector"], _tier(p)
        metas = await _matching(engine, tenant, sel)
        warnings = []
        try:
            counters = dq_counters(await redis().hgetall(quality_key(cfg.keyspace, tenant)))
        except Exception as exc:  # Redis down: the counters are unknown, the rest still shows
            counters = None
            warnings.append(f"data-quality counters unavailable (Redis): {exc!r}")
        finest = DEFAULT_TIERS[0]
        now_ms = int(p["now"] * 1000)
        # The newest 1 s buckets of the last 10 minutes (the Redis part of the tier).
        recent, read_warnings = await storage.buckets(tenant, finest, metas, now_ms - 600_000, now_ms, {"count"})
        warnings.extend(read_warnings)
        pairs = [(int(ts), float(c)) for b in recent.values() for ts, c in zip(b.ts, b.cols["count"])]
        lag, pps = ingestion_figures(pairs, now_ms, window_s=60, resolution_ms=finest.resolution_ms)
        repaired, repaired_known = [], True
        try:
            repaired = await repaired_reader.starts_s(tenant, tier, metas, int(p["start"] * 1000), int(p["end"] * 1000))
        except Exception as exc:  # Cassandra unreachable: the rest of the panel still shows
            repaired_known = False
            warnings.append(f"repaired buckets unknown: {exc!r}")
        status = bucket_status(p["start"], p["end"], tier.resolution_seconds, cfg.grace_seconds, p["now"], repaired)
        consumer, event_lag = await _job_figures(cfg, p["now"], warnings)
        return {"counters": counters, "ingestion_lag_seconds": lag, "points_per_second": pps,
                "kafka_consumer_lag_records": consumer, "event_time_lag_seconds": event_lag,
                "series": len(metas), "tier": tier.name, "grace_seconds": cfg.grace_seconds,
                "buckets": status, "provisional_from": status["provisional_from"],
                "repaired_known": repaired_known, "warnings": warnings}

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=(STATIC_DIR / "index.html").read_bytes(), content_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    async def close() -> None:
        repaired_reader.close()
        if state["redis"] is not None and redis_client is None:
            await state["redis"].aclose()

    h, q = endpoint(hist), endpoint(quality)
    routes = [
        web.get("/", index),
        web.static("/static", STATIC_DIR),
        web.get("/api/v1/tally/histogram", h), web.post("/api/v1/tally/histogram", h),
        web.get("/api/v1/tally/quality", q), web.post("/api/v1/tally/quality", q),
    ]
    return routes, close
