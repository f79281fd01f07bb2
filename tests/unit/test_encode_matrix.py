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
