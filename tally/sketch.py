"""A mergeable quantile sketch with a relative-error guarantee (DDSketch-style).

Values are mapped to logarithmic buckets: with ``gamma = (1 + alpha) / (1 - alpha)`` a
positive value ``v`` goes to key ``ceil(log_gamma(v))``, i.e. the bucket
``(gamma**(k-1), gamma**k]``.  Answering with ``2 * gamma**k / (gamma + 1)`` is within
``alpha`` relative error of every value in that bucket, so any quantile answer is within
``alpha`` of the true sample at that rank.  Negative values live in a second store keyed by
their magnitude; magnitudes below ``MIN_INDEXABLE`` are counted as zero.

Sketches of the same ``alpha`` merge exactly by adding bucket counts, which is why
percentiles across hosts, tags and tiers come from merging sketches, never from averaging
percentiles.  Counts are floats because StatsD sample rates weight values (``@0.1`` -> 10).

Pure Python; numpy is used only to speed up ``add_many`` when it is installed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from numbers import Real

try:  # numpy is optional: only add_many's bulk path uses it.
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only without numpy
    _np = None

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MAX_BUCKETS",
    "MAX_INDEXABLE",
    "MIN_INDEXABLE",
    "Sketch",
    "SketchDecodeError",
]

DEFAULT_ALPHA = 0.01
DEFAULT_MAX_BUCKETS = 2048
# Magnitudes below this count as zero; above MAX_INDEXABLE are rejected.  Both are far
# outside any real metric and keep gamma**key finite for every alpha.
MIN_INDEXABLE = 1e-300
MAX_INDEXABLE = 1e300

_FORMAT_VERSION = 1
_FLAG_FLOAT_COUNTS = 0x01
_KNOWN_FLAGS = _FLAG_FLOAT_COUNTS
_F64 = struct.Struct("<d")
# Integral counts up to 2**53 are exact in a float64, so they round-trip through varints.
_MAX_EXACT_INT = 2**53
# Bridging a gap of up to this many empty keys with zero counts costs no more bytes than
# starting a new run (gap varint + length varint).
_MAX_BRIDGED_GAP = 2
# Bulk adds below this size are faster in plain Python than via numpy.
_NUMPY_MIN_VALUES = 64


class SketchDecodeError(ValueError):
    """Raised by ``Sketch.from_bytes`` when the input is not a valid encoded sketch."""


class Sketch:
    """Mergeable quantile sketch with relative accuracy ``alpha`` (mutable).

    The number of buckets per store (positive, negative) is capped at ``max_buckets``: when
    a store grows beyond it, its lowest-magnitude buckets are collapsed into the lowest
    bucket that is kept.  Quantiles in the tail (p90, p99 ...) keep the ``alpha`` guarantee;
    only ranks that fall into collapsed buckets lose it.  With alpha = 1 % 2048 buckets span
    about 17 orders of magnitude, so the cap only triggers for pathological inputs.
    """

    __slots__ = ("_alpha", "_gamma", "_ln_gamma", "_max_buckets", "_zero", "_pos", "_neg")
    __hash__ = None  # mutable, so unhashable despite __eq__

    def __init__(self, alpha: float = DEFAULT_ALPHA, max_buckets: int = DEFAULT_MAX_BUCKETS):
        """Create an empty sketch with relative accuracy ``alpha`` in (0, 1)."""
        if not (isinstance(alpha, Real) and 0.0 < alpha < 1.0):
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        if not isinstance(max_buckets, int) or max_buckets < 1:
            raise ValueError(f"max_buckets must be a positive int, got {max_buckets!r}")
        self._alpha = float(alpha)
        self._gamma = (1.0 + self._alpha) / (1.0 - self._alpha)
        self._ln_gamma = math.log(self._gamma)
        if self._ln_gamma == 0.0:  # alpha ~1e-16: gamma rounds to 1, keys would divide by 0
            raise ValueError(f"alpha {alpha!r} is too small: gamma rounds to 1")
        self._max_buckets = max_buckets
        self._zero = 0.0
        # Sparse stores key -> weight; a key is never present with weight 0, so dict
        # equality is sketch equality and the encoding is canonical.
        self._pos: dict[int, float] = {}
        self._neg: dict[int, float] = {}

    # -- properties -------------------------------------------------------------------

    @property
    def alpha(self) -> float:
        """The relative accuracy guarantee of quantile answers."""
        return self._alpha

    @property
    def max_buckets(self) -> int:
        """The cap on the number of buckets per store."""
        return self._max_buckets

    @property
    def count(self) -> float:
        """Total weight added (the sum of all counts)."""
        return self._zero + math.fsum(self._pos.values()) + math.fsum(self._neg.values())

    @property
    def bucket_count(self) -> int:
        """Number of non-empty buckets (zero bucket excluded), for monitoring the cap."""
        return len(self._pos) + len(self._neg)

    def is_empty(self) -> bool:
        """True when nothing has been added."""
        return not (self._zero or self._pos or self._neg)

    # -- adding -----------------------------------------------------------------------

    def add(self, value: float, count: float = 1.0) -> Sketch:
        """Add ``value`` with weight ``count`` (``1 / sample_rate``); returns self.

        Raises ValueError for non-finite values, magnitudes above ``MAX_INDEXABLE`` and
        negative or non-finite counts.  A count of 0 is a no-op.
        """
        count = _check_count(count)
        value = float(value)
        magnitude = abs(value)
        if not magnitude <= MAX_INDEXABLE:  # also catches NaN
            raise ValueError(f"value must be finite with |value| <= {MAX_INDEXABLE}, got {value!r}")
        if count == 0.0:
            return self
        if magnitude < MIN_INDEXABLE:
            self._zero += count
            return self
        store = self._pos if value > 0 else self._neg
        key = math.ceil(math.log(magnitude) / self._ln_gamma)
        store[key] = store.get(key, 0.0) + count
        self._collapse(store)
        return self

    def add_many(self, values: Iterable[float], count: float = 1.0) -> Sketch:
        """Add every value in ``values`` with the same weight ``count``; returns self.

        All values are validated before any is added, so a bad value leaves the sketch
        unchanged.  Large inputs are bucketed with numpy when available; numpy's ``log``
        may differ from ``math.log`` in the last bit, so a value lying exactly on a bucket
        boundary can land one bucket over compared with ``add`` - still within ``alpha``.
        """
        count = _check_count(count)
        if not hasattr(values, "__len__"):
            values = list(values)  # materialise iterators once: validate, then add
        if _np is not None and len(values) >= _NUMPY_MIN_VALUES:
            self._add_many_numpy(_np.asarray(values, dtype=_np.float64).ravel(), count)
            return self
        floats = [float(v) for v in values]
        bad = [v for v in floats if not abs(v) <= MAX_INDEXABLE]
        if bad:
            raise ValueError(
                f"values must be finite with |value| <= {MAX_INDEXABLE}, got {bad[0]!r}"
            )
        for v in floats:
            self.add(v, count)
        return self

    def _add_many_numpy(self, arr, count: float) -> None:
        magnitude = _np.abs(arr)
        ok = magnitude <= MAX_INDEXABLE  # False for NaN as well
        if not ok.all():
            bad = arr[~ok][0]
            raise ValueError(f"values must be finite with |value| <= {MAX_INDEXABLE}, got {bad!r}")
        if count == 0.0:
            return
        is_zero = magnitude < MIN_INDEXABLE
        self._zero += count * int(is_zero.sum())
        for store, mask in ((self._pos, (arr > 0) & ~is_zero), (self._neg, (arr < 0) & ~is_zero)):
            if not mask.any():
                continue
            keys = _np.ceil(_np.log(magnitude[mask]) / self._ln_gamma).astype(_np.int64)
            unique, counts = _np.unique(keys, return_counts=True)
            for key, n in zip(unique.tolist(), counts.tolist()):
                store[key] = store.get(key, 0.0) + n * count
            self._collapse(store)

    def _collapse(self, store: dict[int, float]) -> None:
        # Keep the max_buckets highest keys and fold everything below into the lowest kept
        # key.  The result depends only on the union of keys, so merge stays associative
        # and commutative even when the cap triggers.
        excess = len(store) - self._max_buckets
        if excess <= 0:
            return
        keys = sorted(store)
        target = keys[excess]
        for key in keys[:excess]:
            store[target] += store.pop(key)

    # -- merging and copying ----------------------------------------------------------

    def merge(self, other: Sketch) -> Sketch:
        """Add all of ``other``'s weight into this sketch in place; returns self.

        Raises ValueError unless both sketches have the same ``alpha``.  The merged sketch
        keeps the smaller of the two bucket caps, so merge order never matters.
        """
        if not isinstance(other, Sketch):
            raise TypeError(f"can only merge a Sketch, got {type(other).__name__}")
        if other._alpha != self._alpha:
            raise ValueError(f"cannot merge sketches with alpha {self._alpha} and {other._alpha}")
        if other is self:
            other = other.copy()
        self._max_buckets = min(self._max_buckets, other._max_buckets)
        self._zero += other._zero
        for store, other_store in ((self._pos, other._pos), (self._neg, other._neg)):
            for key, weight in other_store.items():
                store[key] = store.get(key, 0.0) + weight
            self._collapse(store)
        return self

    def copy(self) -> Sketch:
        """Return an independent copy."""
        clone = Sketch(self._alpha, self._max_buckets)
        clone._zero = self._zero
        clone._pos = dict(self._pos)
        clone._neg = dict(self._neg)
        return clone

    # -- querying ---------------------------------------------------------------------

    def quantile(self, q: float) -> float | None:
        """Return the value at quantile ``q`` in [0, 1], or None for an empty sketch.

        The answer is within ``alpha`` relative error of the sample at rank
        ``floor(q * (count - 1))`` of the sorted samples (numpy's ``method="lower"``), where
        a sample of weight ``w`` occupies ``w`` ranks.  None rather than NaN because NaN
        slips silently through arithmetic and is not valid JSON.
        """
        if not (isinstance(q, Real) and 0.0 <= q <= 1.0):
            raise ValueError(f"quantile must be a number in [0, 1], got {q!r}")
        if self.is_empty():
            return None
        rank = q * (self.count - 1.0)
        cumulative = 0.0
        value = 0.0
        for value, weight in self._ascending():
            cumulative += weight
            if cumulative > rank:
                return value
        return value  # rounding left the top rank unreached: answer the largest bucket

    def bins(self) -> list[tuple[float, float]]:
        """(representative value, weight) of every non-empty bucket, in ascending value
        order: the sketch as a histogram (each value is within alpha of the samples it holds)."""
        return list(self._ascending())

    def _ascending(self) -> Iterator[tuple[float, float]]:
        # Most negative first: a larger negative-store key means a larger magnitude.
        for key in sorted(self._neg, reverse=True):
            yield -self._bucket_value(key), self._neg[key]
        if self._zero:
            yield 0.0, self._zero
        for key in sorted(self._pos):
            yield self._bucket_value(key), self._pos[key]

    def _bucket_value(self, key: int) -> float:
        # The point of (gamma**(k-1), gamma**k] with equal relative distance to both ends.
        return 2.0 * math.exp(key * self._ln_gamma) / (self._gamma + 1.0)

    # -- equality and repr ------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return (
            self._alpha == other._alpha
            and self._max_buckets == other._max_buckets
            and self._zero == other._zero
            and self._pos == other._pos
            and self._neg == other._neg
        )

    def __repr__(self) -> str:
        return (
            f"Sketch(alpha={self._alpha}, count={self.count}, buckets={self.bucket_count}, "
            f"zero={self._zero})"
        )

    # -- encoding ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Encode compactly (format version 1, see ``from_bytes``)."""
        weights = [self._zero, *self._pos.values(), *self._neg.values()]
        float_counts = not all(w.is_integer() and w <= _MAX_EXACT_INT for w in weights)
        out = bytearray((_FORMAT_VERSION, _FLAG_FLOAT_COUNTS if float_counts else 0))
        out += _F64.pack(self._alpha)
        _put_uvarint(out, self._max_buckets)

        def put_count(weight: float) -> None:
            if float_counts:
                out.extend(_F64.pack(weight))
            else:
                _put_uvarint(out, int(weight))

        put_count(self._zero)
        for store in (self._pos, self._neg):
            runs = _runs(sorted(store))
            _put_uvarint(out, len(runs))
            previous_end = None
            for start, end in runs:
                if previous_end is None:
                    _put_uvarint(out, _zigzag(start))
                else:
                    _put_uvarint(out, start - previous_end)
                _put_uvarint(out, end - start + 1)
                for key in range(start, end + 1):
                    put_count(store.get(key, 0.0))
                previous_end = end
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Sketch:
        """Decode ``to_bytes`` output; raises SketchDecodeError on any malformed input.

        Layout (integers are LEB128 uvarints, keys zigzag-encoded where signed)::

            u8 version (=1) | u8 flags (bit 0: counts are float64, else uvarint)
            f64le alpha | uvarint max_buckets | count zero_count
            store positive | store negative
            store = uvarint n_runs, then per run: first run zigzag(start key), later runs
                    uvarint (start - previous run end); uvarint run length; one count per
                    consecutive key (0 for bridged empty keys)
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        reader = _Reader(bytes(data))
        version = reader.byte("version")
        if version != _FORMAT_VERSION:
            raise SketchDecodeError(f"unsupported sketch format version {version}")
        flags = reader.byte("flags")
        if flags & ~_KNOWN_FLAGS:
            raise SketchDecodeError(f"unknown flag bits 0x{flags:02x}")
        alpha = reader.float64("alpha")
        if not 0.0 < alpha < 1.0:
            raise SketchDecodeError(f"alpha {alpha!r} is outside (0, 1)")
        max_buckets = reader.uvarint("max_buckets")
        if max_buckets < 1:
            raise SketchDecodeError("max_buckets must be positive")
        try:
            sketch = cls(alpha, max_buckets)
        except ValueError as exc:
            raise SketchDecodeError(str(exc)) from None
        read_count = reader.float64 if flags & _FLAG_FLOAT_COUNTS else reader.uvarint
        min_key = math.ceil(math.log(MIN_INDEXABLE) / sketch._ln_gamma)
        max_key = math.ceil(math.log(MAX_INDEXABLE) / sketch._ln_gamma)
        sketch._zero = _checked_weight(read_count("zero count"), reader)
        for name, store in (("positive", sketch._pos), ("negative", sketch._neg)):
            n_runs = reader.uvarint(f"{name} run count")
            key = None
            for _ in range(n_runs):
                if key is None:
                    key = _unzigzag(reader.uvarint(f"{name} start key"))
                else:
                    gap = reader.uvarint(f"{name} key gap")
                    if gap < 1:
                        raise SketchDecodeError(f"{name} keys not ascending at offset {reader.pos}")
                    key += gap
                length = reader.uvarint(f"{name} run length")
                last = key + length - 1
                if length < 1 or key < min_key or last > max_key:
                    raise SketchDecodeError(f"{name} run [{key}, {last}] out of range")
                for k in range(key, last + 1):
                    weight = _checked_weight(read_count(f"{name} count"), reader)
                    if weight:
                        store[k] = weight
                    if len(store) > max_buckets:
                        raise SketchDecodeError(f"{name} store exceeds max_buckets {max_buckets}")
                key = last
        if reader.pos != len(reader.data):
            raise SketchDecodeError(f"{len(reader.data) - reader.pos} trailing bytes")
        return sketch


# -- helpers --------------------------------------------------------------------------


def _check_count(count: float) -> float:
    count = float(count)
    if not 0.0 <= count < math.inf:
        raise ValueError(f"count must be finite and >= 0, got {count!r}")
    return count


def _runs(keys: list[int]) -> list[tuple[int, int]]:
    """Group sorted keys into (start, end) runs, bridging gaps of a few empty keys."""
    runs: list[tuple[int, int]] = []
    for key in keys:
        if runs and key - runs[-1][1] <= _MAX_BRIDGED_GAP + 1:
            runs[-1] = (runs[-1][0], key)
        else:
            runs.append((key, key))
    return runs


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _put_uvarint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _checked_weight(weight: float, reader: _Reader) -> float:
    if not 0.0 <= weight < math.inf:
        raise SketchDecodeError(f"invalid count {weight!r} before offset {reader.pos}")
    return float(weight)


class _Reader:
    """Bounds-checked cursor: every read failure becomes a SketchDecodeError."""

    __slots__ = ("data", "pos")
    _MAX_VARINT_BYTES = 10  # enough for any 64-bit value; longer runs are garbage

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _truncated(self, what: str) -> SketchDecodeError:
        return SketchDecodeError(
            f"truncated input: {what} at offset {self.pos} of {len(self.data)}"
        )

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise self._truncated(what)
        self.pos += 1
        return self.data[self.pos - 1]

    def float64(self, what: str) -> float:
        if self.pos + 8 > len(self.data):
            raise self._truncated(what)
        (value,) = _F64.unpack_from(self.data, self.pos)
        self.pos += 8
        return value

    def uvarint(self, what: str) -> int:
        result = 0
        for shift in range(0, 7 * self._MAX_VARINT_BYTES, 7):
            b = self.byte(what)
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
        raise SketchDecodeError(f"varint too long: {what} at offset {self.pos}")
