"""Write-through of recent buckets to Redis, and the data-quality counters.

Key layout from ``schemas/redis.json``: one sorted set per (tier, tenant, series) scored by
bucket start, trimmed to the tier's recent window and expiring with it.  A bucket is
replaced, never duplicated, when it is written again.
"""

from __future__ import annotations

import base64
import json

from tally.config import TallyConfig
from tally.schema import redis_layout


def bucket_key(keyspace: str, tier: str, tenant: str, sid: int) -> str:
    """The sorted set holding a series' recent buckets of one tier."""
    return redis_layout()["keys"]["bucket"]["pattern"].format(keyspace=keyspace, tier=tier, tenant=tenant, sid=sid)


def quality_key(keyspace: str, tenant: str) -> str:
    """The hash of a tenant's data-quality counters."""
    return redis_layout()["keys"]["quality"]["pattern"].format(keyspace=keyspace, tenant=tenant)


def encode_member(row) -> str:
    """The sorted-set member of a bucket: a JSON array (see schemas/redis.json)."""
    return encode_values(row.ts, row.count, row.sum, row.min, row.max, row.last, row.last_ts, row.sketch)


def encode_values(ts, count, total, vmin, vmax, last, last_ts, sketch) -> str:
    """encode_member from the bucket's values."""
    sk = base64.b64encode(sketch).decode() if sketch else None
    return json.dumps([ts, count, total, vmin, vmax, last, last_ts, sk], separators=(",", ":"))


def decode_member(member: str | bytes) -> dict:
    """Inverse of encode_member, as a dict with the bucket column names."""
    ts, count, total, vmin, vmax, last, last_ts, sketch = json.loads(member)
    return {"ts": ts, "count": count, "sum": total, "min": vmin, "max": vmax, "last": last,
            "last_ts": last_ts, "sketch": base64.b64decode(sketch) if sketch else None}


def bucket_windows_ms() -> dict[str, int]:
    """Each tier's recent window in Redis (schemas/redis.json), in milliseconds."""
    return {tier: seconds * 1000 for tier, seconds in redis_layout()["keys"]["bucket"]["window_seconds"].items()}


def _script_args(ts: int, member: str, window_ms: int) -> list:
    """ARGV of _WRITE_BUCKET: bucket start, member, oldest score kept, expiry."""
    return [ts, member, ts - window_ms, window_ms]


# One round trip and one command per bucket (a MULTI pipeline of four costs four times
# the client-side work): replace the bucket at ts, trim to the window, refresh the expiry.
_WRITE_BUCKET = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisBucketCache:
    """Async write-through of bucket rows (redis.asyncio), one script call per bucket."""

    def __init__(self, cfg: TallyConfig):
        import redis.asyncio as aioredis

        self._keyspace = cfg.keyspace
        self._client = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._write_bucket = self._client.register_script(_WRITE_BUCKET)
        self._window_ms = bucket_windows_ms()

    async def write(self, tier: str, tenant: str, row, now_ms: int) -> bool:
        """Write one bucket if it is recent for its tier; False when it is older than the
        tier's Redis window (a backlog being replayed: the query reads those from Cassandra)."""
        window_ms = self._window_ms[tier]
        if row.ts < now_ms - window_ms:
            return False
        key = bucket_key(self._keyspace, tier, tenant, row.sid)
        await self._write_bucket(keys=[key], args=_script_args(row.ts, encode_member(row), window_ms))
        return True

    async def count(self, tenant: str, field: str, amount: float = 1) -> None:
        await self._client.hincrbyfloat(quality_key(self._keyspace, tenant), field, amount)

    async def close(self) -> None:
        await self._client.aclose()


class RedisBucketWriter:
    """Blocking write-through of packed bucket batches (tally.bucketpack): one pipeline per
    batch, one script call per recent bucket.  Used by the job's batch sink."""

    def __init__(self, cfg: TallyConfig):
        import redis

        self._keyspace = cfg.keyspace
        self._client = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._write_bucket = self._client.register_script(_WRITE_BUCKET)
        self._window_ms = bucket_windows_ms()

    def write_batch(self, tier: str, tenant: str, batch, now_ms: int) -> int:
        """Write the batch's buckets that are recent for the tier (older ones are read from
        Cassandra); returns how many were written.  Raises redis errors to the caller."""
        window_ms = self._window_ms[tier]
        oldest = now_ms - window_ms
        pipe = self._client.pipeline(transaction=False)
        n = 0
        for sid, ts, count, total, vmin, vmax, last, last_ts, sketch in batch.tuples():
            if ts < oldest:
                continue
            member = encode_values(ts, count, total, vmin, vmax, last, last_ts, sketch)
            self._write_bucket(keys=[bucket_key(self._keyspace, tier, tenant, sid)],
                               args=_script_args(ts, member, window_ms), client=pipe)
            n += 1
        if n:
            pipe.execute()
        return n

    def count(self, tenant: str, field: str, amount: float = 1) -> None:
        """Add to a data-quality counter."""
        self._client.hincrbyfloat(quality_key(self._keyspace, tenant), field, amount)

    def close(self) -> None:
        self._client.close()


def delete_keyspace_keys(cfg: TallyConfig) -> int:
    """Remove every Redis key of the configured keyspace (tests clean up their own)."""
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{cfg.keyspace}:*", count=1000))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()
