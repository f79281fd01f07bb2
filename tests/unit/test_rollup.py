"""Rollup rules (tally.rollup): parsing, validation errors, the series mapping, and the
point record the producer builds from it."""

import pytest

from tally import point
from tally.rollup import ROLLUP_LABEL, RollupRuleError, load_rules, parse_rules
from tally.series import series_id

RULES = {"rollups": [
    {"name": "cpu_by_region", "match": "cpu_usage", "by": ["region"]},
    {"name": "cpu_prod_by_env", "match": 'cpu_usage{env=~"prod|staging"}', "by": ["env", "region"]},
    {"name": "lat_by_route", "match": "request_latency", "by": ["route"], "drop_raw": True,
     "since": "2026-11-23T10:00:00Z"},
]}


def test_rules_parse_with_sorted_by_and_matchers():
    rules = parse_rules(RULES)
    assert [r.name for r in rules.rules] == ["cpu_by_region", "cpu_prod_by_env", "lat_by_route"]
    prod = rules.rules[1]
    assert prod.metric == "cpu_usage" and prod.by == ("env", "region") and not prod.drop_raw
    assert [(m.name, m.op, m.value) for m in prod.matchers] == [("env", "=~", "prod|staging")]
    lat = rules.rules[2]
    assert lat.drop_raw and lat.since_ms == 1_795_428_000_000
    assert [r.name for r in rules.for_metric("cpu_usage")] == ["cpu_by_region", "cpu_prod_by_env"]
    assert parse_rules(None).rules == () and not parse_rules({"rollups": []})


def test_series_maps_to_one_rollup_series_per_matching_rule():
    rules = parse_rules(RULES)
    raw = series_id("acme", "cpu_usage", {"host": "h1", "region": "us-east", "env": "prod"})
    mapped = rules.rollups(raw)
    by_region = series_id("acme", "cpu_usage", {"region": "us-east", ROLLUP_LABEL: "cpu_by_region"})
    by_env = series_id("acme", "cpu_usage", {"env": "prod", "region": "us-east", ROLLUP_LABEL: "cpu_prod_by_env"})
    assert mapped.sid == raw.id and mapped.rsids == (by_region.id, by_env.id) and not mapped.drop_raw
    assert [s for _, s in mapped.series] == [by_region, by_env]
    # Every host of a region lands in the same rollup series; the env rule only takes prod/staging.
    other = rules.rollups(series_id("acme", "cpu_usage", {"host": "h2", "region": "us-east", "env": "dev"}))
    assert other.rsids == (by_region.id,)
    # A label the series lacks is simply absent from the rollup series (PromQL grouping does the same).
    bare = rules.rollups(series_id("acme", "cpu_usage", {"host": "h3"}))
    assert bare.rsids == (series_id("acme", "cpu_usage", {ROLLUP_LABEL: "cpu_by_region"}).id,)
    # Tenants never share a rollup series.
    assert rules.rollups(series_id("other", "cpu_usage", {"region": "us-east"})).rsids[0] != by_region.id
    assert rules.rollups(series_id("acme", "mem_usage", {"region": "us-east"})) is None
    # A series already carrying the reserved label is never rolled up again.
    assert rules.rollups(by_region) is None


def test_drop_raw_makes_the_rollup_the_points_series():
    rules = parse_rules(RULES)
    raw = series_id("acme", "request_latency", {"host": "h1", "route": "/a"})
    mapped = rules.rollups(raw)
    rollup = series_id("acme", "request_latency", {"route": "/a", ROLLUP_LABEL: "lat_by_route"})
    assert mapped.drop_raw and mapped.sid == rollup.id and mapped.rsids is None
    p = point.from_value(raw, "d", 1_000, 2.5, "p", 1, rollups=mapped)
    assert p["sid"] == rollup.id and "rsids" not in p and point.validate(p) == p


def test_point_carries_rollup_ids_only_when_mapped():
    rules = parse_rules(RULES)
    raw = series_id("acme", "cpu_usage", {"host": "h1", "region": "eu"})
    p = point.from_value(raw, "g", 1_000, 42.0, "p", 1, rollups=rules.rollups(raw))
    assert p["sid"] == raw.id and p["rsids"] == list(rules.rollups(raw).rsids)
    assert point.decode(point.encode(p)) == p
    assert "rsids" not in point.from_value(raw, "g", 1_000, 42.0, "p", 2)


@pytest.mark.parametrize("doc, message", [
    ({"rules": []}, "one key, 'rollups'"),
    ({"rollups": {"name": "x"}}, "'rollups' must be a list"),
    ({"rollups": [{"match": "m", "by": []}]}, r"rule #1: 'name' must match"),
    ({"rollups": [{"name": "a-b", "match": "m", "by": []}]}, "'name' must match"),
    ({"rollups": [{"name": "r", "match": "m", "by": [], "group": 1}]}, r"unknown field\(s\) \['group'\]"),
    ({"rollups": [{"name": "r", "by": ["a"]}]}, "'match' must be a series selector"),
    ({"rollups": [{"name": "r", "match": "m{", "by": ["a"]}]}, "'match' is not a series selector"),
    ({"rollups": [{"name": "r", "match": "sum(m)", "by": ["a"]}]}, "must be a plain series selector"),
    ({"rollups": [{"name": "r", "match": '{host="a"}', "by": ["a"]}]}, "must name exactly one metric"),
    ({"rollups": [{"name": "r", "match": 'm{__rollup__="x"}', "by": ["a"]}]}, "reserved label"),
    ({"rollups": [{"name": "r", "match": "m", "by": "region"}]}, "'by' must be a list"),
    ({"rollups": [{"name": "r", "match": "m", "by": ["__name__"]}]}, "not a plain label name"),
    ({"rollups": [{"name": "r", "match": "m", "by": ["a", "a"]}]}, "lists a label twice"),
    ({"rollups": [{"name": "r", "match": "m", "by": ["a"], "drop_raw": "yes"}]}, "'drop_raw' must be true or false"),
    ({"rollups": [{"name": "r", "match": "m", "by": ["a"], "since": "yesterday"}]}, "'since' must be an ISO 8601"),
    ({"rollups": [{"name": "r", "match": "m", "by": ["a"]}, {"name": "r", "match": "n", "by": []}]},
     r"must be unique: \['r'\]"),
])
def test_invalid_rules_name_the_rule_and_field(doc, message):
    with pytest.raises(RollupRuleError, match=message):
        parse_rules(doc)


def test_load_rules_from_yaml_file(tmp_path):
    path = tmp_path / "rollups.yaml"
    path.write_text("rollups:\n  - name: cpu_by_region\n    match: cpu_usage\n    by: [region]\n"
                    "    since: 2026-11-23T10:00:00Z\n")
    (rule,) = load_rules(path).rules
    assert rule.by == ("region",) and rule.since_ms == 1_795_428_000_000
    assert not load_rules(None)
    path.write_text("rollups: [\n")
    with pytest.raises(RollupRuleError, match="rollups.yaml: not YAML"):
        load_rules(path)
    with pytest.raises(RollupRuleError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_agent_batches_carry_rollup_ids_and_name_rollup_series():
    """The StatsD agent and the client's Kafka mode encode points in tally.agent.worker:
    the same mapping as PointProducer (rsids, drop_raw, registrations)."""
    from tally.agent.aggregator import Flushed
    from tally.agent.worker import encode_flushed

    rules = parse_rules(RULES)
    cpu = series_id("acme", "cpu_usage", {"host": "h1", "region": "eu"})
    lat = series_id("acme", "request_latency", {"host": "h1", "route": "/a"})
    other = series_id("acme", "mem", {"host": "h1"})
    items = [(Flushed(cpu, "g", 1_000, 1.0, 5.0, 5.0, 5.0, 5.0, None), 1),
             (Flushed(other, "g", 1_000, 1.0, 2.0, 2.0, 2.0, 2.0, None), 2),
             (Flushed(lat, "c", 1_000, 1.0, 3.0, 3.0, 3.0, 3.0, None), 3)]
    batch = encode_flushed(items, "agent-1", rules)
    records = [(key, point.decode(rec)) for key, rec in batch.points]
    assert [key for key, _ in records] == [cpu.id, other.id, lat.id]  # Kafka key: the raw series
    assert records[0][1]["rsids"] == list(rules.rollups(cpu).rsids) and records[0][1]["sid"] == cpu.id
    assert "rsids" not in records[1][1]
    lat_rollup = rules.rollups(lat).series[0][1]
    assert records[2][1]["sid"] == lat_rollup.id and "rsids" not in records[2][1]
    expected = {s.id for _, s in rules.rollups(cpu).series} | {cpu.id, other.id, lat_rollup.id}
    assert set(batch.series) == expected  # the dropped raw latency series is not named
    assert batch.series[lat_rollup.id] == (lat_rollup.key, "c")
    assert set(encode_flushed(items, "agent-1").series) == {cpu.id, other.id, lat.id}
