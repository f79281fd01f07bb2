"""The Flink SQL of the reconciliation batch job, as plain strings (no Flink import).

Stage 1 is the batch counterpart of ``tally.aggsql.classify_views``: the archive holds
every record ever sent, so a point is never late here, and a replay is any further copy
of the same idempotency id (pid, seq), wherever and whenever it arrived (batch: the
duplicates are grouped, not compared in arrival order).  Stage 2 is the stream's own
``tally.aggsql.bucket_views`` (phase 1, phase 2, rollup cascade), with the same Java UDFs.

``archive``     the archive folders as a partitioned filesystem table (json, gzip)
``classified``  every record of the period with a status: rejected, tick, dup or ok
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from tally.schema import point_required_fields, point_sql_columns

__all__ = ["COLLECT_COLUMNS", "COLLECT_QUERY", "archive_ddl", "batch_classify_views", "period_bounds_ms"]

# What the driver reads back from ``buckets``: keys NOT NULL (rejected rows have none), so
# they arrive as int64 columns, never as floats.
COLLECT_COLUMNS = ("kind", "tier", "tenant", "sid", "ts", "cnt", "total", "vmin", "vmax", "vlast", "last_ts", "sk")
COLLECT_QUERY = """
SELECT kind, tier, COALESCE(tenant, '') AS tenant, COALESCE(sid, CAST(0 AS BIGINT)) AS sid,
  COALESCE(ts, CAST(0 AS BIGINT)) AS ts, cnt, total, vmin, vmax, vlast,
  COALESCE(last_ts, CAST(0 AS BIGINT)) AS last_ts, sk
FROM {table}"""


def _columns_ddl() -> str:
    return ",\n  ".join(f"`{name}` {sql_type}" for name, sql_type in point_sql_columns())


def _fields() -> str:
    return ", ".join(f"`{name}`" for name, _ in point_sql_columns())


def archive_ddl(path_uri: str, table: str = "archive") -> str:
    """The archive (tally.archive layout) as a table partitioned by ``date`` and ``hour``;
    a filter on them reads only the period's folders.  Same JSON options as the stream's
    Kafka source: a field of the wrong type becomes NULL (then status ``rejected``)."""
    return f"""
CREATE TEMPORARY TABLE {table} (
  {_columns_ddl()},
  `date` STRING,
  `hour` STRING
) PARTITIONED BY (`date`, `hour`) WITH (
  'connector' = 'filesystem',
  'path' = '{path_uri}',
  'format' = 'json',
  'json.fail-on-missing-field' = 'false',
  'json.ignore-parse-errors' = 'true'
)"""


def period_bounds_ms(date: dt.date, hours: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) epoch-ms ranges of the period's hours (UTC), merged where contiguous."""
    day = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
    ranges: list[tuple[int, int]] = []
    for h in sorted(set(hours)):
        start, end = day + h * 3_600_000, day + (h + 1) * 3_600_000
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def batch_classify_views(source: str, date: dt.date, hours: Sequence[int]) -> list[tuple[str, str]]:
    """(view, query) pairs from the archive table to ``classified`` (the columns
    ``tally.aggsql.bucket_views`` reads: the point fields, event time ``rt``, ``status``).

    The status rule is the stream's, minus lateness: rejected when a required field is
    NULL, tick for watermark ticks, dup for every copy of a (pid, seq) after the first.
    Copies of one id are the same record (a replay), so which one is kept is irrelevant.
    """
    required = [n for n in point_required_fields() if n not in ("sk", "v")]
    complete = " AND ".join(f"`{n}` IS NOT NULL" for n in required)
    hour_list = ", ".join(f"'{h:02d}'" for h in sorted(set(hours)))
    in_period = " OR ".join(f"(`ts` >= {s} AND `ts` < {e})" for s, e in period_bounds_ms(date, hours))
    return [
        ("period_points", f"""
SELECT {_fields()},
  CASE WHEN NOT ({complete}) THEN 'rejected' WHEN `type` = 'w' THEN 'tick' ELSE 'point' END AS kind0
FROM {source}
WHERE `date` = '{date:%Y-%m-%d}' AND `hour` IN ({hour_list})
  AND (`ts` IS NULL OR {in_period})"""),
        ("numbered", f"""
SELECT *, ROW_NUMBER() OVER (PARTITION BY kind0, pid, seq ORDER BY `ts`, `sum`, `count`) AS copy_no
FROM period_points"""),
        ("classified", f"""
SELECT {_fields()}, TO_TIMESTAMP_LTZ(`ts`, 3) AS rt,
  CASE WHEN kind0 <> 'point' THEN kind0 WHEN copy_no > 1 THEN 'dup' ELSE 'ok' END AS status
FROM numbered"""),
    ]
