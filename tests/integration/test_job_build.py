"""jobs/aggregate.build() with an injected collection source and collecting sink.

Runs the job's SQL on a local Flink mini-cluster (a JVM, no Kafka/Cassandra): the
bounded source ends with a final watermark, so every window fires.
"""

from __future__ import annotations

import pytest

from jobs import aggregate
from tally import point as points
from tally.config import TallyConfig
from tally.schema import point_sql_columns
from tally.series import series_id

pytestmark = pytest.mark.integration


def collection_source(env, rows):
    """A Source (see jobs/aggregate.py) over in-memory points, event time from ``ts``."""

    def register(t_env, cfg):
        from pyflink.common import Duration, Row, WatermarkStrategy
        from pyflink.common.typeinfo import Types
        from pyflink.common.watermark_strategy import TimestampAssigner
        from pyflink.table import DataTypes, Schema

        class EventTime(TimestampAssigner):
            def extract_timestamp(self, value, record_timestamp):
                return value["ts"]

        names = [n for n, _ in point_sql_columns()]
        py_types = {"INT": Types.INT(), "STRING": Types.STRING(), "BIGINT": Types.LONG(),
                    "DOUBLE": Types.DOUBLE(), "MAP<STRING, STRING>": Types.MAP(Types.STRING(), Types.STRING())}
        type_info = Types.ROW_NAMED(names, [py_types[t] for _, t in point_sql_columns()])
        stream = env.from_collection([Row(**{n: r[n] for n in names}) for r in rows], type_info)
        stream = stream.assign_timestamps_and_watermarks(
            WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(cfg.grace_seconds))
            .with_timestamp_assigner(EventTime()))
        schema = (Schema.new_builder()
                  .column_by_metadata("rowtime", DataTypes.TIMESTAMP_LTZ(3))
                  .watermark("rowtime", "SOURCE_WATERMARK()").build())
        t_env.create_temporary_view("points", t_env.from_data_stream(stream, schema))
        return "points"

    return register


def test_build_computes_exact_10s_buckets():
    from pyflink.datastream import StreamExecutionEnvironment

    s1 = series_id("t", "m", {"h": "1"})
    s2 = series_id("t", "m", {"h": "2"})
    rows = [points.from_value(s1, "c", ts, v, "p", i) for i, (ts, v) in
            enumerate([(1_000, 1.0), (9_999, 2.0), (10_000, 5.0), (4_000, 3.0)])]
    rows += [points.from_value(s2, "ms", 25_000, 7.5, "p", 10, count=4.0)]

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    source = collection_source(env, rows)
    collected = []
    buckets = aggregate.build(env, source, lambda stream, cfg: collected.append(stream), TallyConfig())
    with buckets.execute_and_collect() as results:
        got = {(r["sid"], r["bucket_ms"]): (r["cnt"], r["total"], r["vmin"], r["vmax"]) for r in results}
    assert collected, "the sink was handed the bucket stream"
    assert got == {
        (s1.id, 0): (3.0, 6.0, 1.0, 3.0),
        (s1.id, 10_000): (1.0, 5.0, 5.0, 5.0),
        (s2.id, 20_000): (4.0, 30.0, 7.5, 7.5),
    }
