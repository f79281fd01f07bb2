"""The job's Redis write-through (sinks.redis_cache.RedisBucketWriter) against the real Redis:
the hand-packed script calls replace whole buckets, skip what is older than the tier's
window, bump the write version once per batch, survive a Redis that lost the script, and an
error on one key costs no other bucket of the batch."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
import redis

from sinks.redis_cache import (RedisBucketWriter, bucket_key, bucket_windows_ms, decode_member,
                               delete_keyspace_keys, write_version_key)
from tally.bucketpack import pack, unpack
from tally.sketch import Sketch

pytestmark = pytest.mark.integration


@pytest.fixture
def writer_cfg(stack_cfg):
    cfg = dataclasses.replace(stack_cfg, keyspace=f"tally_rw_{uuid.uuid4().hex[:8]}")
    yield cfg
    delete_keyspace_keys(cfg)


def _members(client, cfg, tier, tenant, sid):
    return [decode_member(m) for m in client.zrange(bucket_key(cfg.keyspace, tier, tenant, sid), 0, -1)]


def test_batches_replace_buckets_skip_old_ones_and_bump_the_version(writer_cfg):
    cfg = writer_cfg
    client = redis.Redis.from_url(cfg.redis_url)
    sketch = Sketch()
    for v in (1.5, 2.5, 40.0):
        sketch.add(v)
    now = int(time.time() * 1000) // 1000 * 1000
    too_old = now - bucket_windows_ms()["1s"] - 5_000
    rows = [  # sid, ts, count, sum, min, max, last, last_ts, sketch
        (7, now - 2_000, 3.0, 44.0, 1.5, 40.0, 40.0, now - 1_500, sketch.to_bytes()),
        (-922337203685477580, now - 2_000, 1.0, 2.0, 2.0, 2.0, 2.0, now - 1_900, None),
        (8, too_old, 1.0, 1.0, 1.0, 1.0, 1.0, too_old, None),
    ]
    writer = RedisBucketWriter(cfg)
    try:
        assert writer.write_batch("1s", "acme", unpack(pack(rows)), now) == 2
        got = _members(client, cfg, "1s", "acme", 7)
        assert [(m["ts"], m["count"], m["sum"], m["min"], m["max"], m["last"], m["last_ts"]) for m in got] == [
            (now - 2_000, 3.0, 44.0, 1.5, 40.0, 40.0, now - 1_500)]
        assert Sketch.from_bytes(got[0]["sketch"]).count == 3
        assert [m["count"] for m in _members(client, cfg, "1s", "acme", -922337203685477580)] == [1.0]
        assert not client.exists(bucket_key(cfg.keyspace, "1s", "acme", 8))  # older than the window
        assert int(client.get(write_version_key(cfg.keyspace, "1s", "acme"))) == 1

        # The same bucket again with new values (a replay after a restart, a late point within
        # grace) replaces the member; a Redis that lost its scripts gets the script again.
        client.script_flush()
        again = [(7, now - 2_000, 4.0, 46.0, 1.5, 40.0, 2.0, now - 1_000, sketch.to_bytes())]
        assert writer.write_batch("1s", "acme", unpack(pack(again)), now) == 1
        assert [(m["count"], m["last"]) for m in _members(client, cfg, "1s", "acme", 7)] == [(4.0, 2.0)]
    finally:
        writer.close()


def test_an_error_on_one_key_is_raised_and_costs_no_other_bucket(writer_cfg):
    cfg = writer_cfg
    client = redis.Redis.from_url(cfg.redis_url)
    client.set(bucket_key(cfg.keyspace, "10s", "acme", 1), "not a sorted set")
    now = int(time.time() * 1000) // 10_000 * 10_000
    rows = [(sid, now - 10_000, 1.0, 5.0, 5.0, 5.0, 5.0, now - 9_000, None) for sid in (1, 2, 3)]
    writer = RedisBucketWriter(cfg)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            writer.write_batch("10s", "acme", unpack(pack(rows)), now)
        for sid in (2, 3):
            assert [m["sum"] for m in _members(client, cfg, "10s", "acme", sid)] == [5.0]
        # The connection is still in step: the next batch reads its own replies.
        assert writer.write_batch("10s", "acme", unpack(pack(rows[1:])), now) == 2
        assert int(client.get(write_version_key(cfg.keyspace, "10s", "acme"))) == 2
    finally:
        writer.close()


def test_mark_gap_keeps_the_latest_end_expires_with_the_window_and_bumps_the_version(writer_cfg):
    from sinks.redis_cache import gap_key

    cfg = writer_cfg
    client = redis.Redis.from_url(cfg.redis_url)
    writer = RedisBucketWriter(cfg)
    key, version = gap_key(cfg.keyspace, "10s", "acme"), write_version_key(cfg.keyspace, "10s", "acme")
    try:
        assert client.get(key) is None
        writer.mark_gap("10s", "acme", 1_700_000_020_000)
        assert int(client.get(key)) == 1_700_000_020_000 and int(client.get(version)) == 1
        writer.mark_gap("10s", "acme", 1_700_000_010_000)  # an older failure moves nothing back
        assert int(client.get(key)) == 1_700_000_020_000 and int(client.get(version)) == 2
        writer.mark_gap("10s", "acme", 1_700_000_030_000)
        assert int(client.get(key)) == 1_700_000_030_000
        assert 0 < client.pttl(key) <= bucket_windows_ms()["10s"]
        assert client.get(gap_key(cfg.keyspace, "1s", "acme")) is None  # per tier and tenant
    finally:
        writer.close()
        client.close()
