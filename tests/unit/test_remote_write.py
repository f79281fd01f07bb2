"""tally.remote_write against an independent encoder written here (protobuf by hand, Snappy
literal/copy streams by hand), plus cramjam's compressor for realistic streams."""

from __future__ import annotations

import math
import struct

import cramjam
import pytest

from tally.remote_write import STALE_NAN_BITS, DecodeError, decode, decode_write_request, decompress, \
    is_stale_marker

STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


# --- an independent protobuf writer for WriteRequest ----------------------------------------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def ld(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def pb_label(name: str, value: str) -> bytes:
    return ld(1, name.encode()) + ld(2, value.encode())


def pb_sample(value: float, ts_ms: int) -> bytes:
    return key(1, 1) + struct.pack("<d", value) + key(2, 0) + varint(ts_ms)


def pb_series(labels, samples, extra: bytes = b"") -> bytes:
    return (b"".join(ld(1, pb_label(k, v)) for k, v in labels)
            + b"".join(ld(2, pb_sample(v, t)) for v, t in samples) + extra)


def pb_request(series) -> bytes:
    """series: [(labels [(name, value)], samples [(value, ts_ms)])]"""
    return b"".join(ld(1, pb_series(labels, samples)) for labels, samples in series)


def snappy_literal(data: bytes) -> bytes:
    """Snappy block format using only literal elements (an encoder independent of cramjam)."""
    out = bytearray(varint(len(data)))
    for i in range(0, len(data), 60):
        chunk = data[i:i + 60]
        out.append((len(chunk) - 1) << 2)
        out += chunk
    return bytes(out)


def encode_request(series, compressor=snappy_literal) -> bytes:
    return compressor(pb_request(series))


# --- tests ------------------------------------------------------------------------------------

SERIES = [
    ([("__name__", "up"), ("job", "node"), ("instance", "a:9100")], [(1.0, 1_700_000_000_000), (0.0, 1_700_000_015_000)]),
    ([("__name__", "http_requests_total"), ("code", "200")], [(12345.5, 1_700_000_000_123)]),
    ([("__name__", "temp"), ("room", "caf\u00e9")], [(-3.25, -5), (1e300, 2**62)]),
]


@pytest.mark.parametrize("compressor", [snappy_literal, lambda b: bytes(cramjam.snappy.compress_raw(b))])
def test_decodes_what_an_independent_encoder_wrote(compressor):
    req = decode(encode_request(SERIES, compressor))
    assert req.malformed == []
    assert [(t.labels, t.samples) for t in req.timeseries] == SERIES


def test_snappy_copy_elements():
    # "abc" literal, then copy-1 of length 6 at offset 3 -> "abcabcabc"; then copy-2 len 3 offset 9.
    stream = varint(12) + bytes([2 << 2]) + b"abc" + bytes([(6 - 4) << 2 | 1, 3]) + bytes([(3 - 1) << 2 | 2, 9, 0])
    assert decompress(stream) == b"abcabcabcabc"


def test_stale_markers_are_counted_not_returned():
    body = snappy_literal(pb_request([([("__name__", "up")], [(1.0, 10), (STALE_NAN, 20), (float("nan"), 30)])]))
    (ts,) = decode(body).timeseries
    assert ts.stale == 1
    assert ts.samples[0] == (1.0, 10) and math.isnan(ts.samples[1][0])  # an ordinary NaN is data (refused later)
    assert is_stale_marker(STALE_NAN) and not is_stale_marker(float("nan")) and not is_stale_marker(1.0)


def test_unknown_fields_metadata_and_histograms_are_skipped():
    extra = key(3, 2) + varint(2) + b"xx" + key(4, 2) + varint(1) + b"h" + key(15, 0) + varint(7) \
        + key(16, 5) + b"abcd" + key(17, 1) + b"12345678"
    data = ld(1, pb_series([("__name__", "m")], [(2.0, 5)], extra)) + ld(3, b"\x08\x01") + key(9, 0) + varint(1)
    req = decode_write_request(data)
    assert req.metadata == 1 and req.malformed == []
    (ts,) = req.timeseries
    assert ts.samples == [(2.0, 5)] and ts.histograms == 1


def test_a_malformed_series_is_isolated():
    good = ld(1, pb_series([("__name__", "ok")], [(1.0, 1)]))
    bad_utf8 = ld(1, ld(1, ld(1, b"\xff\xfe")))
    bad_wire = ld(1, key(2, 0) + varint(5))  # samples field with wire type varint
    truncated_inner = ld(1, ld(1, b"\x0a\x05ab"))
    req = decode_write_request(good + bad_utf8 + bad_wire + truncated_inner + good)
    assert len(req.timeseries) == 2 and len(req.malformed) == 3
    assert "UTF-8" in req.malformed[0] and "wire type 0" in req.malformed[1]


@pytest.mark.parametrize("body, needle", [
    (b"", "empty body"),
    (varint(1 << 40) + b"\x00", "more than the limit"),
    (varint(10) + b"\x0c", "not snappy"),  # literal of 4 bytes with nothing behind it
    (b"\xff" * 11, "varint"),
])
def test_bad_snappy_is_a_decode_error(body, needle):
    with pytest.raises(DecodeError, match=needle):
        decompress(body)


@pytest.mark.parametrize("data, needle", [
    (b"\x0a\x10abc", "claims 16 bytes"),
    (b"\x0b", "wire type 3"),
    (b"\x08", "truncated varint"),
    (b"\x00\x01", "field number 0"),
    (b"\x09abc", "truncated fixed64"),
])
def test_broken_framing_is_a_decode_error(data, needle):
    with pytest.raises(DecodeError, match=needle):
        decode_write_request(data)


def test_declared_length_must_match():
    with pytest.raises(DecodeError, match="expected 5 decompressed bytes|declared 5"):
        decompress(varint(5) + bytes([(3 - 1) << 2]) + b"abc")
