"""Unit tests for tally.tiers: alignment, partitions, rollup chain, retention config."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.tiers import (
    DEFAULT_TIERS,
    Tier,
    bucket_start_ms,
    parent_of,
    partition_start_ms,
    tier_by_name,
    tiers_with_retention,
)

# 2023-11-14T22:13:20.123Z
T = 1_700_000_000_123
any_time_ms = st.integers(min_value=-(2**50), max_value=2**50)


def test_default_tiers_and_retention():
    assert [(t.name, t.resolution_seconds, t.retention_days) for t in DEFAULT_TIERS] == [
        ("1s", 1, 7), ("10s", 10, 30), ("1m", 60, 180), ("1h", 3600, 730), ("1d", 86400, 1825)
    ]
    assert tier_by_name("1d").retention_seconds == 1825 * 86400


def test_partition_spans():
    spans = {t.name: t.partition_seconds for t in DEFAULT_TIERS}
    assert spans == {"1s": 3600, "10s": 86400, "1m": 86400, "1h": 30 * 86400, "1d": 365 * 86400}
    # bounded partitions: rows per partition stay small for every tier
    assert max(t.partition_seconds // t.resolution_seconds for t in DEFAULT_TIERS) == 8640


@pytest.mark.parametrize(
    "name, expected",
    [
        ("1s", 1_700_000_000_000),
        ("10s", 1_700_000_000_000),
        ("1m", 1_699_999_980_000),  # 22:13:00
        ("1h", 1_699_999_200_000),  # 22:00:00
        ("1d", 1_699_920_000_000),  # 2023-11-14T00:00:00Z
    ],
)
def test_bucket_alignment_known_values(name, expected):
    assert bucket_start_ms(T, tier_by_name(name)) == expected


def test_pre_epoch_times_floor_not_truncate():
    assert bucket_start_ms(-1, tier_by_name("1s")) == -1000
    assert partition_start_ms(-1, tier_by_name("1s")) == -3_600_000


@given(any_time_ms, st.sampled_from(DEFAULT_TIERS))
def test_bucket_contains_time_and_is_idempotent(time_ms, tier):
    start = bucket_start_ms(time_ms, tier)
    assert start <= time_ms < start + tier.resolution_ms
    assert start % tier.resolution_ms == 0
    assert bucket_start_ms(start, tier) == start


@given(any_time_ms, st.sampled_from(DEFAULT_TIERS))
def test_bucket_lies_inside_one_partition(time_ms, tier):
    bucket = bucket_start_ms(time_ms, tier)
    partition = partition_start_ms(time_ms, tier)
    assert partition <= bucket
    assert bucket + tier.resolution_ms <= partition + tier.partition_ms
    assert partition_start_ms(bucket, tier) == partition


@given(any_time_ms)
def test_finer_buckets_nest_in_coarser_ones(time_ms):
    """Rollup is only correct when each coarse bucket is a union of finer buckets."""
    for coarse in DEFAULT_TIERS[1:]:
        fine = parent_of(coarse)
        assert coarse.resolution_seconds % fine.resolution_seconds == 0
        via_fine = bucket_start_ms(bucket_start_ms(time_ms, fine), coarse)
        assert via_fine == bucket_start_ms(time_ms, coarse)


def test_times_must_be_integers():
    with pytest.raises(TypeError):
        bucket_start_ms(1.5e12, DEFAULT_TIERS[0])
    with pytest.raises(TypeError):
        partition_start_ms("1700000000000", DEFAULT_TIERS[0])


def test_parent_chain():
    chain, tier = [], tier_by_name("1d")
    while tier is not None:
        chain.append(tier.name)
        tier = parent_of(tier)
    assert chain == ["1d", "1h", "1m", "10s", "1s"]


def test_parent_of_with_overridden_tiers_and_unknown_tier():
    tiers = tiers_with_retention({"1m": 400})
    assert parent_of(tier_by_name("1h", tiers), tiers) == tier_by_name("1m", tiers)
    with pytest.raises(KeyError, match="2h"):
        parent_of(Tier("2h", 7200, 30, 30 * 86400))


def test_retention_override():
    tiers = tiers_with_retention({"1s": 2, "1d": 3650})
    assert [t.retention_days for t in tiers] == [2, 30, 180, 730, 3650]
    assert [t.resolution_seconds for t in tiers] == [t.resolution_seconds for t in DEFAULT_TIERS]
    assert DEFAULT_TIERS[0].retention_days == 7  # defaults are not mutated
    assert tiers_with_retention({}) == DEFAULT_TIERS


def test_retention_override_rejects_typos_and_bad_values():
    with pytest.raises(KeyError, match="unknown tier.*1min.*known tiers: 1s, 10s, 1m, 1h, 1d"):
        tiers_with_retention({"1min": 10})
    with pytest.raises(ValueError, match="retention_days"):
        tiers_with_retention({"1h": 0})


def test_tier_by_name_error_names_known_tiers():
    with pytest.raises(KeyError) as info:
        tier_by_name("5m")
    assert "unknown tier '5m'; known tiers: 1s, 10s, 1m, 1h, 1d" in str(info.value)


def test_tier_validation():
    with pytest.raises(ValueError, match="multiple"):
        Tier("7s", 7, 1, 3600)
    with pytest.raises(ValueError, match="resolution_seconds"):
        Tier("0s", 0, 1, 3600)
    with pytest.raises(Exception):  # frozen
        DEFAULT_TIERS[0].retention_days = 1


def test_domain_modules_stay_pure():
    """The domain layer must never import engine clients (STYLE.md, 'pure domain')."""
    forbidden = {"pyflink", "cassandra", "redis", "kafka"}
    root = Path(__file__).resolve().parents[2] / "tally"
    for name in ("sketch.py", "aggregate.py", "tiers.py", "metric_types.py"):
        tree = ast.parse((root / name).read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & forbidden, (name, imported & forbidden)
