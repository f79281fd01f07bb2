"""Malformed-input fuzz of the StatsD parser and the agent's aggregator (hypothesis + mutations).

Hypothesis draws line templates (valid lines built from the grammar, plus arbitrary text)
and a seed; each example then mutates and packs them into 60 datagrams of 1-12 lines.
An independent oracle (regular expressions written from the grammar, no tally code) decides
which lines are valid.  Checked for every datagram: no exception, exactly the oracle's bad
lines rejected, exactly its good lines kept with their values; and through the agent's
aggregator: every line counted once (received == parsed + rejected), the same good/bad
split, and the counters' weighted sums preserved.  More than 100,000 datagrams in total.
"""

import math
import random
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.agent.aggregator import Aggregator
from tally.statsd import parse_datagram

NOW = 1_800_000_000
EXAMPLES = 1700
DATAGRAMS_PER_EXAMPLE = 60
_seen = {"datagrams": 0}

# -- the oracle ----------------------------------------------------------------------------
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUM_RE = re.compile(_NUM)
_LINE_RE = re.compile(r"(?P<name>[^:|]+):(?P<values>[^|]*)\|(?P<type>c|g|ms|h|d|s)(?P<fields>(?:\|[^|]*)*)")


def _num_ok(text):
    # Finite and within ±1e300 (what a sketch indexes: tally/statsd.py MAX_VALUE).
    return bool(re.fullmatch(_NUM, text, re.ASCII)) and abs(float(text)) <= 1e300


def oracle(line, agent=False):
    """(valid, type, values, weight, ts) of one line, from the grammar alone."""
    if len(line) > 8192:
        return (False,)
    m = _LINE_RE.fullmatch(line)
    if not m or len(m["name"]) > 200 or m["name"].startswith(("_e{", "_sc")):
        return (False,)
    mtype, parts = m["type"], m["values"].split(":")
    if mtype == "s":
        if "" in parts:
            return (False,)
    elif not all(_num_ok(p) for p in parts):
        return (False,)
    rate, ts, kinds, ntags = 1.0, None, set(), 0
    for field in m["fields"].split("|")[1:]:
        kind = "card" if field.startswith("card:") else field[:2] if field[:2] in ("c:", "e:") else field[:1]
        if kind in kinds:
            return (False,)
        kinds.add(kind)
        if kind == "@":
            if not _num_ok(field[1:]) or not 0 < float(field[1:]) <= 1:
                return (False,)
            rate = float(field[1:])
        elif kind == "#":
            keys = [t.partition(":")[0] for t in field[1:].split(",")]
            if "" in keys:
                return (False,)
            norm = [re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in keys]
            norm = ["_" + k if k[0].isdigit() else k for k in norm]
            if len(set(norm)) != len(norm):
                return (False,)
            ntags = len(keys)
            if agent and any(len(t.partition(":")[2]) > 2048 or len(t.partition(":")[0]) > 1024
                             for t in field[1:].split(",")):
                return (False,)
        elif kind == "T":
            if not re.fullmatch(r"[0-9]+", field[1:]) or int(field[1:]) == 0:
                return (False,)
            ts = int(field[1:])
        elif kind not in ("c:", "e:", "card"):
            return (False,)
    if agent:
        if ntags > 30:
            return (False,)
        if ts is not None and not (NOW - 3600 <= ts <= NOW + 300):
            return (False,)
    weight = 1.0 / rate if mtype in ("c", "ms", "h", "d") else 1.0
    values = tuple(parts) if mtype == "s" else tuple(float(p) for p in parts)
    return (True, mtype, values, weight, ts)


# -- generation ----------------------------------------------------------------------------
_NAMES = st.sampled_from(["api.requests", "lat", "q", "users", "a-b/c", "héllo", "9x", "_e{1,2}", "x" * 201, "n"])
_VALUE = st.one_of(st.integers(-1000, 1000).map(str), st.floats(-1e6, 1e6, allow_nan=False).map(repr),
                   st.sampled_from(["+3", "-2.5", ".5", "5.", "1e3", "nan", "inf", "", "abc", "1_0", "1e999", "alice"]))
_FIELD = st.one_of(
    st.sampled_from(["@0.5", "@1", "@0", "@2", "@x", "#", "#env:prod", "#env:prod,canary", "#a:1,a:2", "#a.b:1,a_b:2",
                     f"T{NOW}", f"T{NOW - 7200}", f"T{NOW + 1000}", "T0", "Tx", "c:abc", "e:it", "card:low", "zz",
                     "#" + ",".join(f"k{i}:v" for i in range(31)), "#k:" + "v" * 2049]),
    st.text(max_size=8))


@st.composite
def template(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=30))
    values = ":".join(draw(st.lists(_VALUE, min_size=1, max_size=3)))
    fields = "".join("|" + f for f in draw(st.lists(_FIELD, max_size=3)))
    return f"{draw(_NAMES)}:{values}|{draw(st.sampled_from(['c', 'g', 'ms', 'h', 'd', 's', 'x', '']))}{fields}"


_NASTY = ":|@#,\n\r T.-+e0\x00é"


def mutate(rng, line):
    r = rng.random()
    if r < 0.6 or not line:
        return line
    i = rng.randrange(len(line))
    if r < 0.75:
        return line[:i]
    if r < 0.9:
        return line[:i] + rng.choice(_NASTY) + line[i:]
    return line[:i] + line[i + 1:]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(template(), min_size=1, max_size=12), st.integers(0, 2**32))
def test_fuzz_no_crash_bad_lines_counted_good_lines_kept(templates, seed):
    rng = random.Random(seed)
    agg = Aggregator("fuzz", clock=lambda: NOW)
    lines_total = good_total = 0
    counter_sum = 0.0
    for _ in range(DATAGRAMS_PER_EXAMPLE):
        text = "\n".join(mutate(rng, rng.choice(templates)) for _ in range(rng.randint(1, 12)))
        lines = [ln for ln in text.split("\n") if ln]
        truth = [oracle(ln) for ln in lines]
        samples, rejected = parse_datagram(text)
        assert len(rejected) == sum(not t[0] for t in truth), (text, rejected)
        good = [t for t in truth if t[0]]
        assert [(s.head.type, s.values, s.head.weight, s.head.timestamp) for s in samples] == [t[1:] for t in good]
        agg.ingest(text, NOW)
        agent_truth = [oracle(ln, agent=True) for ln in lines]
        lines_total += len(lines)
        good_total += sum(t[0] for t in agent_truth)
        counter_sum += sum(sum(t[2]) * t[3] for t in agent_truth if t[0] and t[1] == "c")
        _seen["datagrams"] += 1
    points = agg.flush()
    c = agg.counters()
    assert c["received"] == lines_total
    assert c["parsed"] == good_total
    assert c["parsed"] + sum(c["rejected"].values()) == lines_total
    assert math.isclose(sum(p.sum for p in points if p.type == "c"), counter_sum, rel_tol=1e-9, abs_tol=1e-6)


def test_fuzz_volume():
    """Runs after the fuzz test (file order): the volume the issue asks for was reached."""
    assert _seen["datagrams"] >= 100_000
