"""The Java SQL functions (jobs/udf) inside real Flink SQL, checked against Python.

A local PyFlink mini-cluster (no stack needed) runs group and tumbling-window aggregations
with mini-batch and the TWO_PHASE strategy, so Flink splits each aggregate into local and
global phases and calls ``merge()``; the sketches must decode to exactly what
``tally.sketch`` builds from the same values, byte for byte, and ``last_by_time`` must pick
what ``tally.aggregate.Aggregate`` picks.  The JUnit suite of the module runs here too, so
CI (which runs only pytest) runs it.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from tally.aggregate import Aggregate
from tally.sketch import Sketch
from tally.udf import register_udfs, run_maven, udf_jar_path

pytestmark = [
    pytest.mark.integration,
    # pyflink.table imports httplib2, which uses deprecated pyparsing names (not our code).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:httplib2.*"),
]

WINDOW_MS = 10_000
Point = tuple[str, int, "float | None", float]  # group, ts (epoch ms), value or NULL, weight


def _points(seed: int = 17) -> list[Point]:
    """Several groups; lognormal, negative, zero and -0.0 values; NULLs; time ties; weights."""
    rng = random.Random(seed)
    points: list[Point] = []
    for group, n in (("api", 250), ("db", 180), ("cache", 120), ("tiny", 3)):
        for _ in range(n):
            kind = rng.random()
            if kind < 0.05:
                value = None
            elif kind < 0.10:
                value = rng.choice([0.0, -0.0])
            elif kind < 0.25:
                value = -float(f"{rng.lognormvariate(0.0, 2.0):.6g}")
            else:
                value = float(f"{rng.lognormvariate(3.0, 1.5):.6g}")
            # Integral weights (sample rates 1, 0.5, 0.1): merge order cannot change a sum.
            points.append((group, rng.randrange(0, 3 * WINDOW_MS, 250), value, rng.choice([1.0, 2.0, 10.0])))
    points += [("nulls", 5, None, 1.0), ("nulls", 9, None, 2.0), ("negzero", 50, -0.0, 1.0)]
    # -0.0 and 0.0 tie at the latest time: Aggregate normalises both to 0.0.
    points += [("zerotie", 70, -0.0, 1.0), ("zerotie", 70, 0.0, 2.0), ("zerotie", 70, -0.0, 1.0)]
    rng.shuffle(points)
    return points


def _expected(points: list[Point], key) -> dict:
    """Per key: (Python sketch bytes or None, Aggregate.last or None, max ts)."""
    sketches: dict = {}
    aggregates: dict = {}
    max_ts: dict = defaultdict(lambda: -1)
    for point in points:
        _, ts, value, weight = point
        k = key(point)
        max_ts[k] = max(max_ts[k], ts)
        if value is None:
            continue
        sketches.setdefault(k, Sketch()).add(value, weight)
        if k in aggregates:
            aggregates[k].add(value, ts, weight)
        else:
            aggregates[k] = Aggregate.of(value, ts, weight)
    return {
        k: (sketches[k].to_bytes() if k in sketches else None,
            aggregates[k].last if k in aggregates else None,
            max_ts[k])
        for k in max_ts
    }


def _values_sql(points: list[Point]) -> str:
    # Only plain literals (doubles as exact repr strings, NULL as '') keep VALUES a single
    # operator: a CAST or NULL in a row makes the planner build a union of one branch per
    # row, and planning ~500 rows then takes seconds.
    rows = ",\n".join(f"('{g}', {ts}, '{'' if v is None else repr(v)}', '{w!r}')" for g, ts, v, w in points)
    return f"""
        SELECT grp, CAST(ts AS BIGINT) AS ts, CAST(NULLIF(v, '') AS DOUBLE) AS v, CAST(w AS DOUBLE) AS w
        FROM (VALUES {rows}) AS t(grp, ts, v, w)"""


def _t_env(mini_batch_size: int):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = t_env.get_config()
    for key, value in {
        "parallelism.default": "2",
        "table.local-time-zone": "UTC",
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "1 s",
        "table.exec.mini-batch.size": str(mini_batch_size),
        "table.optimizer.agg-phase-strategy": "TWO_PHASE",
    }.items():
        config.set(key, value)
    register_udfs(t_env, udf_jar_path())
    return t_env


def _final_rows(t_env, sql: str, key_columns: int = 1) -> dict:
    """Run a query to the end and apply its changelog: the final row per key."""
    from pyflink.common import RowKind

    final = {}
    with t_env.execute_sql(sql).collect() as results:
        for row in results:
            key = row[0] if key_columns == 1 else tuple(row[:key_columns])
            if row.get_row_kind() in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                final[key] = row
            else:
                final.pop(key, None)
    return final


def _assert_matches_python(actual: dict, expected: dict) -> None:
    """``actual`` rows end with (sketch, last value, last ts, p99), after the key columns."""
    assert set(actual) == set(expected)
    for key, (sketch_bytes, last, max_ts) in expected.items():
        sk, last_v, last_ts, p99 = actual[key][-4:]
        got_sketch = None if sk is None else bytes(sk)
        if sketch_bytes is not None:
            assert got_sketch is not None, key
            assert Sketch.from_bytes(got_sketch) == Sketch.from_bytes(sketch_bytes), key
        assert got_sketch == sketch_bytes, key  # byte-identical, not just equal
        assert last_v == last and str(last_v) == str(last), key  # 0.0, never -0.0
        assert last_ts == max_ts, key
        if sketch_bytes is None:
            assert p99 is None, key
        else:
            assert p99 == pytest.approx(Sketch.from_bytes(sketch_bytes).quantile(0.99), rel=1e-15), key


# mini-batch size 1000 (one bundle per subtask) and 7 (many bundles, so the global phase
# merges into accumulators that already hold data).
@pytest.mark.parametrize("mini_batch_size", [1000, 7])
def test_group_aggregate_two_phase_matches_python(mini_batch_size):
    points = _points()
    t_env = _t_env(mini_batch_size)
    sql = f"""
        SELECT grp, sk, last_v, last_ts, sketch_quantile(sk, 0.99) AS p99
        FROM (
          SELECT grp, sketch_agg(sketch_of(v, w)) AS sk, last_by_time(ts, v) AS last_v,
                 MAX(ts) AS last_ts
          FROM ({_values_sql(points)})
          GROUP BY grp
        )"""
    plan = t_env.explain_sql(sql)
    assert "LocalGroupAggregate" in plan and "GlobalGroupAggregate" in plan, plan
    assert "Union" not in plan
    _assert_matches_python(_final_rows(t_env, sql), _expected(points, key=lambda p: p[0]))


def test_tumbling_window_two_phase_matches_python(tmp_path):
    # The aggregation job's shape: event-time TUMBLE windows over a table with a watermark.
    points = sorted(_points(seed=23), key=lambda p: p[1])  # in time order: nothing is late
    csv = tmp_path / "points.csv"
    csv.write_text("".join(f"{g},{ts},{'NULL' if v is None else repr(v)},{w!r}\n" for g, ts, v, w in points))
    t_env = _t_env(1000)
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE points (
          grp STRING, ts BIGINT, v DOUBLE, w DOUBLE,
          rowtime AS TO_TIMESTAMP_LTZ(ts, 3),
          WATERMARK FOR rowtime AS rowtime - INTERVAL '1' SECOND
        ) WITH ('connector' = 'filesystem', 'path' = '{csv}', 'format' = 'csv',
                'csv.null-literal' = 'NULL')""")
    sql = f"""
        SELECT grp, bucket_ms, sk, last_v, last_ts, sketch_quantile(sk, 0.99) AS p99
        FROM (
          SELECT grp, MIN(ts) - MOD(MIN(ts), {WINDOW_MS}) AS bucket_ms,
                 sketch_agg(sketch_of(v, w)) AS sk, last_by_time(ts, v) AS last_v, MAX(ts) AS last_ts
          FROM TABLE(TUMBLE(TABLE points, DESCRIPTOR(rowtime), INTERVAL '{WINDOW_MS // 1000}' SECOND))
          GROUP BY grp, window_start, window_end
        )"""
    plan = t_env.explain_sql(sql)
    assert "LocalWindowAggregate" in plan and "GlobalWindowAggregate" in plan, plan
    expected = _expected(points, key=lambda p: (p[0], p[1] - p[1] % WINDOW_MS))
    _assert_matches_python(_final_rows(t_env, sql, key_columns=2), expected)


def test_scalar_functions_nulls_and_implicit_casts():
    t_env = _t_env(1000)
    sql = """
        SELECT k, sketch_of(i) AS single, sketch_of(i, 3) AS weighted, sketch_of(CAST(NULL AS DOUBLE)) AS nothing,
               sketch_quantile(sketch_of(i, 2), 0.5) AS median, sketch_of(CAST(i AS DOUBLE) / 0) AS inf
        FROM (VALUES (1, 7), (2, -2), (3, 0)) AS t(k, i)"""
    rows = _final_rows(t_env, sql)
    for k, value in ((1, 7), (2, -2), (3, 0)):
        _, single, weighted, nothing, median, inf = rows[k]
        assert bytes(single) == Sketch().add(value).to_bytes()
        assert bytes(weighted) == Sketch().add(value, 3).to_bytes()
        assert nothing is None
        assert median == pytest.approx(Sketch().add(value, 2).quantile(0.5), rel=1e-15)
        assert inf is None  # +-Infinity (or NaN) is invalid: NULL, counted in a metric


def test_junit_suite_passes():
    result = run_maven(["test"])  # raises UdfBuildError with Maven's output on failure
    assert result.returncode == 0
