"""Cassandra side of the reconciliation: read a period's stored buckets, rewrite repaired ones.

Rewrites go through the stream's own writer (``sinks.cassandra.BucketWriter``: prepared,
idempotent full-value upserts), then ``repaired_ms`` is set on each rewritten row, and
recent buckets are written through to Redis like the stream does (``RedisBucketCache``
skips buckets older than the tier's Redis window).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Iterable, Sequence

from reconcile import ReconcileError
from reconcile.diff import Bucket, Key
from tally.config import TallyConfig
from tally.cql import connect
from tally.schema import RECONCILE_COLUMNS, bucket_table
from tally.tiers import Tier, partition_start_ms

log = logging.getLogger(__name__)

_READ_CONCURRENCY = 64
_BATCH_ROWS = 5_000  # buckets handed to BucketWriter.write_batch at once


class BucketStore:
    """Reads and repairs the tier tables of ``cfg.keyspace``."""

    def __init__(self, cfg: TallyConfig, tiers: Sequence[Tier]):
        self.cfg = cfg
        self.tiers = {t.name: t for t in tiers}
        self._cluster, self._session = connect(cfg, request_timeout_s=60)
        self._reads = {}
        self._marks = {}

    def ensure_marker_column(self) -> list[str]:
        """Add ``repaired_ms`` to tier tables created before it existed; returns the tables
        altered (keyspaces made from schemas/cassandra.cql since have it already)."""
        altered = []
        for tier in self.tiers.values():
            table = bucket_table(tier)
            rows = self._session.execute(
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
                (self.cfg.keyspace, table))
            columns = {r.column_name for r in rows}
            if not columns:
                raise ReconcileError(f"table {self.cfg.keyspace}.{table} does not exist: wrong --keyspace, or the "
                                     "aggregation job never ran there (tally job submit aggregate creates it)")
            for column in RECONCILE_COLUMNS:
                if column not in columns:
                    self._session.execute(f"ALTER TABLE {self.cfg.keyspace}.{table} ADD {column} bigint")
                    altered.append(table)
        return altered

    def _prepare(self, tier: Tier):
        if tier.name not in self._reads:
            table = f"{self.cfg.keyspace}.{bucket_table(tier)}"
            self._reads[tier.name] = self._session.prepare(
                f"SELECT ts, count, sum, min, max, last, last_ts, sketch FROM {table} "
                "WHERE tenant = ? AND sid = ? AND part = ? AND ts >= ? AND ts < ?")
            mark = self._session.prepare(
                f"UPDATE {table} SET repaired_ms = ? WHERE tenant = ? AND sid = ? AND part = ? AND ts = ?")
            mark.is_idempotent = True
            self._marks[tier.name] = mark
        return self._reads[tier.name], self._marks[tier.name]

    def read(self, tier_name: str, series: Iterable[tuple[str, int]],
             ranges: Sequence[tuple[int, int]]) -> dict[Key, Bucket]:
        """Every stored bucket of the series whose start is in one of the [start, end) ranges."""
        from cassandra.concurrent import execute_concurrent_with_args

        tier = self.tiers[tier_name]
        statement, _ = self._prepare(tier)
        params = []
        for tenant, sid in series:
            for start, end in ranges:
                part = partition_start_ms(start, tier)
                while part < end:
                    params.append((tenant, sid, part, start, end))
                    part += tier.partition_ms
        found: dict[Key, Bucket] = {}
        results = execute_concurrent_with_args(self._session, statement, params,
                                               concurrency=_READ_CONCURRENCY, raise_on_first_error=True)
        for (tenant, sid, *_rest), (_ok, rows) in zip(params, results):
            for r in rows:
                bucket = Bucket(tier_name, tenant, sid, r.ts, r.count, r.sum, r.min, r.max, r.last, r.last_ts,
                                bytes(r.sketch) if r.sketch is not None else None)
                found[bucket.key] = bucket
        return found

    def repaired_marks(self, tier_name: str, keys: Iterable[Key]) -> dict[Key, int | None]:
        """``repaired_ms`` of the given buckets (tests and tooling)."""
        tier = self.tiers[tier_name]
        table = f"{self.cfg.keyspace}.{bucket_table(tier)}"
        out = {}
        for key in keys:
            _tier, tenant, sid, ts = key
            row = self._session.execute(
                f"SELECT repaired_ms FROM {table} WHERE tenant = %s AND sid = %s AND part = %s AND ts = %s",
                (tenant, sid, partition_start_ms(ts, tier), ts)).one()
            out[key] = None if row is None else row.repaired_ms
        return out

    def repair(self, buckets: Sequence[Bucket], now_ms: int | None = None) -> int:
        """Upsert the recomputed value of each bucket, mark it repaired, refresh Redis;
        returns how many buckets were rewritten."""
        from cassandra.concurrent import execute_concurrent_with_args

        from sinks.cassandra import BucketRow, BucketWriter
        from tally import bucketpack

        if not buckets:
            return 0
        now_ms = now_ms or int(time.time() * 1000)
        by_tier: dict[str, list[BucketRow]] = defaultdict(list)
        batches: dict[tuple[str, str], list[tuple]] = defaultdict(list)
        for b in buckets:
            by_tier[b.tier].append(BucketRow(b.tenant, b.sid, b.ts, b.count, b.sum, b.min, b.max, b.last,
                                             b.last_ts, b.sketch))
            batches[(b.tier, b.tenant)].append((b.sid, b.ts, b.count, b.sum, b.min, b.max, b.last, b.last_ts,
                                                b.sketch))
        # The stream sink's own batched upserts (UNLOGGED batches, bounded in flight, retried).
        writer = BucketWriter(self.cfg, tiers=self.tiers.values())
        try:
            written = 0
            for (tier, tenant), rows in batches.items():
                for i in range(0, len(rows), _BATCH_ROWS):
                    batch = bucketpack.unpack(bucketpack.pack(rows[i:i + _BATCH_ROWS]))
                    # A drifted bucket is replaced whole: a stored sketch the truth lacks goes too.
                    written += writer.write_batch(tier, tenant, batch, clear_absent_sketch=True)
        finally:
            writer.close()
        for tier_name, rows in by_tier.items():
            tier = self.tiers[tier_name]
            _, mark = self._prepare(tier)
            execute_concurrent_with_args(
                self._session, mark, [(now_ms, r.tenant, r.sid, partition_start_ms(r.ts, tier), r.ts) for r in rows],
                concurrency=_READ_CONCURRENCY, raise_on_first_error=True)
        asyncio.run(self._refresh_cache(by_tier, now_ms))
        return written

    async def _refresh_cache(self, by_tier, now_ms: int) -> None:
        """Redis holds recent buckets: a repaired one must not be served stale from there.
        Redis is a cache: a failure is logged, never fails the repair."""
        from sinks.redis_cache import RedisBucketCache

        cache = RedisBucketCache(self.cfg)
        try:
            for tier, rows in by_tier.items():
                for row in rows:
                    await cache.write(tier, row.tenant, row, now_ms)
        except Exception as exc:  # connection refused, timeouts while Redis is down
            log.warning("redis refresh of repaired buckets failed: %r", exc)
        finally:
            await cache.close()

    def close(self) -> None:
        self._cluster.shutdown()
