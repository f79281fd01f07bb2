"""Flink adapters for the sinks: unpack rows, call the driver-level writers, count.

The bucket sink is a synchronous map over *batches*: the job's SQL packs the buckets of a
(tier, tenant, window, shard) into one record (tally.bucketpack), and the sink writes the
whole batch to Cassandra, waits for every acknowledgement, then writes it through to Redis
before it takes the next record.  A checkpoint barrier reaches the Python operator only
after the records before it were processed, so a checkpoint never covers a bucket
Cassandra has not acknowledged; a restart replays the rest, which the upserts make harmless.
"""

from __future__ import annotations

import logging
import time

from pyflink.datastream import MapFunction, RuntimeContext

from tally.config import TallyConfig
from tally.tiers import DEFAULT_TIERS, tier_by_name

log = logging.getLogger(__name__)


class BucketSink(MapFunction):
    """Upserts packed bucket batches into Cassandra and Redis; sends late points to the late
    topic; counts late, duplicate and rejected rows and the job's late-within-grace counts.

    Input rows have the columns of ``tally.aggsql.SINK_COLUMNS``: kind ``bucket`` rows carry
    ``n`` buckets in ``batch``; the others are single points.  Each input yields one output
    (its kind and tier) so the operator's throughput is visible downstream.
    """

    def __init__(self, cfg: TallyConfig):
        self.cfg = cfg
        self.writer = None
        self.cache = None
        self.late = None
        self.counters = {}
        self._group = None
        self._gaps = {}  # (tier, tenant) -> end of the newest bucket whose write-through failed

    def open(self, runtime_context: RuntimeContext):
        from sinks.cassandra import BucketWriter
        from sinks.late import LateTopicWriter
        from sinks.redis_cache import RedisBucketWriter

        self.writer = BucketWriter(self.cfg)
        self.cache = RedisBucketWriter(self.cfg)
        self.late = LateTopicWriter(self.cfg)
        self._group = runtime_context.get_metrics_group().add_group("tally")

    def _count(self, name: str, amount: int = 1):
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = self._group.counter(name)
        counter.inc(amount)

    def map(self, row):
        from tally.bucketpack import BatchDecodeError, unpack

        kind, tier, tenant = row["kind"], row["tier"], row["tenant"]
        if kind == "bucket":
            try:
                batch = unpack(row["batch"])
            except BatchDecodeError as exc:  # a bug between the SQL and this sink: loud, counted
                self._count("batches_undecodable")
                log.error("undecodable bucket batch of tier %s: %s", tier, exc)
                return f"invalid:{tier}"
            written = self.writer.write_batch(tier, tenant, batch)
            self._count(f"buckets_written_{tier}", written)
            self._write_through(tier, tenant, batch)
            return f"{kind}:{tier}"
        if kind == "grace":  # n points of a tenant's second were late within grace (aggregated)
            amount = int(row["n"])
            self._count("late_within_grace", amount)
            self._cache(lambda: self.cache.count(tenant or "unknown", "late_within_grace", amount))
            return f"{kind}:{tier}"
        if kind == "late":  # beyond grace: kept on the late topic for reconciliation
            self.late.write_sync(row)
        # late (missing from every tier), dup (replay dropped), rejected: counted
        fields = ["late_beyond_grace:" + t.name for t in DEFAULT_TIERS] if kind == "late" else [
            "duplicates_dropped" if kind == "dup" else "rejected"]
        for field in fields:
            self._count(field.replace(":", "_"))
            self._cache(lambda: self.cache.count(tenant or "unknown", field))
        return f"{kind}:{tier}"

    def _write_through(self, tier: str, tenant: str, batch) -> None:
        """Write the batch's recent buckets to Redis.  When that fails, the end of its newest
        bucket is kept and, once Redis answers again, recorded there (``mark_gap``) before any
        further buckets: the query then reads the failed range from Cassandra instead of a
        Redis key that lacks those buckets but has their neighbours."""
        try:
            for (gap_tier, gap_tenant), until in list(self._gaps.items()):
                self.cache.mark_gap(gap_tier, gap_tenant, until)
                del self._gaps[gap_tier, gap_tenant]
            self._count(f"buckets_cached_{tier}", self.cache.write_batch(tier, tenant, batch, int(time.time() * 1000)))
        except Exception as exc:  # connection refused, timeouts, an error reply
            if len(batch):
                end = int(batch.rows["ts"].max()) + tier_by_name(tier).resolution_ms
                self._gaps[tier, tenant] = max(self._gaps.get((tier, tenant), 0), end)
            self._count("redis_write_errors")
            log.warning("redis write-through of %s buckets failed (%r); the range is marked for the query "
                        "once Redis answers", tier, exc)

    def _cache(self, op):
        """Redis is a cache: a failed write is counted and logged, never fails the job."""
        try:
            op()
        except Exception as exc:  # connection refused, timeouts while Redis is down
            self._count("redis_write_errors")
            log.warning("redis write failed: %r", exc)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.cache is not None:
            self.cache.close()
        if self.late is not None:
            self.late.close()


class SeriesIndexSink(MapFunction):
    """Upserts series registrations into the series index, a second's worth at a time: input
    rows are ``tally.aggsql.series_batches_sql`` groups (a JSON array of registrations)."""

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
        import json

        written, errors = self.writer.index_series_batch(json.loads(row["batch"]))
        self.indexed.inc(written)
        if errors:
            self.invalid.inc(len(errors))
            log.warning("%d invalid series registration(s), first: %s", len(errors), errors[0])
        return f"indexed:{written}"

    def close(self):
        if self.writer is not None:
            self.writer.close()

