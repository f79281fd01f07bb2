"""Generate sketch_vectors.json: what tally.sketch produces, for the Java port to match.

The Java UDFs in jobs/udf (dev.tally.udf.DDSketch) must encode sketches byte-for-byte like
``Sketch.to_bytes()``.  This script records, for seeded inputs, the expected encodings,
counts and quantiles; which inputs ``Sketch.add`` rejects; which byte strings
``Sketch.from_bytes`` rejects; and how it canonicalises unusual but valid encodings.  JUnit
(jobs/udf) reads the file; tests/unit/test_sketch_vectors.py regenerates it in memory and
fails when the committed file is stale, so the Python sketch cannot drift silently.

Case format: ``sketches`` is a list of add-lists; each add is a number (count 1) or
``[value, count]``.  The expected sketch is the first sketch merged with each of the others
in order (``Sketch.merge``); ``inputs_hex`` are the encodings of the individual sketches.

Regenerate after changing tally/sketch.py on purpose:
    .venv/bin/python tests/vectors/make_sketch_vectors.py
"""

from __future__ import annotations

import json
import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

from tally.sketch import DEFAULT_ALPHA, DEFAULT_MAX_BUCKETS, Sketch, SketchDecodeError

VECTORS_PATH = Path(__file__).with_name("sketch_vectors.json")
QUANTILES = [0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]
SEED = 20240601

_GAMMA = (1 + DEFAULT_ALPHA) / (1 - DEFAULT_ALPHA)
_LN_GAMMA = math.log(_GAMMA)


def _mid(key: int) -> float:
    """A value well inside bucket ``key`` (robust to last-bit differences in log)."""
    return math.exp((key - 0.5) * _LN_GAMMA)


def _sig(value: float, digits: int = 6) -> float:
    """Round to a few significant digits: realistic metric values and a compact file."""
    return float(f"{value:.{digits}g}")


def _cases(rng: random.Random) -> list[tuple[str, float, int | list[int], list[list[Any]]]]:
    """(name, alpha, max_buckets, sketches) for every case; max_buckets may be one per sketch."""
    d = (DEFAULT_ALPHA, DEFAULT_MAX_BUCKETS)
    lognormal = [_sig(rng.lognormvariate(3.0, 1.5), 4) for _ in range(500)]
    rates = [1.0, 0.5, 0.25, 0.1, 0.3, 0.01]
    sampled = [[_sig(rng.lognormvariate(1.0, 1.0), 4), 1.0 / rng.choice(rates)] for _ in range(300)]
    full_precision = [rng.uniform(0.0, 1000.0) for _ in range(150)] + [
        rng.lognormvariate(0.0, 4.0) for _ in range(150)
    ]
    negatives = [-_sig(rng.lognormvariate(2.0, 2.0), 5) for _ in range(200)]
    mixed = [_sig(rng.gauss(0.0, 50.0), 5) for _ in range(300)] + [0.0] * 20
    boundaries = []
    for k in (-40000 // 2, -700, -1, 1, 2, 57, 345, 1000, 20000):
        edge = _GAMMA**k
        boundaries += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf), math.exp(k * _LN_GAMMA)]
    # Ratio 1.0203 > gamma: ~2300 distinct keys, more than 2048 buckets, so the cap triggers.
    wide = [_sig(1.0203**k) for k in range(-1150, 1150)]
    rng.shuffle(wide)
    small_cap = [_sig(rng.lognormvariate(0.0, 3.0), 4) for _ in range(60)]
    fractional_cap = [[_sig(rng.lognormvariate(0.0, 3.0), 4), _sig(rng.uniform(0.05, 3.0), 3)] for _ in range(60)]
    part_a = [_sig(rng.lognormvariate(2.0, 1.0), 4) for _ in range(200)]
    part_b = [_sig(rng.lognormvariate(4.0, 1.0), 4) for _ in range(200)]
    frac_a = [[_sig(rng.lognormvariate(2.0, 1.0), 3), _sig(rng.uniform(0.1, 5.0), 3)] for _ in range(100)]
    frac_b = [[_sig(rng.lognormvariate(2.0, 1.0), 3), _sig(rng.uniform(0.1, 5.0), 3)] for _ in range(100)]
    return [
        ("empty", *d, [[]]),
        ("single one", *d, [[1.0]]),
        ("single value", *d, [[42.5]]),
        ("single negative", *d, [[-3.25]]),
        ("single value weight 0.5", *d, [[[7.0, 0.5]]]),
        ("zero", *d, [[0.0]]),
        ("negative zero", *d, [[-0.0]]),
        ("zeros weighted", *d, [[[0.0, 3.0], 0.0, [-0.0, 2.0]]]),
        ("below MIN_INDEXABLE", *d, [[1e-301, -5e-310, 5e-324, -9.99e-301]]),
        ("extremes", *d, [[1e-300, -1e-300, 1e300, -1e300, 1e299, -1e-299]]),
        ("integral sample-rate weights", *d, [[[12.0, 10.0], [15.0, 4.0], [12.0, 1.0]]]),
        ("fractional counts", *d, [[[12.0, 0.1], [12.0, 0.2], [13.0, 0.3], [-1.0, 1 / 3]]]),
        ("count 2**53 stays integral", *d, [[[1.0, 2.0**53]]]),
        ("count 2**54 forces float counts", *d, [[[1.0, 2.0**54], [2.0, 1.0]]]),
        ("count zero is a no-op", *d, [[[5.0, 0.0], 7.0, [9.0, 0.0]]]),
        ("gap bridging", *d, [[_mid(k) for k in (0, 1, 3, 6, 10, 100, 101, 104, 108)]]),
        ("negative gap bridging", *d, [[-_mid(k) for k in (-5, -4, -2, 1, 5, 9, 12)]]),
        ("values below one", *d, [[0.001, 0.5, 0.0125, 0.999]]),
        ("bucket boundaries", *d, [boundaries]),
        ("lognormal latencies", *d, [lognormal]),
        ("sampled lognormal", *d, [sampled]),
        ("full-precision values", *d, [full_precision]),
        ("negatives", *d, [negatives]),
        ("mixed signs and zeros", *d, [mixed]),
        ("collapse at 2048 buckets", *d, [wide]),
        ("collapse at cap 8", DEFAULT_ALPHA, 8, [small_cap]),
        ("collapse at cap 8, fractional counts", DEFAULT_ALPHA, 8, [fractional_cap]),
        ("alpha 0.05, cap 64", 0.05, 64, [lognormal[:200]]),
        ("alpha 1e-15, keys near 3e17", 1e-15, 2048, [[1e300, -1e-300, 3.0, 3.0000000000001, 2.5, 0.0]]),
        ("merge disjoint", *d, [part_a, part_b]),
        ("merge overlapping fractional", *d, [frac_a, frac_b]),
        ("merge with empty", *d, [[], part_a[:50], []]),
        ("merge negatives into positives", *d, [part_a[:30], negatives[:30], [0.0, [0.0, 0.5]]]),
        ("merge keeps the smaller cap", DEFAULT_ALPHA, [16, DEFAULT_MAX_BUCKETS], [small_cap[:30], small_cap[30:]]),
        ("merge collapses", DEFAULT_ALPHA, 12, [fractional_cap[:11], fractional_cap[11:22], fractional_cap[22:30]]),
        # Folding 4 tiny weights into weight 1.0 gives a different double in another order.
        ("merge folds in ascending key order", DEFAULT_ALPHA, 4,
         [[_mid(k) for k in range(10, 14)], [[_mid(k), 1.2e-16] for k in range(1, 6)]]),
    ]


def _build(alpha: float, max_buckets: int, adds: list[Any]) -> Sketch:
    sketch = Sketch(alpha, max_buckets)
    for add in adds:
        value, count = (add, 1.0) if not isinstance(add, list) else add
        sketch.add(value, count)
    return sketch


def _case(name: str, alpha: float, max_buckets: int | list[int], sketches: list[list[Any]]) -> dict[str, Any]:
    caps = max_buckets if isinstance(max_buckets, list) else [max_buckets] * len(sketches)
    built = [_build(alpha, cap, adds) for cap, adds in zip(caps, sketches)]
    result = built[0].copy()
    for other in built[1:]:
        result.merge(other)
    return {
        "name": name,
        "alpha": alpha,
        "max_buckets": [s.max_buckets for s in built],
        "sketches": sketches,
        "inputs_hex": [s.to_bytes().hex() for s in built],
        "hex": result.to_bytes().hex(),
        "count": result.count,
        "quantiles": [[q, result.quantile(q)] for q in QUANTILES],
    }


def _add_errors() -> list[list[float | str]]:
    """[value, count] pairs Sketch.add rejects (floats that JSON cannot hold as strings)."""
    pairs: list[list[float | str]] = [
        ["NaN", 1.0], ["Infinity", 1.0], ["-Infinity", 1.0], [1.0000001e300, 1.0], [-2e300, 1.0],
        [1.0, -1.0], [1.0, "NaN"], [1.0, "Infinity"], [1.0, -5e-324],
    ]
    for value, count in pairs:
        try:
            Sketch().add(float(value), float(count))
        except ValueError:
            continue
        raise AssertionError(f"Sketch.add({value}, {count}) no longer raises")
    return pairs


# -- hand-made encodings ------------------------------------------------------------------


def _uv(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zz(n: int) -> bytes:
    return _uv(2 * n if n >= 0 else -2 * n - 1)


def _f64(x: float) -> bytes:
    return struct.pack("<d", x)


def _head(flags: int = 0, alpha: float = DEFAULT_ALPHA, max_buckets: int = DEFAULT_MAX_BUCKETS) -> bytes:
    return bytes((1, flags)) + _f64(alpha) + _uv(max_buckets)


_EMPTY_STORE = _uv(0)
_MAX_KEY = math.ceil(math.log(1e300) / _LN_GAMMA)
_MIN_KEY = math.ceil(math.log(1e-300) / _LN_GAMMA)


def _decode_errors() -> list[dict[str, str]]:
    valid = Sketch().add(3.0).add(-2.0, 2.0).add(0.0).to_bytes()
    bad: list[tuple[str, bytes]] = [
        ("empty input", b""),
        ("version 2", b"\x02" + valid[1:]),
        ("version 0", b"\x00" + valid[1:]),
        ("unknown flag bit", valid[:1] + b"\x02" + valid[2:]),
        ("alpha 0", _head(alpha=0.0) + _uv(0) + _EMPTY_STORE * 2),
        ("alpha 1", _head(alpha=1.0) + _uv(0) + _EMPTY_STORE * 2),
        ("alpha NaN", _head(alpha=math.nan) + _uv(0) + _EMPTY_STORE * 2),
        ("alpha negative", _head(alpha=-0.5) + _uv(0) + _EMPTY_STORE * 2),
        ("max_buckets 0", _head(max_buckets=0) + _uv(0) + _EMPTY_STORE * 2),
        ("trailing byte", valid + b"\x00"),
        ("second run gap 0", _head() + _uv(0) + _uv(2) + _zz(5) + _uv(1) + _uv(1) + _uv(0) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("start key above max", _head() + _uv(0) + _uv(1) + _zz(_MAX_KEY + 1) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("start key below min", _head() + _uv(0) + _EMPTY_STORE + _uv(1) + _zz(_MIN_KEY - 1) + _uv(1) + _uv(1)),
        ("run past max key", _head() + _uv(0) + _uv(1) + _zz(_MAX_KEY) + _uv(2) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("gap past max key", _head() + _uv(0) + _uv(2) + _zz(_MAX_KEY - 5) + _uv(1) + _uv(1) + _uv(6) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("huge gap", _head() + _uv(0) + _uv(2) + _zz(0) + _uv(1) + _uv(1) + _uv(2**69) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("huge start key", _head() + _uv(0) + _uv(1) + _uv(2**64 + 3) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("run length 0", _head() + _uv(0) + _uv(1) + _zz(3) + _uv(0) + _EMPTY_STORE),
        ("huge run count", _head() + _uv(0) + _uv(2**62) + _zz(3) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("store exceeds max_buckets", _head(max_buckets=1) + _uv(0) + _uv(1) + _zz(3) + _uv(2) + _uv(1) + _uv(1) + _EMPTY_STORE),
        ("negative float count", _head(flags=1) + _f64(-1.0) + _EMPTY_STORE * 2),
        ("NaN float count", _head(flags=1) + _f64(0.0) + _uv(1) + _zz(3) + _uv(1) + _f64(math.nan) + _EMPTY_STORE),
        ("infinite float count", _head(flags=1) + _f64(math.inf) + _EMPTY_STORE * 2),
        ("varint too long", _head() + b"\x80" * 10 + b"\x00" + _EMPTY_STORE * 2),
        ("truncated alpha", valid[:6]),
        ("truncated varint", _head() + b"\x80"),
    ]
    bad += [(f"truncated to {n} bytes", valid[:n]) for n in range(1, len(valid)) if n != 6]
    for name, data in bad:
        try:
            Sketch.from_bytes(data)
        except SketchDecodeError:
            continue
        raise AssertionError(f"Sketch.from_bytes accepts {name!r}: {data.hex()}")
    return [{"name": name, "hex": data.hex()} for name, data in bad]


def _decode_non_canonical() -> list[dict[str, Any]]:
    """Valid but unusual encodings: Java must accept them and re-encode as Python does."""
    odd: list[tuple[str, bytes]] = [
        ("zero count at run start", _head() + _uv(0) + _uv(1) + _zz(3) + _uv(3) + _uv(0) + _uv(2) + _uv(1) + _EMPTY_STORE),
        ("float flag with integral counts", _head(flags=1) + _f64(2.0) + _uv(1) + _zz(-7) + _uv(1) + _f64(5.0) + _EMPTY_STORE),
        ("negative zero float count", _head(flags=1) + _f64(-0.0) + _uv(1) + _zz(1) + _uv(1) + _f64(0.5) + _EMPTY_STORE),
        ("negative zero with integral counts", _head(flags=1) + _f64(-0.0) + _uv(1) + _zz(1) + _uv(1) + _f64(1.0) + _EMPTY_STORE),
        ("non-minimal varints", _head() + b"\x81\x00" + _uv(1) + b"\x86\x80\x00" + _uv(1) + _uv(4) + _EMPTY_STORE),
        ("adjacent runs not joined", _head() + _uv(0) + _uv(2) + _zz(10) + _uv(1) + _uv(1) + _uv(1) + _uv(1) + _uv(2) + _EMPTY_STORE),
        ("huge varint count", _head() + _uv(2**69 + 12345) + _uv(1) + _zz(0) + _uv(1) + _uv(2**63 + 1) + _EMPTY_STORE),
        ("subnormal float count", _head(flags=1) + _f64(5e-324) + _EMPTY_STORE * 2),
        ("max_buckets 2**40", _head(max_buckets=2**40) + _uv(1) + _EMPTY_STORE * 2),
        ("keys at the range limits", _head() + _uv(0) + _uv(1) + _zz(_MAX_KEY) + _uv(1) + _uv(1) + _uv(1) + _zz(_MIN_KEY) + _uv(1) + _uv(1)),
    ]
    out = []
    for name, data in odd:
        sketch = Sketch.from_bytes(data)
        out.append({"name": name, "hex": data.hex(), "canonical_hex": sketch.to_bytes().hex(), "count": sketch.count})
    return out


def build_vectors() -> dict[str, Any]:
    """Every vector, computed by tally.sketch from seeded inputs."""
    rng = random.Random(SEED)
    return {
        "generator": "tests/vectors/make_sketch_vectors.py",
        "quantiles": QUANTILES,
        "cases": [_case(*case) for case in _cases(rng)],
        "add_errors": _add_errors(),
        "decode_errors": _decode_errors(),
        "decode_non_canonical": _decode_non_canonical(),
    }


def render(vectors: dict[str, Any]) -> str:
    """Deterministic JSON text: one line per case, so a diff shows which case changed."""
    lines = ["{"]
    items = list(vectors.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
            lines.append(f"{json.dumps(key)}: [")
            for j, item in enumerate(value):
                sep = "," if j < len(value) - 1 else ""
                lines.append(f"  {json.dumps(item, separators=(',', ':'), allow_nan=False)}{sep}")
            lines.append(f"]{comma}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Write the vectors next to this script."""
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
