"""The job's SQL text: every tier, the salted phase 1, dedup and late routing are wired."""

import re

import pytest

from tally import aggsql
from tally.config import REPO_ROOT, TallyConfig
from tally.tiers import DEFAULT_TIERS


def _all_views(salt_buckets=4):
    return aggsql.classify_views("points", 2) + aggsql.bucket_views("classified_points", salt_buckets=salt_buckets)


def test_views_cover_every_stage_and_tier_in_order():
    names = [name for name, _ in _all_views(8)]
    assert names[:2] == ["seq_prev", "classified"]
    tier_views = [f"agg_{t.name}" for t in DEFAULT_TIERS]
    assert [n for n in names if n.startswith("agg_")] == tier_views
    assert names[-3:] == ["buckets", "in_grace", "sink_batches"]
    # Each view only reads views defined before it.
    queries = dict(_all_views())
    for i, name in enumerate(names):
        for later in names[i + 1:]:
            assert f" {later}\n" not in queries[name] + "\n" and f"TABLE {later})" not in queries[name]


def test_every_record_gets_exactly_one_status():
    classified = dict(aggsql.classify_views("points", 2))["classified"]
    for status in ("'rejected'", "'tick'", "'dup'", "'late'", "'grace'", "'ok'"):
        assert status in classified
    assert "CASE" in classified and classified.count("CURRENT_WATERMARK") == 2
    # Late beyond grace is decided before late within grace (the first WHEN that holds wins).
    assert classified.index("'late'") < classified.index("'grace'") < classified.index("'ok'")
    on_time = dict(aggsql.bucket_views("classified_points"))["on_time"]
    assert "status IN ('ok', 'grace')" in on_time


def test_phase1_is_salted_and_phase2_and_rollups_are_not():
    queries = dict(_all_views(8))
    assert "GROUP BY tenant, sid, MOD(seq, 8)" in queries["phase1"]
    assert "TABLE on_time" in queries["phase1"]
    assert "TABLE phase1" in queries["agg_1s"] and "MOD(" not in queries["agg_1s"]
    for child, parent in zip(DEFAULT_TIERS, DEFAULT_TIERS[1:]):
        q = queries[f"agg_{parent.name}"]
        assert f"TABLE agg_{child.name}" in q
        assert aggsql.interval(parent.resolution_seconds) in q
        assert "sketch_agg(sk)" in q and "last_by_time(last_ts, vlast)" in q


def test_late_rule_matches_window_firing():
    marked = dict(aggsql.classify_views("points", 2))["classified"]
    # A 1 s window [s, s+1000) fires when the watermark reaches s + 999.
    assert "`ts` - MOD(`ts`, 1000) + 999" in marked and "CURRENT_WATERMARK(rt)" in marked
    # Late within grace: the window ended by watermark + grace (2 s): s + 1000 - 2000.
    assert "`ts` - MOD(`ts`, 1000) + -1000" in marked
    assert "+ -4000" in dict(aggsql.classify_views("points", 5))["classified"]


def test_every_union_branch_has_the_bucket_columns():
    buckets = dict(aggsql.bucket_views("classified_points"))["buckets"]
    branches = buckets.split("UNION ALL")
    assert len(branches) == len(DEFAULT_TIERS) + 1  # tiers + the late/dup/rejected records
    assert "status IN ('late', 'dup', 'rejected')" in branches[-1]
    for branch in branches:
        assert branch.count(" AS kind") == 1 and re.search(r"\bseq\n", branch)


def test_sink_batches_pack_every_tier_and_keep_points_whole():
    batches = dict(aggsql.bucket_views("classified_points", batch_shards=16))["sink_batches"]
    branches = batches.split("UNION ALL")
    assert len(branches) == len(DEFAULT_TIERS) + 2
    for tier, branch in zip(DEFAULT_TIERS, branches):
        assert f"TABLE agg_{tier.name}," in branch and "pack_buckets(sid" in branch
        assert aggsql.interval(tier.resolution_seconds) in branch and "MOD(sid, 16)" in branch
    assert "status IN ('late', 'dup', 'rejected')" in branches[-2] and "pack_buckets" not in branches[-2]
    # Late within grace: counted per tenant and 1 s window in the SQL (one row, not one per point).
    assert "'grace' AS kind" in branches[-1] and "TABLE in_grace" in branches[-1]
    assert "COUNT(*) AS n" in branches[-1] and "GROUP BY tenant, window_start, window_end" in branches[-1]
    assert "status = 'grace'" in dict(aggsql.bucket_views("classified_points"))["in_grace"]
    for branch in branches:  # every branch lists SINK_COLUMNS in order (select list, top-level commas)
        select = branch[branch.index("SELECT") + 6:branch.index("\nFROM")]
        items, depth, current = [], 0, ""
        for ch in select:
            depth += ch == "("
            depth -= ch == ")"
            if ch == "," and depth == 0:
                items.append(current)
                current = ""
            else:
                current += ch
        items.append(current)
        names = [re.split(r"\bAS\b", item)[-1].strip().strip("`") for item in items]
        assert tuple(names) == aggsql.SINK_COLUMNS


def test_kafka_ddl_uses_config_not_literals():
    cfg = TallyConfig(grace_seconds=7, points_topic="t.p", consumer_group="g")
    ddl = aggsql.kafka_points_ddl(cfg)
    assert "INTERVAL '7' SECOND" in ddl and "'topic' = 't.p'" in ddl and "'properties.group.id' = 'g'" in ddl
    assert f"'properties.bootstrap.servers' = '{cfg.kafka_bootstrap}'" in ddl
    assert "METADATA FROM 'partition'" in ddl
    assert "'format' = 'tally-json'" in ddl  # counts what is not JSON (jobs/udf TallyJsonFormatFactory)
    java = REPO_ROOT / "jobs/udf/src/main/java/dev/tally/udf/CountingJsonDeserializationSchema.java"
    assert f'METRIC = "{aggsql.UNPARSEABLE_METRIC}"' in java.read_text()


def test_interval_literals_use_whole_units():
    assert [aggsql.interval(s) for s in (1, 10, 60, 3600, 86400, 90)] == [
        "INTERVAL '1' SECOND", "INTERVAL '10' SECOND", "INTERVAL '1' MINUTE", "INTERVAL '1' HOUR",
        "INTERVAL '1' DAY", "INTERVAL '90' SECOND"]


def test_on_time_feeds_each_point_to_its_series_and_its_rollup_series():
    on_time = dict(aggsql.bucket_views("classified_points"))["on_time"]
    # One chained branch: [sid] + rsids unnested, the sid column replaced by the target.
    assert "UNION" not in on_time
    assert "CROSS JOIN UNNEST" in on_time and "ARRAY_CONCAT(ARRAY[sid], rsids)" in on_time
    assert "WHEN rsids IS NULL THEN ARRAY[sid]" in on_time and "target AS sid" in on_time
    assert "`rsids`" not in on_time.split("FROM")[0]  # the array does not ride into phase 1
    # Late / duplicate / rejected rows stay one per point (never exploded).
    buckets = dict(aggsql.bucket_views("classified_points"))["buckets"]
    assert "UNNEST" not in buckets and "UNNEST" not in dict(aggsql.bucket_views("c"))["sink_batches"]


def test_phase1_needs_at_least_one_salt():
    """0 is the config's "auto", resolved by TallyConfig.phase1_salts before the SQL is built;
    reaching the SQL it would be MOD(seq, 0), a division by zero for every record."""
    with pytest.raises(ValueError, match="salt_buckets must be at least 1"):
        aggsql.bucket_views("classified_points", salt_buckets=0)
    assert "MOD(seq, 1)" in dict(aggsql.bucket_views("classified_points", salt_buckets=1))["phase1"]
