"""Idempotent bucket upserts into Cassandra (driver code only, no Flink imports).

Every write is the full value of a bucket keyed by (tenant, series id, partition, bucket
start), so a replay after a failure rewrites identical rows.  Statements are prepared
and marked idempotent so the driver may retry them; a batch is written with bounded
concurrency and the call returns only when every row is acknowledged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from tally.config import TallyConfig
from tally.cql import connect
from tally.schema import SINGLE_NODE_REPLICATION, bucket_columns, bucket_table, cql_statements
from tally.series import parse_key
from tally.tiers import Tier, partition_start_ms

log = logging.getLogger(__name__)


def ensure_schema(cfg: TallyConfig, replication: str = SINGLE_NODE_REPLICATION) -> None:
    """Create the keyspace and all tables if missing (safe to run any number of times)."""
    cluster, session = connect(cfg)
    try:
        for statement in cql_statements(cfg.keyspace, replication):
            session.execute(statement, timeout=60)
    finally:
        cluster.shutdown()


def drop_keyspace(cfg: TallyConfig) -> None:
    """Drop the configured keyspace (tests clean up their own)."""
    cluster, session = connect(cfg)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {cfg.keyspace}", timeout=60)
    finally:
        cluster.shutdown()


@dataclass(frozen=True)
class BucketRow:
    """One bucket's full value, as written to a tier table."""

    tenant: str
    sid: int
    series: str
    ts: int  # bucket start, epoch ms
    count: float
    sum: float
    min: float
    max: float
    last: float | None = None
    sketch: bytes | None = None


class BucketWriter:
    """Writes BucketRows of one tier with prepared, idempotent upserts and counts them."""

    def __init__(self, cfg: TallyConfig, tier: Tier, concurrency: int = 32,
                 max_attempts: int = 8, backoff_s: float = 0.5):
        self.tier = tier
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.written = 0
        self.retried = 0
        self._cluster, self._session = connect(cfg)
        columns = bucket_columns()
        self._statement = self._session.prepare(
            f"INSERT INTO {cfg.keyspace}.{bucket_table(tier)} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        self._statement.is_idempotent = True
        self._columns = columns
        self._index_statement = self._session.prepare(
            f"INSERT INTO {cfg.keyspace}.series (tenant, name, sid, series, tags) VALUES (?, ?, ?, ?, ?)"
        )
        self._index_statement.is_idempotent = True
        self._indexed: set[int] = set()

    def index_series(self, rows: Sequence[BucketRow]) -> None:
        """Upsert the series index row of each series this writer has not seen yet."""
        new = {r.sid: r for r in rows if r.sid not in self._indexed}
        if not new:
            return
        if len(self._indexed) > 1_000_000:  # bound memory; re-indexing is an idempotent upsert
            self._indexed.clear()
        for row in new.values():
            sid = parse_key(row.series)
            self._session.execute(self._index_statement, (sid.tenant, sid.name, row.sid, row.series, sid.tag_dict))
        self._indexed.update(new)

    def _values(self, row: BucketRow, now_ms: int) -> tuple:
        part = partition_start_ms(row.ts, self.tier)
        by_name = {**row.__dict__, "part": part, "written_ms": now_ms}
        return tuple(by_name[c] for c in self._columns)

    def write(self, rows: Iterable[BucketRow]) -> int:
        """Upsert rows; retries with backoff, raises after max_attempts (the job then
        restarts from its checkpoint and replays, which the upserts make harmless)."""
        from cassandra.concurrent import execute_concurrent_with_args

        rows = list(rows)
        self.index_series(rows)
        now_ms = int(time.time() * 1000)
        params: Sequence[tuple] = [self._values(r, now_ms) for r in rows]
        for attempt in range(1, self.max_attempts + 1):
            results = execute_concurrent_with_args(
                self._session, self._statement, params, concurrency=self.concurrency, raise_on_first_error=False
            )
            failed = [p for p, (ok, _) in zip(params, results) if not ok]
            if not failed:
                self.written += len(params)
                return len(params)
            errors = {type(r).__name__ for ok, r in results if not ok}
            if attempt == self.max_attempts:
                raise RuntimeError(f"{len(failed)} bucket writes failed after {attempt} attempts: {errors}")
            log.warning("retrying %d failed bucket writes (%s), attempt %d", len(failed), errors, attempt)
            self.retried += len(failed)
            self.written += len(params) - len(failed)
            params = failed
            time.sleep(self.backoff_s * 2 ** (attempt - 1))
        return 0

    def close(self) -> None:
        self._cluster.shutdown()
