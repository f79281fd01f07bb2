"""tally.archive without Kafka: layout, record routing, reproducible files, atomic local store."""

import base64
import gzip
import json

import pytest

from tally import archive
from tally import point as points
from tally.config import TallyConfig
from tally.series import series_id

DAY_MS = 1_583_020_800_000  # 2020-03-01T00:00:00Z


def test_layout_is_event_hour_and_offsets():
    assert archive.hour_folder(DAY_MS + 3 * 3_600_000 + 59_999) == "date=2020-03-01/hour=03"
    assert archive.hour_folder(DAY_MS - 1) == "date=2020-02-29/hour=23"
    assert archive.segment_start(12_345, 1000) == 12_000
    assert archive.file_name(3, 12_000) == "part-00003-00000000000000012000.jsonl.gz"
    import datetime as dt

    assert archive.period_folders(dt.date(2020, 3, 1), (3, 4)) == ["date=2020-03-01/hour=03", "date=2020-03-01/hour=04"]


def test_route_keeps_points_as_sent_and_envelopes_the_rest():
    p = points.encode(points.from_value(series_id("t", "m"), "c", DAY_MS + 5, 1.0, "p", 1))
    assert archive.route(p, 0, 7) == ("date=2020-03-01/hour=00", p)
    # A pretty-printed record is re-encoded on one line.
    pretty = json.dumps(json.loads(p), indent=2).encode()
    folder, line = archive.route(pretty, 0, 8)
    assert folder == "date=2020-03-01/hour=00" and b"\n" not in line and json.loads(line) == json.loads(p)
    for bad in (b"\xff{", b"[1]", b'{"ts": "x"}', b'{"ts": true}', b"{}", None):
        folder, line = archive.route(bad, 2, 9)
        envelope = json.loads(line)
        assert folder == archive.REJECTED_FOLDER and (envelope["partition"], envelope["offset"]) == (2, 9)
        assert base64.b64decode(envelope["value_b64"]) == (bad or b"")


def test_files_are_reproducible_gzip_json_lines():
    lines = [b'{"a":1}', b'{"a":2}']
    data = archive.encode_file(lines)
    assert data == archive.encode_file(list(lines))  # no timestamp inside: same bytes every time
    assert gzip.decompress(data) == b'{"a":1}\n{"a":2}\n'
    assert archive.read_file(data) == lines


def test_local_store_replaces_atomically_and_lists_only_archive_files(tmp_path):
    store = archive.LocalStore(tmp_path)
    store.put("date=2020-03-01/hour=00/part-00000-00000000000000000000.jsonl.gz", b"one")
    store.put("date=2020-03-01/hour=00/part-00000-00000000000000000000.jsonl.gz", b"two")
    (tmp_path / "date=2020-03-01/hour=00/.part-x.jsonl.gz.tmp-1").write_bytes(b"partial")
    assert store.list() == ["date=2020-03-01/hour=00/part-00000-00000000000000000000.jsonl.gz"]
    assert store.get(store.list()[0]) == b"two"
    assert not [p for p in (tmp_path / "date=2020-03-01/hour=00").iterdir() if ".tmp-" in p.name
                and p.name != ".part-x.jsonl.gz.tmp-1"]
    assert store.list("date=2020-03-02") == []


def test_open_store_by_uri(tmp_path):
    store = archive.open_store(TallyConfig(home=tmp_path))
    assert isinstance(store, archive.LocalStore) and store.root == tmp_path / "data" / "archive"
    assert archive.open_store(TallyConfig(archive_uri=f"file://{tmp_path}/a")).root == tmp_path / "a"
    with pytest.raises(archive.ArchiveError, match="unsupported archive_uri"):
        archive.open_store(TallyConfig(archive_uri="ftp://host/x"))


def test_s3_store_keys_under_its_prefix():
    class Recorder:  # the boto3 client surface S3Store uses
        def __init__(self):
            self.objects = {}

        def put_object(self, Bucket, Key, Body):
            self.objects[(Bucket, Key)] = Body

    client = Recorder()
    store = archive.S3Store("s3://tally-archive/prod/points", client=client)
    store.put("date=2020-03-01/hour=00/part-00000-00000000000000000000.jsonl.gz", b"x")
    assert client.objects == {("tally-archive", "prod/points/date=2020-03-01/hour=00/"
                                                "part-00000-00000000000000000000.jsonl.gz"): b"x"}
