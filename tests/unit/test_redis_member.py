"""Redis bucket members (schemas/redis.json "member_header"): what the sink writes is what the
query reads, in one frombuffer when no member has a sketch; version-1 JSON members still read."""

import base64
import json

import numpy as np
import pytest

from sinks.cassandra import BucketRow
from sinks.redis_cache import (MEMBER_HEADER, MEMBER_VERSION, MemberDecodeError, decode_member, decode_members,
                               encode_member, encode_rows, encode_values)
from tally.bucketpack import RECORD
from tally.query.storage import SeriesMeta
from tally.query.store import _decode_replies
from tally.schema import redis_layout


def _v1(ts, count, total, vmin, vmax, last, last_ts, sketch=None) -> bytes:
    sk = base64.b64encode(sketch).decode() if sketch else None
    return json.dumps([ts, count, total, vmin, vmax, last, last_ts, sk], separators=(",", ":")).encode()


def test_header_is_the_schema_layout():
    layout = redis_layout()["keys"]["bucket"]
    assert MEMBER_VERSION == layout["member_version"] == 2
    assert [(n, MEMBER_HEADER.fields[n][0].str) for n in MEMBER_HEADER.names] == \
        [(n, np.dtype(k).str) for n, k in layout["member_header"]]
    assert MEMBER_HEADER.itemsize == 61
    member = encode_values(10_000, 3.0, 6.0, 1.0, 3.0, 2.0, 10_500, None)
    assert len(member) == 61 and member[0] == MEMBER_VERSION


def test_round_trip_with_and_without_sketch():
    row = BucketRow("t", 5, 10_000, 3.0, 6.0, 1.0, 3.0, 2.0, 10_500, b"\x01\x02")
    assert decode_member(encode_member(row)) == {
        "ts": 10_000, "count": 3.0, "sum": 6.0, "min": 1.0, "max": 3.0, "last": 2.0, "last_ts": 10_500,
        "sketch": b"\x01\x02"}
    bare = BucketRow("t", 5, 20_000, 1.0, -1.5, -1.5, -1.5, -1.5, 20_001)
    assert decode_member(encode_member(bare))["sketch"] is None
    assert decode_member(encode_member(bare))["sum"] == -1.5


def test_version_1_members_still_decode():
    got = decode_member(_v1(10_000, 3.0, 6.0, 1.0, 3.0, 2.0, 10_500, b"\xff"))
    assert got == {"ts": 10_000, "count": 3.0, "sum": 6.0, "min": 1.0, "max": 3.0, "last": 2.0, "last_ts": 10_500,
                   "sketch": b"\xff"}


def test_encode_rows_matches_encode_values():
    rows = np.zeros(3, dtype=RECORD)
    rows["sid"], rows["ts"], rows["count"], rows["sum"] = [1, 2, 3], [1000, 2000, 3000], [1, 2, 3], [4.5, 5.5, 6.5]
    rows["min"], rows["max"], rows["last"], rows["last_ts"] = [0, 1, 2], [9, 9, 9], [4, 5, 6], [1001, 2002, 3003]
    sketches = [None, b"abc", None]
    got = encode_rows(rows, sketches)
    want = [encode_values(*(r[f].item() for f in ("ts", "count", "sum", "min", "max", "last", "last_ts")), s)
            for r, s in zip(rows, sketches)]
    assert got == want


def test_fast_path_is_taken_only_when_every_member_is_a_bare_v2_header():
    a = encode_values(1000, 1.0, 2.0, 2.0, 2.0, 2.0, 1000, None)
    b = encode_values(2000, 1.0, 3.0, 3.0, 3.0, 3.0, 2000, None)
    rec, sketches = decode_members([a, b])
    assert sketches is None and rec["ts"].tolist() == [1000, 2000] and rec["sum"].tolist() == [2.0, 3.0]
    # A sketch member followed by a short v1 member adds up to two headers' bytes: not misread.
    sk = encode_values(1000, 1.0, 2.0, 2.0, 2.0, 2.0, 1000, b"\x02" * 20)
    v1 = _v1(2000, 1, 3, 3, 3, 3, 2000)
    pad = 2 * MEMBER_HEADER.itemsize - len(sk)
    v1 = v1[:-1] + b" " * (pad - len(v1)) + b"]"
    assert len(sk) + len(v1) == 2 * MEMBER_HEADER.itemsize
    rec, sketches = decode_members([sk, v1])
    assert rec["ts"].tolist() == [1000, 2000] and sketches == [b"\x02" * 20, None]
    with pytest.raises(MemberDecodeError):
        decode_members([b"\x07" + bytes(60)])
    with pytest.raises(MemberDecodeError):
        decode_members([a[:-1] + b"\x00\x00"])  # length disagrees with the header


def test_store_decodes_replies_of_many_keys_in_one_go_and_mixed_ones_per_key():
    metas = [SeriesMeta(i, "m", ()) for i in range(4)]
    m = lambda ts, v, sk=None: encode_values(ts, 1.0, v, v, v, v, ts, sk)  # noqa: E731
    replies = [[m(1000, 1.0), m(2000, 2.0)], [], [m(1000, 5.0)], [m(3000, 7.0)]]
    out = _decode_replies(metas, replies, ["last", "sum"])
    assert sorted(out) == [0, 2, 3]
    assert out[0].ts.tolist() == [1000, 2000] and out[0].cols["last"].tolist() == [1.0, 2.0]
    assert out[2].cols["sum"].tolist() == [5.0] and out[3].ts.tolist() == [3000]
    # Sketches wanted, one v1 member among v2 ones: decoded per key, same values.
    replies = [[m(1000, 1.0, b"s1"), _v1(2000, 1.0, 2.0, 2.0, 2.0, 2.0, 2000)], [], [m(1000, 5.0)], []]
    out = _decode_replies(metas, replies, ["sum", "count", "sketch"])
    assert out[0].cols["sketch"].tolist() == [b"s1", None] and out[0].cols["sum"].tolist() == [1.0, 2.0]
    assert out[2].cols["sketch"].tolist() == [None] and out[2].cols["count"].tolist() == [1.0]
    # Without sketches asked, a v1 member in one key sends the whole reply down the per-key path.
    replies = [[m(1000, 1.0)], [_v1(1000, 1.0, 9.0, 9.0, 9.0, 9.0, 1000)], [], []]
    out = _decode_replies(metas, replies, ["last"])
    assert out[0].cols["last"].tolist() == [1.0] and out[1].cols["last"].tolist() == [9.0]


def _resp_array(members) -> bytes:
    return b"*%d\r\n" % len(members) + b"".join(b"$%d\r\n%s\r\n" % (len(m), m) for m in members)


def _chunks(data: bytes, size: int):
    """A socket's recv_into stand-in serving the bytes in pieces of at most ``size``."""
    rest = memoryview(data)

    def recv_into(view):
        nonlocal rest
        n = min(size, len(view), len(rest))
        view[:n], rest = rest[:n], rest[n:]
        return n

    return recv_into


def test_raw_reader_parses_pipelined_replies_in_place_whatever_the_chunking():
    from tally.query.store import RedisReplyError, _Buffer, _read_replies

    m = lambda ts, v, sk=None: encode_values(ts, 1.0, v, v, v, v, ts, sk)  # noqa: E731
    bare = [m(1000 * i, float(i)) for i in range(50)]
    mixed = [m(1000, 1.0, b"\x02" * 70), _v1(2000, 1, 2, 2, 2, 2, 2000), m(3000, 3.0)]
    stream = (_resp_array(bare) + b"*0\r\n" + _resp_array(mixed) + _resp_array(bare[:1])
              + b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
              + _resp_array(bare[:3] + mixed[:1]))
    for size in (1, 7, 61, 68, 1000, len(stream)):
        # a small reused buffer: grows while reading, parses in place
        replies = _read_replies(_Buffer(16), _chunks(stream, size), 6)
        assert isinstance(replies[0], np.ndarray) and replies[0]["ts"].tolist() == [1000 * i for i in range(50)]
        assert replies[1] == []
        assert replies[2] == mixed  # not fixed-stride: the members themselves
        assert replies[3]["last"].tolist() == [0.0]
        assert isinstance(replies[4], RedisReplyError)
        assert replies[5] == bare[:3] + mixed[:1]  # bare members, then one with a sketch
    out = _decode_replies([SeriesMeta(i, "m", ()) for i in range(4)], replies[:4], ["last", "sketch"])
    assert out[0].cols["last"].tolist() == [float(i) for i in range(50)]
    assert out[2].ts.tolist() == [1000, 2000, 3000] and out[2].cols["sketch"].tolist() == [b"\x02" * 70, None, None]
    assert 1 not in out and out[3].ts.tolist() == [0]


def test_raw_reader_leaves_tls_and_unix_sockets_to_redis_py():
    from tally.query.store import RawRangeReader

    assert RawRangeReader("redis://u:p@h:7/3").supported
    r = RawRangeReader("redis://u:p@h:7/3")
    assert (r.host, r.port, r.username, r.password, r.db) == ("h", 7, "u", "p", 3)
    assert not RawRangeReader("rediss://h:7").supported
    assert not RawRangeReader("unix:///tmp/redis.sock").supported


def test_pack_keyed_is_the_pipeline_of_packed_commands():
    from sinks.redis_cache import pack_command
    from tally.query.store import _pack_keyed

    keys = [b"ks:b:1s:acme:1", b"ks:b:1s:acme:-922337203685477580", b"k"]
    for head, tail in (([b"ZRANGE"], [5, 10, b"BYSCORE"]), ([b"ZRANGE"], [10, 5, b"BYSCORE", b"REV", b"LIMIT", 0, 1]),
                       ([b"GET"], [])):
        assert _pack_keyed(head, keys, tail) == b"".join(pack_command(head + [k] + tail) for k in keys)
