"""Data-quality figures of a deployment, gathered from the real components (adapter).

``gather`` collects, for one tenant, everything ``tally.quality.dq_report`` turns into the
data-quality report: the job's counters (Redis hash ``<keyspace>:dq:<tenant>``), the Kafka
consumer lag of the job's group (end offsets minus the offsets Flink committed at its last
checkpoint), the job's event time (the lowest watermark of its operators, Flink REST) and
the tenant's points of the last minute (its 1 s buckets).  Routes:

``GET /api/v1/tally/dq``   the report as JSON (Prometheus envelope; tenant from the API key)
``GET /metrics``           the same figures in Prometheus text format (every tenant seen
                           in the dq hashes)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request

from tally.config import TallyConfig

log = logging.getLogger(__name__)

__all__ = ["consumer_lag", "job_watermark_ms", "job_records_per_second", "job_unparseable_records",
           "dq_counters_raw", "tenants", "gather", "routes"]


def consumer_lag(cfg: TallyConfig, group: str | None = None, topic: str | None = None) -> dict:
    """{"total", "partitions": {partition: lag}, "committed": partitions with a commit}:
    records of the points topic not yet covered by the group's committed offsets (a
    partition without a commit counts from its first offset)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    group = group or cfg.consumer_group
    topic = topic or cfg.points_topic
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="tally-dq", request_timeout_ms=5000)
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, client_id="tally-dq", group_id=None,
                             request_timeout_ms=5000)
    try:
        committed = {tp.partition: meta.offset for tp, meta in admin.list_group_offsets({group: None}).get(group, {}).items()
                     if tp.topic == topic and meta.offset >= 0}
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        end = consumer.end_offsets(parts)
        begin = consumer.beginning_offsets(parts)
    finally:
        consumer.close()
        admin.close()
    lags = {tp.partition: max(0, end[tp] - committed.get(tp.partition, begin[tp])) for tp in parts}
    return {"total": sum(lags.values()), "partitions": lags, "committed": len(committed)}


def _rest(cfg: TallyConfig, path: str):
    with urllib.request.urlopen(f"{cfg.flink_rest_url}{path}", timeout=5) as resp:
        return json.load(resp)


def _running_job(cfg: TallyConfig) -> str | None:
    from jobs.aggregate import job_name

    jobs = _rest(cfg, "/jobs/overview").get("jobs", [])
    return next((j["jid"] for j in jobs if j["name"] == job_name(cfg) and j["state"] == "RUNNING"), None)


def job_watermark_ms(cfg: TallyConfig) -> int | None:
    """The event time of the running aggregation job of this config: the lowest current
    input watermark over its operators (None: no such job, or no watermark yet)."""
    jid = _running_job(cfg)
    if jid is None:
        return None
    lowest = None
    for vertex in _rest(cfg, f"/jobs/{jid}").get("vertices", []):
        # Sources have no input watermark; every other operator's is what it has seen.
        for item in _rest(cfg, f"/jobs/{jid}/vertices/{vertex['id']}/watermarks"):
            value = int(float(item["value"]))
            if value <= 0 or value >= 2 ** 62:  # Long.MIN_VALUE before the first one; MAX at the end
                continue
            lowest = value if lowest is None else min(lowest, value)
    return lowest


def job_records_per_second(cfg: TallyConfig) -> float | None:
    """Records per second the running job's Kafka source emits (points and ticks), summed
    over its subtasks (Flink's numRecordsOutPerSecond, refreshed every few seconds)."""
    jid = _running_job(cfg)
    if jid is None:
        return None
    source = _rest(cfg, f"/jobs/{jid}").get("vertices", [])[0]
    found = _rest(cfg, f"/jobs/{jid}/vertices/{source['id']}/subtasks/metrics?get=numRecordsOutPerSecond&agg=sum")
    return float(found[0]["sum"]) if found else None


def job_unparseable_records(cfg: TallyConfig) -> float | None:
    """Records the running job's Kafka sources skipped because they were not a JSON object
    (format tally-json, metric tally.aggsql.UNPARSEABLE_METRIC), summed over its source
    subtasks; a Flink counter, so it starts again from 0 when the job restarts."""
    from tally.aggsql import UNPARSEABLE_METRIC

    jid = _running_job(cfg)
    if jid is None:
        return None
    total = 0.0
    for vertex in _rest(cfg, f"/jobs/{jid}").get("vertices", []):
        if not vertex["name"].startswith("Source"):  # the format runs in the source vertices only
            continue
        base = f"/jobs/{jid}/vertices/{vertex['id']}/subtasks/metrics"
        ids = [m["id"] for m in _rest(cfg, base) if m["id"].endswith("." + UNPARSEABLE_METRIC)
               or m["id"] == UNPARSEABLE_METRIC]
        if ids:
            found = _rest(cfg, f"{base}?get={','.join(ids)}&agg=sum")
            total += sum(float(item["sum"]) for item in found)
    return total


def dq_counters_raw(cfg: TallyConfig, tenant: str) -> dict:
    """The tenant's data-quality hash, as written by the job's sink."""
    import redis

    from sinks.redis_cache import quality_key

    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        return client.hgetall(quality_key(cfg.keyspace, tenant))
    finally:
        client.close()


def tenants(cfg: TallyConfig) -> list[str]:
    """Tenants with a data-quality hash."""
    import redis

    from sinks.redis_cache import quality_key

    prefix = quality_key(cfg.keyspace, "")
    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        return sorted(k.decode()[len(prefix):] for k in client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


def gather(cfg: TallyConfig, tenant: str) -> dict:
    """Raw inputs of ``tally.quality.dq_report`` for one tenant; a component that cannot be
    reached leaves its figure None and adds a warning (the rest is still reported)."""
    out: dict = {"tenant": tenant, "now_ms": int(time.time() * 1000), "warnings": []}
    for key, probe in (("counters", lambda: dq_counters_raw(cfg, tenant)), ("lag", lambda: consumer_lag(cfg)),
                       ("watermark_ms", lambda: job_watermark_ms(cfg)),
                       ("records_per_second", lambda: job_records_per_second(cfg)),
                       ("unparseable_records", lambda: job_unparseable_records(cfg))):
        try:
            out[key] = probe()
        except Exception as exc:  # noqa: BLE001 - one component down must not hide the others
            out[key] = None
            out["warnings"].append(f"{key} unavailable: {type(exc).__name__}: {exc}"[:300])
    return out


async def gather_async(cfg: TallyConfig, tenant: str) -> dict:
    """``gather`` on a worker thread (the clients are blocking)."""
    return await asyncio.to_thread(gather, cfg, tenant)


def routes(cfg: TallyConfig, tenant_of):
    """aiohttp routes: ``GET /api/v1/tally/dq`` (JSON, the caller's tenant) and
    ``GET /metrics`` (Prometheus text, every tenant with counters)."""
    from aiohttp import web

    from tally.auth import AuthError
    from tally.quality import dq_report, prometheus_text

    async def dq(request: web.Request) -> web.Response:
        try:
            tenant = tenant_of(request)
        except AuthError as exc:
            return web.json_response({"status": "error", "errorType": "unauthorized", "error": exc.message},
                                     status=exc.status)
        report = dq_report(await gather_async(cfg, tenant), cfg.grace_seconds)
        return web.json_response({"status": "success", "data": report})

    async def metrics(_request: web.Request) -> web.Response:
        def collect():
            names = tenants(cfg)
            base = gather(cfg, names[0] if names else "")
            reports = [dq_report(base, cfg.grace_seconds)] if names else []
            for name in names[1:]:
                try:
                    raw = dq_counters_raw(cfg, name)
                except Exception:  # noqa: BLE001 - Redis down: counters unknown
                    raw = None
                reports.append(dq_report({**base, "tenant": name, "counters": raw}, cfg.grace_seconds))
            if not names:  # job-wide figures still matter without any counter yet
                reports = [dq_report({**base, "tenant": ""}, cfg.grace_seconds)]
                for key in ("duplicates_dropped", "late_within_grace", "late_beyond_grace", "rejected_by_reason"):
                    reports[0][key] = None
            return prometheus_text(reports)

        text = await asyncio.to_thread(collect)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    return [web.get("/api/v1/tally/dq", dq), web.get("/metrics", metrics)]
