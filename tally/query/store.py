"""The query engine's storage over Cassandra (all buckets) and Redis (recent buckets).

Reads, per series and tier, the buckets with start in [start, end]:

- **Split point.**  Redis keeps a tier's buckets of the last ``window_seconds``
  (schemas/redis.json): the sink writes every bucket younger than that (by its wall clock)
  and trims only older ones.  So with ``split = now - window + margin`` every bucket at or
  after ``split`` is in Redis and the range is read as Cassandra ``[start, split)`` +
  Redis ``[split, end]``: disjoint by bucket start, so nothing is counted twice, and
  adjacent, so nothing is missed.  ``margin`` (2 s) absorbs a sink clock slightly ahead.
- **Redis down** (connection refused, timeout): the Redis part is read from Cassandra too,
  a warning says so, and Redis is not tried again for ``redis_retry_s``.
- **Redis key missing** (evicted under ``maxmemory``, lost in a restart): a series with no
  bucket in Redis for ``[split, end]`` is read from Cassandra for that part too.
- **Dense reads.**  One prepared statement per (tier, columns) reads the same time slice of
  up to 50 partitions per request (``sid IN ?``, ~5,000 rows; never a query per bucket,
  and not one per series either: the driver's per-request cost dominated); requests run
  concurrently (bounded), decoded by the driver's NumPy protocol handler straight into
  arrays; only the columns the query needs are selected.  Redis: one pipelined
  ``ZRANGE BYSCORE`` per series; the members (fixed binary headers, schemas/redis.json)
  of every key decoded by one ``numpy.frombuffer`` (sinks.redis_cache.decode_members
  where some carry a sketch or are of the older JSON version).
- **Series index** (``<keyspace>.series``): per (tenant, name) partition, cached for
  ``index_ttl_s`` seconds; metric names from ``SELECT DISTINCT``.  Every statement binds
  the tenant, so no read reaches another tenant's rows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from typing import Sequence

import numpy as np

from sinks.redis_cache import (MEMBER_HEADER, MEMBER_VERSION, decode_members, gap_key, pack_command,
                                write_version_key)
from tally.config import TallyConfig
from tally.query.storage import Buckets, SeriesMeta
from tally.schema import bucket_table, redis_layout
from tally.tiers import DEFAULT_TIERS, Tier, partition_start_ms

log = logging.getLogger(__name__)

__all__ = ["BucketStore"]



class BucketStore:
    """:class:`tally.query.storage.Storage` over Cassandra + Redis (see module docstring)."""

    def __init__(self, cfg: TallyConfig, tiers: Sequence[Tier] = DEFAULT_TIERS, *, max_in_flight: int = 256,
                 index_ttl_s: float = 5.0, redis_margin_ms: int = 2000, redis_retry_s: float = 5.0,
                 use_redis: bool = True, clock=time.time, rows_per_request: int = 5_000,
                 max_sids_per_request: int = 50):
        self.cfg = cfg
        self.keyspace = cfg.keyspace
        self.tiers = {t.name: t for t in tiers}
        self.max_in_flight = max_in_flight
        self.index_ttl_s = index_ttl_s
        self.redis_margin_ms = redis_margin_ms
        self.redis_retry_s = redis_retry_s
        self.use_redis = use_redis
        self.clock = clock
        layout = redis_layout()["keys"]["bucket"]
        self._redis_pattern = layout["pattern"]
        self._redis_window_ms = {t: s * 1000 for t, s in layout["window_seconds"].items()}
        self._cluster = self._session = self._np_session = None
        self._redis = None
        self._raw = None
        self._redis_down_until = 0.0
        self._statements: dict = {}
        self._index_cache: dict = {}
        self._names_cache: dict = {}
        self._lock = asyncio.Lock()
        self.rows_per_request = rows_per_request
        self.max_sids_per_request = max_sids_per_request
        self.reads = {"cassandra_partitions": 0, "cassandra_requests": 0, "redis_keys": 0, "redis_fallbacks": 0,
                      "redis_misses": 0}

    # -- connections --------------------------------------------------------------------------

    async def _connect(self):
        async with self._lock:
            if self._session is None:
                await asyncio.to_thread(self._connect_sync)

    def _connect_sync(self):
        from cassandra.cluster import ExecutionProfile
        from cassandra.policies import RoundRobinPolicy
        from cassandra.protocol import NumpyProtocolHandler
        from cassandra.query import tuple_factory

        from tally.cql import connect

        cluster, session = connect(self.cfg)
        cluster.add_execution_profile("numpy", ExecutionProfile(
            load_balancing_policy=RoundRobinPolicy(), row_factory=tuple_factory, request_timeout=10))
        np_session = cluster.connect()
        np_session.client_protocol_handler = NumpyProtocolHandler
        np_session.default_fetch_size = None
        self._cluster, self._session, self._np_session = cluster, session, np_session
        try:
            self._index_stmt = session.prepare(
                f"SELECT sid, tags, mtype FROM {self.keyspace}.series WHERE tenant = ? AND name = ?")
            self._has_mtype = True
        except Exception:  # an index created before the mtype column: every series is a gauge
            self._index_stmt = session.prepare(
                f"SELECT sid, tags FROM {self.keyspace}.series WHERE tenant = ? AND name = ?")
            self._has_mtype = False

    def _raw_reader(self) -> "RawRangeReader":
        if self._raw is None:
            self._raw = RawRangeReader(self.cfg.redis_url)
        return self._raw

    def _redis_client(self):
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self.cfg.redis_url, socket_timeout=10, socket_connect_timeout=1)
        return self._redis

    async def close(self) -> None:
        if self._raw is not None:
            await self._raw.close()
            self._raw = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)
            self._cluster = self._session = self._np_session = None

    async def _execute(self, session, stmt, params, profile=None):
        from sinks.aio import callback_future

        kwargs = {"execution_profile": profile} if profile else {}
        future = session.execute_async(stmt, params, **kwargs)
        return await callback_future(future.add_callbacks)

    # -- series index -------------------------------------------------------------------------

    async def metric_names(self, tenant: str) -> list[str]:
        await self._connect()
        hit = self._names_cache.get(tenant)
        now = time.monotonic()
        if hit and now - hit[0] < self.index_ttl_s:
            return hit[1]
        stmt = f"SELECT DISTINCT tenant, name FROM {self.keyspace}.series"
        rows = await asyncio.to_thread(lambda: list(self._session.execute(stmt)))
        names = sorted({r.name for r in rows if r.tenant == tenant})
        self._names_cache[tenant] = (now, names)
        return names

    async def series(self, tenant: str, name: str) -> list[SeriesMeta]:
        await self._connect()
        key = (tenant, name)
        hit = self._index_cache.get(key)
        now = time.monotonic()
        if hit and now - hit[0] < self.index_ttl_s:
            return hit[1]
        rows = await self._execute(self._session, self._index_stmt, (tenant, name))
        metas = [SeriesMeta(r.sid, name, tuple(sorted((r.tags or {}).items())),
                            getattr(r, "mtype", None) if self._has_mtype else None) for r in rows]
        self._index_cache[key] = (now, metas)
        return metas

    # -- buckets ------------------------------------------------------------------------------

    async def buckets(self, tenant, tier, metas, start_ms, end_ms, columns, latest_only=False):
        await self._connect()
        columns = sorted(columns)
        warnings: list[str] = []
        window = self._redis_window_ms.get(tier.name)
        split = int(self.clock() * 1000) - window + self.redis_margin_ms if window else None
        use_redis = (self.use_redis and split is not None and end_ms >= split
                     and time.monotonic() >= self._redis_down_until)
        redis_part: dict = {}
        cass_end = end_ms
        if use_redis:
            try:
                # Buckets before a failed write-through's end may be missing from Redis keys
                # that hold their neighbours (schemas/redis.json ``gap``): Cassandra has them.
                gap = await self._get_int(gap_key(self.keyspace, tier.name, tenant))
                r_start = max(start_ms, split, gap or 0)
                if r_start <= end_ms:
                    redis_part = await self._read_redis(tenant, tier, metas, r_start, end_ms, columns, latest_only)
                cass_end = min(end_ms, r_start - 1)
            except Exception as exc:  # redis.exceptions.ConnectionError / TimeoutError and OSError
                self._redis_down_until = time.monotonic() + self.redis_retry_s
                self.reads["redis_fallbacks"] += 1
                log.warning("Redis read failed (%r): reading recent buckets from Cassandra", exc)
                warnings.append("redis unavailable: recent buckets read from Cassandra")
        elif self.use_redis and split is not None and end_ms >= split:
            warnings.append("redis unavailable: recent buckets read from Cassandra")
        cass_part: dict = {}
        if cass_end >= start_ms:
            todo = metas
            if latest_only:  # the newest bucket came from Redis where it had one
                todo = [m for m in metas if m.sid not in redis_part]
            cass_part = await self._read_cassandra(tenant, tier, todo, start_ms, cass_end, columns, latest_only)
        # A series with nothing in Redis for [split, end] may have had its key evicted (Redis
        # under maxmemory) or lost: read that part from Cassandra as well, so an eviction
        # costs speed, never a gap.  (Series without recent data pay one extra read.)
        missing = [m for m in metas if m.sid not in redis_part] if use_redis and cass_end < end_ms else []
        if missing:
            self.reads["redis_misses"] += len(missing)
            late = await self._read_cassandra(tenant, tier, missing, cass_end + 1, end_ms, columns, latest_only)
            for sid, b in late.items():
                a = cass_part.get(sid)
                if latest_only or a is None:
                    cass_part[sid] = b
                else:
                    cass_part[sid] = Buckets(np.concatenate([a.ts, b.ts]),
                                             {c: np.concatenate([a.cols[c], b.cols[c]]) for c in columns})
        out = {}
        for meta in metas:
            a, b = cass_part.get(meta.sid), redis_part.get(meta.sid)
            if a is not None and b is not None:
                out[meta.sid] = Buckets(np.concatenate([a.ts, b.ts]),
                                        {c: np.concatenate([a.cols[c], b.cols[c]]) for c in columns})
            elif a is not None or b is not None:
                out[meta.sid] = a if a is not None else b
        return out, warnings

    async def write_version(self, tenant: str, tier: str) -> int | None:
        """The tier's write counter for the tenant in Redis (schemas/redis.json
        ``write_version``), None when Redis is off, down or has none."""
        if not self.use_redis or time.monotonic() < self._redis_down_until:
            return None
        key = write_version_key(self.keyspace, tier, tenant)
        try:
            return await self._get_int(key)
        except Exception as exc:  # Redis down: unknown, and the bucket reads fall back
            log.warning("Redis read of %s failed (%r)", key, exc)
            return None

    async def _get_int(self, key: str) -> int | None:
        """An integer string key of Redis, None if absent; raises Redis errors."""
        raw = self._raw_reader()
        if raw.supported:
            value = (await raw.execute([[b"GET", key]]))[0]
        else:
            value = await self._redis_client().get(key)
        return None if value is None else int(value)

    def _statement(self, tier: Tier, columns: tuple, latest_only: bool):
        key = (tier.name, columns, latest_only)
        stmt = self._statements.get(key)
        if stmt is None:
            if latest_only:  # one partition: its newest bucket in the range
                cql = (f"SELECT sid, ts, {', '.join(columns)} FROM {self.keyspace}.{bucket_table(tier)} "
                       "WHERE tenant = ? AND sid = ? AND part = ? AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT 1")
            else:  # the same slice of many partitions (sid IN ...) in one request
                cql = (f"SELECT sid, ts, {', '.join(columns)} FROM {self.keyspace}.{bucket_table(tier)} "
                       "WHERE tenant = ? AND sid IN ? AND part = ? AND ts >= ? AND ts <= ?")
            stmt = self._np_session.prepare(cql)
            stmt.is_idempotent = True
            self._statements[key] = stmt
        return stmt

    async def _read_cassandra(self, tenant, tier, metas, start_ms, end_ms, columns, latest_only) -> dict:
        """Dense reads: one request reads the slice [start, end] of one partition span for a
        group of series (``sid IN (...)``, sized to ~rows_per_request rows); requests run
        concurrently; the NumPy protocol handler decodes each response into arrays."""
        if not metas:
            return {}
        stmt = self._statement(tier, tuple(columns), latest_only)
        first, last = partition_start_ms(start_ms, tier), partition_start_ms(end_ms, tier)
        parts = list(range(first, last + 1, tier.partition_ms))
        gate = asyncio.Semaphore(self.max_in_flight)
        sids = [m.sid for m in metas]

        async def read(params):
            async with gate:
                # No paging (default_fetch_size None): requests are sized to a bounded row count.
                page = await self._execute(self._np_session, stmt, params, "numpy")
                return page if isinstance(page, dict) and len(page.get("ts", ())) else None

        jobs = []
        if latest_only:
            jobs = [(tenant, sid, part, start_ms, end_ms) for sid in sids for part in reversed(parts)]
        else:
            for part in parts:
                lo, hi = max(start_ms, part), min(end_ms, part + tier.partition_ms - 1)
                rows_per_sid = max(1, (hi - lo) // tier.resolution_ms + 1)
                group = max(1, min(self.max_sids_per_request, self.rows_per_request // rows_per_sid))
                for i in range(0, len(sids), group):
                    jobs.append((tenant, sids[i:i + group], part, start_ms, end_ms))
        self.reads["cassandra_partitions"] += len(sids) * len(parts)
        self.reads["cassandra_requests"] += len(jobs)
        pages = [p for p in await asyncio.gather(*(read(j) for j in jobs)) if p is not None]
        if not pages:
            return {}
        sid_col = np.concatenate([np.ma.getdata(p["sid"]) for p in pages]).astype(np.int64)
        ts = np.concatenate([np.ma.getdata(p["ts"]) for p in pages]).astype(np.int64)
        cols = {}
        for c in columns:
            if c == "sketch":
                cols[c] = np.concatenate([np.asarray(p[c], dtype=object) for p in pages])
            else:
                cols[c] = np.concatenate([np.ma.filled(p[c].astype(float), np.nan) for p in pages])
        order = np.lexsort((ts, sid_col))
        sid_col, ts = sid_col[order], ts[order]
        cols = {c: v[order] for c, v in cols.items()}
        bounds = np.flatnonzero(np.diff(sid_col)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(ts)]))
        out = {}
        for a, b in zip(starts.tolist(), ends.tolist()):
            if latest_only:
                a = b - 1  # the newest bucket of the newest partition that had one
            out[int(sid_col[a])] = Buckets(ts[a:b], {c: v[a:b] for c, v in cols.items()})
        return out

    async def _read_redis(self, tenant, tier, metas, start_ms, end_ms, columns, latest_only) -> dict:
        if not metas:
            return {}
        self.reads["redis_keys"] += len(metas)
        before, after = self._redis_pattern.format(keyspace=self.keyspace, tier=tier.name, tenant=tenant,
                                                   sid="\0").encode().split(b"\0")
        keys = [b"%s%d%s" % (before, m.sid, after) for m in metas]
        raw = self._raw_reader()
        if raw.supported:
            if latest_only:
                payload = _pack_keyed([b"ZRANGE"], keys, [end_ms, start_ms, b"BYSCORE", b"REV", b"LIMIT", 0, 1])
            else:
                payload = _pack_keyed([b"ZRANGE"], keys, [start_ms, end_ms, b"BYSCORE"])
            return await raw.execute_packed(payload, len(keys),
                                            lambda replies: _decode_replies(metas, replies, columns))
        client = self._redis_client()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            if latest_only:
                pipe.zrange(key, end_ms, start_ms, byscore=True, desc=True, offset=0, num=1)
            else:
                pipe.zrange(key, start_ms, end_ms, byscore=True)
        replies = await pipe.execute()
        return _decode_replies(metas, replies, columns)


# A version-2 member without sketch as it arrives in a RESP array: "$61\r\n", header, "\r\n".
_WIRE = np.dtype([("prefix", "S5"), ("member", MEMBER_HEADER), ("crlf", "S2")])
_WIRE_PREFIX = b"$%d\r\n" % MEMBER_HEADER.itemsize
assert len(_WIRE_PREFIX) == 5


def _fixed_bytes() -> tuple[np.ndarray, np.ndarray]:
    """(positions, values) of the bytes every fast-path record has: the length prefix, the
    version, a zero sketch length and the CRLF."""
    member = _WIRE.fields["member"][1]
    version_at = member + MEMBER_HEADER.fields["version"][1]
    sketch_at = member + MEMBER_HEADER.fields["sketch_length"][1]
    crlf_at = _WIRE.fields["crlf"][1]
    at = list(range(5)) + [version_at] + list(range(sketch_at, sketch_at + 4)) + [crlf_at, crlf_at + 1]
    values = _WIRE_PREFIX + bytes([MEMBER_VERSION]) + bytes(4) + b"\r\n"
    return np.array(at), np.frombuffer(values, dtype=np.uint8)


_FIXED_AT, _FIXED = _fixed_bytes()


class _Incomplete(Exception):
    """More bytes are needed to parse the reply."""


class RawRangeReader:
    """Pipelined ZRANGE replies read straight off the socket (the query's Redis reads).

    redis-py builds a Python bytes object per member and spends ~0.1 ms per command; a
    query over 1,000 series × 900 buckets spent more time there than Redis did.  Here the
    commands of a query go out in one write and the replies are scanned in place: a reply
    whose members are all sketch-less version-2 headers is a fixed stride of
    ``_WIRE`` records (each length prefix checked), taken with one ``numpy.frombuffer``;
    any other reply (sketches, version-1 members) is parsed member by member.  Plain TCP
    ``redis://`` URLs with optional user/password/db; anything else (TLS, unix socket)
    is read through redis-py (``supported`` False)."""

    def __init__(self, url: str, timeout_s: float = 10.0, connect_timeout_s: float = 1.0):
        from redis.connection import parse_url

        opts = parse_url(url)
        self.supported = "connection_class" not in opts and "path" not in opts
        self.host, self.port = opts.get("host", "localhost"), int(opts.get("port", 6379))
        self.username, self.password, self.db = opts.get("username"), opts.get("password"), int(opts.get("db") or 0)
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._idle: list = []  # (socket, _Buffer)
        self.keep_buffer_bytes = 128 << 20

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout_s)
            setup = []
            if self.password is not None:
                setup.append([b"AUTH"] + ([self.username] if self.username else []) + [self.password])
            if self.db:
                setup.append([b"SELECT", self.db])
            if setup:
                sock.sendall(b"".join(pack_command(c) for c in setup))
                for reply in _read_replies(_Buffer(1 << 12), _receiver(sock, time.monotonic() + self.timeout_s),
                                           len(setup)):
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException:
            sock.close()
            raise
        return sock

    async def close(self) -> None:
        while self._idle:
            self._idle.pop()[0].close()

    async def execute(self, commands: list[list], decode=None):
        """Replies in order: a MEMBER_HEADER record array (fast path) or a list of member
        bytes per command; with ``decode``, what decode(replies) returns (the arrays are
        views on the connection's receive buffer, valid only inside decode).  Raises
        ConnectionError/TimeoutError/OSError like redis-py, and RedisReplyError for an
        error reply."""
        return await self.execute_packed(b"".join(pack_command(c) for c in commands), len(commands), decode)

    async def execute_packed(self, payload: bytes, n: int, decode=None):
        """execute() for n commands already in RESP (``pack_command``/``_pack_keyed``)."""
        return await asyncio.to_thread(self._exchange, payload, n, decode)

    def _exchange(self, payload: bytes, n: int, decode):
        """Send the pipeline, read its n replies and decode them on a blocking socket, in
        a worker thread: recv_into fills the connection's reused buffer (megabytes per
        call, the GIL released), where an asyncio stream read 256 KB per loop turn and
        copied each chunk twice."""
        while True:
            pooled = bool(self._idle)
            try:
                conn = self._idle.pop() if pooled else (self._open(), _Buffer())
            except IndexError:  # another thread took the last idle one
                continue
            sock, buf = conn
            try:
                sock.sendall(payload)
                replies = _read_replies(buf, _receiver(sock, time.monotonic() + self.timeout_s), n)
                break
            except TimeoutError:
                sock.close()
                raise
            except (ConnectionError, OSError):
                sock.close()
                if not pooled:
                    raise
                # An idle connection Redis closed (restart, timeout): the reads are
                # idempotent, so try again on a new one.
            except BaseException:
                sock.close()
                raise
        try:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            if decode is None:  # copies: the buffer is reused by the next exchange
                return [r.copy() if isinstance(r, np.ndarray) else r for r in replies]
            return decode(replies)
        finally:
            del replies
            if buf.size() <= self.keep_buffer_bytes:
                self._idle.append(conn)
            else:
                self._idle.append((sock, _Buffer()))


class _Buffer:
    """A growable receive buffer, reused across exchanges (no page faults, no copies)."""

    def __init__(self, size: int = 1 << 20):
        self.data = bytearray(size)
        self.filled = 0

    def size(self) -> int:
        return len(self.data)

    def fill(self, recv_into) -> int:
        if len(self.data) - self.filled < (1 << 16):
            self.data.extend(bytes(len(self.data)))
        with memoryview(self.data) as view:
            got = recv_into(view[self.filled:])
        self.filled += got
        return got


def _receiver(sock: socket.socket, deadline: float):
    """recv_into for _read_replies, TimeoutError past the deadline."""

    def recv_into(view) -> int:
        if time.monotonic() > deadline:
            raise TimeoutError("redis read timed out")
        return sock.recv_into(view)

    return recv_into


def _read_replies(buf: _Buffer, recv_into, n: int) -> list:
    """Parse n pipelined replies received into ``buf`` by recv_into(view) (0 = closed)."""
    buf.filled = 0
    pos, parsed = 0, []
    data = buf.data
    while len(parsed) < n:
        try:
            value, pos = _parse_reply(data, pos, buf.filled)
            parsed.append(value)
            continue
        except _Incomplete:
            pass
        if not buf.fill(recv_into):
            raise ConnectionError("redis closed the connection")
        data = buf.data
    # The record arrays are views on the buffer (no copy of the replies).
    return [np.frombuffer(data, dtype=_WIRE, count=v[1], offset=v[0])["member"] if isinstance(v, tuple) else v
            for v in parsed]


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


def _pack_keyed(head: list, keys: list, tail: list) -> bytes:
    """The RESP of one command per key, ``head + [key] + tail`` (a pipeline of the same
    command on many keys: the fixed parts encoded once)."""
    pre = pack_command(head)
    pre = b"*%d" % (len(head) + 1 + len(tail)) + pre[pre.index(b"\r\n"):]
    post = pack_command(tail)
    post = post[post.index(b"\r\n") + 2:]
    return b"".join([b"%s$%d\r\n%s\r\n%s" % (pre, len(k), k, post) for k in keys])


def _line(buf: bytearray, pos: int, end: int) -> tuple[bytes, int]:
    eol = buf.find(b"\r\n", pos, end)
    if eol < 0:
        raise _Incomplete
    return bytes(buf[pos:eol]), eol + 2


def _parse_reply(buf: bytearray, pos: int, end: int):
    """(value, next position) of the reply at ``pos``: ("offset", count) for an array of
    fixed-stride sketch-less v2 members, a list of bytes for another array, a string for a
    status, an exception for an error.  ``end``: where the received bytes end.  Raises
    _Incomplete when bytes are missing."""
    head, p = _line(buf, pos, end)
    kind = head[:1]
    if kind == b"+":
        return head[1:].decode(), p
    if kind == b"-":
        return RedisReplyError(head[1:].decode(errors="replace")), p
    if kind == b":":
        return int(head[1:]), p
    if kind == b"$":
        size = int(head[1:])
        if size < 0:
            return None, p
        if end < p + size + 2:
            raise _Incomplete
        return bytes(buf[p:p + size]), p + size + 2
    if kind != b"*":
        raise RedisReplyError(f"unexpected reply {head[:40]!r}")
    count = int(head[1:])
    if count <= 0:
        return [], p
    # Fast path: count records of _WIRE, every length prefix and CRLF checked.
    have = min(count, (end - p) // _WIRE.itemsize)
    if have:
        # One check of the fixed bytes of every record: prefix, version, sketch length 0, CRLF.
        wire = np.frombuffer(buf, dtype=np.uint8, count=have * _WIRE.itemsize, offset=p)
        ok = bool((wire.reshape(have, _WIRE.itemsize)[:, _FIXED_AT] == _FIXED).all())
        del wire  # release the view: the buffer grows while reading
    else:
        ok = end - p < len(_WIRE_PREFIX) or buf[p:p + len(_WIRE_PREFIX)] == _WIRE_PREFIX
    if ok:
        if have < count:
            raise _Incomplete
        return (p, count), p + count * _WIRE.itemsize
    members = []
    for _ in range(count):
        value, p = _parse_reply(buf, p, end)
        members.append(value)
    return members, p


def _decode_replies(metas, replies, columns) -> dict:
    """sid → Buckets from the ZRANGE replies (by score) of ``metas``' keys: each a
    MEMBER_HEADER record array (RawRangeReader's fast path) or a list of members.  Lists
    whose members are all sketch-less version 2 are joined and read with one
    numpy.frombuffer; any other key is decoded on its own (sinks.redis_cache.decode_members:
    sketches, version-1 members)."""
    numeric = [c for c in columns if c != "sketch"]
    recs: list = [None] * len(replies)
    lists = [i for i, r in enumerate(replies) if isinstance(r, list) and r]
    for i, r in enumerate(replies):
        if isinstance(r, np.ndarray) and len(r):
            recs[i] = r
    if lists:
        size = MEMBER_HEADER.itemsize
        blob = b"".join(itertools.chain.from_iterable(replies[i] for i in lists))
        counts = [len(replies[i]) for i in lists]
        joined = None
        if len(blob) == sum(counts) * size:
            joined = np.frombuffer(blob, dtype=MEMBER_HEADER)
            if not ((joined["version"] == MEMBER_VERSION).all() and not joined["sketch_length"].any()):
                joined = None
        if joined is not None:
            a = 0
            for i, c in zip(lists, counts):
                recs[i], a = joined[a:a + c], a + c
    sketches: dict = {}
    for i in lists:
        if recs[i] is None:
            recs[i], sk = decode_members(replies[i])
            if sk is not None:
                sketches[i] = sk
    present = [i for i, r in enumerate(recs) if r is not None]
    if not present:
        return {}
    # One copy per column into contiguous arrays (per-field views: concatenating the
    # structured arrays themselves costs a dtype promotion per key).
    ts = np.concatenate([recs[i]["ts"] for i in present]).astype(np.int64, copy=False)
    cols = {c: np.concatenate([recs[i][c] for i in present]).astype(float, copy=False) for c in numeric}
    out = {}
    a = 0
    for i in present:
        b = a + len(recs[i])
        bcols = {c: v[a:b] for c, v in cols.items()}
        if "sketch" in columns:
            arr = np.empty(b - a, dtype=object)
            arr[:] = sketches.get(i, None)
            bcols["sketch"] = arr
        out[metas[i].sid] = Buckets(ts[a:b], bcols)
        a = b
    return out
