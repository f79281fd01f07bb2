"""Prometheus remote_write 1.0 request decoding: Snappy block format + protobuf WriteRequest.

Pure: bytes in, plain values out.  The protobuf reader is a small hand-written
varint/length-delimited parser for the three messages remote_write 1.0 uses::

    WriteRequest { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
                   repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

Unknown fields are skipped by wire type, as protobuf requires.  A body that cannot be
framed at all raises :class:`DecodeError`; a time series whose own bytes are malformed is
reported in ``WriteRequest.malformed`` and the others are kept, so one bad series never
costs the good ones.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

__all__ = ["DecodeError", "TimeSeries", "WriteRequest", "decompress", "decode_write_request", "decode",
           "is_stale_marker", "STALE_NAN_BITS", "DEFAULT_MAX_DECOMPRESSED_BYTES"]

STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
_DOUBLE = struct.Struct("<d")
_U64 = struct.Struct("<Q")


class DecodeError(ValueError):
    """The request body is not a Snappy-compressed protobuf WriteRequest; says why and where."""


@dataclass
class TimeSeries:
    """One decoded series: labels in wire order (may repeat a name: the caller checks),
    samples as (value, timestamp ms), and how many native histograms it carried
    (not supported by Tally: counted, not stored)."""

    labels: list[tuple[str, str]] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)
    histograms: int = 0
    stale: int = 0  # samples that were staleness markers (dropped here, counted)


@dataclass
class WriteRequest:
    timeseries: list[TimeSeries] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # one message per undecodable series
    metadata: int = 0  # MetricMetadata entries (accepted and ignored)


def is_stale_marker(value: float) -> bool:
    """True for Prometheus' staleness NaN (exact bit pattern, not any NaN)."""
    return math.isnan(value) and _U64.unpack(_DOUBLE.pack(value))[0] == STALE_NAN_BITS


# --- Snappy --------------------------------------------------------------------------------


def _uvarint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise DecodeError(f"varint longer than 64 bits at byte {pos - 1}")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError(f"varint longer than 10 bytes at byte {pos - 1}")


def decompress(body: bytes, max_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> bytes:
    """Snappy block-format decompression, refusing bodies that claim more than ``max_bytes``
    before allocating anything (a 20-byte body may claim gigabytes)."""
    import cramjam

    if not body:
        raise DecodeError("empty body")
    declared, _ = _uvarint(body, 0, len(body))
    if declared > max_bytes:
        raise DecodeError(f"snappy body declares {declared} bytes uncompressed, more than the limit of {max_bytes}")
    try:
        out = bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:  # cramjam raises its own DecompressionError (and ValueError)
        raise DecodeError(f"not snappy block format: {exc}") from None
    if len(out) != declared:
        raise DecodeError(f"snappy body declared {declared} bytes but held {len(out)}")
    return out


# --- protobuf ----------------------------------------------------------------------------


def _fields(buf: bytes, pos: int, end: int):
    """Yield (field number, wire type, value) over one message; value is an int for varints,
    a (start, end) span for length-delimited fields, raw 8/4 bytes for fixed64/fixed32."""
    while pos < end:
        key, pos = _uvarint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _uvarint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            n, pos = _uvarint(buf, pos, end)
            if n > end - pos:
                raise DecodeError(f"field {number} claims {n} bytes, only {end - pos} left at byte {pos}")
            yield number, wire, (pos, pos + n)
            pos += n
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError(f"truncated fixed64 field {number} at byte {pos}")
            yield number, wire, buf[pos:pos + 8]
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError(f"truncated fixed32 field {number} at byte {pos}")
            yield number, wire, buf[pos:pos + 4]
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire} for field {number} at byte {pos}")


def _string(buf: bytes, span: tuple[int, int], what: str) -> str:
    try:
        return buf[span[0]:span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not valid UTF-8") from None


def _label(buf: bytes, start: int, end: int) -> tuple[str, str]:
    name = value = ""
    for number, wire, v in _fields(buf, start, end):
        if number in (1, 2):
            if wire != 2:
                raise DecodeError(f"label field {number} has wire type {wire}, expected 2")
            if number == 1:
                name = _string(buf, v, "label name")
            else:
                value = _string(buf, v, f"value of label {name!r}")
    return name, value


def _sample(buf: bytes, start: int, end: int) -> tuple[float, int]:
    value, ts = 0.0, 0
    for number, wire, v in _fields(buf, start, end):
        if number == 1:
            if wire != 1:
                raise DecodeError(f"sample value has wire type {wire}, expected 1 (double)")
            value = _DOUBLE.unpack(v)[0]
        elif number == 2:
            if wire != 0:
                raise DecodeError(f"sample timestamp has wire type {wire}, expected 0 (varint)")
            ts = v - (1 << 64) if v >= 1 << 63 else v  # int64 two's complement
    return value, ts


def _timeseries(buf: bytes, start: int, end: int) -> TimeSeries:
    ts = TimeSeries()
    for number, wire, v in _fields(buf, start, end):
        if number in (1, 2, 3, 4) and wire != 2:
            raise DecodeError(f"time series field {number} has wire type {wire}, expected 2")
        if number == 1:
            ts.labels.append(_label(buf, *v))
        elif number == 2:
            value, t = _sample(buf, *v)
            if is_stale_marker(value):
                ts.stale += 1
            else:
                ts.samples.append((value, t))
        elif number == 4:
            ts.histograms += 1
    return ts


def decode_write_request(data: bytes) -> WriteRequest:
    """Decode an uncompressed WriteRequest.  Raises DecodeError if the outer framing is
    broken; a malformed series is listed in ``malformed`` and skipped."""
    req = WriteRequest()
    for number, wire, v in _fields(data, 0, len(data)):
        if number == 1:
            if wire != 2:
                raise DecodeError(f"WriteRequest field 1 has wire type {wire}, expected 2")
            try:
                req.timeseries.append(_timeseries(data, *v))
            except DecodeError as exc:
                req.malformed.append(f"time series #{len(req.timeseries) + len(req.malformed)} "
                                     f"(bytes {v[0]}-{v[1]}): {exc}")
        elif number == 3:
            req.metadata += 1
    return req


def decode(body: bytes, max_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> WriteRequest:
    """Snappy-decompress and decode one remote_write request body."""
    return decode_write_request(decompress(body, max_bytes))
