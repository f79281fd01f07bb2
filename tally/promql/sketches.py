"""Bulk percentile queries over many encoded sketches (the query's hot path).

``Sketch.from_bytes`` validates every field and builds a dict per sketch (~60 µs for a small
sketch); a range query over 15 minutes at 1 s merges tens of thousands of them.  This module
reads the same encoding (tally.sketch format version 1, documented in
``Sketch.from_bytes``) into plain key→count dicts without validation, merges them by
adding counts, and answers quantiles with exactly ``Sketch.quantile``'s rank rule.
``tests/unit/test_promql_sketches.py`` checks both against ``Sketch`` on random sketches.
Anything unexpected (another version, flags) falls back to ``Sketch.from_bytes``.
"""

from __future__ import annotations

import math
import struct

from tally.sketch import Sketch

__all__ = ["Merged", "decode", "merge_into", "quantile"]

_F64 = struct.Struct("<d")


class Merged:
    """A merged sketch as plain dicts: alpha, zero count, positive and negative stores."""

    __slots__ = ("alpha", "zero", "pos", "neg")

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha
        self.zero = 0.0
        self.pos: dict[int, float] = {}
        self.neg: dict[int, float] = {}

    @property
    def count(self) -> float:
        return self.zero + math.fsum(self.pos.values()) + math.fsum(self.neg.values())


def _from_sketch(sketch: Sketch) -> Merged:
    # Fallback path: re-read the canonical encoding of a validated sketch.
    m = Merged(sketch.alpha)
    data = sketch.to_bytes()
    _decode_fast(data, m)
    return m


def _decode_fast(data: bytes, out: Merged) -> None:
    pos = 2
    float_counts = data[1] & 1
    (alpha,) = _F64.unpack_from(data, pos)
    pos += 8
    if out.alpha is None:
        out.alpha = alpha
    elif out.alpha != alpha:
        raise ValueError(f"cannot merge sketches with alpha {out.alpha} and {alpha}")

    def uvarint():
        nonlocal pos
        result = shift = 0
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    def count():
        nonlocal pos
        if float_counts:
            (v,) = _F64.unpack_from(data, pos)
            pos += 8
            return v
        return float(uvarint())

    uvarint()  # max_buckets: merged stores are not capped here (query-side, transient)
    out.zero += count()
    for store in (out.pos, out.neg):
        key = None
        for _ in range(uvarint()):
            if key is None:
                u = uvarint()
                key = (u >> 1) ^ -(u & 1)
            else:
                key += uvarint()
            length = uvarint()
            for k in range(key, key + length):
                w = count()
                if w:
                    store[k] = store.get(k, 0.0) + w
            key += length - 1


def decode(data: bytes) -> Merged:
    """Decode one encoded sketch into a :class:`Merged`."""
    return merge_into(Merged(), data)


def merge_into(acc: Merged, data: bytes) -> Merged:
    """Add an encoded sketch's counts into ``acc`` (in place); returns ``acc``."""
    if len(data) >= 10 and data[0] == 1 and data[1] in (0, 1):
        try:
            _decode_fast(data, acc)
            return acc
        except IndexError:
            pass  # truncated: let the validating decoder name the problem
    other = _from_sketch(Sketch.from_bytes(data))
    return merge_merged(acc, other)


def merge_merged(acc: Merged, other: Merged) -> Merged:
    """Add a decoded sketch into ``acc`` (in place); returns ``acc``."""
    if acc.alpha is None:
        acc.alpha = other.alpha
    elif other.alpha is not None and other.alpha != acc.alpha:
        raise ValueError(f"cannot merge sketches with alpha {acc.alpha} and {other.alpha}")
    acc.zero += other.zero
    for store, theirs in ((acc.pos, other.pos), (acc.neg, other.neg)):
        for k, w in theirs.items():
            store[k] = store.get(k, 0.0) + w
    return acc


def quantile(m: Merged, q: float) -> float | None:
    """Value at quantile ``q``: the same rank rule and bucket value as ``Sketch.quantile``."""
    total = m.count
    if total <= 0 or m.alpha is None:
        return None
    gamma = (1.0 + m.alpha) / (1.0 - m.alpha)
    ln_gamma = math.log(gamma)
    rank = q * (total - 1.0)
    cumulative = 0.0
    value = 0.0
    for key in sorted(m.neg, reverse=True):
        value = -2.0 * math.exp(key * ln_gamma) / (gamma + 1.0)
        cumulative += m.neg[key]
        if cumulative > rank:
            return value
    if m.zero:
        value = 0.0
        cumulative += m.zero
        if cumulative > rank:
            return value
    for key in sorted(m.pos):
        value = 2.0 * math.exp(key * ln_gamma) / (gamma + 1.0)
        cumulative += m.pos[key]
        if cumulative > rank:
            return value
    return value
