"""jobs/aggregate.build() with an injected collection source and a collecting sink.

Runs the job's SQL (with the Java UDFs) on a local Flink mini-cluster: no Kafka, no
Cassandra.  The bounded source ends with a final watermark, so every window fires.
"""

from __future__ import annotations

import base64

import pytest

from jobs import aggregate
from tally import point as points
from tally.config import TallyConfig
from tally.schema import point_sql_columns
from tally.series import series_id
from tally.sketch import Sketch

pytestmark = pytest.mark.integration


def collection_source(env, rows):
    """A Source (see jobs/aggregate.py) over in-memory points, event time from ``ts``."""

    def register(t_env, cfg):
        from pyflink.common import Duration, Row, WatermarkStrategy
        from pyflink.common.typeinfo import Types
        from pyflink.common.watermark_strategy import TimestampAssigner
        from pyflink.table import DataTypes, Schema

        class EventTime(TimestampAssigner):
            def extract_timestamp(self, value, record_timestamp):
                return value["ts"]

        py_types = {"INT": Types.INT(), "STRING": Types.STRING(), "BIGINT": Types.LONG(),
                    "DOUBLE": Types.DOUBLE(), "BYTES": Types.PRIMITIVE_ARRAY(Types.BYTE()),
                    "ARRAY<BIGINT>": Types.BASIC_ARRAY(Types.LONG())}
        names = [n for n, _ in point_sql_columns()] + ["part"]
        types = [py_types[t] for _, t in point_sql_columns()] + [Types.INT()]

        def as_row(p):
            values = {**p, "sk": base64.b64decode(p["sk"]) if p["sk"] else None, "part": 0}
            return Row(**{n: values.get(n) for n in names})  # optional fields (rsids) absent: null

        stream = env.from_collection([as_row(r) for r in rows], Types.ROW_NAMED(names, types))
        stream = stream.assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(cfg.grace_seconds))
            .with_timestamp_assigner(EventTime()))
        schema = (Schema.new_builder()
                  .column_by_metadata("rt", DataTypes.TIMESTAMP_LTZ(3), "rowtime")
                  .column_by_expression("pt", "PROCTIME()")
                  .watermark("rt", "SOURCE_WATERMARK()").build())
        t_env.create_temporary_view("points", t_env.from_data_stream(stream, schema))
        return "points"

    return register


def test_build_computes_exact_buckets_for_every_tier():
    from pyflink.datastream import StreamExecutionEnvironment

    s1 = series_id("t", "m", {"h": "1"})
    s2 = series_id("t", "lat", {"h": "2"})
    rows = [points.from_value(s1, "c", ts, v, "p", i) for i, (ts, v) in
            enumerate([(1_000, 1.0), (9_999, 2.0), (10_000, 5.0), (4_000, 3.0)], start=1)]
    rows.append(dict(rows[0]))  # a replay of seq 1: dropped
    rows += [points.from_value(s2, "ms", 25_000 + i, float(v), "p", 10 + i) for i, v in enumerate([7.5, 2.0, 9.0])]

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    from pyflink.common.typeinfo import Types

    handed = []

    def collecting_sink(t_env, stream, cfg):
        # Through a Python map, as the real sink receives rows (the collect path of
        # PyFlink cannot convert a NULL BYTES field itself).
        handed.append(stream.map(lambda r: r.as_dict(), output_type=Types.PICKLED_BYTE_ARRAY()))

    aggregate.build(env, collection_source(env, rows), collecting_sink, TallyConfig(salt_buckets=2))
    assert handed, "the sink was handed the bucket stream"
    with handed[0].execute_and_collect() as results:
        got = list(results)
    from tally.bucketpack import unpack

    by_key = {}
    for r in got:  # bucket batches unpacked into rows with the bucket stream's column names
        if r["kind"] == "bucket":
            for sid, ts, cnt, total, vmin, vmax, vlast, last_ts, sk in unpack(r["batch"]).tuples():
                by_key[("bucket", r["tier"], sid, ts)] = {
                    "kind": "bucket", "tier": r["tier"], "sid": sid, "ts": ts, "cnt": cnt, "total": total,
                    "vmin": vmin, "vmax": vmax, "vlast": vlast, "last_ts": last_ts, "sk": sk}
        else:
            by_key[(r["kind"], r["tier"], r["sid"], r["ts"])] = r
    assert sum(1 for r in got if r["kind"] == "dup") == 1
    one = by_key[("bucket", "10s", s1.id, 0)]
    assert (one["cnt"], one["total"], one["vmin"], one["vmax"], one["vlast"]) == (3.0, 6.0, 1.0, 3.0, 2.0)
    assert by_key[("bucket", "1s", s1.id, 9_000)]["cnt"] == 1.0
    day = by_key[("bucket", "1d", s1.id, 0)]
    assert (day["cnt"], day["total"], day["vlast"]) == (4.0, 11.0, 5.0)
    lat = by_key[("bucket", "1m", s2.id, 0)]
    sketch = Sketch.from_bytes(lat["sk"])
    assert sketch == Sketch().add(7.5).add(2.0).add(9.0)
    assert (lat["cnt"], lat["vlast"], lat["last_ts"]) == (3.0, 9.0, 25_002)
    assert {tier for kind, tier, _, _ in by_key if kind == "bucket"} == {"1s", "10s", "1m", "1h", "1d"}


def test_build_aggregates_rollup_series_like_raw_series():
    """Points with rsids (tally.rollup) feed their own series and each rollup series; a point
    without rsids only its own.  The rollup buckets are the merge of the raw ones."""
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import StreamExecutionEnvironment

    from tally.bucketpack import unpack
    from tally.rollup import parse_rules

    rules = parse_rules({"rollups": [{"name": "by_region", "match": "lat", "by": ["region"]}]})
    hosts = [series_id("t", "lat", {"host": h, "region": "eu"}) for h in ("a", "b", "c")]
    plain = series_id("t", "other", {"host": "a"})
    rows, seq = [], 0
    for i, s in enumerate(hosts):
        for k in range(4):
            seq += 1
            rows.append(points.from_value(s, "ms", 1_000 + 2_000 * k + i, float(1 + i + 10 * k), "p", seq,
                                          rollups=rules.rollups(s)))
    seq += 1
    rows.append(points.from_value(plain, "ms", 1_500, 3.0, "p", seq))
    rows.append(dict(rows[0]))  # a replay: counted once, for the raw and the rollup series
    (rollup,) = {r for p in rows if "rsids" in p for r in p["rsids"]}

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    handed = []
    aggregate.build(env, collection_source(env, rows),
                    lambda t_env, stream, cfg: handed.append(
                        stream.map(lambda r: r.as_dict(), output_type=Types.PICKLED_BYTE_ARRAY())),
                    TallyConfig(salt_buckets=2))
    with handed[0].execute_and_collect() as results:
        got = list(results)
    buckets = {}
    for r in got:
        if r["kind"] == "bucket":
            for sid, ts, cnt, total, vmin, vmax, vlast, last_ts, sk in unpack(r["batch"]).tuples():
                buckets[(r["tier"], sid, ts)] = (cnt, total, vmin, vmax, vlast, last_ts, Sketch.from_bytes(sk))
    assert sum(1 for r in got if r["kind"] == "dup") == 1
    for tier in ("1s", "10s", "1m", "1h", "1d"):
        raw = [b for (t, sid, _), b in buckets.items() if t == tier and sid in {h.id for h in hosts}]
        mine = [b for (t, sid, _), b in buckets.items() if t == tier and sid == rollup]
        raw_total = (sum(b[0] for b in raw), sum(b[1] for b in raw), min(b[2] for b in raw), max(b[3] for b in raw))
        assert (sum(b[0] for b in mine), sum(b[1] for b in mine), min(b[2] for b in mine),
                max(b[3] for b in mine)) == raw_total == (12.0, 204.0, 1.0, 33.0), tier
    # The 10 s bucket: last by event time across the hosts, sketch = the merge of the hosts' sketches.
    cnt, total, vmin, vmax, vlast, last_ts, sketch = buckets[("10s", rollup, 0)]
    assert (vlast, last_ts) == (33.0, 7_002)
    merged = Sketch()
    for h in hosts:
        merged.merge(buckets[("10s", h.id, 0)][6])
    assert sketch == merged
    # The series without rsids has its own buckets and feeds no rollup.
    assert buckets[("1s", plain.id, 1_000)][0] == 1.0
