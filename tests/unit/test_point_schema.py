import base64
import dataclasses
import json

import pytest

from sinks.cassandra import BucketRow
from tally import point
from tally.schema import bucket_columns, cql_statements, point_fields, point_sql_columns, twcs_window
from tally.series import series_id
from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS


def make_point(**overrides):
    p = point.from_value(series_id("acme", "lat", {"h": "a"}), "ms", 1_700_000_000_123, 12.5, "p1", 7)
    p.update(overrides)
    return p


def test_point_round_trips_and_matches_schema_fields():
    p = make_point()
    assert tuple(p) == tuple(f for f in point_fields() if f != "rsids")  # rsids: only with rollups
    assert point.decode(point.encode(p)) == p
    assert p["count"] == 1.0 and p["sum"] == p["min"] == p["max"] == p["last"] == 12.5
    # Timers carry their sketch; counters and gauges do not.
    sketch = Sketch.from_bytes(base64.b64decode(p["sk"]))
    assert sketch.count == 1.0 and abs(sketch.quantile(0.5) - 12.5) <= 0.01 * 12.5
    assert point.from_value(series_id("a", "m"), "c", 0, 1.0, "p", 1)["sk"] is None


def test_series_record_names_the_series():
    sid = series_id("acme", "lat", {"h": "a"})
    record = point.validate_series(point.series_record(sid, "ms"))
    assert record["sid"] == sid.id and record["series"] == sid.key and record["tags"] == {"h": "a"}
    assert record["type"] == "ms"
    with pytest.raises(point.PointError, match="type"):
        point.validate_series(point.series_record(sid, "w"))
    with pytest.raises(point.PointError, match="missing field"):
        point.validate_series({"v": 1})


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
        ({"sk": None}, "'sk' is required for type 'ms'"),
        ({"sk": "!!notbase64"}, "'sk' is not a valid sketch"),
        ({"type": "c"}, "'sk' must be null for type 'c'"),
        ({"count": 0.0}, "count must be > 0"),
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
    assert {"tenant", "sid"} <= set(point_fields()) & columns
    # The writer fills every column from BucketRow plus the derived part / written_ms.
    assert columns == {f.name for f in dataclasses.fields(BucketRow)} | {"part", "written_ms"}
    # The reconciliation's marker is in the table but never in the stream's upserts.
    from tally.schema import RECONCILE_COLUMNS, all_bucket_columns

    assert set(all_bucket_columns()) == columns | set(RECONCILE_COLUMNS)
    assert not set(RECONCILE_COLUMNS) & columns
    # SQL types exist for every record field; the sketch travels as BYTES (base64 in JSON).
    assert [n for n, _ in point_sql_columns()] == list(point_fields())
    assert dict(point_sql_columns())["sk"] == "BYTES"


def test_bucket_stream_columns_map_onto_the_bucket_row():
    from sinks.redis_cache import decode_member, encode_member
    from tally.aggsql import BUCKET_COLUMNS

    assert BUCKET_COLUMNS == ("kind", "tier", "tenant", "sid", "ts", "cnt", "total", "vmin", "vmax", "vlast",
                              "last_ts", "sk", "mtype", "pid", "seq")
    row = BucketRow("t", 5, 10_000, 3.0, 6.0, 1.0, 3.0, 2.0, 10_500, b"\x01\x02")
    assert decode_member(encode_member(row)) == {
        "ts": 10_000, "count": 3.0, "sum": 6.0, "min": 1.0, "max": 3.0, "last": 2.0, "last_ts": 10_500,
        "sketch": b"\x01\x02"}


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
    assert set(doc["required"]) <= set(doc["properties"])
    # A field outside "required" is optional: nullable (absent = null), so v1 records
    # written before it existed stay valid.
    for name in set(doc["properties"]) - set(doc["required"]):
        assert "null" in doc["properties"][name]["type"], name


def test_rsids_is_optional_and_checked():
    from tally.schema import point_required_fields

    p = make_point()
    assert "rsids" not in p and "rsids" not in point_required_fields()
    assert point.validate(p) == p  # a record without rsids (every record before rollups)
    assert point.validate({**p, "rsids": None})["rsids"] is None
    with_ids = point.decode(point.encode({**p, "rsids": [5, -7]}))
    assert with_ids["rsids"] == [5, -7]
    with pytest.raises(point.PointError, match="'rsids' must be an array of integer"):
        point.validate({**p, "rsids": [1, "2"]})
    with pytest.raises(point.PointError, match="'rsids' must be array or null"):
        point.validate({**p, "rsids": 3})
