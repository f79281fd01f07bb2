"""Malformed-input fuzzing of the gateway (hypothesis): remote_write and push bodies.

Over 100,000 generated bodies in total (each example carries several bodies): structured
bodies mixing good and bad series/points are checked against an independent oracle written
here (every good sample kept, every bad one counted, nothing else), and byte-level garbage or
mutated valid bodies must give a DecodeError/BodyError or a consistent batch, never a crash.
A sample of bodies also goes through the aiohttp handler.  Counts per test are printed.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import struct

import cramjam
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.auth import KeyRing
from tally.config import TallyConfig
from tally.gateway.app import Gateway, make_app
from tally.gateway.ingest import BodyError, SeriesCache, from_push, from_remote_write, load_push
from tally.limits import Limits, SeriesLimiter
from tally.remote_write import DecodeError, decode
from tests.unit.test_remote_write import STALE_NAN, encode_request, ld, pb_series, snappy_literal

NOW = 1_700_000_000_000
LIMITS = Limits(max_series_per_tenant=10**9, max_series_per_metric=10**9, max_label_values_per_metric_label=10**9,
                max_future_seconds=300, max_age_seconds=3600)
# Hypothesis draws structure for a few hundred examples (shrinkable); the bulk of the bodies comes
# from seeded generators (hypothesis picks the seeds), which are ~50x cheaper per body.
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BULK = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BODIES_PER_EXAMPLE = 10
BULK_BODIES = 250
seeds = st.integers(0, 2**64 - 1)  # each seed drives a random.Random making BULK_BODIES bodies
COUNTS: dict[str, int] = {}

# The oracle's own reading of the rules (issue 4): Prometheus syntax, 30 labels, 2048 chars.
PROM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
PROM_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
STATSD_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:.\-]*\Z")
STATSD_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.\-]*\Z")

names = st.one_of(st.sampled_from(["up", "http_requests_total", "node:cpu:rate5m", "_x", "a1"]),
                  st.text(alphabet="abZ_:09.- \u00e9/", max_size=5))
label_names = st.one_of(st.sampled_from(["job", "instance", "code", "__meta", "le"]),
                        st.text(alphabet="abZ_:09.- \u00e9", max_size=4))
label_values = st.one_of(st.text(max_size=4), st.sampled_from(["", "x" * 2048, "y" * 2049]))
timestamps = st.one_of(st.integers(NOW - 3_600_000, NOW + 300_000),
                       st.sampled_from([NOW - 3_600_001, NOW + 300_001, 0, -1, 2**62, -2**63]))
values = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([float("nan"), float("inf"), -float("inf"), STALE_NAN, 0.0, -0.0]))


@st.composite
def series(draw):
    labels = draw(st.lists(st.tuples(label_names, label_values), max_size=3))
    if draw(st.booleans()):
        labels.insert(draw(st.integers(0, len(labels))), ("__name__", draw(names)))
    if draw(st.integers(0, 9)) == 0:
        labels += [(f"l{i}", "v") for i in range(draw(st.integers(28, 32)))]
    return labels, draw(st.lists(st.tuples(values, timestamps), max_size=4))


def rw_oracle(all_series):
    """(good samples as (name, sorted tags, ts, value), bad count, stale count)."""
    good, bad, stale = [], 0, 0
    for labels, samples in all_series:
        real = [(v, t) for v, t in samples if struct.pack("<d", v) != struct.pack("<d", STALE_NAN)]
        stale += len(samples) - len(real)
        names_ = [k for k, _ in labels]
        kept = {k: v for k, v in labels if v != ""}
        name = kept.pop("__name__", None)
        ok_series = (len(set(names_)) == len(names_) and name is not None and PROM_NAME.match(name)
                     and len(name) <= 2048 and len(kept) <= 30
                     and all(PROM_LABEL.match(k) and len(k) <= 1024 and len(v) <= 2048 for k, v in kept.items()))
        for v, t in real:
            if ok_series and math.isfinite(v) and NOW - 3_600_000 <= t <= NOW + 300_000:
                good.append((name, tuple(sorted(kept.items())), t, v))
            else:
                bad += 1
    return good, bad, stale


def check_rw(all_series, compressor=snappy_literal, cache=None):
    req = decode(encode_request(all_series, compressor))
    batch = from_remote_write(req, "t", LIMITS, SeriesLimiter(LIMITS), NOW, cache)
    good, bad, stale = rw_oracle(all_series)
    got = sorted((s.series.name, s.series.tags, s.ts_ms, s.value) for s in batch.accepted)
    assert got == sorted(good)
    assert batch.rejected_total == bad and batch.stale == stale
    assert all(s.series.tenant == "t" and s.metric_type == "g" for s in batch.accepted)


def count(name: str, n: int = BODIES_PER_EXAMPLE) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n


@FUZZ
@given(st.lists(st.lists(series(), max_size=4), min_size=BODIES_PER_EXAMPLE, max_size=BODIES_PER_EXAMPLE))
def test_remote_write_structured_bodies_match_the_oracle(bodies):
    for all_series in bodies:
        check_rw(all_series)
    count("remote_write structured")


ALPHA_NAME = "abZ_:09.- \u00e9/"
ALPHA_LABEL = "abZ_:09.- \u00e9"
FIXED_NAMES = ["up", "http_requests_total", "node:cpu:rate5m", "_x", "a1"]
FIXED_LABELS = ["job", "instance", "code", "__meta", "le"]
ODD_TS = [NOW - 3_600_001, NOW + 300_001, 0, -1, 2**62, -2**63]
ODD_VALUES = [float("nan"), float("inf"), -float("inf"), STALE_NAN, 0.0, -0.0, 1e308, -5e-324]


def _text(rnd, alphabet, n):
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, n)))


def rnd_label_value(rnd):
    r = rnd.random()
    if r < 0.03:
        return rnd.choice(["x" * 2048, "y" * 2049])
    if r < 0.15:
        return ""
    return "".join(chr(rnd.choice([rnd.randint(32, 126), rnd.randint(0x80, 0x2FFF)])) for _ in range(rnd.randint(0, 4)))


def rnd_series(rnd):
    """Same shape as the ``series`` strategy, from a seeded generator."""
    labels = [(rnd.choice(FIXED_LABELS) if rnd.random() < 0.5 else _text(rnd, ALPHA_LABEL, 4), rnd_label_value(rnd))
              for _ in range(rnd.randint(0, 3))]
    if rnd.random() < 0.8:
        name = rnd.choice(FIXED_NAMES) if rnd.random() < 0.6 else _text(rnd, ALPHA_NAME, 5)
        labels.insert(rnd.randint(0, len(labels)), ("__name__", name))
    if rnd.random() < 0.1:
        labels += [(f"l{i}", "v") for i in range(rnd.randint(28, 32))]
    samples = []
    for _ in range(rnd.randint(0, 4)):
        v = rnd.choice(ODD_VALUES) if rnd.random() < 0.15 else rnd.uniform(-1e6, 1e6)
        t = rnd.choice(ODD_TS) if rnd.random() < 0.15 else rnd.randint(NOW - 3_600_000, NOW + 300_000)
        samples.append((v, t))
    return labels, samples


@BULK
@given(seeds)
def test_remote_write_generated_bodies_match_the_oracle(seed):
    rnd = random.Random(seed)
    cache = SeriesCache(max_entries=50)  # shared by the bodies, as in the gateway (and cleared when full)
    for i in range(BULK_BODIES):
        check_rw([rnd_series(rnd) for _ in range(rnd.randint(0, 5))],
                 snappy_literal if i % 2 else (lambda b: bytes(cramjam.snappy.compress_raw(b))), cache)
    count("remote_write generated", BULK_BODIES)


@BULK
@given(seeds)
def test_remote_write_mutated_and_random_bytes_never_crash(seed):
    rnd = random.Random(seed)
    for i in range(BULK_BODIES):
        raw = b"".join(ld(1, pb_series(*rnd_series(rnd))) for _ in range(rnd.randint(1, 3)))
        data = bytearray(raw)
        for _ in range(rnd.randint(1, 4)):  # flip, insert, delete or truncate
            op = rnd.randrange(4)
            pos = rnd.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rnd.randrange(8)
            elif op == 1:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 3)))
            elif op == 2:
                del data[pos:pos + rnd.randint(1, 3)]
            else:
                del data[pos:]
        if i % 5 == 0:
            body = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
        elif i % 5 == 1:  # valid protobuf, snappy stream damaged
            body = bytearray(snappy_literal(raw))
            body[rnd.randrange(len(body))] ^= 1 << rnd.randrange(8)
            body = bytes(body)
        else:
            body = snappy_literal(bytes(data))
        try:
            req = decode(body)
        except DecodeError as exc:
            assert str(exc)
            continue
        batch = from_remote_write(req, "t", LIMITS, SeriesLimiter(LIMITS), NOW)
        total = sum(len(t.samples) + t.histograms for t in req.timeseries) + len(req.malformed)
        assert len(batch.accepted) + batch.rejected_total == total
        for s in batch.accepted:  # whatever survived mutation is a valid sample
            assert PROM_NAME.match(s.series.name) and math.isfinite(s.value)
            assert all(PROM_LABEL.match(k) for k, _ in s.series.tags)
    count("remote_write mutated/random", BULK_BODIES)


push_types = st.one_of(st.sampled_from(["c", "g", "ms", "h", "d"]), st.sampled_from(["s", "x", 5, None]))
push_values = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-10**6, 10**6),
                        st.sampled_from(["1", None, True, [], 10**400, 1e308]))


@st.composite
def push_point(draw):
    p = {}
    if draw(st.integers(0, 9)):
        p["name"] = draw(st.one_of(names, st.sampled_from(["http.requests", "a-b.c", 7])))
    if draw(st.booleans()):
        p["tags"] = draw(st.one_of(st.dictionaries(label_names, label_values, max_size=3),
                                   st.sampled_from([{"k": 1}, [], "x"])))
    if draw(st.booleans()):
        p["type"] = draw(push_types)
    if draw(st.integers(0, 9)):
        p["value"] = draw(push_values)
    if draw(st.booleans()):
        p["ts"] = draw(st.one_of(timestamps, st.sampled_from(["now", 1.5, True])))
    if draw(st.integers(0, 3)) == 0:
        p["rate"] = draw(st.one_of(st.floats(0.01, 1.0), st.sampled_from([0, 2, -1, "x"])))
    if draw(st.integers(0, 19)) == 0:
        p[draw(st.sampled_from(["members", "extra"]))] = draw(st.sampled_from([["a", "b"], [], "x"]))
    return draw(st.one_of(st.just(p), st.sampled_from([p, p, p, "str", 5, None, [p]])))


def push_oracle(p):
    """The accepted (name, type, ts, value, count), or None if the point must be refused."""
    if not isinstance(p, dict) or set(p) - {"name", "tags", "type", "value", "ts", "rate", "members"}:
        return None
    name, tags, typ = p.get("name"), p.get("tags", {}), p.get("type", "g")
    if not isinstance(name, str) or not STATSD_NAME.match(name) or len(name) > 2048:
        return None
    if not isinstance(tags, dict) or len(tags) > 30 or typ not in ("c", "g", "ms", "h", "d", "s"):
        return None
    if not all(STATSD_LABEL.match(k) and isinstance(v, str) and len(v) <= 2048 for k, v in tags.items()):
        return None
    rate = p.get("rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        return None
    ts = p.get("ts", NOW)
    if type(ts) is not int or not NOW - 3_600_000 <= ts <= NOW + 300_000:
        return None
    if typ == "s":
        members = p.get("members", [p["value"]] if "value" in p else None)
        if not isinstance(members, list) or not members or not all(
                isinstance(m, str) or (isinstance(m, (int, float)) and not isinstance(m, bool)) for m in members):
            return None
        return name, typ, ts, float(len({str(m) for m in members})), 1.0
    v = p.get("value")
    if "members" in p or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        cnt = 1.0 if typ == "g" else 1.0 / rate
        if not math.isfinite(float(v)) or not math.isfinite(float(v) * cnt):
            return None
    except OverflowError:
        return None
    return name, typ, ts, float(v), cnt


@FUZZ
@given(st.lists(st.lists(push_point(), max_size=5), min_size=BODIES_PER_EXAMPLE, max_size=BODIES_PER_EXAMPLE))
def test_push_structured_bodies_match_the_oracle(bodies):
    for pts in bodies:
        check_push(pts)
    count("push structured")


def rnd_push_point(rnd):
    """Same shape as the ``push_point`` strategy, from a seeded generator."""
    p = {}
    if rnd.random() < 0.9:
        p["name"] = rnd.choice(FIXED_NAMES + ["http.requests", "a-b.c", 7]) if rnd.random() < 0.6 \
            else _text(rnd, ALPHA_NAME, 5)
    if rnd.random() < 0.5:
        p["tags"] = rnd.choice([{"k": 1}, [], "x"]) if rnd.random() < 0.1 else {
            (rnd.choice(FIXED_LABELS) if rnd.random() < 0.5 else _text(rnd, ALPHA_LABEL, 4)): rnd_label_value(rnd)
            for _ in range(rnd.randint(0, 3))}
    if rnd.random() < 0.5:
        p["type"] = rnd.choice(["c", "g", "ms", "h", "d", "s", "x", 5, None])
    if rnd.random() < 0.9:
        p["value"] = rnd.choice(["1", None, True, [], 10**400, 1e308, float(rnd.randint(0, 9))]) \
            if rnd.random() < 0.2 else rnd.choice([rnd.uniform(-1e9, 1e9), rnd.randint(-10**6, 10**6)])
    if rnd.random() < 0.5:
        p["ts"] = rnd.choice(ODD_TS + ["now", 1.5, True]) if rnd.random() < 0.2 \
            else rnd.randint(NOW - 3_600_000, NOW + 300_000)
    if rnd.random() < 0.25:
        p["rate"] = rnd.choice([0, 2, -1, "x"]) if rnd.random() < 0.3 else rnd.uniform(0.01, 1.0)
    if rnd.random() < 0.05:
        p[rnd.choice(["members", "extra"])] = rnd.choice([["a", "b"], [], "x", ["a", 1, "a"]])
    return rnd.choice(["str", 5, None, [p]]) if rnd.random() < 0.05 else p


def check_push(pts):
    items = load_push(json.dumps({"points": pts}).encode())
    batch = from_push(items, "t", LIMITS, SeriesLimiter(LIMITS), NOW)
    want = [w for w in map(push_oracle, pts) if w is not None]
    got = [(s.series.name, s.metric_type, s.ts_ms, s.value, s.count) for s in batch.accepted]
    assert sorted(got) == sorted(want)
    assert batch.rejected_total == len(pts) - len(want)


@BULK
@given(seeds)
def test_push_generated_bodies_match_the_oracle(seed):
    rnd = random.Random(seed)
    for _ in range(BULK_BODIES):
        check_push([rnd_push_point(rnd) for _ in range(rnd.randint(0, 6))])
    count("push generated", BULK_BODIES)


def rnd_json(rnd, depth=0):
    r = rnd.random()
    if depth > 2 or r < 0.4:
        return rnd.choice([None, True, False, rnd.randint(-5, 5), rnd.random(), _text(rnd, "ab\u00e9\"\\", 3)])
    if r < 0.7:
        return [rnd_json(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {_text(rnd, "abpointsnamevlue", 6): rnd_json(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}


@BULK
@given(seeds)
def test_push_random_bodies_never_crash(seed):
    rnd = random.Random(seed)
    for i in range(BULK_BODIES):
        kind = i % 4
        if kind == 0:
            body = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
        elif kind == 1:
            body = json.dumps({"points": [rnd_json(rnd) for _ in range(rnd.randint(0, 4))]}).encode()
        elif kind == 2:
            body = json.dumps(rnd_json(rnd)).encode()
        else:  # a valid body cut or damaged
            good = bytearray(json.dumps({"points": [rnd_push_point(rnd) for _ in range(3)]}).encode())
            good[rnd.randrange(len(good))] = rnd.randrange(256)
            body = bytes(good[:rnd.randint(0, len(good))])
        try:
            items = load_push(body)
        except BodyError as exc:
            assert str(exc)
            continue
        batch = from_push(items, "t", LIMITS, SeriesLimiter(LIMITS), NOW)
        assert len(batch.accepted) + batch.rejected_total == len(items)
    count("push random", BULK_BODIES)


class Recorder:
    healthy = True

    def __init__(self):
        self.samples = []

    async def write(self, samples):
        self.samples.extend(samples)

    def tick(self, ts_ms):
        pass


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(series(), max_size=3), min_size=5, max_size=5),
       st.lists(st.lists(push_point(), max_size=4), min_size=5, max_size=5))
def test_http_handler_on_a_sample_of_bodies(rw_bodies, push_bodies):
    gw = Gateway(cfg=TallyConfig(), writer=Recorder(), keyring=KeyRing.open(), limits=LIMITS, wall_ms=lambda: NOW)

    async def go():
        statuses = []
        async with TestClient(TestServer(make_app(gw, ticks=False))) as client:
            for all_series in rw_bodies:
                resp = await client.post("/api/v1/write", data=encode_request(all_series),
                                         headers={"Content-Encoding": "snappy"})
                body = await resp.json()
                good, bad, _ = rw_oracle(all_series)
                assert (body["accepted"], body["rejected"]) == (len(good), bad)
                statuses.append((resp.status, 400 if bad else 200))
            for pts in push_bodies:
                resp = await client.post("/api/v1/push", data=json.dumps({"points": pts}))
                body = await resp.json()
                want = [w for w in map(push_oracle, pts) if w is not None]
                assert (body["accepted"], body["rejected"]) == (len(want), len(pts) - len(want))
                statuses.append((resp.status, 400 if len(pts) > len(want) else 200))
        return statuses
    for got, want in asyncio.run(go()):
        assert got == want
    count("HTTP handler", 10)


def test_zz_report_fuzz_counts():
    """Prints how many bodies the fuzz tests above generated (they run first, in file order)."""
    total = sum(COUNTS.values())
    print(f"\nfuzzed bodies: {COUNTS} total {total}")
    if len(COUNTS) == 7:  # the whole file ran
        assert total >= 100_000
