"""Idempotent bucket upserts into Cassandra (driver code only, no Flink imports).

Every write is the full value of a bucket keyed by (tenant, series id, partition, bucket
start), so a replay after a failure rewrites identical rows.  Statements are prepared and
marked idempotent so the driver may retry them.  ``write_async`` returns an asyncio future
for the Flink async sink; ``write`` is the blocking form for batch callers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from sinks.aio import callback_future
from tally.config import TallyConfig
from tally.cql import connect
from tally.schema import SINGLE_NODE_REPLICATION, bucket_columns, bucket_table, cql_statements
from tally.series import parse_key
from tally.tiers import DEFAULT_TIERS, Tier, partition_start_ms

log = logging.getLogger(__name__)


def ensure_schema(cfg: TallyConfig, replication: str = SINGLE_NODE_REPLICATION) -> None:
    """Create the keyspace and all tables if missing (safe to run any number of times)."""
    cluster, session = connect(cfg, request_timeout_s=60)
    try:
        for statement in cql_statements(cfg.keyspace, replication):
            session.execute(statement)
    finally:
        cluster.shutdown()


def drop_keyspace(cfg: TallyConfig) -> None:
    """Drop the configured keyspace (tests clean up their own)."""
    cluster, session = connect(cfg, request_timeout_s=60)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {cfg.keyspace}")
    finally:
        cluster.shutdown()


@dataclass(frozen=True)
class BucketRow:
    """One bucket's full value, as written to a tier table."""

    tenant: str
    sid: int
    ts: int  # bucket start, epoch ms
    count: float
    sum: float
    min: float
    max: float
    last: float
    last_ts: int
    sketch: bytes | None = None


class BucketWriter:
    """Writes BucketRows with prepared, idempotent upserts (one statement per tier)."""

    def __init__(self, cfg: TallyConfig, tiers: Iterable[Tier] = DEFAULT_TIERS,
                 max_attempts: int = 10, backoff_s: float = 0.5, max_backoff_s: float = 10.0):
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.written = 0
        self.retried = 0
        self._cluster, self._session = connect(cfg)
        self._columns = bucket_columns()
        self._tiers = {t.name: t for t in tiers}
        self._statements = {}
        for tier in self._tiers.values():
            stmt = self._session.prepare(
                f"INSERT INTO {cfg.keyspace}.{bucket_table(tier)} ({', '.join(self._columns)}) "
                f"VALUES ({', '.join('?' for _ in self._columns)})"
            )
            stmt.is_idempotent = True
            self._statements[tier.name] = stmt
        self._index = self._session.prepare(
            f"INSERT INTO {cfg.keyspace}.series (tenant, name, sid, series, tags, mtype) VALUES (?, ?, ?, ?, ?, ?)"
        )
        self._index.is_idempotent = True

    def _values(self, tier: Tier, row: BucketRow) -> tuple:
        # Not dataclasses.asdict: it deep-copies, and this runs once per bucket.
        derived = {"part": partition_start_ms(row.ts, tier), "written_ms": int(time.time() * 1000)}
        return tuple(derived[c] if c in derived else getattr(row, c) for c in self._columns)

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))

    async def write_async(self, tier_name: str, row: BucketRow) -> None:
        """Upsert one bucket; retries with backoff, raises after max_attempts (the job then
        restarts from its checkpoint and replays, which the upserts make harmless)."""
        tier = self._tiers[tier_name]
        values = self._values(tier, row)
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self._session.execute_async(self._statements[tier_name], values)
                await callback_future(response.add_callbacks)
                self.written += 1
                return
            except Exception as exc:  # driver errors: unavailable, timeouts, connection loss
                if attempt == self.max_attempts:
                    raise RuntimeError(f"bucket write failed after {attempt} attempts: {exc!r}") from exc
                self.retried += 1
                log.warning("bucket write failed (%r), retry %d in %.1fs", exc, attempt, self._delay(attempt))
                await asyncio.sleep(self._delay(attempt))

    def write(self, tier_name: str, rows: Iterable[BucketRow]) -> int:
        """Blocking upsert of many buckets of one tier (bounded concurrency); returns the count."""
        async def run():
            rows_list = list(rows)
            gate = asyncio.Semaphore(64)

            async def one(r):
                async with gate:
                    await self.write_async(tier_name, r)

            await asyncio.gather(*(one(r) for r in rows_list))
            return len(rows_list)

        return asyncio.run(run())

    def index_series(self, registration: Mapping) -> None:
        """Upsert a series index row from a registration record (schemas/series.json)."""
        sid = parse_key(registration["series"])
        if sid.id != registration["sid"]:
            raise ValueError(f"series key {registration['series']!r} does not hash to sid {registration['sid']}")
        self._session.execute(self._index, (sid.tenant, sid.name, sid.id, sid.key, sid.tag_dict,
                                            registration.get("type")))

    def close(self) -> None:
        self._cluster.shutdown()
