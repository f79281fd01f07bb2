"""Data-quality metrics against a known workload, read through the query API's own app
(``tally.api.make_app`` + ``tally.dashboard.mount``, as ``tally api`` serves them):
``GET /api/v1/tally/dq`` (JSON) and ``GET /metrics`` (Prometheus text).

Workload (private topics and keyspace, the aggregation job of the ``pipeline`` fixture):
200 points, then the same 200 points (same producer id and sequences) twice more, 3 points
late within grace (a later second was already seen, their 1 s bucket has not fired), 3
points late beyond grace (their 1 s buckets already fired), 4 records whose ``count`` is not
a number, 2 records that are not JSON at all.  Expected: duplicates dropped 400, late within
grace 3 (and in their bucket), late beyond grace 3, rejected 4 (reason malformed_record),
unparseable 2 more than before (a job-wide figure: such a record has no tenant), the
consumer lag reaches 0 once the job caught up and committed, and the job's event time is
the last tick minus the grace.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tally import point as points
from tally.producer import PointProducer
from tally.series import series_id
from tests.integration.truth import read_buckets, wait_for

pytestmark = pytest.mark.integration

BASE_MS = 1_609_459_200_000 + 3_600_000  # 2021-01-01T01:00Z: far from every other test's event time
TENANT = "dq-known"


def _send_workload(cfg) -> dict:
    s = series_id(TENANT, "dq.orders", {"shop": "x"})
    producer = PointProducer(cfg)
    sent = [producer.emit(s, "c", BASE_MS + i * 100, 1.0) for i in range(200)]
    producer.flush()
    for _ in range(2):
        producer.send_all(sent)  # the same points again, twice: 400 duplicates
    producer.emit(s, "c", BASE_MS + 37_000, 1.0)
    producer.tick(BASE_MS + 40_000)
    producer.flush()
    # Once the 1 s bucket at +37 s has fired, the job's watermark is 40 s - grace (2 s) = 38 s
    # (the only event times are the points' and the tick's): a point in [39 s, 40 s) is
    # behind the newest event time seen (40 s) but its bucket fires only at 39.999 s.
    assert cfg.grace_seconds == 2
    fired = wait_for(lambda: read_buckets(cfg, TENANT, [s.id], {("1s", s.id, BASE_MS + 37_000)}).get(
        ("1s", s.id, BASE_MS + 37_000)), timeout_s=120)
    assert fired is not None
    for k in range(3):
        producer.emit(s, "c", BASE_MS + 39_100 + k, 1.0)
    producer.flush()
    # Wait until the 1 s bucket at +5 s has fired, then send 3 points into it: beyond grace.
    fired = wait_for(lambda: read_buckets(cfg, TENANT, [s.id], {("1s", s.id, BASE_MS + 5_000)}).get(
        ("1s", s.id, BASE_MS + 5_000)), timeout_s=120)
    assert fired is not None
    for k in range(3):
        producer.emit(s, "c", BASE_MS + 5_100 + k, 1.0)
    # 4 records with a count that is not a number: rejected by the job.
    for k in range(4):
        bad = points.from_value(s, "c", BASE_MS + 41_000 + k, 1.0, producer.producer_id, producer.next_seq())
        bad["count"] = "many"
        producer.send_encoded(s.id, json.dumps(bad).encode())
    # 2 records that are not a JSON object: skipped by the source's format, and counted.
    for garbage in (b"count=many; not json", b"\x00\xff\xfe binary"):
        producer.send_encoded(s.id, garbage)
    last_tick = BASE_MS + 60_000
    producer.tick(last_tick)
    producer.flush()
    producer.close()
    return {"duplicates": 400, "grace": 3, "late": 3, "rejected": 4, "unparseable": 2, "last_tick": last_tick,
            "sid": s.id}


def _metric(text: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return None


def test_dq_metrics_match_a_known_workload(pipeline):
    from tally.api.app import make_app
    from tally.dashboard.mount import mount

    from tally.api.quality import job_unparseable_records

    cfg, _job_id = pipeline
    unparseable_before = job_unparseable_records(cfg)
    assert unparseable_before is not None  # the job runs
    expected = _send_workload(cfg)
    expected["unparseable"] += unparseable_before

    async def scenario():
        app = make_app(cfg)
        mount(app, cfg)
        async with TestClient(TestServer(app)) as client:
            async def report():
                resp = await client.get("/api/v1/tally/dq", headers={"X-Scope-OrgID": TENANT})
                assert resp.status == 200
                return (await resp.json())["data"]

            deadline = asyncio.get_running_loop().time() + 180
            while True:
                data = await report()
                done = (data["duplicates_dropped"] == expected["duplicates"]
                        and data["late_beyond_grace"] == expected["late"]
                        and data["late_within_grace"] == expected["grace"]
                        and (data["rejected_by_reason"] or {}).get("malformed_record") == expected["rejected"]
                        and data["kafka_consumer_lag_records"] == 0
                        and data["unparseable_records"] == expected["unparseable"]
                        and data["event_time_ms"] == expected["last_tick"] - cfg.grace_seconds * 1000)
                if done or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(2)
            resp = await client.get("/metrics")
            assert resp.status == 200 and resp.content_type == "text/plain"
            return data, await resp.text()

    data, text = asyncio.run(scenario())
    print(f"\ndata quality for a known workload: {json.dumps(data, sort_keys=True)}")
    assert data["duplicates_dropped"] == expected["duplicates"]
    assert data["late_beyond_grace"] == expected["late"]
    assert data["rejected_by_reason"] == {"malformed_record": expected["rejected"]}
    assert data["unparseable_records"] == expected["unparseable"]
    assert data["kafka_consumer_lag_records"] == 0, data["kafka_consumer_lag_by_partition"]
    assert data["event_time_ms"] == expected["last_tick"] - cfg.grace_seconds * 1000
    assert data["event_time_lag_seconds"] > 0 and data["points_per_second"] is not None
    assert data["late_within_grace"] == expected["grace"]
    in_grace = ("1s", expected["sid"], BASE_MS + 39_000)
    assert read_buckets(cfg, TENANT, [expected["sid"]], {in_grace})[in_grace].count == expected["grace"]
    assert data["warnings"] == []
    assert _metric(text, "tally_dq_duplicates_dropped_total", tenant=TENANT) == expected["duplicates"]
    assert _metric(text, "tally_dq_late_beyond_grace_total", tenant=TENANT) == expected["late"]
    assert _metric(text, "tally_dq_late_within_grace_total", tenant=TENANT) == expected["grace"]
    assert _metric(text, "tally_dq_rejected_total", tenant=TENANT, reason="malformed_record") == expected["rejected"]
    assert sum(_metric(text, "tally_dq_kafka_consumer_lag_records", partition=str(p)) or 0
               for p in range(cfg.kafka_partitions)) == 0
    assert _metric(text, "tally_dq_final_before_timestamp_seconds") == data["event_time_ms"] / 1000
    assert _metric(text, "tally_dq_unparseable_records_total") == expected["unparseable"]
    assert "# TYPE tally_dq_duplicates_dropped_total counter" in text
