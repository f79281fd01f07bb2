"""Tally streaming aggregation job.

What it computes: per series (tenant, series id), 10-second tumbling event-time buckets
of the points in the topic — count (weighted), sum, min and max — and upserts each
bucket's full value into Cassandra table ``buckets_10s``.

Time: event time is the point's ``ts`` (epoch ms, UTC).  Watermarks trail the largest
seen event time by ``grace_seconds`` (bounded out-of-orderness), so a point up to that
late still lands in its bucket; a Kafka partition idle for
``source_idle_timeout_seconds`` does not hold the watermark back.

Inputs: Kafka topic ``tally.points`` (JSON records, schemas/point.json), read from the
committed offsets of consumer group ``tally-aggregate`` (earliest when none).
Outputs: Cassandra ``<keyspace>.buckets_10s`` (schemas/cassandra.cql).

The per-event path runs in Flink SQL (Java operators); Python only sees the small
stream of finished buckets, for the Cassandra upserts (see REFERENCE.md: per-record
Python costs ~20x).

Run it on the local cluster:  ``tally job submit aggregate``  (wraps
``flink run -d -py jobs/aggregate.py``); flags override TALLY_* environment settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable

from tally.config import TallyConfig
from tally.schema import point_sql_columns

JOB_NAME = "tally-aggregate"


def job_name(cfg: TallyConfig) -> str:
    """The Flink job name; it names topic and keyspace so `tally job` can tell runs apart."""
    return f"{JOB_NAME} {cfg.points_topic} -> {cfg.keyspace}"

TIER = "10s"
WINDOW_SECONDS = 10

Source = Callable[["StreamTableEnvironment", TallyConfig], str]  # registers a table, returns its name
Sink = Callable[["DataStream", TallyConfig], None]


def _point_columns_ddl() -> str:
    return ",\n  ".join(f"`{name}` {sql_type}" for name, sql_type in point_sql_columns())


def kafka_source(t_env, cfg: TallyConfig) -> str:
    """Register the points topic as table ``points`` with event time and watermark."""
    t_env.execute_sql(
        f"""
        CREATE TEMPORARY TABLE points (
          {_point_columns_ddl()},
          rowtime AS TO_TIMESTAMP_LTZ(`ts`, 3),
          WATERMARK FOR rowtime AS rowtime - INTERVAL '{cfg.grace_seconds}' SECOND
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{cfg.points_topic}',
          'properties.bootstrap.servers' = '{cfg.kafka_bootstrap}',
          'properties.group.id' = '{cfg.consumer_group}',
          'properties.auto.offset.reset' = 'earliest',
          'scan.startup.mode' = 'group-offsets',
          'format' = 'json'
        )
        """
    )
    return "points"


def cassandra_sink(buckets, cfg: TallyConfig) -> None:
    """Upsert finished buckets into Cassandra; the stream then ends in a discarding sink."""
    from pyflink.datastream.connectors.base import Sink as JavaSink
    from pyflink.java_gateway import get_gateway

    from sinks.flink import CassandraBucketSink

    written = (
        buckets.map(CassandraBucketSink(cfg, TIER))
        .name(f"cassandra-upsert-{TIER}")
        .uid(f"cassandra-upsert-{TIER}")
    )
    discard = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    written.sink_to(JavaSink(discard)).name("end").uid("end")


def bucket_query(points_table: str) -> str:
    """The SQL of the 10 s tumbling window aggregate over the points table."""
    window_ms = WINDOW_SECONDS * 1000
    return f"""
        SELECT
          tenant, sid, series,
          -- Exact bucket start from event time (epoch aligned), avoiding TIMESTAMP_LTZ
          -- time-zone conversion on the Python side.
          MIN(`ts`) - MOD(MIN(`ts`), {window_ms}) AS bucket_ms,
          SUM(`count`) AS cnt, SUM(`sum`) AS total, MIN(`min`) AS vmin, MAX(`max`) AS vmax
        FROM TABLE(TUMBLE(TABLE {points_table}, DESCRIPTOR(rowtime), INTERVAL '{WINDOW_SECONDS}' SECOND))
        GROUP BY tenant, sid, series, window_start, window_end
    """


def build(env, source: Source, sink: Sink, cfg: TallyConfig):
    """Wire the pipeline on ``env`` (a StreamExecutionEnvironment); returns the bucket stream."""
    from pyflink.table import StreamTableEnvironment

    t_env = StreamTableEnvironment.create(env)
    conf = t_env.get_config()
    conf.set("table.local-time-zone", "UTC")
    conf.set("table.exec.source.idle-timeout", f"{cfg.source_idle_timeout_seconds} s")
    conf.set("pipeline.name", job_name(cfg))
    points = source(t_env, cfg)
    buckets = t_env.to_data_stream(t_env.sql_query(bucket_query(points)))
    sink(buckets, cfg)
    return buckets


def parse_config(argv: list[str]) -> TallyConfig:
    """TALLY_* environment settings, overridden by command-line flags."""
    cfg = TallyConfig.from_env()
    parser = argparse.ArgumentParser(prog="jobs/aggregate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--grace-seconds", type=int, default=cfg.grace_seconds)
    parser.add_argument("--source-idle-timeout-seconds", type=int, default=cfg.source_idle_timeout_seconds)
    parser.add_argument("--topic", default=cfg.points_topic)
    parser.add_argument("--keyspace", default=cfg.keyspace)
    parser.add_argument("--consumer-group", default=cfg.consumer_group)
    parser.add_argument("--parallelism", type=int, default=cfg.job_parallelism)
    args = parser.parse_args(argv)
    return dataclasses.replace(
        cfg, grace_seconds=args.grace_seconds, source_idle_timeout_seconds=args.source_idle_timeout_seconds,
        points_topic=args.topic, keyspace=args.keyspace, consumer_group=args.consumer_group,
        job_parallelism=args.parallelism,
    )


def main(argv: list[str]) -> None:
    from pyflink.datastream import StreamExecutionEnvironment

    cfg = parse_config(argv)
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(cfg.job_parallelism)
    build(env, kafka_source, cassandra_sink, cfg)
    env.execute(job_name(cfg))


if __name__ == "__main__":
    main(sys.argv[1:])
