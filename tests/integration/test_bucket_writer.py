"""The Cassandra bucket upserts (sinks.cassandra.BucketWriter.write_batch) on the real node:
a bucket without a sketch leaves the column unset (no tombstone per counter bucket), and a
repair that must drop a stored sketch clears it; the values serialized a column at a time are
byte for byte what the driver binds."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from sinks.cassandra import BucketRow, BucketWriter, drop_keyspace, ensure_schema
from tally.bucketpack import pack, unpack
from tally.cql import connect
from tally.schema import bucket_table
from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS, partition_start_ms

pytestmark = pytest.mark.integration

TIER = DEFAULT_TIERS[0]


@pytest.fixture
def keyspace_cfg(stack_cfg):
    cfg = dataclasses.replace(stack_cfg, keyspace=f"tally_bw_{uuid.uuid4().hex[:8]}")
    ensure_schema(cfg)
    yield cfg
    drop_keyspace(cfg)


def test_absent_sketch_is_left_unset_unless_a_repair_clears_it(keyspace_cfg):
    cfg = keyspace_cfg
    ts = int(time.time() * 1000) // 1000 * 1000 - 60_000
    sketch = Sketch()
    sketch.add(3.0)
    writer = BucketWriter(cfg)
    cluster, session = connect(cfg)
    select = (f"SELECT count, sum, sketch FROM {cfg.keyspace}.{bucket_table(TIER)} "
              f"WHERE tenant = %s AND sid = %s AND part = %s AND ts = %s")

    def stored(sid):
        return session.execute(select, ("acme", sid, partition_start_ms(ts, TIER), ts)).one()

    try:
        assert writer.write_batch(TIER.name, "acme", unpack(pack([
            (1, ts, 1.0, 3.0, 3.0, 3.0, 3.0, ts, sketch.to_bytes()),
            (2, ts, 2.0, 4.0, 2.0, 2.0, 2.0, ts, None),
        ]))) == 2
        assert stored(1).sketch == sketch.to_bytes()
        assert (stored(2).count, stored(2).sketch) == (2.0, None)

        # The stream's upsert without a sketch writes no null over the column ...
        writer.write_batch(TIER.name, "acme", unpack(pack([(1, ts, 5.0, 9.0, 1.0, 3.0, 3.0, ts, None)])))
        assert (stored(1).count, stored(1).sketch) == (5.0, sketch.to_bytes())
        # ... a repair replacing the whole bucket does.
        writer.write_batch(TIER.name, "acme", unpack(pack([(1, ts, 5.0, 9.0, 1.0, 3.0, 3.0, ts, None)])),
                           clear_absent_sketch=True)
        assert (stored(1).count, stored(1).sketch) == (5.0, None)

        # The row-at-a-time upsert (BucketWriter.write, the query benches' loader) follows the
        # same rule: a sketch-less row leaves a stored sketch alone.
        writer.write_batch(TIER.name, "acme", unpack(pack([(3, ts, 1.0, 3.0, 3.0, 3.0, 3.0, ts, sketch.to_bytes())])))
        assert writer.write(TIER.name, [BucketRow("acme", 3, ts, 2.0, 6.0, 3.0, 3.0, 3.0, ts)]) == 1
        assert (stored(3).count, stored(3).sketch) == (2.0, sketch.to_bytes())
    finally:
        writer.close()
        cluster.shutdown()


def test_values_serialized_a_column_at_a_time_are_what_the_driver_binds(keyspace_cfg):
    from cassandra.query import UNSET_VALUE

    ts = 1_700_000_123_000
    sketch = Sketch()
    sketch.add(-2.0)
    rows = [(-922337203685477580, ts, 1.0, -0.0, float("-inf"), 1e300, 2.5e-300, ts - 999, sketch.to_bytes()),
            (2**62, ts + 1000, 3.0, 7.25, 1.0, 4.0, 2.0, ts + 1500, None)]
    writer = BucketWriter(keyspace_cfg)
    try:
        for clear in (False, True):
            ours = writer.serialized_values(TIER.name, "acmé", unpack(pack(rows)), clear_absent_sketch=clear)
            statement = writer._statements[TIER.name]
            for row, got in zip(rows, ours):
                sid, t, count, total, vmin, vmax, last, last_ts, sk = row
                absent = None if clear else UNSET_VALUE
                expected = statement.bind(("acmé", sid, partition_start_ms(t, TIER), t, count, total, vmin, vmax,
                                           last, last_ts, absent if sk is None else sk, 0)).values
                assert got[:11] == expected[:11]
                assert abs(int.from_bytes(got[11], "big", signed=True) - time.time() * 1000) < 60_000
    finally:
        writer.close()


def test_series_index_batch_writes_the_valid_registrations_and_reports_each_invalid_one(keyspace_cfg):
    from tally.series import series_id

    cfg = keyspace_cfg
    a = series_id("acme", "http.requests", {"host": "a", "dc": "eu"})
    b = series_id("acme", "http.requests", {"host": "b"})
    other = series_id("acme", "queue.depth", {})
    registrations = [
        {"sid": a.id, "series": a.key, "type": "c"},
        {"sid": a.id, "series": a.key, "type": "c"},  # a replay: one row
        {"sid": b.id + 1, "series": b.key, "type": "c"},  # wrong sid
        {"sid": None, "series": other.key, "type": "g"},  # a field of the wrong type became null
        {"sid": 7, "series": "not a series key", "type": "g"},
        {"sid": b.id, "series": b.key, "type": "c"},
        *({"sid": s.id, "series": s.key, "type": "g"}
          for s in (series_id("acme", "queue.depth", {"q": str(i)}) for i in range(250))),
    ]
    writer = BucketWriter(cfg)
    cluster, session = connect(cfg)
    try:
        written, errors = writer.index_series_batch(registrations)
        assert written == 252 and len(errors) == 3
        assert str(b.id + 1) in errors[0] and "integer sid" in errors[1] and "not a series key" in errors[2]
        rows = session.execute(f"SELECT sid, series, tags, mtype FROM {cfg.keyspace}.series "
                               "WHERE tenant = 'acme' AND name = 'http.requests'")
        assert {(r.sid, r.series, tuple(sorted(r.tags.items())), r.mtype) for r in rows} == {
            (a.id, a.key, (("dc", "eu"), ("host", "a")), "c"), (b.id, b.key, (("host", "b"),), "c")}
        depth = session.execute(f"SELECT count(*) FROM {cfg.keyspace}.series "
                                "WHERE tenant = 'acme' AND name = 'queue.depth'").one()
        assert depth.count == 250
    finally:
        cluster.shutdown()
        writer.close()
