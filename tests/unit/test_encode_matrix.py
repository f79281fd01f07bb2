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
