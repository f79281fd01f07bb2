"""The matrix encoder's fast path (all-finite rows) writes exactly Prometheus' value pairs."""

import math

import numpy as np
import orjson

from tally.api.encode import encode_result
from tally.query.engine import QueryResult


def test_matrix_rows_finite_and_with_gaps_encode_as_prometheus_pairs():
    times = np.array([1_700_000_000_000, 1_700_000_001_000, 1_700_000_002_500], dtype=np.int64)
    data = np.array([[1.5, 2.0, 1e-7], [math.nan, 3.25, math.inf], [math.nan] * 3, [0.1 + 0.2, -4.0, 1e21]])
    labels = [(("host", "a"),), (("host", "b"),), (("host", "c"),), (("host", "d"),)]
    doc = orjson.loads(encode_result(QueryResult("matrix", times, labels, data, "1s")))
    assert doc["resultType"] == "matrix" and doc["tier"] == "1s"
    assert doc["result"] == [
        {"metric": {"host": "a"}, "values": [[1700000000, "1.5"], [1700000001, "2.0"], [1700000002.5, "1e-7"]]},
        {"metric": {"host": "b"}, "values": [[1700000001, "3.25"], [1700000002.5, "+Inf"]]},
        {"metric": {"host": "d"}, "values": [[1700000000, "0.30000000000000004"], [1700000001, "-4.0"],
                                             [1700000002.5, "1e+21"]]},
    ]


def test_rows_with_nan_steps_and_no_inf_equal_value_by_value_formatting():
    """A live range ends in NaN steps (buckets not yet written): those rows take the
    vectorised path over their finite values; the text equals format_value's per value."""
    from tally.api.encode import format_value

    rng = np.random.default_rng(7)
    times = np.arange(1_700_000_000_000, 1_700_000_000_000 + 50 * 1000, 1000, dtype=np.int64)
    data = rng.lognormal(2.0, 3.0, size=(3, 50)) * rng.choice([-1.0, 1.0], size=(3, 50))
    data[0, -10:] = math.nan       # trailing gap
    data[1, ::7] = math.nan        # scattered gaps
    data[2, 3] = -math.inf         # an infinity takes the one-by-one path
    data[2, 4] = math.nan
    labels = [(("host", str(i)),) for i in range(3)]
    doc = orjson.loads(encode_result(QueryResult("matrix", times, labels, data, "1s")))
    for series, row in zip(doc["result"], data):
        expected = [[int(t // 1000), format_value(v)] for t, v in zip(times.tolist(), row.tolist())
                    if not math.isnan(v)]
        assert series["values"] == expected
    assert [s["values"][3][1] for s in doc["result"]][2] == "-Inf"


def test_spliced_extent_rows_encode_exactly_like_the_plain_result():
    """A result reusing a cached extent's encoded rows (result.reuse) is byte for byte the
    encoding of the same matrix without it: full hit, open tail, sliding start, a head
    before the extent, series missing from the extent, NaN gaps and infinities."""
    from tally.query.cache import Extent

    rng = np.random.default_rng(7)
    n_rows, n_steps = 12, 40
    times = 1_796_514_000_000 + 1000 * np.arange(n_steps, dtype=np.int64)
    labels = [(("host", f"h{i:02d}"),) for i in range(n_rows)]
    data = np.round(rng.normal(50, 10, (n_rows, n_steps)), 3)
    data[rng.random(data.shape) < 0.1] = np.nan
    data[3, :] = np.nan  # a series without any sample
    data[4, 5], data[5, 7] = np.inf, -np.inf
    data[6, 10:30] = np.nan  # a gap spanning the extent's edges
    # The extent: steps [e0, e1) of rows 0..9 (rows 10, 11 appear only outside it, e.g. in the tail).
    e0, e1 = 5, 32
    extent = Extent("matrix", times[e0:e1].copy(), labels[:10], data[:10, e0:e1].copy())
    for lo, hi, col in ((0, e1 - e0, 0), (0, e1 - e0, 5), (3, e1 - e0, 0), (3, 20, 4), (0, 1, 0)):
        n = col + (hi - lo) + 6  # col steps before the extent's part, 6 after
        t = times[e0 + lo - col:e0 + lo - col + n]
        d = np.full((n_rows, n), np.nan)
        d[:, :] = data[:, e0 + lo - col:e0 + lo - col + n]
        d[10:, col:col + hi - lo] = np.nan  # not in the extent: no samples in its steps
        plain = encode_result(QueryResult("matrix", t, labels, d, "1s"))
        spliced = encode_result(QueryResult("matrix", t, labels, d, "1s", reuse=(extent, lo, hi, col)))
        assert spliced == plain, (lo, hi, col)
        orjson.loads(spliced)
    assert extent.encoded is not None  # built once, kept on the extent


def test_encode_response_is_the_envelope_of_the_result():
    from tally.api.encode import encode_response, envelope

    times = np.array([1_700_000_000_000, 1_700_000_001_000], dtype=np.int64)
    for labels, data in (([(("host", "a"),), (("host", "b"),)], np.array([[1.0, math.nan], [2.5, 3.0]])),
                         ([], np.empty((0, 2)))):
        for warnings in ([], ["redis unavailable: recent buckets read from Cassandra"]):
            res = QueryResult("matrix", times, labels, data, "1s", warnings)
            assert encode_response(res) == envelope(encode_result(res), warnings)
            assert orjson.loads(encode_response(res))["status"] == "success"
