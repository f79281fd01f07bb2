"""Baseline for bench/pipeline.py: bare Flink SQL on the same cluster.

datagen (unbounded, as fast as it can) → 1 s TUMBLE → COUNT/SUM/MIN/MAX by key → blackhole,
with the same mini-batch / two-phase settings as the Tally job.  Submitted by the bench with
``flink run -d -py bench/baseline_job.py --keys N --parallelism P``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> None:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from tally.aggsql import JOB_SETTINGS

    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args(argv)
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    for key, value in JOB_SETTINGS.items():
        conf.set(key, value)
    conf.set("parallelism.default", str(args.parallelism))
    conf.set("pipeline.name", "tally-bench-baseline")
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE gen (
          k BIGINT, v DOUBLE, rt AS LOCALTIMESTAMP,
          WATERMARK FOR rt AS rt - INTERVAL '1' SECOND
        ) WITH ('connector' = 'datagen', 'rows-per-second' = '100000000',
                'fields.k.min' = '0', 'fields.k.max' = '{args.keys - 1}',
                'fields.v.min' = '0', 'fields.v.max' = '1000')""")
    t_env.execute_sql("""
        CREATE TEMPORARY TABLE sink (k BIGINT, ws TIMESTAMP(3), c BIGINT, s DOUBLE, mn DOUBLE, mx DOUBLE)
        WITH ('connector' = 'blackhole')""")
    t_env.execute_sql("""
        INSERT INTO sink
        SELECT k, window_start, COUNT(*), SUM(v), MIN(v), MAX(v)
        FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(rt), INTERVAL '1' SECOND))
        GROUP BY k, window_start, window_end""")


if __name__ == "__main__":
    main(sys.argv[1:])
