"""Write-through of recent buckets to Redis, and the data-quality counters.

Key layout from ``schemas/redis.json``: one sorted set per (tier, tenant, series) scored by
bucket start, trimmed to the tier's recent window and expiring with it.  A bucket is
replaced, never duplicated, when it is written again.

Members (version 2, ``member_header`` in the schema): a fixed little-endian header with the
bucket's values and the sketch length, then the raw sketch bytes.  The query reads a key's
members with one ``numpy.frombuffer`` (:func:`decode_members`) instead of parsing each one;
members of version 1 (JSON arrays, written before) are still decoded, so a Redis filled by
an older job is read correctly until its members age out of the window.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from functools import lru_cache

import numpy as np

from tally.config import TallyConfig
from tally.schema import redis_layout

log = logging.getLogger(__name__)

__all__ = ["bucket_key", "gap_key", "quality_key", "encode_member", "encode_values", "decode_member", "decode_members",
           "MEMBER_HEADER", "MEMBER_VERSION", "MemberDecodeError", "RedisBucketCache", "RedisBucketWriter",
           "bucket_windows_ms", "delete_keyspace_keys"]


@lru_cache(maxsize=1)
def _bucket_layout() -> dict:
    return redis_layout()["keys"]["bucket"]


MEMBER_VERSION: int = _bucket_layout()["member_version"]
MEMBER_HEADER = np.dtype([(name, kind) for name, kind in _bucket_layout()["member_header"]])
_FIELDS = ("ts", "count", "sum", "min", "max", "last", "last_ts")
_V1_FIRST_BYTE = ord("[")


class MemberDecodeError(ValueError):
    """A sorted-set member that is neither a version-2 header (+ sketch) nor a version-1 JSON array."""


def bucket_key(keyspace: str, tier: str, tenant: str, sid: int) -> str:
    """The sorted set holding a series' recent buckets of one tier."""
    return _bucket_layout()["pattern"].format(keyspace=keyspace, tier=tier, tenant=tenant, sid=sid)


def write_version_key(keyspace: str, tier: str, tenant: str) -> str:
    """The counter bumped after every write of a tenant's buckets of a tier (schemas/redis.json)."""
    return redis_layout()["keys"]["write_version"]["pattern"].format(keyspace=keyspace, tier=tier, tenant=tenant)


def gap_key(keyspace: str, tier: str, tenant: str) -> str:
    """The end of the newest bucket of a tier whose write-through failed (schemas/redis.json
    ``gap``): the query reads what starts before it from Cassandra."""
    return redis_layout()["keys"]["gap"]["pattern"].format(keyspace=keyspace, tier=tier, tenant=tenant)


def quality_key(keyspace: str, tenant: str) -> str:
    """The hash of a tenant's data-quality counters."""
    return redis_layout()["keys"]["quality"]["pattern"].format(keyspace=keyspace, tenant=tenant)


def encode_member(row) -> bytes:
    """The sorted-set member of a bucket (see schemas/redis.json)."""
    return encode_values(row.ts, row.count, row.sum, row.min, row.max, row.last, row.last_ts, row.sketch)


def encode_values(ts, count, total, vmin, vmax, last, last_ts, sketch) -> bytes:
    """encode_member from the bucket's values."""
    header = np.zeros(1, dtype=MEMBER_HEADER)
    header[0] = (MEMBER_VERSION, ts, count, total, vmin, vmax, last, last_ts, len(sketch) if sketch else 0)
    return header.tobytes() + (bytes(sketch) if sketch else b"")


def encode_rows(rows: np.ndarray, sketches) -> list[bytes]:
    """Members of many buckets at once: ``rows`` a record array with the fields ts, count,
    sum, min, max, last, last_ts (e.g. tally.bucketpack.RECORD), ``sketches`` bytes/None each."""
    header = np.zeros(len(rows), dtype=MEMBER_HEADER)
    header["version"] = MEMBER_VERSION
    for f in _FIELDS:
        header[f] = rows[f]
    header["sketch_length"] = [len(s) if s else 0 for s in sketches]
    blob = header.tobytes()
    size = MEMBER_HEADER.itemsize
    return [blob[i * size:(i + 1) * size] + (bytes(s) if s else b"") for i, s in enumerate(sketches)]


def _decode_v1(member: bytes) -> tuple:
    ts, count, total, vmin, vmax, last, last_ts, sketch = json.loads(member)
    return (MEMBER_VERSION, ts, count, total, vmin, vmax, last, last_ts), base64.b64decode(sketch) if sketch else None


def decode_members(members: list[bytes]) -> tuple[np.ndarray, list | None]:
    """A key's members (as ZRANGE returns them) as a MEMBER_HEADER record array and the
    sketches (a list of bytes/None, or None when no member has a sketch).

    Fast path: every member a sketch-less version-2 header, checked on the joined bytes
    (member i starts at i * header size exactly when every earlier one is sketch-less and
    version 2; a version-1 member starts with '[').  Anything else is decoded member by
    member.  Raises MemberDecodeError for a member of neither version."""
    size = MEMBER_HEADER.itemsize
    blob = b"".join(members)
    n = len(members)
    if len(blob) == n * size:
        rec = np.frombuffer(blob, dtype=MEMBER_HEADER)
        if (rec["version"] == MEMBER_VERSION).all() and not rec["sketch_length"].any():
            return rec, None
    # Version-2 members with sketches: the headers joined and read at once, lengths checked.
    heads = b"".join([m[:size] for m in members])
    if len(heads) == n * size:
        rec = np.frombuffer(heads, dtype=MEMBER_HEADER)
        lengths = np.fromiter(map(len, members), dtype=np.int64, count=n)
        if (rec["version"] == MEMBER_VERSION).all() and (lengths == size + rec["sketch_length"]).all():
            sketches = [bytes(m[size:]) or None for m in members]
            return rec, sketches if any(s is not None for s in sketches) else None
    rec = np.zeros(n, dtype=MEMBER_HEADER)
    sketches: list = [None] * n
    for i, m in enumerate(members):
        m = bytes(m)
        if m[:1] == bytes([MEMBER_VERSION]) and len(m) >= size:
            head = np.frombuffer(m, dtype=MEMBER_HEADER, count=1)[0]
            if len(m) != size + int(head["sketch_length"]):
                raise MemberDecodeError(f"member of {len(m)} bytes, header says sketch of {head['sketch_length']}")
            rec[i] = head
            sketches[i] = m[size:] or None
        elif m[:1] == bytes([_V1_FIRST_BYTE]):
            try:
                values, sketches[i] = _decode_v1(m)
            except (ValueError, TypeError) as exc:
                raise MemberDecodeError(f"bad version-1 member: {exc}") from None
            rec[i] = (*values, len(sketches[i]) if sketches[i] else 0)
        else:
            raise MemberDecodeError(f"unknown member version {m[:1]!r}")
    return rec, sketches if any(s is not None for s in sketches) else None


def decode_member(member: bytes) -> dict:
    """Inverse of encode_member (either version), as a dict with the bucket column names."""
    rec, sketches = decode_members([member])
    out = {f: rec[0][f].item() for f in _FIELDS}
    out["sketch"] = sketches[0] if sketches else None
    return out


def bucket_windows_ms() -> dict[str, int]:
    """Each tier's recent window in Redis (schemas/redis.json), in milliseconds."""
    return {tier: seconds * 1000 for tier, seconds in _bucket_layout()["window_seconds"].items()}


def _bulk(value) -> bytes:
    """One RESP bulk string: bytes as they are, anything else as its str()."""
    value = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack_command(args) -> bytes:
    """One command in RESP (the Redis protocol), arguments as bytes or str()-able values."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


def _bulk_column(values) -> list[bytes] | bytes:
    """RESP bulk strings of a column of arguments (a numpy array or a list), or of one
    argument every command shares (encoded once)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, list):
        return [_bulk(v) for v in values]
    return _bulk(values)


def _script_args(ts, member, window_ms: int) -> list:
    """ARGV of _WRITE_BUCKET: bucket start, member, oldest score kept, expiry.  For one bucket,
    or a batch's columns (ts a numpy array, member a list): the packed writer's order too."""
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


# KEYS: the gap key, the write counter; ARGV: end of the newest failed bucket, the tier's window.
_MARK_GAP = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('INCR', KEYS[2])
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
        await self._client.incr(write_version_key(self._keyspace, tier, tenant))
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
        self._mark_gap = self._client.register_script(_MARK_GAP)
        self._window_ms = bucket_windows_ms()
        try:  # so a first batch does not meet NOSCRIPT, go out twice and bump the version twice
            self._client.script_load(_WRITE_BUCKET)
        except Exception as exc:  # Redis down: a cache; the first batch that gets through loads it
            log.warning("redis script load failed (%r)", exc)

    def mark_gap(self, tier: str, tenant: str, until_ms: int) -> None:
        """Record that buckets of the tier ending at or before ``until_ms`` may be missing
        from Redis (their write-through failed), and bump the tier's write counter.  Raises
        redis errors to the caller."""
        self._mark_gap(keys=[gap_key(self._keyspace, tier, tenant), write_version_key(self._keyspace, tier, tenant)],
                       args=[int(until_ms), self._window_ms[tier]])

    def write_batch(self, tier: str, tenant: str, batch, now_ms: int) -> int:
        """Write the batch's buckets that are recent for the tier (older ones are read from
        Cassandra); returns how many were written.  Raises redis errors to the caller.

        The script calls go out as one RESP payload built here (redis-py's pipeline spent
        ~9 µs of Python per bucket packing them), then every reply is read."""
        window_ms = self._window_ms[tier]
        recent = np.flatnonzero(batch.rows["ts"] >= now_ms - window_ms)
        if not len(recent):
            return 0
        rows = batch.rows[recent]
        members = encode_rows(rows, [batch.sketches[i] for i in recent.tolist()])
        before, after = bucket_key(self._keyspace, tier, tenant, "\0").encode().split(b"\0")
        # EVALSHA sha 1 key ARGV...: the script's arguments a column at a time, in the order
        # _script_args gives them (a shared one is encoded once).
        argv = _script_args(rows["ts"].astype(np.int64), members, window_ms)
        head = pack_command([b"EVALSHA", self._write_bucket.sha, 1])
        head = b"*%d" % (4 + len(argv)) + head[head.index(b"\r\n"):]
        columns = [head, [_bulk(b"%s%d%s" % (before, sid, after)) for sid in rows["sid"].tolist()]]
        columns += [_bulk_column(arg) for arg in argv]
        shared = [isinstance(c, bytes) for c in columns]
        payload = [b"".join(parts) for parts in zip(*(itertools.repeat(c) if one else c
                                                      for c, one in zip(columns, shared)))]
        payload.append(pack_command([b"INCR", write_version_key(self._keyspace, tier, tenant)]))  # after the buckets
        self._execute_packed(b"".join(payload), len(payload))
        return len(members)

    def _execute_packed(self, payload: bytes, count: int) -> None:
        """Send ``count`` commands already in RESP and read every reply; the first error
        reply is raised (after all replies are read, so the connection stays in step).  A
        Redis that lost the script (restarted, SCRIPT FLUSH) gets it loaded again and the
        commands once more: they replace whole buckets, so a repeat is harmless."""
        from redis.exceptions import NoScriptError, ResponseError

        for attempt in (1, 2):
            pool = self._client.connection_pool
            conn = pool.get_connection()
            errors = []
            try:
                conn.send_packed_command([payload])
                for _ in range(count):
                    try:
                        conn.read_response()
                    except ResponseError as exc:
                        errors.append(exc)
            finally:
                pool.release(conn)
            if not errors:
                return
            if attempt == 1 and any(isinstance(e, NoScriptError) for e in errors):
                self._client.script_load(_WRITE_BUCKET)
                continue
            raise errors[0]

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
