"""Unit tests for tally.sketch: accuracy, mergeability, weighting, encoding, bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.sketch import MIN_INDEXABLE, Sketch, SketchDecodeError

ALPHA = 0.01
# alpha is exact in real arithmetic; allow for float rounding in log/exp.
TOLERANCE = ALPHA * (1 + 1e-9)
QUANTILES = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]

values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
value_lists = st.lists(values, max_size=40)
# Integral weights keep float sums exact whatever the merge order, so equality is exact.
weights = st.integers(min_value=1, max_value=1000).map(float)


def sketch_of(vals, count=1.0) -> Sketch:
    sketch = Sketch(ALPHA)
    for v in vals:
        sketch.add(v, count)
    return sketch


def assert_quantiles_accurate(sketch: Sketch, data: np.ndarray) -> None:
    """Each answer must be within alpha of the sorted sample at rank floor(q * (n - 1))."""
    ordered = np.sort(data)
    for q in QUANTILES:
        expected = ordered[math.floor(q * (len(ordered) - 1))]
        assert expected == np.quantile(data, q, method="lower")  # same rank definition
        got = sketch.quantile(q)
        assert abs(got - expected) <= TOLERANCE * abs(expected), (q, got, expected)


@pytest.mark.parametrize(
    "name, draw",
    [
        ("lognormal", lambda rng: rng.lognormal(mean=3.0, sigma=1.5, size=20_000)),
        ("uniform", lambda rng: rng.uniform(0.0, 1000.0, size=20_000)),
        ("normal with negatives", lambda rng: rng.normal(0.0, 50.0, size=20_000)),
        (
            "negatives and zeros",
            lambda rng: np.concatenate(
                [-rng.lognormal(1.0, 2.0, 5_000), np.zeros(3_000), rng.lognormal(0.0, 1.0, 5_000)]
            ),
        ),
        ("heavy tail", lambda rng: rng.pareto(1.2, size=20_000) + 1e-3),
    ],
)
@pytest.mark.parametrize("bulk", [False, True], ids=["add", "add_many"])
def test_quantiles_within_relative_error(name, draw, bulk):
    data = draw(np.random.default_rng(42))
    sketch = Sketch(ALPHA).add_many(data) if bulk else sketch_of(data.tolist())
    assert sketch.count == len(data)
    assert_quantiles_accurate(sketch, data)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_any_quantile_within_relative_error(vals, q):
    data = np.array(vals)
    expected = np.sort(data)[math.floor(q * (len(data) - 1))]
    got = sketch_of(vals).quantile(q)
    if abs(expected) < MIN_INDEXABLE:
        assert got == 0.0
    else:
        assert abs(got - expected) <= TOLERANCE * abs(expected)


def test_empty_sketch_answers_none_and_counts_zero():
    sketch = Sketch()
    assert sketch.is_empty()
    assert sketch.count == 0.0
    assert sketch.quantile(0.5) is None
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


def test_zero_and_tiny_values_share_the_zero_bucket():
    sketch = Sketch().add(0.0).add(-0.0).add(MIN_INDEXABLE / 2).add(-MIN_INDEXABLE / 2)
    assert sketch.bucket_count == 0
    assert sketch.count == 4
    assert sketch.quantile(0.0) == sketch.quantile(1.0) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e301])
def test_add_rejects_unindexable_values(bad):
    sketch = Sketch()
    with pytest.raises(ValueError):
        sketch.add(bad)
    with pytest.raises(ValueError):
        sketch.add_many([1.0] * 100 + [bad])
    assert sketch.is_empty()  # add_many validates before adding anything


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_add_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        Sketch().add(1.0, bad)


@pytest.mark.parametrize("bad", [-0.1, 1.1, math.nan])
def test_quantile_rejects_out_of_range_q(bad):
    with pytest.raises(ValueError):
        Sketch().add(1.0).quantile(bad)


def test_merge_rejects_different_alpha():
    with pytest.raises(ValueError, match="alpha"):
        Sketch(0.01).merge(Sketch(0.02))


@settings(max_examples=150, deadline=None)
@given(value_lists, value_lists, value_lists)
def test_merge_is_associative_and_commutative(a, b, c):
    sa, sb, sc = sketch_of(a), sketch_of(b), sketch_of(c)
    left = sa.copy().merge(sb).merge(sc)
    right = sa.copy().merge(sb.copy().merge(sc))
    swapped = sc.copy().merge(sa).merge(sb)
    assert left == right == swapped
    assert left.to_bytes() == right.to_bytes() == swapped.to_bytes()
    # merge must not touch its argument
    assert sb == sketch_of(b)


@settings(max_examples=150, deadline=None)
@given(value_lists, value_lists)
def test_merge_equals_adding_all_values_to_one(a, b):
    assert sketch_of(a).merge(sketch_of(b)) == sketch_of(a + b)


@settings(max_examples=150, deadline=None)
@given(value_lists, weights)
def test_sample_rate_weighting(vals, weight):
    """A value sampled at rate 1/w is the same as w unsampled copies of it."""
    weighted = sketch_of(vals, count=weight)
    repeated = sketch_of([v for v in vals for _ in range(int(weight))])
    assert weighted == repeated
    assert weighted.count == len(vals) * weight


def test_fractional_weights_scale_count():
    sketch = Sketch().add(5.0, 1 / 0.3).add(7.0, 1 / 0.3)
    assert math.isclose(sketch.count, 2 / 0.3)
    assert abs(sketch.quantile(1.0) - 7.0) <= TOLERANCE * 7.0


def test_add_many_matches_add_and_accepts_iterators():
    data = np.random.default_rng(7).lognormal(2.0, 1.0, 5_000)
    bulk = Sketch().add_many(data, count=3.0)
    assert bulk == sketch_of(data.tolist(), count=3.0)
    assert Sketch().add_many(iter(data.tolist())) == sketch_of(data.tolist())


def test_merge_with_itself_doubles():
    sketch = sketch_of([1.0, 2.0, 3.0])
    assert sketch.merge(sketch) == sketch_of([1.0, 2.0, 3.0] * 2)


@settings(max_examples=200, deadline=None)
@given(value_lists, st.one_of(weights, st.floats(0.01, 1e6)))
def test_round_trip_bytes(vals, weight):
    sketch = sketch_of(vals, count=weight)
    decoded = Sketch.from_bytes(sketch.to_bytes())
    assert decoded == sketch
    assert decoded.to_bytes() == sketch.to_bytes()


def test_encoding_of_1000_latencies_is_compact():
    latencies_ms = np.random.default_rng(3).lognormal(mean=3.0, sigma=1.0, size=1000)
    encoded = Sketch().add_many(latencies_ms).to_bytes()
    print(f"1000 lognormal latencies encode to {len(encoded)} bytes")
    assert len(encoded) < 1024
    # sample-rate weights (non-integral) switch to float64 counts but still round-trip
    weighted = Sketch().add_many(latencies_ms, count=1 / 0.3)
    assert Sketch.from_bytes(weighted.to_bytes()) == weighted


# version 1, integral counts, alpha 0.01; the bytes after it are max_buckets, zero count, stores
HEAD = b"\x01\x00" + np.float64(0.01).tobytes()


def test_decode_rejects_every_truncation():
    encoded = sketch_of([-5.0, 0.0, 1.0, 2.0, 1e6], count=2.5).to_bytes()
    for cut in range(len(encoded)):
        with pytest.raises(SketchDecodeError):
            Sketch.from_bytes(encoded[:cut])


@pytest.mark.parametrize(
    "garbage, message",
    [
        (b"\x02" + bytes(20), "version"),
        (b"\x01\x80" + bytes(20), "flag"),
        (b"\x01\x00" + np.float64(1.5).tobytes() + b"\x01\x00\x00\x00", "alpha"),
        (HEAD + b"\x00\x00\x00\x00", "max_buckets"),
        (HEAD + b"\x01" + b"\xff" * 11, "varint too long"),
        (b"\x01\x01" + np.float64(0.01).tobytes() + b"\x01" + np.float64(-1).tobytes(), "count"),
        # one run starting at key 0 with 3 buckets exceeds max_buckets = 1
        (HEAD + b"\x01\x00\x01\x00\x03\x01\x01\x01\x00", "max_buckets"),
        # a second run with gap 0 would overlap the first run's last key
        (HEAD + b"\x10\x00\x02\x00\x01\x01\x00\x01\x01\x00", "ascending"),
        # a run whose keys run past the largest indexable key
        (HEAD + b"\x10\x00\x01\xfe\xff\x7f\x01\x01\x00", "range"),
    ],
)
def test_decode_rejects_garbage_precisely(garbage, message):
    with pytest.raises(SketchDecodeError, match=message):
        Sketch.from_bytes(garbage)


def test_decode_rejects_trailing_bytes_and_non_bytes():
    with pytest.raises(SketchDecodeError, match="trailing"):
        Sketch.from_bytes(Sketch().add(1.0).to_bytes() + b"\x00")
    with pytest.raises(TypeError):
        Sketch.from_bytes("not bytes")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_random_bytes_never_crashes_unexpectedly(data):
    try:
        sketch = Sketch.from_bytes(data)
    except SketchDecodeError:
        return
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


def test_bucket_cap_collapses_lowest_magnitudes():
    cap = 64
    sketch = Sketch(ALPHA, max_buckets=cap)
    data = np.geomspace(1e-6, 1e6, 5_000)  # ~1400 distinct buckets
    sketch.add_many(data)
    sketch.add_many(-data)
    assert sketch.bucket_count == 2 * cap
    assert sketch.count == 2 * len(data)  # collapsing moves weight, never drops it
    # the largest magnitudes (both tails) keep the accuracy guarantee
    ordered = np.sort(np.concatenate([data, -data]))
    for q in [0.0, 0.001, 0.99, 0.999, 1.0]:
        expected = ordered[math.floor(q * (len(ordered) - 1))]
        assert abs(sketch.quantile(q) - expected) <= TOLERANCE * abs(expected)


def test_merge_keeps_the_smaller_cap_in_either_order():
    wide = Sketch(ALPHA, max_buckets=100).add_many(np.geomspace(1.0, 1e3, 1_000))
    narrow = Sketch(ALPHA, max_buckets=10).add(5.0)
    merged = wide.copy().merge(narrow)
    assert merged == narrow.copy().merge(wide)
    assert merged.max_buckets == 10 and merged.bucket_count == 10


def test_default_bucket_cap_holds_for_wide_inputs():
    sketch = Sketch().add_many(np.geomspace(1e-200, 1e200, 50_000))
    assert sketch.bucket_count == 2048


@settings(max_examples=100, deadline=None)
@given(value_lists, value_lists, value_lists)
def test_merge_is_associative_under_the_cap(a, b, c):
    def capped(vals):
        sketch = Sketch(ALPHA, max_buckets=4)
        for v in vals:
            sketch.add(v)
        return sketch

    left = capped(a).merge(capped(b)).merge(capped(c))
    right = capped(a).merge(capped(b).merge(capped(c)))
    assert left == right == capped(c).merge(capped(b)).merge(capped(a))
    assert left == capped(a + b + c)  # collapsing incrementally == collapsing once
    assert left.bucket_count <= 8


def test_alpha_so_small_that_gamma_is_one_is_rejected():
    import struct

    with pytest.raises(ValueError, match="too small"):
        Sketch(1e-17)
    # The same alpha inside an encoding is a decode error, not a ZeroDivisionError.
    data = bytearray(Sketch().to_bytes())
    data[2:10] = struct.pack("<d", 1e-17)
    with pytest.raises(SketchDecodeError, match="too small"):
        Sketch.from_bytes(bytes(data))


def test_bins_are_the_histogram_in_ascending_order():
    sketch = Sketch().add(-5.0).add(0.0, 2).add(1.0).add(1000.0, 3)
    bins = sketch.bins()
    assert [w for _, w in bins] == [1.0, 2.0, 1.0, 3.0]
    assert [v for v, _ in bins] == sorted(v for v, _ in bins)
    for (value, _), exact in zip(bins, (-5.0, 0.0, 1.0, 1000.0)):
        assert abs(value - exact) <= 0.01 * abs(exact)
