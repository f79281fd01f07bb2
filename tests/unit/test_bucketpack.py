"""The packed bucket batches between the job's SQL (PackBuckets.java) and the Python sink."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.bucketpack import RECORD, BatchDecodeError, pack, unpack

finite = st.floats(allow_nan=False, allow_infinity=False)
rows = st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(0, 2**53), finite, finite, finite, finite,
                          finite, st.integers(0, 2**53), st.one_of(st.none(), st.binary(max_size=40))), max_size=50)


@given(rows)
def test_pack_unpack_round_trip(batch_rows):
    batch = unpack(pack(batch_rows))
    assert len(batch) == len(batch_rows)
    assert list(batch.tuples()) == [tuple(r) for r in batch_rows]


def test_layout_matches_the_java_record():
    # int64 sid, int64 ts, 5 x float64, int64 last_ts, int32 sketch length = 68 bytes.
    data = pack([(7, 1000, 2.0, 3.0, 1.0, 2.0, 1.5, 1999, b"\x01\x02\x03")])
    assert len(data) == 4 + RECORD.itemsize + 3 == 75
    assert struct.unpack_from("<iqq5dqi", data, 0) == (1, 7, 1000, 2.0, 3.0, 1.0, 2.0, 1.5, 1999, 3)
    assert data[-3:] == b"\x01\x02\x03"


@pytest.mark.parametrize("data, message", [
    (b"\x01", "no row count"),
    (struct.pack("<i", 2) + b"\x00" * 68, "claims 2 rows"),
    (pack([(1, 1, 1.0, 1.0, 1.0, 1.0, 1.0, 1, b"abc")])[:-1], "sketch lengths add up to 3"),
])
def test_bad_batches_raise_a_precise_error(data, message):
    with pytest.raises(BatchDecodeError, match=message):
        unpack(data)
