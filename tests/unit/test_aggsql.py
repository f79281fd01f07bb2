"""The job's SQL text: every tier, the salted phase 1, dedup and late routing are wired."""

from tally import aggsql
from tally.config import TallyConfig
from tally.tiers import DEFAULT_TIERS


def test_views_cover_every_stage_and_tier_in_order():
    names = [name for name, _ in aggsql.views("points", salt_buckets=8)]
    assert names[:3] == ["valid", "rejected", "seq_max"]
    tier_views = [f"agg_{t.name}" for t in DEFAULT_TIERS]
    assert [n for n in names if n.startswith("agg_")] == tier_views
    assert names[-1] == "buckets"
    # Each view only reads views defined before it.
    queries = dict(aggsql.views("points"))
    for i, name in enumerate(names):
        for later in names[i + 1:]:
            assert f" {later}\n" not in queries[name] + "\n" and f"TABLE {later})" not in queries[name]


def test_phase1_is_salted_and_phase2_and_rollups_are_not():
    queries = dict(aggsql.views("points", salt_buckets=8))
    assert "GROUP BY tenant, sid, MOD(seq, 8)" in queries["phase1"]
    assert "TABLE on_time" in queries["phase1"]
    assert "TABLE phase1" in queries["agg_1s"] and "MOD(" not in queries["agg_1s"]
    for child, parent in zip(DEFAULT_TIERS, DEFAULT_TIERS[1:]):
        q = queries[f"agg_{parent.name}"]
        assert f"TABLE agg_{child.name}" in q
        assert aggsql.interval(parent.resolution_seconds) in q
        assert "sketch_agg(sk)" in q and "last_by_time(last_ts, vlast)" in q


def test_late_rule_matches_window_firing():
    marked = dict(aggsql.views("points"))["marked"]
    # A 1 s window [s, s+1000) fires when the watermark reaches s + 999.
    assert "`ts` - MOD(`ts`, 1000) + 999" in marked and "CURRENT_WATERMARK(rt)" in marked


def test_every_union_branch_has_the_bucket_columns():
    buckets = dict(aggsql.views("points"))["buckets"]
    branches = buckets.split("UNION ALL")
    assert len(branches) == len(DEFAULT_TIERS) + 3  # tiers + late + dup + rejected
    for kind in ("'bucket'", "'late'", "'dup'", "'rejected'"):
        assert kind in buckets


def test_kafka_ddl_uses_config_not_literals():
    cfg = TallyConfig(grace_seconds=7, points_topic="t.p", consumer_group="g")
    ddl = aggsql.kafka_points_ddl(cfg)
    assert "INTERVAL '7' SECOND" in ddl and "'topic' = 't.p'" in ddl and "'properties.group.id' = 'g'" in ddl
    assert f"'properties.bootstrap.servers' = '{cfg.kafka_bootstrap}'" in ddl
    assert "METADATA FROM 'partition'" in ddl


def test_interval_literals_use_whole_units():
    assert [aggsql.interval(s) for s in (1, 10, 60, 3600, 86400, 90)] == [
        "INTERVAL '1' SECOND", "INTERVAL '10' SECOND", "INTERVAL '1' MINUTE", "INTERVAL '1' HOUR",
        "INTERVAL '1' DAY", "INTERVAL '90' SECOND"]
