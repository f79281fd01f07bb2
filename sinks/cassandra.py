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

import numpy as np

from sinks.aio import callback_future
from tally.bucketpack import BucketBatch
from tally.config import TallyConfig
from tally.cql import connect
from tally.schema import bucket_columns, bucket_table, cql_statements
from tally.series import parse_key
from tally.tiers import DEFAULT_TIERS, Tier, partition_start_ms

log = logging.getLogger(__name__)


def _cells(column: np.ndarray, dtype: str) -> list[bytes]:
    """A numeric column as one fixed-size big-endian value per row (CQL's encoding)."""
    raw = np.ascontiguousarray(column, dtype=dtype).tobytes()
    size = np.dtype(dtype).itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def ensure_schema(cfg: TallyConfig, replication: str | None = None) -> None:
    """Create the keyspace (``cfg.cassandra_replication`` unless given) and all tables if
    missing (safe to run any number of times)."""
    replication = replication or cfg.cassandra_replication
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
        """The row's bound values; an absent sketch is left unset as in serialized_values."""
        from cassandra.query import UNSET_VALUE

        # Not dataclasses.asdict: it deep-copies, and this runs once per bucket.
        derived = {"part": partition_start_ms(row.ts, tier), "written_ms": int(time.time() * 1000),
                   "sketch": UNSET_VALUE if row.sketch is None else row.sketch}
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

    def write_batch(self, tier_name: str, tenant: str, batch: BucketBatch, rows_per_statement: int = 100,
                    bytes_per_statement: int = 40_000, in_flight: int = 8, clear_absent_sketch: bool = False) -> int:
        """Upsert a packed batch of one tier and tenant (tally.bucketpack) and wait for all of it.

        Rows go out as UNLOGGED batches of at most ``rows_per_statement`` upserts and about
        ``bytes_per_statement`` bytes (one request, one future: the driver's per-request
        cost, not Cassandra, bounded per-row writes; Cassandra refuses batches over
        ``batch_size_fail_threshold``, 50 KiB by default), at most ``in_flight`` at once.
        Each statement is retried with backoff; after max_attempts the error is raised and
        the job restarts from its checkpoint (upserts make the replay harmless).  Returns the
        number of rows written.

        A bucket without a sketch leaves the column unset (a null would write a tombstone per
        counter and gauge bucket); ``clear_absent_sketch`` writes the null, for a repair that
        must replace a stored sketch the true bucket does not have."""
        from cassandra.query import BoundStatement

        values = self.serialized_values(tier_name, tenant, batch, clear_absent_sketch)
        statement = self._statements[tier_name]
        bound = []
        for row in values:
            stmt = BoundStatement(statement)
            stmt.values = row
            bound.append(stmt)
        # The mutation overhead as Cassandra counts it, plus the sketch.
        sizes = [300 + (len(row[10]) if isinstance(row[10], bytes) else 0) for row in values]
        self._execute_unlogged(bound, sizes, rows_per_statement, bytes_per_statement, in_flight)
        return len(values)

    def _execute_unlogged(self, bound: list, sizes: list[int], rows_per_statement: int = 100,
                          bytes_per_statement: int = 40_000, in_flight: int = 8) -> None:
        """Execute bound upserts as UNLOGGED batches of at most ``rows_per_statement`` and about
        ``bytes_per_statement`` bytes, at most ``in_flight`` at once, each retried with backoff;
        returns when all are acknowledged, raises after max_attempts."""
        from cassandra import InvalidRequest
        from cassandra.query import BatchStatement, BatchType

        chunks, chunk, size = [], [], 0
        for stmt, row_bytes in zip(bound, sizes):
            if chunk and (len(chunk) >= rows_per_statement or size + row_bytes > bytes_per_statement):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(stmt)
            size += row_bytes
        if chunk:
            chunks.append(chunk)

        def make(chunk):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batch.is_idempotent = True
            for stmt in chunk:
                batch.add(stmt)
            return batch

        pending = [(chunk, 1) for chunk in chunks]
        while pending:
            running = [(chunk, attempt, self._session.execute_async(make(chunk)))
                       for chunk, attempt in pending[:in_flight]]
            pending = pending[in_flight:]
            failed = []
            for chunk, attempt, future in running:
                try:
                    future.result()
                    self.written += len(chunk)
                except InvalidRequest:  # the statement itself is wrong: retrying cannot help
                    raise
                except Exception as exc:  # unavailable, timeouts, connection loss
                    if attempt >= self.max_attempts:
                        raise RuntimeError(f"batch write failed after {attempt} attempts: {exc!r}") from exc
                    self.retried += 1
                    log.warning("batch write failed (%r), retry %d in %.1fs", exc, attempt, self._delay(attempt))
                    failed.append((chunk, attempt))
            if failed:
                time.sleep(self._delay(max(a for _, a in failed)))
                pending = [(chunk, attempt + 1) for chunk, attempt in failed] + pending

    def serialized_values(self, tier_name: str, tenant: str, batch: BucketBatch,
                          clear_absent_sketch: bool = False) -> list[list]:
        """Each row's bound values in the prepared statement's column order, serialized as the
        driver's ``PreparedStatement.bind`` would (CQL bigint and double: 8 bytes big-endian,
        text: UTF-8, blob: the bytes), but a column at a time with numpy: binding row by row
        cost ~10 µs of Python per bucket.  An absent sketch is the driver's UNSET_VALUE (no
        tombstone), or None with ``clear_absent_sketch``."""
        from cassandra.query import UNSET_VALUE

        if self._columns != ("tenant", "sid", "part", "ts", "count", "sum", "min", "max", "last", "last_ts",
                             "sketch", "written_ms"):
            raise AssertionError(f"bucket columns changed to {self._columns}: update serialized_values")
        tier = self._tiers[tier_name]
        rows = batch.rows
        ts = rows["ts"].astype(np.int64)
        columns = [_cells(rows["sid"], ">i8"), _cells(ts - np.mod(ts, tier.partition_ms), ">i8"), _cells(ts, ">i8")]
        columns += [_cells(rows[name], ">f8") for name in ("count", "sum", "min", "max", "last")]
        columns.append(_cells(rows["last_ts"], ">i8"))
        absent = None if clear_absent_sketch else UNSET_VALUE
        sketches = [absent if sketch is None else bytes(sketch) for sketch in batch.sketches]
        tenant_cell = tenant.encode("utf-8")
        written_cell = int(time.time() * 1000).to_bytes(8, "big", signed=True)
        return [[tenant_cell, sid, part, t, count, total, vmin, vmax, last, last_ts, sketch, written_cell]
                for sid, part, t, count, total, vmin, vmax, last, last_ts, sketch in zip(*columns, sketches)]

    @staticmethod
    def _index_values(registration: Mapping) -> tuple:
        """The series index row of a registration (schemas/series.json); ValueError if its key
        is not a canonical series key or does not hash to its sid."""
        key, sid_field = registration.get("series"), registration.get("sid")
        if not isinstance(key, str) or not isinstance(sid_field, int):
            raise ValueError(f"registration needs a series key and an integer sid: {dict(registration)!r}")
        sid = parse_key(key)
        if sid.id != sid_field:
            raise ValueError(f"series key {key!r} does not hash to sid {sid_field}")
        return (sid.tenant, sid.name, sid.id, sid.key, sid.tag_dict, registration.get("type"))

    def index_series(self, registration: Mapping) -> None:
        """Upsert a series index row from a registration record (schemas/series.json)."""
        self._session.execute(self._index, self._index_values(registration))

    def index_series_batch(self, registrations: Iterable[Mapping]) -> tuple[int, list[str]]:
        """Upsert the index rows of many registrations (duplicates once) as UNLOGGED batches and
        wait for all of them; returns (rows written, one error message per invalid
        registration).  An invalid registration costs none of the valid ones."""
        rows, errors = {}, []
        for registration in registrations:
            try:
                values = self._index_values(registration)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            rows[values[:3]] = values  # the primary key: a later registration of it wins
        bound = [self._index.bind(values) for values in rows.values()]
        self._execute_unlogged(bound, [300 + 2 * len(values[3]) for values in rows.values()])
        return len(bound), errors

    def close(self) -> None:
        self._cluster.shutdown()
