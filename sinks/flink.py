"""Flink adapters for the sinks: unpack rows, call the driver-level writers, count.

The bucket sink is an async function (``AsyncDataStream.unordered_wait``): many writes are
in flight at once, and Flink's async operator keeps unfinished elements in its checkpoint,
so a checkpoint never covers a bucket Cassandra has not acknowledged.
"""

from __future__ import annotations

import logging
import time

from pyflink.datastream import MapFunction, RuntimeContext
from pyflink.datastream.functions import AsyncFunction

from tally.config import TallyConfig
from tally.tiers import DEFAULT_TIERS

log = logging.getLogger(__name__)


class BucketSink(AsyncFunction):
    """Upserts bucket rows into Cassandra and Redis; counts late, duplicate and rejected rows.

    Input rows have the columns of ``tally.aggsql.BUCKET_COLUMNS``.  Each input yields one
    output (its kind and tier) so the operator's throughput is visible downstream.
    """

    def __init__(self, cfg: TallyConfig):
        self.cfg = cfg
        self.writer = None
        self.cache = None
        self.late = None
        self.counters = {}
        self._group = None

    def open(self, runtime_context: RuntimeContext):
        from sinks.cassandra import BucketWriter
        from sinks.late import LateTopicWriter
        from sinks.redis_cache import RedisBucketCache

        self.writer = BucketWriter(self.cfg)
        self.cache = RedisBucketCache(self.cfg)
        self.late = LateTopicWriter(self.cfg)
        self._group = runtime_context.get_metrics_group().add_group("tally")

    def _count(self, name: str, amount: int = 1):
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = self._group.counter(name)
        counter.inc(amount)

    async def async_invoke(self, row):
        from sinks.cassandra import BucketRow

        kind, tier, tenant = row["kind"], row["tier"], row["tenant"]
        if kind == "bucket":
            bucket = BucketRow(
                tenant=tenant, sid=row["sid"], ts=row["ts"], count=row["cnt"], sum=row["total"],
                min=row["vmin"], max=row["vmax"], last=row["vlast"], last_ts=row["last_ts"], sketch=row["sk"],
            )
            await self.writer.write_async(tier, bucket)
            self._count(f"buckets_written_{tier}")
            await self._cache(self.cache.write(tier, tenant, bucket, int(time.time() * 1000)))
        else:
            if kind == "late":  # beyond grace: kept on the late topic for reconciliation
                await self.late.write(row)
            # late (missing from every tier), dup (replay dropped), rejected: counted
            fields = ["late_beyond_grace:" + t.name for t in DEFAULT_TIERS] if kind == "late" else [
                "duplicates_dropped" if kind == "dup" else "rejected"]
            for field in fields:
                self._count(field.replace(":", "_"))
                await self._cache(self.cache.count(tenant or "unknown", field))
        return [f"{kind}:{tier}"]

    async def _cache(self, op):
        """Redis is a cache: a failed write is counted and logged, never fails the job."""
        try:
            await op
        except Exception as exc:  # connection refused, timeouts while Redis is down
            self._count("redis_write_errors")
            log.warning("redis write failed: %r", exc)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.late is not None:
            self.late.close()


class SeriesIndexSink(MapFunction):
    """Upserts series registrations into the series index (low volume, synchronous)."""

    def __init__(self, cfg: TallyConfig):
        self.cfg = cfg
        self.writer = None
        self.indexed = None
        self.invalid = None

    def open(self, runtime_context: RuntimeContext):
        from sinks.cassandra import BucketWriter

        self.writer = BucketWriter(self.cfg)
        group = runtime_context.get_metrics_group().add_group("tally")
        self.indexed = group.counter("series_indexed")
        self.invalid = group.counter("series_invalid")

    def map(self, row):
        try:
            self.writer.index_series({"sid": row["sid"], "series": row["series"], "type": row["type"]})
            self.indexed.inc()
            return "indexed"
        except ValueError as exc:
            self.invalid.inc()
            log.warning("invalid series registration: %s", exc)
            return "invalid"

    def close(self):
        if self.writer is not None:
            self.writer.close()

