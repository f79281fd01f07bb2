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


# -- vectorised path: many sketches, quantiles for many steps at once ---------------------------
#
# Every store entry becomes (order, count) where ``order`` sorts entries by the value they
# stand for: negative-store keys descending, then zero, then positive keys ascending.
_NEG_BASE, _ZERO_ORDER, _POS_BASE = 1_000_000, 2_000_000, 3_000_000


class Table:
    """Decoded sketches: entries of sketch i are ``order[offsets[i]:offsets[i+1]]`` with
    ``count[...]``; all sketches share ``alpha``."""

    __slots__ = ("alpha", "offsets", "order", "count")

    def __init__(self, alpha, offsets, order, count):
        self.alpha, self.offsets, self.order, self.count = alpha, offsets, order, count


def _uvarints(data: "np.ndarray"):
    """All LEB128 uvarints of a byte array (which must end on a varint end)."""
    import numpy as np

    ends = data < 0x80
    starts = np.concatenate(([0], np.flatnonzero(ends)[:-1] + 1))
    gid = np.cumsum(ends) - ends  # varint index of every byte
    shift = (np.arange(len(data)) - starts[gid]) * 7
    values = (data & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.add.reduceat(values, starts).astype(np.int64), ends


def _entries_from_merged(m: Merged):
    import numpy as np

    orders = [_NEG_BASE - k for k in m.neg] + ([_ZERO_ORDER] if m.zero else []) + [_POS_BASE + k for k in m.pos]
    counts = list(m.neg.values()) + ([m.zero] if m.zero else []) + list(m.pos.values())
    return np.array(orders, dtype=np.int64), np.array(counts, dtype=float)


def decode_many(blobs) -> Table:
    """Decode encoded sketches (None = empty) into one :class:`Table`.

    Sketches with integer counts (the common case) are decoded together: all their varints
    at once with numpy, a walk over each sketch's runs that only records (key, length,
    position) per run, and the entries of all runs built with numpy; others go through
    :func:`decode`.  Raises ValueError when alphas differ."""
    import numpy as np

    n = len(blobs)
    fast = [i for i, b in enumerate(blobs) if b and len(b) > 10 and b[0] == 1 and b[1] == 0]
    alphas = {_F64.unpack_from(blobs[i], 2)[0] for i in fast}
    entries_of = np.zeros(n, dtype=np.int64)
    fast_order = fast_count = np.empty(0)
    if fast:
        tails = [blobs[i][10:] for i in fast]
        data = np.frombuffer(b"".join(tails), dtype=np.uint8)
        values, ends = _uvarints(data)
        byte_bounds = np.cumsum([0] + [len(t) for t in tails])
        ends_before = np.concatenate(([0], np.cumsum(ends)))
        first_varint = ends_before[byte_bounds[:-1]].tolist()
        # Walk the runs of all sketches in lock step: iteration k reads run k of every
        # sketch that has one (a few dozen numpy steps instead of a Python loop per run).
        sketch_no = np.array(fast, dtype=np.int64)
        p = np.array(first_varint, dtype=np.int64) + 1  # skip max_buckets
        r_base, r_key, r_len, r_at, r_sketch = [], [], [], [], []
        has_zero = values[p] != 0
        r_base.append(np.full(int(has_zero.sum()), _ZERO_ORDER, dtype=np.int64))
        r_key.append(np.zeros(int(has_zero.sum()), dtype=np.int64))
        r_len.append(np.ones(int(has_zero.sum()), dtype=np.int64))
        r_at.append(p[has_zero])
        r_sketch.append(sketch_no[has_zero])
        p = p + 1
        for base in (_POS_BASE, -_NEG_BASE):  # negative base: order = NEG_BASE - key
            runs = values[p]
            p = p + 1
            key = np.zeros(len(p), dtype=np.int64)
            for k in range(int(runs.max()) if len(runs) else 0):
                act = np.flatnonzero(runs > k)
                at = p[act]
                head = values[at]
                if k == 0:
                    key[act] = (head >> 1) ^ -(head & 1)
                else:
                    key[act] += head
                length = values[at + 1]
                r_base.append(np.full(len(act), base, dtype=np.int64))
                r_key.append(key[act].copy())
                r_len.append(length)
                r_at.append(at + 2)
                r_sketch.append(sketch_no[act])
                p[act] = at + 2 + length
                key[act] += length - 1
        # Runs in sketch order (entries of one sketch contiguous, as offsets assume).
        r_sketch = np.concatenate(r_sketch)
        run_order = np.argsort(r_sketch, kind="stable")
        r_sketch = r_sketch[run_order]
        r_base, r_key, r_len, r_at = (np.concatenate(a)[run_order] for a in (r_base, r_key, r_len, r_at))
        lengths = r_len.astype(np.int64)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        base = np.repeat(r_base, lengths)
        key = np.repeat(r_key, lengths) + within
        zero_run = base == _ZERO_ORDER
        fast_order = np.where(zero_run, _ZERO_ORDER, np.where(base > 0, base + key, -base - key))
        fast_count = values[np.repeat(r_at, lengths) + within].astype(float)
        entries_of += np.bincount(r_sketch, weights=lengths, minlength=n).astype(np.int64)
    slow = [i for i, b in enumerate(blobs) if b and not (len(b) > 10 and b[0] == 1 and b[1] == 0)]
    if not slow:
        order, count = fast_order.astype(np.int64), fast_count
    else:  # rare (float counts): rebuild in sketch order
        fast_offsets = np.concatenate(([0], np.cumsum(entries_of)))
        parts_o, parts_c = [], []
        slow_set = set(slow)
        for i in range(n):
            if i in slow_set:
                m = decode(blobs[i])
                alphas.add(m.alpha)
                o, c = _entries_from_merged(m)
                entries_of[i] = len(o)
            else:
                o = fast_order[fast_offsets[i]:fast_offsets[i + 1]]
                c = fast_count[fast_offsets[i]:fast_offsets[i + 1]]
            parts_o.append(np.asarray(o, dtype=np.int64))
            parts_c.append(np.asarray(c, dtype=float))
        order, count = np.concatenate(parts_o), np.concatenate(parts_c)
    if len(alphas) > 1:
        raise ValueError(f"cannot merge sketches with alpha {sorted(alphas)}")
    offsets = np.concatenate(([0], np.cumsum(entries_of))).astype(np.int64)
    keep = count != 0
    if not keep.all():  # zero counts (bridged gaps in runs) hold no rank
        cum = np.concatenate(([0], np.cumsum(keep)))
        offsets = cum[offsets]
        order, count = order[keep], count[keep]
    return Table(alphas.pop() if alphas else None, offsets, order, count)


def quantiles_per_step(table: Table, steps: "np.ndarray", sketch_ids: "np.ndarray", n_steps: int,
                       q: float) -> "np.ndarray":
    """φ-quantile per step of the merge of sketches ``sketch_ids[k]`` into step ``steps[k]``
    (pairs, any order); NaN for steps without weight.  Same rank rule as Sketch.quantile."""
    import numpy as np

    out = np.full(n_steps, np.nan)
    if not len(steps) or table.alpha is None:
        return out
    lo, hi = table.offsets[sketch_ids], table.offsets[sketch_ids + 1]
    sizes = hi - lo
    if not sizes.sum():
        return out
    entry_step = np.repeat(steps, sizes)
    # Entry indices lo..hi-1 of every pair, without a Python loop.
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes)
    idx = np.arange(int(sizes.sum())) + starts
    order, count = table.order[idx], table.count[idx]
    sort = np.lexsort((order, entry_step))
    entry_step, order, count = entry_step[sort], order[sort], count[sort]
    cum = np.cumsum(count)
    first = np.searchsorted(entry_step, np.arange(n_steps), side="left")
    last = np.searchsorted(entry_step, np.arange(n_steps), side="right")
    has = last > first
    before = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
    total = np.where(has, cum[np.maximum(last - 1, 0)] - before, 0.0)
    rank = q * (total - 1.0)
    pick = np.searchsorted(cum, before + rank, side="right")
    pick = np.minimum(pick, np.maximum(last - 1, 0))  # rounding: answer the largest bucket
    gamma = (1.0 + table.alpha) / (1.0 - table.alpha)
    o = order[np.where(has, pick, 0)]
    key = np.where(o > _ZERO_ORDER, o - _POS_BASE, _NEG_BASE - o)
    ln_gamma = math.log(gamma)
    # math.exp, not np.exp: bit-identical to Sketch.quantile's answers.
    value = np.array([2.0 * math.exp(k * ln_gamma) / (gamma + 1.0) for k in key.tolist()])
    value = np.where(o == _ZERO_ORDER, 0.0, np.where(o < _ZERO_ORDER, -value, value))
    ok = has & (total > 0)
    out[ok] = value[ok]
    return out
