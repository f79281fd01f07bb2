"""The Flink SQL of the aggregation job, as plain strings (no Flink import).

Every per-point step runs in Java operators; Python only sees finished buckets.  Views,
in pipeline order:

Stage 1 (computed once, then materialized):

``points``      source table (Kafka, or a test's collection) with event time ``rt``
``classified``  every record with a status: ``rejected`` (a required field did not parse:
                the JSON format turns a field of the wrong type into NULL), ``tick`` (a
                watermark tick: moves event time, never aggregated), ``dup`` (a replay:
                its ``seq`` is not above the highest seen before from the same producer
                on the same Kafka partition; state is one number per producer and
                partition), ``late`` (beyond grace: its 1 s bucket already fired),
                ``grace`` (late within grace: a point of a later second had already been
                seen, i.e. its 1 s bucket ended at or before the watermark plus the
                grace, but the bucket has not fired; aggregated like ``ok``, counted) or ``ok``

Stage 2:

``on_time``     the ``ok`` and ``grace`` points, each once for its series and once per rollup series
                in its ``rsids`` (tally.rollup): rollup series are aggregated like any
                series from here on (late/dup/rejected rows stay one per point)
``phase1``      1 s windows keyed by (tenant, sid, salt): a hot series is spread over
                ``salt_buckets`` keys and so over all subtasks
``agg_1s``      1 s windows keyed by (tenant, sid): merge of the phase-1 partials
``agg_<tier>``  each coarser tier merged from the tier below (rollup cascade)
``buckets``     every tier's buckets one per row plus the late, duplicate and rejected
                rows, one schema (BUCKET_COLUMNS): what the batch reconciliation reads.
``in_grace``    the ``grace`` points' tenant and event time
``sink_batches`` the streaming job's output: every tier's buckets packed into batches of
                one (tier, tenant, window, shard) by ``pack_buckets`` (tally.bucketpack:
                one record per few hundred buckets crosses into Python), the late,
                duplicate and rejected points one per row, and per tenant and second the
                number of points late within grace (kind ``grace``, in ``n``) (SINK_COLUMNS).  Everything leaves the SQL through this one
                stream: a second output (an INSERT) would be planned separately and read the
                topic a second time, with its own watermarks and so its own late decisions.
"""

from __future__ import annotations

from typing import Sequence

from tally.config import TallyConfig
from tally.schema import point_required_fields, point_sql_columns, series_sql_columns
from tally.tiers import DEFAULT_TIERS, Tier

# Columns of the per-row ``buckets`` view, in order.
BUCKET_COLUMNS = ("kind", "tier", "tenant", "sid", "ts", "cnt", "total", "vmin", "vmax", "vlast", "last_ts", "sk",
                  "mtype", "pid", "seq")
# Columns of the streaming sink's ``sink_batches``, in order: kind 'bucket' rows carry n packed buckets in
# ``batch``; kinds late / dup / rejected carry one point in the remaining columns; kind grace carries the number
# of points of a tenant's 1 s window that were late within grace in ``n``.
SINK_COLUMNS = ("kind", "tier", "tenant", "n", "batch", "sid", "ts", "cnt", "total", "vmin", "vmax", "vlast",
                "last_ts", "sk", "mtype", "pid", "seq")


def _columns_ddl(columns) -> str:
    return ",\n  ".join(f"`{name}` {sql_type}" for name, sql_type in columns)


def _kafka_json_source(cfg: TallyConfig, topic: str, group: str) -> str:
    """WITH options of a JSON Kafka source resuming from its group's committed offsets.
    Format ``tally-json`` (jobs/udf, TallyJsonFormatFactory) is Flink's JSON format that
    skips a record that is not a JSON object and counts it in the source's metric
    ``tallyUnparseableRecords`` (UNPARSEABLE_METRIC), where plain ``json`` either fails the job
    or, with ignore-parse-errors, skips it without a trace."""
    return f"""'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{cfg.kafka_bootstrap}',
  'properties.group.id' = '{group}',
  'properties.auto.offset.reset' = 'earliest',
  'scan.startup.mode' = 'group-offsets',
  'format' = 'tally-json'"""


UNPARSEABLE_METRIC = "tallyUnparseableRecords"  # jobs/udf CountingJsonDeserializationSchema.METRIC


def kafka_points_ddl(cfg: TallyConfig, table: str = "points") -> str:
    """The points topic as a table with event time ``rt``, watermark and partition metadata."""
    return f"""
CREATE TEMPORARY TABLE {table} (
  {_columns_ddl(point_sql_columns())},
  `part` INT METADATA FROM 'partition' VIRTUAL,
  rt AS TO_TIMESTAMP_LTZ(`ts`, 3),
  pt AS PROCTIME(),
  WATERMARK FOR rt AS rt - INTERVAL '{cfg.grace_seconds}' SECOND
) WITH (
  {_kafka_json_source(cfg, cfg.points_topic, cfg.consumer_group)},
  -- A field of the wrong type becomes NULL and the record gets status 'rejected' (counted);
  -- bytes that are not a JSON object are skipped and counted by the format.
  'tally-json.fail-on-missing-field' = 'false'
)"""


def kafka_series_ddl(cfg: TallyConfig, table: str = "series_registrations") -> str:
    """The series registration topic as a table with processing time ``pt``."""
    return f"""
CREATE TEMPORARY TABLE {table} (
  {_columns_ddl(series_sql_columns())},
  pt AS PROCTIME()
) WITH (
  {_kafka_json_source(cfg, cfg.series_topic, cfg.consumer_group + "-series")}
)"""


def series_batches_sql(table: str = "series_registrations", shards: int = 4) -> str:
    """The registrations of each second of processing time, split by series id into ``shards``
    groups, as one row per group: ``n`` and ``batch``, a JSON array of {sid, series, type}.
    The index sink writes a group as a few UNLOGGED batches: one registration at a time cost
    ~0.7 CPU-ms (driver and Cassandra) each, 7 CPU-s when a job starts on 10,000 series."""
    return f"""
SELECT COUNT(*) AS n,
       JSON_ARRAYAGG(JSON_OBJECT('sid' VALUE sid, 'series' VALUE series, 'type' VALUE `type`)) AS batch
FROM TABLE(TUMBLE(TABLE {table}, DESCRIPTOR(pt), INTERVAL '1' SECOND))
GROUP BY window_start, window_end, MOD(sid, {shards})"""


def interval(seconds: int) -> str:
    """A SQL interval literal in the largest whole unit (SECOND literals are limited to 99)."""
    for unit, size in (("DAY", 86_400), ("HOUR", 3_600), ("MINUTE", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"INTERVAL '{seconds // size}' {unit}"
    return f"INTERVAL '{seconds}' SECOND"


def _point_fields() -> str:
    return ", ".join(f"`{name}`" for name, _ in point_sql_columns())


def _aggregated_fields(sid: str = "sid") -> str:
    """The point fields the aggregation reads (all but ``rsids``), ``sid`` as given."""
    return ", ".join(f"{sid} AS sid" if name == "sid" else f"`{name}`"
                     for name, _ in point_sql_columns() if name != "rsids")


def classify_views(source: str, grace_seconds: int,
                   tiers: Sequence[Tier] = DEFAULT_TIERS) -> list[tuple[str, str]]:
    """Stage 1: (view, query) pairs from the source table to ``classified``, where every
    record gets one ``status``: ok, grace, late, dup, rejected or tick.  ``grace_seconds``
    is the source's watermark delay (the watermark is the newest event time minus it).

    Stage 1 is computed once and materialized (jobs/aggregate.py turns it into a stream
    and back): its status depends on the current watermark, and a plan that computed it
    in two branches could judge one record late in one and on time in the other.
    """
    first_ms = tiers[0].resolution_ms
    grace_ms = grace_seconds * 1000
    required = [n for n in point_required_fields() if n not in ("sk", "v")]
    complete = " AND ".join(f"`{n}` IS NOT NULL" for n in required)
    return [
        # max_before (a Java UDAF) over a ROWS frame: no buffering, one row in, one row out.
        ("seq_prev", f"""
SELECT *, max_before(seq) OVER (PARTITION BY pid, part ORDER BY pt
                                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS seq_max_before
FROM {source}"""),
        # A window [s, e) fires once the watermark reaches e - 1; a point whose first-tier
        # window has fired would be dropped by the window operator, so it is late.  A point
        # whose window had ended by the event time already seen (watermark + grace) but has
        # not fired arrived out of order and is kept: late within grace (judged against the
        # watermark, which the source advances every auto-watermark interval).
        ("classified", f"""
SELECT {_point_fields()}, rt AS event_time,
  CASE
    WHEN NOT ({complete}) THEN 'rejected'
    WHEN `type` = 'w' THEN 'tick'
    WHEN seq_max_before IS NOT NULL AND seq <= seq_max_before THEN 'dup'
    WHEN COALESCE(TO_TIMESTAMP_LTZ(`ts` - MOD(`ts`, {first_ms}) + {first_ms - 1}, 3)
                  <= CURRENT_WATERMARK(rt), FALSE) THEN 'late'
    WHEN COALESCE(TO_TIMESTAMP_LTZ(`ts` - MOD(`ts`, {first_ms}) + {first_ms - grace_ms}, 3)
                  <= CURRENT_WATERMARK(rt), FALSE) THEN 'grace'
    ELSE 'ok'
  END AS status
FROM seq_prev"""),
    ]


def bucket_views(classified: str, tiers: Sequence[Tier] = DEFAULT_TIERS,
                 salt_buckets: int = 4, batch_shards: int = 8) -> list[tuple[str, str]]:
    """Stage 2: (view, query) pairs from the materialized classified table (event time
    ``rt``) to ``buckets`` (per row) and ``sink_batches`` (packed).  ``batch_shards`` splits a tier window's buckets of a tenant
    into that many batches (by series id), so batches stay a few hundred rows and spread
    over the sink's subtasks."""
    if salt_buckets < 1:  # MOD(seq, 0) would fail every record at run time, and the job restart forever
        raise ValueError(f"salt_buckets must be at least 1, got {salt_buckets} (TallyConfig.phase1_salts resolves 0)")
    first = tiers[0]
    out: list[tuple[str, str]] = [
        # Every on-time point once for its own series, plus once per rollup series it feeds
        # (rsids, tally.rollup): same columns, sid replaced, so phase-1 salting spreads a hot
        # rollup series and every later stage treats rollup series like any other.  One
        # branch (UNNEST of [sid] + rsids), not a UNION ALL of a raw and a rollup branch: a
        # union input breaks operator chaining, so every raw point would be serialized once
        # more between the source chain and phase 1; the correlate stays chained.
        ("on_time", f"""
SELECT {_aggregated_fields("target")}, rt
FROM {classified} CROSS JOIN UNNEST(
  CASE WHEN rsids IS NULL THEN ARRAY[sid] ELSE ARRAY_CONCAT(ARRAY[sid], rsids) END) AS targets(target)
WHERE status IN ('ok', 'grace')"""),
        ("phase1", f"""
SELECT tenant, sid, window_time AS rt,
  SUM(`count`) AS cnt, SUM(`sum`) AS total, MIN(`min`) AS vmin, MAX(`max`) AS vmax,
  last_by_time(`ts`, `last`) AS vlast, MAX(`ts`) AS last_ts, MIN(`ts`) AS first_ts,
  sketch_agg(sk) AS sk
FROM TABLE(TUMBLE(TABLE on_time, DESCRIPTOR(rt), {interval(first.resolution_seconds)}))
GROUP BY tenant, sid, MOD(seq, {salt_buckets}), window_start, window_end, window_time"""),
    ]
    child = "phase1"
    for tier in tiers:
        out.append((f"agg_{tier.name}", f"""
SELECT tenant, sid, window_time AS rt,
  SUM(cnt) AS cnt, SUM(total) AS total, MIN(vmin) AS vmin, MAX(vmax) AS vmax,
  last_by_time(last_ts, vlast) AS vlast, MAX(last_ts) AS last_ts, MIN(first_ts) AS first_ts,
  sketch_agg(sk) AS sk
FROM TABLE(TUMBLE(TABLE {child}, DESCRIPTOR(rt), {interval(tier.resolution_seconds)}))
GROUP BY tenant, sid, window_start, window_end, window_time"""))
        child = f"agg_{tier.name}"
    rows = [
        f"""SELECT 'bucket' AS kind, '{t.name}' AS tier, tenant, sid,
  first_ts - MOD(first_ts, {t.resolution_ms}) AS ts, cnt, total, vmin, vmax, vlast, last_ts, sk,
  CAST(NULL AS STRING) AS mtype, CAST(NULL AS STRING) AS pid, CAST(NULL AS BIGINT) AS seq
FROM agg_{t.name}"""
        for t in tiers
    ]
    rows.append(f"""SELECT status AS kind, '{first.name}' AS tier, tenant, sid, `ts`,
  `count` AS cnt, `sum` AS total, `min` AS vmin, `max` AS vmax, `last` AS vlast, `ts` AS last_ts, sk,
  `type` AS mtype, pid, seq
FROM {classified} WHERE status IN ('late', 'dup', 'rejected')""")
    out.append(("buckets", "\nUNION ALL\n".join(rows)))
    out.append(("in_grace", f"SELECT tenant, rt FROM {classified} WHERE status = 'grace'"))
    no_point = ("CAST(NULL AS BIGINT) AS sid, CAST(NULL AS BIGINT) AS ts, CAST(NULL AS DOUBLE) AS cnt, "
                "CAST(NULL AS DOUBLE) AS total, CAST(NULL AS DOUBLE) AS vmin, CAST(NULL AS DOUBLE) AS vmax, "
                "CAST(NULL AS DOUBLE) AS vlast, CAST(NULL AS BIGINT) AS last_ts, CAST(NULL AS BYTES) AS sk, "
                "CAST(NULL AS STRING) AS mtype, CAST(NULL AS STRING) AS pid, CAST(NULL AS BIGINT) AS seq")
    # A tier's rows carry rt = their window's window_time, so a TUMBLE of the same size
    # groups exactly one window's buckets and fires at the same watermark.
    parts = [
        f"""SELECT 'bucket' AS kind, '{t.name}' AS tier, tenant, COUNT(*) AS n,
  pack_buckets(sid, first_ts - MOD(first_ts, {t.resolution_ms}), cnt, total, vmin, vmax, vlast, last_ts, sk) AS batch,
  {no_point}
FROM TABLE(TUMBLE(TABLE agg_{t.name}, DESCRIPTOR(rt), {interval(t.resolution_seconds)}))
GROUP BY tenant, MOD(sid, {batch_shards}), window_start, window_end"""
        for t in tiers
    ]
    parts.append(f"""SELECT status AS kind, '{first.name}' AS tier, tenant, CAST(1 AS BIGINT) AS n,
  CAST(NULL AS BYTES) AS batch, sid, `ts`,
  `count` AS cnt, `sum` AS total, `min` AS vmin, `max` AS vmax, `last` AS vlast, `ts` AS last_ts, sk,
  `type` AS mtype, pid, seq
FROM {classified} WHERE status IN ('late', 'dup', 'rejected')""")
    # Late within grace, counted in the SQL: one row per tenant and second, not per point.
    parts.append(f"""SELECT 'grace' AS kind, '{first.name}' AS tier, tenant, COUNT(*) AS n,
  CAST(NULL AS BYTES) AS batch, {no_point}
FROM TABLE(TUMBLE(TABLE in_grace, DESCRIPTOR(rt), {interval(first.resolution_seconds)}))
GROUP BY tenant, window_start, window_end""")
    out.append(("sink_batches", "\nUNION ALL\n".join(parts)))
    return out


JOB_SETTINGS = {
    # UTC so day windows align with the epoch like tally.tiers.
    "table.local-time-zone": "UTC",
    # Local-global aggregation of every window aggregate (needs mini-batch).
    "table.exec.mini-batch.enabled": "true",
    "table.exec.mini-batch.allow-latency": "200 ms",
    "table.exec.mini-batch.size": "5000",
    "table.optimizer.agg-phase-strategy": "TWO_PHASE",
}
