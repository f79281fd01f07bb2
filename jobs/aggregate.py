"""Tally streaming aggregation job.

What it computes: for every series (tenant, series id), buckets at every tier (1 s, 10 s,
1 m, 1 h, 1 d): weighted count, sum, min, max, last value by event time and a mergeable
DDSketch (timers, histograms, distributions).  Each bucket's full value is upserted into
Cassandra ``buckets_<tier>`` and written through to Redis (schemas/).

Steps (SQL in tally/aggsql.py, all per-point work in Java operators):
every record classified once (rejected, watermark tick, replay by idempotency id =
producer id + sequence per Kafka partition, late, ok) and materialized → phase 1: 1 s windows keyed by (series, salt) so a hot series is
spread over all subtasks → phase 2: 1 s windows keyed by series → rollup cascade 1 s →
10 s → 1 m → 1 h → 1 d, each tier merged from the tier below → buckets packed into batches
(pack_buckets) → one synchronous Python batch sink.

Time: event time is the point's ``ts`` (epoch ms, UTC).  The watermark trails the largest
event time by ``grace_seconds`` (bounded out-of-orderness); a window fires when the
watermark passes its end, so a point up to ``grace_seconds`` late still lands in its
bucket.  A point whose 1 s window has already fired is beyond grace: it goes to the late
topic (``tally.points.late``) and the late counters, and is repaired by reconciliation.
Producers send watermark ticks (type ``w``) to every partition, so a quiet partition does
not hold event time back; a partition without any record for
``source_idle_timeout_seconds`` (0 = never) is treated as idle.

Inputs: Kafka ``tally.points`` (schemas/point.json) and ``tally.series``
(schemas/series.json), from the committed offsets of group ``tally-aggregate``.
Outputs: Cassandra ``<keyspace>.buckets_<tier>`` and ``series``; Redis recent buckets and
data-quality counters; Kafka ``tally.points.late``.  Checkpoints every
``checkpoint_interval_seconds`` to the cluster's checkpoint folder; restarts resume from
the latest one.

Run it on the local cluster:  ``tally job submit aggregate [flags]``  (wraps
``flink run -d -py jobs/aggregate.py``); flags override TALLY_* environment settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable

from tally import aggsql
from tally.config import TallyConfig, parse_bool

JOB_NAME = "tally-aggregate"

Source = Callable[["StreamTableEnvironment", TallyConfig], str]  # registers a table, returns its name
Sink = Callable[["StreamTableEnvironment", "DataStream", TallyConfig], None]


def job_name(cfg: TallyConfig) -> str:
    """The Flink job name; it names topic and keyspace so `tally job` can tell runs apart."""
    return f"{JOB_NAME} {cfg.points_topic} -> {cfg.keyspace}"


def kafka_source(t_env, cfg: TallyConfig) -> str:
    """Register the points topic as table ``points``."""
    t_env.execute_sql(aggsql.kafka_points_ddl(cfg, "points"))
    return "points"


def production_sink(t_env, buckets, cfg: TallyConfig) -> None:
    """Bucket batches to Cassandra + Redis and late points to the late topic (one Python
    batch sink), series registrations to the series index."""
    from pyflink.common.typeinfo import Types

    from sinks.flink import BucketSink, SeriesIndexSink

    written = buckets.map(BucketSink(cfg), output_type=Types.STRING()).name("bucket-sink").uid("bucket-batch-sink")
    _discard(written, "bucket-sink-end")

    t_env.execute_sql(aggsql.kafka_series_ddl(cfg, "series_registrations"))
    registrations = t_env.to_data_stream(t_env.sql_query(aggsql.series_batches_sql("series_registrations")))
    indexed = (registrations.map(SeriesIndexSink(cfg), output_type=Types.STRING())
               .name("series-index-sink").uid("series-index-sink"))
    _discard(indexed, "series-index-end")


def discard_sink(t_env, buckets, cfg: TallyConfig) -> None:
    """Drop every output row in a Java operator: bench/pipeline.py measures the SQL stages
    alone with it (``--sink discard``); never used for real data."""
    _discard(buckets, "bucket-discard")


SINKS = {"production": production_sink, "discard": discard_sink}


def _discard(stream, uid: str) -> None:
    from pyflink.datastream.connectors.base import Sink as JavaSink
    from pyflink.java_gateway import get_gateway

    discard = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()
    stream.sink_to(JavaSink(discard)).name(uid).uid(uid)


def build(env, source: Source, sink: Sink, cfg: TallyConfig):
    """Wire the pipeline on ``env`` (a StreamExecutionEnvironment); returns the bucket stream."""
    from pyflink.table import StreamTableEnvironment

    from tally.udf import register_udfs, udf_jar_path

    # The Java UDFs (tally/udf.py) must be on the stream environment's jars before the table
    # environment exists, so the client and the cluster both load them.
    env.add_jars(udf_jar_path().resolve().as_uri())
    t_env = StreamTableEnvironment.create(env)
    conf = t_env.get_config()
    for key, value in aggsql.JOB_SETTINGS.items():
        conf.set(key, value)
    conf.set("table.exec.source.idle-timeout", f"{cfg.source_idle_timeout_seconds * 1000} ms")
    conf.set("table.exec.state.ttl", f"{cfg.dedup_state_ttl_hours} h")
    conf.set("pipeline.name", job_name(cfg))
    register_udfs(t_env)
    points = source(t_env, cfg)
    for name, query in aggsql.classify_views(points, cfg.grace_seconds):
        t_env.create_temporary_view(name, t_env.sql_query(query))
    # Materialize stage 1 (Java rows, no Python): one computation of each record's status,
    # whatever stage 2 does with it.  Event time and watermarks ride along on the stream.
    # Stage 1 has no window, so mini-batch would run on processing time, and its assigner
    # replaces event-time watermarks with processing-time ones: off while it is planned.
    conf.set("table.exec.mini-batch.enabled", "false")
    classified = _internal_stream(t_env, "classified")
    conf.set("table.exec.mini-batch.enabled", aggsql.JOB_SETTINGS["table.exec.mini-batch.enabled"])
    t_env.create_temporary_view("classified_points", t_env.from_data_stream(classified, _EVENT_TIME_SCHEMA()))
    for name, query in aggsql.bucket_views("classified_points", salt_buckets=cfg.phase1_salts,
                                           batch_shards=cfg.sink_batch_shards):
        t_env.create_temporary_view(name, t_env.sql_query(query))
    buckets = t_env.to_data_stream(t_env.from_path("sink_batches"))
    sink(t_env, buckets, cfg)
    return buckets


def _internal_stream(t_env, view: str):
    """The view as a DataStream of Flink's internal rows (RowData), rowtime and watermarks
    included.  ``to_data_stream`` would convert every point to an external Row and
    ``from_data_stream`` back; rows bridged to RowData pass both conversions as they are
    (the SQL stages alone: 7 % less TaskManager CPU, bench/pipeline.py --sink discard)."""
    from pyflink.datastream import DataStream
    from pyflink.util.java_utils import load_java_class

    j_table = t_env.from_path(view)._j_table
    row_data = load_java_class("org.apache.flink.table.data.RowData")
    internal = j_table.getResolvedSchema().toPhysicalRowDataType().bridgedTo(row_data)
    return DataStream(t_env._j_tenv.toDataStream(j_table, internal))


def _EVENT_TIME_SCHEMA():
    """The rowtime of a materialized stream as column ``rt``, with the stream's watermarks."""
    from pyflink.table import DataTypes, Schema

    return (Schema.new_builder()
            .column_by_metadata("rt", DataTypes.TIMESTAMP_LTZ(3), "rowtime")
            .watermark("rt", "SOURCE_WATERMARK()").build())


def parse_config(argv: list[str]) -> TallyConfig:
    """TALLY_* environment settings, overridden by command-line flags."""
    return parse_args(argv)[0]


def parse_args(argv: list[str]) -> tuple[TallyConfig, str]:
    """(config, sink name) from TALLY_* environment settings and command-line flags."""
    cfg = TallyConfig.from_env()
    parser = argparse.ArgumentParser(prog="jobs/aggregate.py", description=__doc__.splitlines()[0])
    flags = {
        "grace_seconds": int, "source_idle_timeout_seconds": int, "points_topic": str, "series_topic": str,
        "late_topic": str, "keyspace": str, "consumer_group": str, "job_parallelism": int,
        "salt_buckets": int, "checkpoint_interval_seconds": int, "sink_batch_shards": int, "sink_bundle_ms": int,
        "job_object_reuse": parse_bool,
    }
    for name, kind in flags.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(cfg, name))
    parser.add_argument("--sink", choices=sorted(SINKS), default="production",
                        help="discard: drop the buckets (benchmarking the SQL stages only)")
    args = parser.parse_args(argv)
    return dataclasses.replace(cfg, **{name: getattr(args, name) for name in flags}), args.sink


def main(argv: list[str]) -> None:
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment

    cfg, sink = parse_args(argv)
    conf = Configuration()
    # Elements reach the Python sink when a bundle is cut: every 100 ms instead of the
    # default 1 s, since each element is a whole batch of buckets and freshness counts.
    conf.set_string("python.fn-execution.bundle.time", str(cfg.sink_bundle_ms))
    conf.set_string("pipeline.object-reuse", "true" if cfg.job_object_reuse else "false")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.job_parallelism)
    env.enable_checkpointing(cfg.checkpoint_interval_seconds * 1000, CheckpointingMode.EXACTLY_ONCE)
    build(env, kafka_source, SINKS[sink], cfg)
    env.execute(job_name(cfg))


if __name__ == "__main__":
    main(sys.argv[1:])
