"""Batches of bucket rows packed by the job's ``pack_buckets`` SQL function (jobs/udf).

The aggregation job hands its buckets to the Python sink a few hundred at a time, packed
into one binary value per (tier, tenant, window, shard): one record crossing into Python
costs about as much as writing it, so per-bucket records made the sink the bottleneck.
This module reads that format (see ``PackBuckets.java``) with numpy, without a Python
loop over the fixed fields.

Layout, little-endian: ``int32 n``; ``n`` fixed records (``int64 sid, int64 ts, float64
count, sum, min, max, last, int64 last_ts, int32 sketch_length``, -1 = no sketch); then
the sketches' bytes in record order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

RECORD = np.dtype([("sid", "<i8"), ("ts", "<i8"), ("count", "<f8"), ("sum", "<f8"), ("min", "<f8"),
                   ("max", "<f8"), ("last", "<f8"), ("last_ts", "<i8"), ("sketch_length", "<i4")])
assert RECORD.itemsize == 68  # PackBuckets.RECORD_BYTES


class BatchDecodeError(ValueError):
    """The bytes are not a bucket batch (truncated, or lengths that do not add up)."""


@dataclass(frozen=True)
class BucketBatch:
    """The buckets of one packed batch: ``rows`` (a numpy record array of RECORD) and the
    sketch of each row (bytes or None), in the same order."""

    rows: np.ndarray
    sketches: Sequence[bytes | None]

    def __len__(self) -> int:
        return len(self.rows)

    def tuples(self) -> Iterator[tuple]:
        """(sid, ts, count, sum, min, max, last, last_ts, sketch) per row, as Python values."""
        fixed = self.rows[["sid", "ts", "count", "sum", "min", "max", "last", "last_ts"]].tolist()
        for values, sketch in zip(fixed, self.sketches):
            yield (*values, sketch)


def unpack(data: bytes) -> BucketBatch:
    """Decode one batch; raises BatchDecodeError if the bytes do not add up."""
    if len(data) < 4:
        raise BatchDecodeError(f"batch of {len(data)} bytes has no row count")
    (n,) = struct.unpack_from("<i", data, 0)
    fixed_end = 4 + n * RECORD.itemsize
    if n < 0 or fixed_end > len(data):
        raise BatchDecodeError(f"batch claims {n} rows but has {len(data)} bytes")
    rows = np.frombuffer(data, dtype=RECORD, count=n, offset=4)
    lengths = rows["sketch_length"]
    sizes = np.maximum(lengths, 0)
    if fixed_end + int(sizes.sum()) != len(data):
        raise BatchDecodeError(f"sketch lengths add up to {int(sizes.sum())}, "
                               f"batch has {len(data) - fixed_end} sketch bytes")
    sketches: list[bytes | None] = [None] * n
    if (lengths >= 0).any():
        ends = fixed_end + np.cumsum(sizes)
        starts = ends - sizes
        for i in np.flatnonzero(lengths >= 0).tolist():
            sketches[i] = data[starts[i]:ends[i]]
    return BucketBatch(rows=rows, sketches=sketches)


def pack(rows: Sequence[tuple]) -> bytes:
    """Encode (sid, ts, count, sum, min, max, last, last_ts, sketch) rows like PackBuckets
    (for tests and tools that replay buckets through the sink path)."""
    fixed = np.zeros(len(rows), dtype=RECORD)
    sketches = []
    for i, (sid, ts, count, total, vmin, vmax, last, last_ts, sketch) in enumerate(rows):
        fixed[i] = (sid, ts, count, total, vmin, vmax, last, last_ts, -1 if sketch is None else len(sketch))
        if sketch is not None:
            sketches.append(bytes(sketch))
    return struct.pack("<i", len(rows)) + fixed.tobytes() + b"".join(sketches)
