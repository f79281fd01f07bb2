"""tally.statsd: every line shape of the StatsD/DogStatsD grammar, its rejections and the formatter."""

import math

import pytest

from tally.statsd import (REASONS, StatsdLineError, format_line, normalize_name, normalize_tag_key,
                          parse_datagram, parse_line)


def test_counter_with_rate_tags_timestamp_and_container():
    s = parse_line("api.requests:2|c|@0.5|#env:prod,Host-Name:a.b,canary|T1700000000|c:abc123")
    assert s.head.name == "api_requests"
    assert s.head.type == "c"
    assert s.head.rate == 0.5 and s.head.weight == 2.0
    # keys normalized, sorted; a bare tag gets "true"; values kept as sent
    assert s.head.tags == (("Host_Name", "a.b"), ("canary", "true"), ("env", "prod"))
    assert s.head.timestamp == 1700000000
    assert s.head.container == "abc123"
    assert s.values == (2.0,)


@pytest.mark.parametrize("mtype", ["c", "g", "ms", "h", "d"])
def test_every_numeric_type_and_several_values(mtype):
    s = parse_line(f"x:1:2.5:-3e2|{mtype}")
    assert s.head.type == mtype
    assert s.values == (1.0, 2.5, -300.0)


def test_gauge_deltas_are_flagged_per_value():
    s = parse_line("q:+4:-2:7|g")
    assert s.values == (4.0, -2.0, 7.0)
    assert s.deltas == (True, True, False)


def test_set_members_are_strings_and_rate_is_ignored_for_gauges_and_sets():
    s = parse_line("users:alice:bob|s|@0.1")
    assert s.values == ("alice", "bob")
    assert s.head.weight == 1.0
    assert parse_line("g:1|g|@0.5").head.weight == 1.0
    assert parse_line("t:1|ms|@0.25").head.weight == 4.0


@pytest.mark.parametrize("name, expected", [
    ("api.requests", "api_requests"), ("a-b c/d", "a_b_c_d"), ("ns:sub", "ns:sub"), ("9lives", "_9lives"),
    ("héllo", "h_llo"), ("Already_OK_1", "Already_OK_1")])
def test_names_are_normalized_like_statsd_exporter(name, expected):
    assert normalize_name(name) == expected


def test_tag_keys_follow_the_label_rule():
    assert normalize_tag_key("service.name") == "service_name"
    assert normalize_tag_key("a:b") == "a_b"
    assert normalize_tag_key("1x") == "_1x"


@pytest.mark.parametrize("line, reason", [
    ("novalue", "no_value"),
    ("name|c", "no_value"),
    ("name:1", "no_type"),
    ("name:1|", "no_type"),
    (":1|c", "bad_name"),
    ("x" * 201 + ":1|c", "bad_name"),
    ("name:1|x", "bad_type"),
    ("name:1|C", "bad_type"),
    ("name:abc|c", "bad_value"),
    ("name:|c", "bad_value"),
    ("name:nan|c", "bad_value"),
    ("name:inf|ms", "bad_value"),
    ("name:1e999|ms", "bad_value"),
    ("name:1_000|c", "bad_value"),
    ("name: 1|c", "bad_value"),
    ("name:1::2|d", "bad_value"),
    ("name:١|c", "bad_value"),  # a non-ASCII digit float() would accept
    ("u:|s", "bad_value"),
    ("name:1|c|@0", "bad_rate"),
    ("name:1|c|@1.5", "bad_rate"),
    ("name:1|c|@x", "bad_rate"),
    ("name:1|c|#", "bad_tags"),
    ("name:1|c|#a:1,,b:2", "bad_tags"),
    ("name:1|c|#:v", "bad_tags"),
    ("name:1|c|#a:1,a:2", "duplicate_tag"),
    ("name:1|c|#a.b:1,a_b:2", "duplicate_tag"),
    ("name:1|c|T", "bad_timestamp"),
    ("name:1|c|T-5", "bad_timestamp"),
    ("name:1|c|T0", "bad_timestamp"),
    ("name:1|c|T12x", "bad_timestamp"),
    ("name:1|c|x:y", "bad_field"),
    ("name:1|c|@0.5|@0.5", "bad_field"),
    ("_e{5,4}:title|text", "event"),
    ("_sc|check|0", "event"),
    ("n:" + "1" * 9000 + "|c", "too_long"),
])
def test_each_bad_line_has_its_precise_reason(line, reason):
    with pytest.raises(StatsdLineError) as info:
        parse_line(line)
    assert info.value.reason == reason
    assert info.value.reason in REASONS
    assert info.value.message


def test_bad_lines_do_not_lose_the_good_lines_of_the_datagram():
    data = b"a:1|c\nbroken\nb:2|g\n\nc:x|ms\n\xff\xfe:1|c\nd:3|d\n"
    samples, rejected = parse_datagram(data)
    assert [(s.head.name, s.values) for s in samples] == [("a", (1.0,)), ("b", (2.0,)), ("d", (3.0,))]
    assert sorted(e.reason for _, e in rejected) == ["bad_value", "encoding", "no_value"]


def test_format_line_round_trips_through_the_parser():
    cases = [
        ("api.requests", 3, "c", 1.0, {"env": "prod"}, None, False),
        ("lat", 12.25, "ms", 0.1, ["route:/a", "canary"], None, False),
        ("q", 5, "g", 1.0, None, None, True),
        ("q", -5, "g", 1.0, None, None, True),
        ("d", 1e-9, "d", 0.5, None, 1700000000, False),
        ("u", "user-42", "s", 1.0, None, None, False),
    ]
    for name, value, mtype, rate, tags, ts, delta in cases:
        s = parse_line(format_line(name, value, mtype, rate, tags, ts, delta).decode())
        assert s.head.type == mtype and s.head.rate == rate and s.head.timestamp == ts
        if mtype == "s":
            assert s.values == (value,)
        else:
            assert s.values == (float(value),)
        if mtype == "g":
            assert s.deltas == (delta,)


def test_format_line_absolute_negative_gauge_resets_to_zero_first():
    data = format_line("q", -3, "g", tags={"a": "b"})
    assert data == b"q:0|g|#a:b\nq:-3|g|#a:b"
    samples, rejected = parse_datagram(data)
    assert not rejected and [s.values for s in samples] == [(0.0,), (-3.0,)]


def test_format_line_keeps_one_line_whatever_the_input():
    data = format_line("a|b:c\nd", 1, "c", tags={"k|#,:x": "v|,\nw"})
    assert b"\n" not in data
    sample = parse_line(data.decode())
    assert sample.values == (1.0,)
    assert len(sample.head.tags) == 1


@pytest.mark.parametrize("args", [("a", 1, "x"), ("a", math.nan, "c"), ("a", 1, "c", 0.0), ("a", 1, "c", 2.0)])
def test_format_line_refuses_what_would_be_rejected(args):
    with pytest.raises(ValueError):
        format_line(*args)


def test_values_beyond_the_sketch_range_are_bad_values():
    assert parse_line("lat:1e300|ms").values == (1e300,)
    for line in ("lat:1e301|ms", "c:-2e305|c", "g:+1e308|g"):
        with pytest.raises(StatsdLineError) as err:
            parse_line(line)
        assert err.value.reason == "bad_value" and "1e+300" in str(err.value)
