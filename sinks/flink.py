"""Flink adapters for the sinks: unpack rows, call the driver-level writer, count.

Writes are synchronous per element: when a checkpoint barrier passes this operator,
every bucket before it is acknowledged by Cassandra, so a restore replays only buckets
that may be missing, and replays are idempotent upserts.
"""

from __future__ import annotations

from pyflink.datastream import MapFunction, RuntimeContext

from tally.config import TallyConfig
from tally.tiers import tier_by_name


class CassandraBucketSink(MapFunction):
    """Maps a window-result Row to a BucketRow, upserts it, and passes the row on."""

    def __init__(self, cfg: TallyConfig, tier_name: str):
        self.cfg = cfg
        self.tier_name = tier_name
        self.writer = None
        self.written = None

    def open(self, runtime_context: RuntimeContext):
        from sinks.cassandra import BucketWriter

        self.writer = BucketWriter(self.cfg, tier_by_name(self.tier_name))
        group = runtime_context.get_metrics_group().add_group("tally").add_group("tier", self.tier_name)
        self.written = group.counter("buckets_written")

    def map(self, row):
        from sinks.cassandra import BucketRow

        bucket = BucketRow(
            tenant=row["tenant"], sid=row["sid"], series=row["series"], ts=row["bucket_ms"],
            count=row["cnt"], sum=row["total"], min=row["vmin"], max=row["vmax"],
        )
        self.writer.write([bucket])
        self.written.inc()
        return row

    def close(self):
        if self.writer is not None:
            self.writer.close()
