"""Types derived from ``schemas/``: the point record's fields and the CQL statements.

Nothing here restates a field list: the point fields come from ``schemas/point.json``,
the CQL from ``schemas/cassandra.cql`` (rendered per tier from :mod:`tally.tiers`).
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from string import Template

from tally.tiers import DEFAULT_TIERS, Tier

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@lru_cache(maxsize=None)
def point_schema() -> dict:
    """The JSON Schema of the Kafka point record."""
    return json.loads((SCHEMA_DIR / "point.json").read_text())


@lru_cache(maxsize=None)
def series_schema() -> dict:
    """The JSON Schema of the series registration record."""
    return json.loads((SCHEMA_DIR / "series.json").read_text())


@lru_cache(maxsize=None)
def redis_layout() -> dict:
    """The Redis key layout (schemas/redis.json)."""
    return json.loads((SCHEMA_DIR / "redis.json").read_text())


def point_fields() -> tuple[str, ...]:
    """The point record's field names, in schema order."""
    return tuple(point_schema()["properties"])


def point_required_fields() -> tuple[str, ...]:
    """The fields every point has, in schema order (the others, e.g. ``rsids``, are optional:
    absent in a record means null)."""
    required = set(point_schema()["required"])
    return tuple(name for name in point_fields() if name in required)


def point_sql_columns() -> tuple[tuple[str, str], ...]:
    """(field, Flink SQL type) for every point field, for the Kafka source table DDL."""
    return tuple((name, spec["x-sql"]) for name, spec in point_schema()["properties"].items())


def series_sql_columns() -> tuple[tuple[str, str], ...]:
    """(field, Flink SQL type) for every series registration field."""
    return tuple((name, spec["x-sql"]) for name, spec in series_schema()["properties"].items())


@lru_cache(maxsize=None)
def _cql_sections() -> dict[str, str]:
    """The CQL file split at its ``-- @name`` markers into named statement templates."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (SCHEMA_DIR / "cassandra.cql").read_text().splitlines():
        marker = re.match(r"--\s*@(\w+)", line)
        if marker:
            current = marker.group(1)
            sections[current] = []
        elif current and not line.lstrip().startswith("--"):
            sections[current].append(line)
    return {name: "\n".join(lines).strip().rstrip(";") for name, lines in sections.items()}


def twcs_window(retention_days: int) -> tuple[str, int]:
    """A TimeWindowCompactionStrategy window giving at most ~30 windows per TTL."""
    window_hours = math.ceil(retention_days * 24 / 30)
    if window_hours < 24:
        return "HOURS", window_hours
    return "DAYS", math.ceil(window_hours / 24)


def bucket_table(tier: Tier) -> str:
    """The table holding a tier's buckets."""
    return f"buckets_{tier.name}"


def cql_statements(keyspace: str, replication: str, tiers: tuple[Tier, ...] = DEFAULT_TIERS) -> list[str]:
    """Every DDL statement, in order: keyspace, one bucket table per tier, series index."""
    sections = _cql_sections()
    statements = [Template(sections["keyspace"]).substitute(keyspace=keyspace, replication=replication)]
    for tier in tiers:
        unit, size = twcs_window(tier.retention_days)
        statements.append(
            Template(sections["tier"]).substitute(
                keyspace=keyspace, tier=tier.name, ttl_seconds=tier.retention_days * 86400,
                window_unit=unit, window_size=size,
            )
        )
    statements.append(Template(sections["series_index"]).substitute(keyspace=keyspace))
    return statements


# Columns of the per-tier table that only the reconciliation writes: the stream's upserts
# (bucket_columns) leave them alone.
RECONCILE_COLUMNS = ("repaired_ms",)


def all_bucket_columns() -> tuple[str, ...]:
    """Every column name of the per-tier bucket table, parsed from the CQL source."""
    body = _cql_sections()["tier"]
    inner = body[body.index("(") + 1 : body.index("PRIMARY KEY")]
    return tuple(line.split()[0] for line in inner.strip().splitlines() if line.strip())


def bucket_columns() -> tuple[str, ...]:
    """Column names of the per-tier bucket table that a bucket upsert writes (all but
    RECONCILE_COLUMNS)."""
    return tuple(c for c in all_bucket_columns() if c not in RECONCILE_COLUMNS)


