"""The ingest gateway's HTTP layer (aiohttp): thin handlers over tally.gateway.ingest.

Routes:
  POST /api/v1/write   Prometheus remote_write 1.0 (Snappy block + protobuf WriteRequest)
  POST /api/v1/push    JSON batch of points (README: "Ingest gateway")
  GET  /metrics        self-metrics, Prometheus text format
  GET  /-/healthy      process up;  GET /-/ready: 200 while the Kafka writer is healthy

Each write request: authorize (401/403/400) → read and decode the body (400/413/415) →
rate limit the tenant by its sample count (429 + Retry-After, nothing written) → validate
every sample (tally.limits) → write the valid ones and wait for Kafka's ack (503 +
Retry-After if not) → 200 if nothing was refused, else 400 after the valid samples were
written (what Prometheus and Mimir expect of a partly bad batch: not retried), with the
counts and reasons in the JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from tally import remote_write
from tally.auth import AuthError, KeyRing
from tally.config import TallyConfig
from tally.gateway.ingest import Batch, BodyError, SeriesCache, from_push, from_remote_write, load_push
from tally.gateway.metrics import GatewayMetrics
from tally.limits import Limits, RateLimiter, SeriesLimiter

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # compressed request body
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
TICK_INTERVAL_S = 1.0
OFFLOAD_DECODE_BYTES = 64 * 1024  # larger remote_write bodies are decoded on a worker thread


@dataclass
class Gateway:
    """Everything a request needs; built once per process (tests build their own)."""

    cfg: TallyConfig
    writer: Any  # tally.gateway.writer.PointWriter or a test double with async write() and tick()
    keyring: KeyRing
    limits: Limits
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    monotonic: Callable[[], float] = time.monotonic
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    def __post_init__(self):
        self.series_limiter = SeriesLimiter(self.limits, clock=self.monotonic)
        self.rate_limiter = RateLimiter.from_limits(self.limits, clock=self.monotonic)
        self.series_cache = SeriesCache()


GATEWAY = web.AppKey("gateway", Gateway)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> web.Response:
    return web.json_response({"status": "error", "error": message, **extra}, status=status, headers=headers)


def _auth_response(exc: AuthError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="tally", Basic realm="tally"'} if exc.status == 401 else None
    return _json_error(exc.status, exc.message, headers)


async def _ingest(request: web.Request, endpoint: str) -> web.Response:
    gw = request.app[GATEWAY]
    response = await _handle(gw, request, endpoint)
    gw.metrics.inc("tally_gateway_requests_total", endpoint=endpoint, status=str(response.status))
    return response


async def _handle(gw: Gateway, request: web.Request, endpoint: str) -> web.Response:
    try:
        tenant = gw.keyring.authorize(request.headers, "write")
    except AuthError as exc:
        return _auth_response(exc)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _json_error(413, f"request body larger than {MAX_BODY_BYTES} bytes")

    now_ms = gw.wall_ms()
    try:
        if endpoint == "write":
            encoding = request.headers.get("Content-Encoding", "snappy").strip().lower()
            if encoding != "snappy":
                return _json_error(415, f"Content-Encoding {encoding!r} not supported: remote_write bodies are "
                                        "snappy (block format)")
            if "io.prometheus.write.v2" in request.headers.get("Content-Type", ""):
                return _json_error(415, "remote_write 2.0 is not supported: send remote_write 1.0 "
                                        "(protobuf_message: prometheus.WriteRequest)")
            if len(body) > OFFLOAD_DECODE_BYTES:  # pure and stateless: keep the loop free meanwhile
                req = await asyncio.to_thread(remote_write.decode, body, MAX_DECOMPRESSED_BYTES)
            else:
                req = remote_write.decode(body, MAX_DECOMPRESSED_BYTES)
            received = sum(len(t.samples) + t.histograms for t in req.timeseries) + len(req.malformed)
        else:
            items = load_push(body)
            received = len(items)
    except (remote_write.DecodeError, BodyError) as exc:
        gw.metrics.inc("tally_gateway_samples_rejected_total", tenant=tenant, reason="malformed_body")
        return _json_error(400, f"malformed {'remote_write' if endpoint == 'write' else 'push'} body: {exc}")
    gw.metrics.inc("tally_gateway_samples_received_total", received, tenant=tenant, endpoint=endpoint)

    wait_s = gw.rate_limiter.take(tenant, received)
    if wait_s is not None:
        retry = max(1, math.ceil(wait_s))
        gw.metrics.inc("tally_gateway_samples_rejected_total", received, tenant=tenant, reason="rate_limited")
        return _json_error(429, f"tenant {tenant!r} is over its limit of {gw.limits.samples_per_second_per_tenant:g} "
                                f"samples/s ({received} in this request); retry in {retry} s",
                           {"Retry-After": str(retry)}, reason="rate_limited")

    if endpoint == "write":
        batch = from_remote_write(req, tenant, gw.limits, gw.series_limiter, now_ms, gw.series_cache)
    else:
        batch = from_push(items, tenant, gw.limits, gw.series_limiter, now_ms)

    from tally.gateway.writer import KafkaUnavailable

    try:
        # Idempotency-Key: a retry of the same body is counted once (the writer derives a
        # stable producer id from tenant, key and body; the job drops the replay).
        idem = idempotency_id(tenant, request.headers.get("Idempotency-Key"), body)
        await gw.writer.write(batch.accepted, **({"idempotency_id": idem} if idem else {}))
    except KafkaUnavailable as exc:
        retry = max(1, math.ceil(exc.retry_after_s))
        gw.metrics.inc("tally_gateway_samples_rejected_total", len(batch.accepted), tenant=tenant,
                       reason="kafka_unavailable")
        _count_rejections(gw, tenant, batch)
        return _json_error(503, f"{exc}; nothing of this request was written, retry in {retry} s",
                           {"Retry-After": str(retry)}, reason="kafka_unavailable")
    gw.metrics.inc("tally_gateway_samples_accepted_total", len(batch.accepted), tenant=tenant, endpoint=endpoint)
    _count_rejections(gw, tenant, batch)
    summary = batch.summary()
    if batch.rejected_total:
        return web.json_response({"status": "error", "error": _first_line(batch), **summary}, status=400)
    return web.json_response({"status": "success", **summary}, status=200)


def _count_rejections(gw: Gateway, tenant: str, batch: Batch) -> None:
    for reason, n in batch.rejected.items():
        gw.metrics.inc("tally_gateway_samples_rejected_total", n, tenant=tenant, reason=reason)
    gw.metrics.inc("tally_gateway_stale_markers_skipped_total", batch.stale, tenant=tenant)
    for reason, n in batch.dropped.items():
        gw.metrics.inc("tally_gateway_samples_dropped_total", n, tenant=tenant, reason=reason)


def idempotency_id(tenant: str, key: str | None, body: bytes) -> str | None:
    """The producer id of a request sent with an ``Idempotency-Key`` header (None without
    one): the same tenant, key and body give the same id, and the writer numbers the
    request's points 1..n under it, so every retry of that request is dropped by the job's
    replay rule.  The body is part of the id: a key reused for another body is counted,
    never silently dropped."""
    if not key:
        return None
    import hashlib

    digest = hashlib.sha256(b"\0".join((tenant.encode(), key.encode(), hashlib.sha256(body).digest())))
    return f"idem-{digest.hexdigest()[:32]}"


def _first_line(batch: Batch) -> str:
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(batch.rejected.items()))
    return f"{batch.rejected_total} sample(s) rejected ({reasons}); {len(batch.accepted)} accepted and written"


async def write_handler(request: web.Request) -> web.Response:
    return await _ingest(request, "write")


async def push_handler(request: web.Request) -> web.Response:
    return await _ingest(request, "push")


async def metrics_handler(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    gauges = {("tally_gateway_kafka_up", ()): 1.0 if getattr(gw.writer, "healthy", True) else 0.0}
    for tenant in gw.series_limiter.tenants():
        gauges[("tally_gateway_active_series", (("tenant", tenant),))] = gw.series_limiter.active(tenant)
    counters = GatewayMetrics()
    counters.counters.update(gw.metrics.counters)
    for (tenant, metric, label, reason), n in gw.series_limiter.rejections.items():
        counters.inc("tally_gateway_series_limited_total", n, tenant=tenant, metric=metric, label=label, reason=reason)
    for (tenant, metric, label, reason, action), n in gw.series_limiter.overflowed.items():
        counters.inc("tally_gateway_series_overflowed_total", n, tenant=tenant, metric=metric, label=label,
                     reason=reason, action=action)
    return web.Response(text=counters.render(gauges), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def healthy_handler(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def ready_handler(request: web.Request) -> web.Response:
    writer = request.app[GATEWAY].writer
    if getattr(writer, "healthy", True):
        return web.Response(text="ready\n")
    return web.Response(status=503, text=f"Kafka unavailable: {getattr(writer, 'last_error', '')}\n")


async def _ticker(gw: Gateway) -> None:
    """Move the job's event time even when traffic is thin: a watermark tick per second,
    trailing the wall clock by gateway_tick_lag_seconds (how late remote_write samples
    usually arrive; older ones become late points, counted and repaired by the job)."""
    lag_ms = gw.cfg.gateway_tick_lag_seconds * 1000
    while True:
        await asyncio.sleep(TICK_INTERVAL_S)
        try:
            gw.writer.tick(gw.wall_ms() - lag_ms)
        except Exception:  # a tick is retried a second later; never kill the loop
            log.exception("watermark tick failed")


def make_app(gateway: Gateway, ticks: bool = True) -> web.Application:
    """The aiohttp application for a gateway (ticks: run the watermark ticker)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[GATEWAY] = gateway
    app.router.add_post("/api/v1/write", write_handler)
    app.router.add_post("/api/v1/push", push_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/-/healthy", healthy_handler)
    app.router.add_get("/-/ready", ready_handler)

    if ticks:
        async def ticker_ctx(app: web.Application):
            task = asyncio.create_task(_ticker(app[GATEWAY]))
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(ticker_ctx)
    return app
