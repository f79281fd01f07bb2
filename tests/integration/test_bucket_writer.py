"""The Cassandra bucket upserts (sinks.cassandra.BucketWriter.write_batch) on the real node:
a bucket without a sketch leaves the column unset (no tombstone per counter bucket), and a
repair that must drop a stored sketch clears it."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from sinks.cassandra import BucketWriter, drop_keyspace, ensure_schema
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
    finally:
        writer.close()
        cluster.shutdown()
