"""Reconciliation acceptance on the real stack: points through the streaming job (some beyond
grace, some replayed), the points topic archived, drift injected into Cassandra (buckets
deleted and corrupted), then ``reconcile`` (Flink batch) makes every bucket of every tier
equal the ground truth - late points included - with report counts that match what was
injected; a second run repairs nothing."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
import shutil
import time

import pytest

from reconcile import job
from reconcile.store import BucketStore
from tally import archive, jobctl
from tally.cql import connect
from tally.producer import PointProducer
from tally.series import series_id
from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS, partition_start_ms, tier_by_name
from tests.integration.truth import exact_quantile, expected_buckets, read_buckets, wait_for

pytestmark = pytest.mark.integration

DAY = dt.date(2020, 3, 1)
DAY_MS = 1_583_020_800_000  # 2020-03-01T00:00:00Z
TENANT = "t-reconcile"


def _events(rng):
    """(SeriesId, type, ts, value) on time: three hours of counters, a gauge and a timer."""
    reqs = [series_id(TENANT, "http.requests", {"host": h}) for h in ("a", "b")]
    depth = series_id(TENANT, "queue.depth", {"queue": "q"})
    latency = series_id(TENANT, "http.latency_ms", {"host": "a"})
    events = []
    for step in range(0, 3 * 3600, 37):
        t0 = DAY_MS + 3_600_000 + step * 1000 + rng.randint(0, 900)
        for s in reqs:
            events.append((s, "c", t0, float(rng.randint(1, 9))))
        events.append((depth, "g", t0 + 50, float(rng.randint(0, 100))))
        for k in range(rng.randint(1, 6)):
            events.append((latency, "ms", t0 + 100 + k * 13, round(rng.lognormvariate(3, 1), 3)))
    return [*reqs, depth, latency], events


def _truth(events):
    return expected_buckets([(s.id, ts, v, 1.0) for s, _t, ts, v in events])


def _read_late(cfg, want, timeout_s=120):
    """Records of our tenant on the late topic, once ``want`` of them are there."""
    from kafka import KafkaConsumer

    def read():
        consumer = KafkaConsumer(cfg.late_topic, bootstrap_servers=cfg.kafka_bootstrap, group_id=None,
                                 auto_offset_reset="earliest", consumer_timeout_ms=3000)
        try:
            found = [json.loads(m.value) for m in consumer]
        finally:
            consumer.close()
        found = [r for r in found if r["tenant"] == TENANT]
        return found if len(found) >= want else None

    return wait_for(read, timeout_s=timeout_s)


def _inject(cfg, stream_truth, rng):
    """Delete some stored buckets and corrupt others (count, sum, min, last, sketch) in every
    tier; returns (deleted keys, corrupted keys)."""
    keys = sorted(stream_truth)
    deleted, corrupted = set(), set()
    cluster, session = connect(cfg)
    try:
        for tier in DEFAULT_TIERS:
            mine = [k for k in keys if k[0] == tier.name]
            picked = rng.sample(mine, min(len(mine), 5))
            for key in picked[:2]:
                _t, sid, ts = key
                session.execute(f"DELETE FROM {cfg.keyspace}.buckets_{tier.name} WHERE tenant = %s AND sid = %s "
                                "AND part = %s AND ts = %s", (TENANT, sid, partition_start_ms(ts, tier), ts))
                deleted.add(key)
            for i, key in enumerate(picked[2:]):
                _t, sid, ts = key
                t = stream_truth[key]
                column, value = [("count", t["count"] + 1), ("sum", t["sum"] * 2 + 1), ("min", t["min"] - 5),
                                 ("last", t["last"] + 0.5)][(i + len(tier.name)) % 4]
                if t["values"] and len(set(t["values"])) > 1 and i == 0 and tier.name != "1s":
                    column, value = "sketch", Sketch().add(123456.0).to_bytes()
                session.execute(f"UPDATE {cfg.keyspace}.buckets_{tier.name} SET {column} = %s WHERE tenant = %s "
                                "AND sid = %s AND part = %s AND ts = %s",
                                (value, TENANT, sid, partition_start_ms(ts, tier), ts))
                corrupted.add(key)
    finally:
        cluster.shutdown()
    return deleted, corrupted


def _assert_equal_truth(cfg, series, truth):
    rows = read_buckets(cfg, TENANT, [s.id for s in series], truth)
    assert set(rows) == set(truth), (sorted(set(truth) - set(rows))[:5], sorted(set(rows) - set(truth))[:5])
    sketches = 0
    for key, t in truth.items():
        r = rows[key]
        assert (r.count, r.min, r.max, r.last) == (t["count"], t["min"], t["max"], t["last"]), key
        assert r.sum == pytest.approx(t["sum"], rel=1e-12, abs=1e-9), key
        if r.sketch is not None:
            sketch = Sketch.from_bytes(r.sketch)
            assert sketch.count == t["count"], key
            for q in (0.5, 0.9, 0.99, 0.999):
                assert sketch.quantile(q) == pytest.approx(exact_quantile(t["values"], q), rel=0.01), (key, q)
            sketches += 1
    return sketches


def test_reconcile_repairs_injected_drift_and_late_points(pipeline, tmp_path, capfd):
    stream_cfg, _job = pipeline
    cfg = dataclasses.replace(stream_cfg, home=tmp_path / "home", archive_uri=str(tmp_path / "archive"),
                              archive_group=stream_cfg.consumer_group + "-archive", archive_segment_records=1000)
    rng = random.Random(6)
    series, on_time = _events(rng)
    producer = PointProducer(cfg)
    sent = [producer.emit(s, mtype, ts, v) for s, mtype, ts, v in on_time]
    producer.send_all(sent[:40])  # replays of already sent points: dropped by the stream and the batch
    producer.tick(DAY_MS + 86_400_000 + 3_600_000)  # closes every window of the day, 1 d included
    producer.flush()
    stream_truth = _truth(on_time)
    got = wait_for(lambda: (lambda r: r if len(r) >= len(stream_truth) else None)(
        read_buckets(cfg, TENANT, [s.id for s in series], stream_truth)), timeout_s=240)
    assert got, "the stream did not write every bucket"

    # Beyond grace (every window of the day has fired): into seconds that have points, into
    # new seconds, and a series that only has late points.
    extra = series_id(TENANT, "jobs.failed", {})
    latest = max(ts for _s, _t, ts, _v in on_time)
    late = [(series[0], "c", on_time[10][2], 1000.0), (series[2], "g", on_time[300][2] + 1, -7.0),
            (series[3], "ms", on_time[500][2] + 2, 0.25), (series[1], "c", latest + 5_000, 3.0),
            (series[1], "c", DAY_MS + 5 * 3_600_000 + 42_000, 4.0), (extra, "c", DAY_MS + 7_200_321, 1.0),
            (extra, "c", DAY_MS + 7_260_000, 2.0)]
    for s, mtype, ts, v in late:
        producer.emit(s, mtype, ts, v)
    producer.flush()
    producer.close()
    assert len(_read_late(cfg, len(late))) == len(late), "late points did not reach the late topic"
    assert set(read_buckets(cfg, TENANT, [s.id for s in series], stream_truth)) == set(stream_truth)

    stats = archive.run(cfg, once=True)
    print(f"archive: {stats.summary()}")
    assert stats.rejected == 0 and stats.records >= len(sent) + 40 + len(late)

    deleted, corrupted = _inject(cfg, stream_truth, rng)
    truth = _truth(on_time + late)
    late_keys = set(_truth(late))
    want_missing = {k for k in truth if k in deleted or k not in stream_truth}
    want_drifted = {k for k in truth if k not in want_missing and (k in corrupted or k in late_keys)}

    period = job.Period(DAY)
    started = time.monotonic()
    report, path = job.run(cfg, period)
    took = time.monotonic() - started
    print("\n".join(report.lines()))
    print(f"first run: {took:.1f}s wall; injected {len(deleted)} deleted, {len(corrupted)} corrupted, "
          f"{len(late)} late points ({len(truth) - len(stream_truth)} buckets only they create)")
    assert path.is_file() and json.loads(path.read_text())["repaired"] == report.repaired
    assert report.checked == len(truth)
    assert report.missing == len(want_missing)
    assert report.drifted == len(want_drifted)
    assert report.repaired == len(want_missing) + len(want_drifted)
    assert report.duplicates == 40 and report.rejected == 0 and report.unexpected == 0
    assert report.largest_drift is not None and report.largest_drift["relative"] > 0
    assert report.notes == []  # the archive had caught up with the topic
    assert set(report.by_tier) == {t.name for t in DEFAULT_TIERS}

    # Every bucket of every tier equals the ground truth, late points included.
    sketches = _assert_equal_truth(cfg, series + [extra], truth)
    assert sketches > 0
    store = BucketStore(cfg, DEFAULT_TIERS)
    try:
        repaired = want_missing | want_drifted
        untouched = sorted(set(truth) - repaired)[:20]
        for tier in DEFAULT_TIERS:
            keys = [(t, TENANT, sid, ts) for t, sid, ts in sorted(repaired | set(untouched)) if t == tier.name]
            marks = store.repaired_marks(tier.name, keys)
            for (t, _tenant, sid, ts), mark in marks.items():
                assert (mark is not None) == ((t, sid, ts) in repaired), (t, sid, ts)
    finally:
        store.close()

    again, _ = job.run(cfg, period)
    print("second run:\n" + "\n".join(again.lines()))
    assert (again.checked, again.missing, again.drifted, again.repaired) == (len(truth), 0, 0, 0)

    # The same job on the Flink cluster (flink run -py reconcile/job.py), checking only.
    before = capfd.readouterr().out
    args = argparse.Namespace(date=f"{DAY}", hours=None, dry_run=True, schedule=None, keyspace=None,
                              archive_uri=None, on_cluster=True)
    try:
        assert job.execute(args, dataclasses.replace(cfg, home=stream_cfg.home)) == 0
    finally:
        shutil.rmtree(stream_cfg.data_dir / "reconcile" / cfg.keyspace, ignore_errors=True)
    out = capfd.readouterr().out
    with capfd.disabled():
        print(before + "on the cluster:\n" + out)
    assert f"buckets checked {len(truth)}, missing 0, drifted 0, repaired 0" in out
    # Its own restart limit, not the streaming job's 1,000 attempts (a repeating failure
    # surfaces in seconds).
    ran = [j["id"] for j in jobctl.list_jobs(stream_cfg) if j["name"] == job.job_name(cfg, period)]
    assert ran, jobctl.list_jobs(stream_cfg)
    restart = jobctl.execution_config(stream_cfg, ran[-1])["restart-strategy"]
    print("reconcile job restart strategy:", restart)
    assert "fixed delay" in restart.lower() and f"#{job.RESTART_ATTEMPTS} restart attempts" in restart, restart


def test_hours_limit_the_period_and_tiers():
    period = job.Period(DAY, job.parse_hours("3,4"))
    assert [t.name for t in period.tiers] == ["1s", "10s", "1m", "1h"]
    assert period.ranges_ms == [(DAY_MS + 3 * 3_600_000, DAY_MS + 5 * 3_600_000)]
    assert tier_by_name("1d") in job.Period(DAY).tiers
