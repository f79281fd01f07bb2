"""Unit tests for tally.aggregate and tally.metric_types."""

from __future__ import annotations

import base64
import json
import math
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.aggregate import Aggregate, AggregateDecodeError, AggregateResult
from tally.metric_types import MetricType
from tally.sketch import Sketch

T0 = 1_700_000_000_000

# Integer-valued floats and weights keep every sum exact in any order, so merge can be
# compared with == instead of isclose.
int_values = st.integers(min_value=-10**6, max_value=10**6).map(float)
times = st.integers(min_value=T0, max_value=T0 + 50)  # narrow range: many event-time ties
weights = st.integers(min_value=1, max_value=100).map(float)
events = st.tuples(int_values, times, weights)


def aggregate_of(evts, with_sketch=False) -> Aggregate:
    (value, time_ms, count), *rest = evts
    agg = Aggregate.of(value, time_ms, count, with_sketch=with_sketch)
    for value, time_ms, count in rest:
        agg.add(value, time_ms, count)
    return agg


event_lists = st.lists(events, min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(event_lists, event_lists, event_lists, st.booleans())
def test_merge_is_associative_and_commutative(a, b, c, with_sketch):
    x, y, z = (aggregate_of(e, with_sketch) for e in (a, b, c))
    left = x.copy().merge(y).merge(z)
    right = x.copy().merge(y.copy().merge(z))
    shuffled = z.copy().merge(x).merge(y)
    assert left == right == shuffled
    assert left.to_bytes() == right.to_bytes() == shuffled.to_bytes()
    assert y == aggregate_of(b, with_sketch)  # the argument is left untouched


@settings(max_examples=200, deadline=None)
@given(event_lists, event_lists)
def test_merge_equals_adding_every_event(a, b):
    assert aggregate_of(a, True).merge(aggregate_of(b, True)) == aggregate_of(a + b, True)


@settings(max_examples=100, deadline=None)
@given(st.tuples(*[st.tuples(st.floats(-1e6, 1e6), times, st.floats(1.0, 100.0))] * 3))
def test_merge_with_arbitrary_floats_is_exact_except_for_sum(evts):
    x, y, z = (aggregate_of([e]) for e in evts)
    left = x.copy().merge(y).merge(z)
    right = x.copy().merge(y.copy().merge(z))
    for field in ("min", "max", "last", "last_time_ms"):
        assert getattr(left, field) == getattr(right, field)
    assert math.isclose(left.count, right.count, rel_tol=1e-12)
    assert math.isclose(left.sum, right.sum, rel_tol=1e-9, abs_tol=1e-6)


def test_weighted_add_follows_sample_rate():
    agg = Aggregate.of(4.0, T0, count=10.0)  # a timer sampled @0.1
    agg.add(6.0, T0 + 1, count=10.0)
    assert agg.result() == AggregateResult(
        count=20.0, sum=100.0, min=4.0, max=6.0, avg=5.0, last=6.0
    )


def test_last_follows_event_time_not_arrival_order():
    agg = Aggregate.of(1.0, T0 + 500)
    agg.add(2.0, T0 + 100)  # arrives later but happened earlier
    assert (agg.last, agg.last_time_ms) == (1.0, T0 + 500)
    agg.add(3.0, T0 + 900)
    assert (agg.last, agg.last_time_ms) == (3.0, T0 + 900)


def test_event_time_tie_goes_to_larger_value_in_any_order():
    low, high = Aggregate.of(1.0, T0), Aggregate.of(7.0, T0)
    assert low.copy().merge(high).last == high.copy().merge(low).last == 7.0
    assert Aggregate.of(7.0, T0).add(1.0, T0).last == 7.0
    assert Aggregate.of(1.0, T0).add(7.0, T0).last == 7.0


def test_negative_zero_is_normalised_so_ties_are_order_free():
    a = Aggregate.of(-0.0, T0).merge(Aggregate.of(0.0, T0))
    b = Aggregate.of(0.0, T0).merge(Aggregate.of(-0.0, T0))
    assert a.to_bytes() == b.to_bytes()
    assert math.copysign(1.0, a.min) == 1.0
    # -0.0 arriving below a positive min must not become the min either
    c = Aggregate.of(1.0, T0).add(-0.0, T0 + 1)
    assert math.copysign(1.0, c.min) == math.copysign(1.0, c.last) == 1.0


def test_merge_refuses_mixing_sketch_and_no_sketch():
    with pytest.raises(ValueError, match="sketch"):
        Aggregate.of(1.0, T0, with_sketch=True).merge(Aggregate.of(1.0, T0))
    with pytest.raises(ValueError, match="sketch"):
        Aggregate.of(1.0, T0).merge(Aggregate.of(1.0, T0, with_sketch=True))


def test_sketch_tracks_weighted_values():
    agg = Aggregate.of(100.0, T0, count=10.0, with_sketch=True)
    for ms in range(1, 100):
        agg.add(float(ms), T0 + ms)
    assert agg.sketch.count == agg.count == 109.0
    assert abs(agg.sketch.quantile(0.99) - 100.0) <= 1.0  # alpha = 1 %


@pytest.mark.parametrize(
    "value, time_ms, count",
    [(math.nan, T0, 1.0), (math.inf, T0, 1.0), (1.0, T0, 0.0), (1.0, T0, -1.0),
     (1.0, float(T0), 1.0), (1.0, True, 1.0), (True, T0, 1.0), (1.0, 2**63, 1.0)],
)
def test_bad_inputs_raise_value_error(value, time_ms, count):
    with pytest.raises(ValueError):
        Aggregate.of(value, time_ms, count)
    agg = Aggregate.of(5.0, T0)
    with pytest.raises(ValueError):
        agg.add(value, time_ms, count)
    assert agg == Aggregate.of(5.0, T0)  # a rejected add changes nothing


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e12, 1e12), st.integers(-(2**62), 2**62), st.floats(0.001, 1e6)),
        min_size=1,
        max_size=10,
    ),
    st.booleans(),
)
def test_round_trip_serialization(evts, with_sketch):
    agg = aggregate_of(evts, with_sketch)
    assert Aggregate.from_bytes(agg.to_bytes()) == agg
    wire = json.loads(json.dumps(agg.to_dict(), allow_nan=False))
    assert Aggregate.from_dict(wire) == agg


def test_to_dict_is_plain_json():
    agg = Aggregate.of(2.5, T0, count=2.0, with_sketch=True)
    data = agg.to_dict()
    assert {k: data[k] for k in ("count", "sum", "min", "max", "last", "last_time_ms")} == {
        "count": 2.0, "sum": 5.0, "min": 2.5, "max": 2.5, "last": 2.5, "last_time_ms": T0
    }
    assert Sketch.from_bytes(base64.b64decode(data["sketch"])) == agg.sketch
    assert "sketch" not in Aggregate.of(1.0, T0).to_dict()


def test_from_dict_ignores_unknown_keys():
    data = Aggregate.of(1.0, T0).to_dict() | {"added_in_v2": 1}
    assert Aggregate.from_dict(data) == Aggregate.of(1.0, T0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"count": None}, "count"),
        ({"count": 0}, "count"),
        ({"sum": "3"}, "sum"),
        ({"min": 5.0}, "min <= last <= max"),
        ({"last_time_ms": 1.5}, "milliseconds"),
        ({"sketch": "!!not base64!!"}, "sketch"),
        ({"sketch": "AAAA"}, "sketch"),
    ],
)
def test_from_dict_rejects_bad_input_precisely(change, message):
    data = Aggregate.of(1.0, T0).add(3.0, T0 + 1).to_dict() | change
    with pytest.raises(AggregateDecodeError, match=message):
        Aggregate.from_dict(data)


def test_from_dict_reports_missing_keys():
    with pytest.raises(AggregateDecodeError, match="missing keys: max, last"):
        Aggregate.from_dict({"count": 1, "sum": 1, "min": 1, "last_time_ms": T0})
    with pytest.raises(AggregateDecodeError):
        Aggregate.from_dict([1, 2, 3])


def test_from_bytes_rejects_truncated_and_garbage_input():
    encoded = Aggregate.of(1.0, T0, with_sketch=True).add(-2.0, T0).to_bytes()
    for cut in range(len(encoded)):
        with pytest.raises(AggregateDecodeError):
            Aggregate.from_bytes(encoded[:cut])
    with pytest.raises(AggregateDecodeError, match="version"):
        Aggregate.from_bytes(b"\x09" + encoded[1:])
    with pytest.raises(AggregateDecodeError, match="trailing"):
        Aggregate.from_bytes(Aggregate.of(1.0, T0).to_bytes() + b"\x00")
    with pytest.raises(AggregateDecodeError, match="count"):
        Aggregate.from_bytes(b"\x01\x00" + bytes(48))  # count 0


def test_reduce_over_points():
    points = [Aggregate.of(float(v), T0 + v) for v in range(1, 11)]
    total = reduce(Aggregate.merge, (p.copy() for p in points))
    assert total.result() == AggregateResult(10.0, 55.0, 1.0, 10.0, 5.5, 10.0)


def test_metric_types_that_carry_a_sketch():
    assert {t for t in MetricType if t.carries_sketch} == {
        MetricType.TIMER, MetricType.HISTOGRAM, MetricType.DISTRIBUTION
    }
    assert MetricType.parse("Timer") is MetricType.TIMER
    with pytest.raises(ValueError, match="expected one of: counter, gauge"):
        MetricType.parse("meter")
