"""Prometheus HTTP API JSON, encoded fast (the response of a 1,000-series range query is
~12 MB; building it point by point in Python dominated the query time).

Values are Prometheus' ``[unix_seconds, "value"]`` pairs.  Finite values are formatted by
orjson (shortest round-trip representation) in one call per series and spliced between
precomputed timestamp prefixes; NaN steps are left out, ±Inf are written "+Inf"/"-Inf".
"""

from __future__ import annotations

import math
import operator

import numpy as np
import orjson

__all__ = ["envelope", "error_body", "encode_result", "encode_response", "format_value", "format_time"]

_OPT = orjson.OPT_SERIALIZE_NUMPY


def format_value(v: float) -> str:
    """A sample value as Prometheus writes it (NaN, +Inf, -Inf, else shortest float)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return orjson.dumps(float(v)).decode()


def format_time(t_ms: int) -> bytes:
    """Unix seconds: an integer when whole, else with milliseconds."""
    t_ms = int(t_ms)
    if t_ms % 1000 == 0:
        return str(t_ms // 1000).encode()
    return f"{t_ms / 1000:.3f}".encode()


def _labels_json(labels) -> bytes:
    return orjson.dumps(dict(labels))


def _value_texts(row: np.ndarray) -> tuple[np.ndarray | None, list]:
    """(indices of the non-NaN steps, or None for all of them; their value texts)."""
    if np.isfinite(row).all():
        return None, orjson.dumps(row, option=_OPT)[1:-1].split(b",")
    keep = np.flatnonzero(~np.isnan(row))
    if not len(keep):
        return keep, []
    values = row[keep]
    if np.isinf(values).any():  # rare: +Inf/-Inf spelled out one by one
        return keep, [format_value(v).encode() for v in values.tolist()]
    # NaN steps left out, the rest in one orjson call (a live range ends in NaN steps)
    return keep, orjson.dumps(values, option=_OPT)[1:-1].split(b",")


def _values_bytes(prefixes: list, row: np.ndarray, joined: list | None = None) -> bytes:
    """A row's ``[t,"v"],[t,"v"]`` pairs (b"" when every step is NaN).  ``joined``:
    prefixes[:1] + ['"],' + p for p in prefixes[1:]], to interleave the values in one join."""
    return _pairs(prefixes, *_value_texts(row), joined)


def _pairs(prefixes: list, keep: np.ndarray | None, strs: list, joined: list | None, end: bytes = b'"]') -> bytes:
    """The pairs of the value texts ``strs`` at steps ``keep`` (None: every step), then ``end``."""
    if not strs:
        return b""
    if keep is None and joined is not None:
        parts = [b""] * (2 * len(strs))
        parts[0::2] = joined
        parts[1::2] = strs
        return b"".join(parts) + end
    pre = prefixes if keep is None else [prefixes[i] for i in keep.tolist()]
    return b'"],'.join(map(operator.add, pre, strs)) + end


def _prefixes(times_ms: np.ndarray) -> list:
    """``[t,"`` of every step."""
    return [b"[" + format_time(t) + b',"' for t in times_ms.tolist()]


def _joined(prefixes: list) -> list:
    return prefixes[:1] + [b'"],' + p for p in prefixes[1:]]


class _Fragments:
    """A cached extent's rows encoded once (``[t,"v"],`` per non-NaN step) with the byte
    offset of every step, so any run of its steps is one slice (a memoryview, no copy)."""

    def __init__(self, times_ms: np.ndarray, labels: list, data: np.ndarray):
        prefixes = _prefixes(times_ms)
        joined = _joined(prefixes)
        widths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes)) + 3  # + '"],'
        self.rows: list[memoryview] = []
        self.offsets = np.zeros((len(labels), len(prefixes) + 1), dtype=np.int64)
        self.index = {l: i for i, l in enumerate(labels)}
        for i, row in enumerate(np.asarray(data, dtype=float)):
            keep, strs = _value_texts(row)
            if not strs:
                self.rows.append(memoryview(b""))
                continue
            body = _pairs(prefixes, keep, strs, joined, b'"],')
            lengths = np.zeros(len(row), dtype=np.int64)
            text_lengths = np.fromiter(map(len, strs), dtype=np.int64, count=len(strs))
            if keep is None:
                lengths[:] = widths + text_lengths
            else:
                lengths[keep] = widths[keep] + text_lengths
            np.cumsum(lengths, out=self.offsets[i, 1:])
            self.rows.append(memoryview(body))

    def slice(self, labels, lo: int, hi: int):
        """Steps [lo, hi) of the row with these labels (empty when none), without the
        trailing comma."""
        i = self.index.get(labels)
        if i is None:
            return b""
        a, b = int(self.offsets[i, lo]), int(self.offsets[i, hi])
        return self.rows[i][a:b - 1] if b > a else b""


def _fragments(extent) -> _Fragments:
    """The extent's encoded rows, built on first use and kept on it (tally.query.cache)."""
    frags = getattr(extent, "encoded", None)
    if frags is None:
        frags = extent.encoded = _Fragments(extent.times_ms, extent.labels, extent.data)
    return frags


def _result_pieces(result) -> list:
    """The ``data`` object of a query response as pieces to join (bytes and memoryviews)."""
    times = result.times_ms
    tier = orjson.dumps(result.tier)
    if getattr(result, "rollups", None):  # the rollup rules that answered (tally.query.rollups)
        tier += b',"rollups":' + orjson.dumps(result.rollups)
    if result.result_type == "scalar":
        v = float(result.data[0][-1]) if len(result.data) else math.nan
        return [b'{"resultType":"scalar","result":[' + format_time(times[-1]) + b',"' + format_value(v).encode()
                + b'"],"tier":' + tier + b"}"]
    if result.result_type == "vector":
        t = format_time(times[-1])
        items = []
        for labels, row in zip(result.labels, result.data):
            v = float(row[-1])
            if math.isnan(v):
                continue
            items.append(b'{"metric":' + _labels_json(labels) + b',"value":[' + t + b',"'
                         + format_value(v).encode() + b'"]}')
        return [b'{"resultType":"vector","result":[' + b",".join(items) + b'],"tier":' + tier + b"}"]
    reuse = getattr(result, "reuse", None)
    if reuse is None:
        segments = [(0, len(times))]
    else:
        extent, lo, hi, col = reuse
        frags = _fragments(extent)
        segments = [(0, col), None, (col + hi - lo, len(times))]
    # The steps encoded here (not those spliced from an extent): their prefixes and joins.
    encoded = [seg for seg in segments if seg is not None and seg[1] > seg[0]]
    prefixes = {seg: _prefixes(times[seg[0]:seg[1]]) for seg in encoded}
    joins = {seg: _joined(prefixes[seg]) for seg in encoded}
    out = [b'{"resultType":"matrix","result":[']
    sep = b'{"metric":'
    for labels, row in zip(result.labels, result.data):
        row = np.asarray(row, dtype=float)
        parts = []
        for seg in segments:
            if seg is None:
                part = frags.slice(labels, lo, hi)
            elif seg[1] > seg[0]:
                part = _values_bytes(prefixes[seg], row[seg[0]:seg[1]], joins[seg])
            else:
                continue
            if len(part):
                parts.append(part)
                parts.append(b",")
        if parts:
            parts[-1] = b"]}"
            out += [sep, _labels_json(labels), b',"values":[', *parts]
            sep = b',{"metric":'
    out.append(b'],"tier":' + tier + b"}")
    return out


def encode_result(result) -> bytes:
    """The ``data`` object of a query response for a tally.query.engine.QueryResult.

    A range result whose steps [col, col + hi - lo) are a cached extent's steps [lo, hi)
    (``result.reuse`` = (extent, lo, hi, col), set by the engine) splices that extent's
    rows, encoded once, instead of encoding those steps again."""
    return b"".join(_result_pieces(result))


def encode_response(result) -> bytes:
    """``envelope(encode_result(result), result.warnings)`` in one join (a range response
    can be tens of MB: every copy counts)."""
    out = [b'{"status":"success","data":', *_result_pieces(result)]
    if result.warnings:
        out.append(b',"warnings":' + orjson.dumps(list(result.warnings)))
    out.append(b"}")
    return b"".join(out)


def envelope(data_json: bytes, warnings: list | None = None) -> bytes:
    """``{"status":"success","data":...}`` around already encoded data."""
    out = b'{"status":"success","data":' + data_json
    if warnings:
        out += b',"warnings":' + orjson.dumps(list(warnings))
    return out + b"}"


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"status": "error", "errorType": error_type, "error": message})
