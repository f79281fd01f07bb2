import dataclasses
import json

import pytest

from sinks.cassandra import BucketRow
from tally import point
from tally.schema import bucket_columns, cql_statements, point_fields, point_sql_columns, twcs_window
from tally.series import series_id
from tally.tiers import DEFAULT_TIERS


def make_point(**overrides):
    p = point.from_value(series_id("acme", "lat", {"h": "a"}), "ms", 1_700_000_000_123, 12.5, "p1", 7)
    p.update(overrides)
    return p


def test_point_round_trips_and_matches_schema_fields():
    p = make_point()
    assert tuple(p) == point_fields()
    assert point.decode(point.encode(p)) == p
    assert p["count"] == 1.0 and p["sum"] == p["min"] == p["max"] == p["last"] == 12.5


def test_sampled_event_counts_one_over_rate():
    p = point.from_value(series_id("a", "m"), "c", 0, 2.0, "p", 1, count=10.0)
    assert p["count"] == 10.0 and p["sum"] == 20.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"v": 2}, "schema version"),
        ({"type": "x"}, "'type' must be one of"),
        ({"ts": "now"}, "'ts' must be integer"),
        ({"count": True}, "'count' must be number"),
        ({"tenant": ""}, "'tenant' must not be empty"),
        ({"seq": -1}, "'seq' must be >= 0"),
        ({"min": 5.0, "max": 1.0}, "min 5.0 > max 1.0"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_invalid_points_name_the_problem(overrides, message):
    with pytest.raises(point.PointError, match=message.replace("(", r"\(")):
        point.validate(make_point(**overrides))


def test_missing_field_and_garbage():
    p = make_point()
    del p["sid"]
    with pytest.raises(point.PointError, match=r"missing field\(s\) \['sid'\]"):
        point.validate(p)
    with pytest.raises(point.PointError, match="not JSON"):
        point.decode(b"\xff{")
    with pytest.raises(point.PointError, match="must be a JSON object"):
        point.decode(b"[1]")


def test_cql_columns_agree_with_record_and_bucket_row():
    columns = set(bucket_columns())
    # Every aggregate field of the record is stored per bucket under the same name.
    aggregate_fields = {"count", "sum", "min", "max", "last"}
    assert aggregate_fields <= set(point_fields())
    assert aggregate_fields <= columns
    assert {"tenant", "sid", "series"} <= set(point_fields()) & columns
    # The writer fills every column from BucketRow plus the derived part / written_ms.
    assert columns == {f.name for f in dataclasses.fields(BucketRow)} | {"part", "written_ms"}
    # SQL types exist for every record field.
    assert [n for n, _ in point_sql_columns()] == list(point_fields())


def test_cql_has_one_table_per_tier_with_its_ttl():
    statements = cql_statements("ks", "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    for tier in DEFAULT_TIERS:
        (table,) = [s for s in statements if f"ks.buckets_{tier.name} " in s]
        assert f"default_time_to_live = {tier.retention_days * 86400}" in table
        assert "TimeWindowCompactionStrategy" in table
    assert any("ks.series" in s for s in statements)


def test_twcs_windows_stay_under_fifty_per_ttl():
    for days in (1, 7, 30, 180, 730, 1825):
        unit, size = twcs_window(days)
        window_days = size / 24 if unit == "HOURS" else size
        assert days / window_days <= 50


def test_schema_file_is_valid_json_schema_document():
    from tally.schema import SCHEMA_DIR

    doc = json.loads((SCHEMA_DIR / "point.json").read_text())
    assert set(doc["required"]) == set(doc["properties"])
