"""The raw-log archive on the real Kafka broker: every record lands in its event hour, and
archiving is idempotent - a run in several pieces (partial segments rewritten, a restart
in the middle of a segment), the continuous loop, and a fresh archive of the same offsets
all give byte-identical files."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid

import pytest

from tally import archive
from tally.producer import PointProducer, delete_topic, ensure_topic
from tally.series import series_id
from tests.integration.truth import wait_for

pytestmark = pytest.mark.integration

DAY_MS = 1_583_020_800_000  # 2020-03-01T00:00:00Z


@pytest.fixture
def topic_cfg(stack_cfg, tmp_path):
    run = uuid.uuid4().hex[:8]
    cfg = dataclasses.replace(stack_cfg, points_topic=f"tally.it.{run}.points", series_topic=f"tally.it.{run}.series",
                              archive_group=f"tally-it-{run}-archive", archive_uri=str(tmp_path / "a"),
                              archive_segment_records=7, archive_flush_interval_seconds=0.2)
    ensure_topic(cfg, cfg.points_topic, partitions=2)
    ensure_topic(cfg, cfg.series_topic, partitions=1)
    yield cfg
    delete_topic(cfg, cfg.points_topic)
    delete_topic(cfg, cfg.series_topic)


def _send(cfg, producer, n, start):
    series = [series_id("t-archive", "m", {"i": str(i)}) for i in range(3)]
    sent = []
    for k in range(start, start + n):
        # Spread over three event hours, out of order.
        ts = DAY_MS + (k % 3) * 3_600_000 + k * 1000
        sent.append(producer.emit(series[k % 3], "c", ts, float(k)))
    producer.flush()
    return sent


def _contents(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl.gz"))}


def test_archive_is_idempotent_across_restarts_and_runs(topic_cfg, tmp_path):
    cfg = topic_cfg
    producer = PointProducer(cfg)
    sent = _send(cfg, producer, 20, 0)
    first = archive.run(cfg, once=True)
    assert first.records == 20 and first.rejected == 0
    sent += _send(cfg, producer, 25, 20)  # the restart resumes inside a partial segment
    second = archive.run(cfg, once=True)
    assert second.records >= 25  # plus the re-read start of the partial segments
    producer.close()

    pieces = _contents(tmp_path / "a")
    # Every record exactly once, in the folder of its event hour.
    seen = []
    for name, data in pieces.items():
        for line in archive.read_file(data):
            record = json.loads(line)
            assert name.startswith(archive.hour_folder(record["ts"]) + "/part-")
            seen.append(record["seq"])
    assert sorted(seen) == sorted(p["seq"] for p in sent)
    assert {name.split("/")[1] for name in pieces} == {"hour=00", "hour=01", "hour=02"}

    # The same offsets archived from scratch in one go, then by the continuous loop:
    # byte-identical files.
    fresh = dataclasses.replace(cfg, archive_group=cfg.archive_group + "-fresh", archive_uri=str(tmp_path / "b"))
    assert archive.run(fresh, once=True).records == 45
    assert _contents(tmp_path / "b") == pieces
    looped = dataclasses.replace(cfg, archive_group=cfg.archive_group + "-loop", archive_uri=str(tmp_path / "c"))
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(stats=archive.run(looped, stop=stop)))
    worker.start()
    try:
        assert wait_for(lambda: _contents(tmp_path / "c") == pieces, timeout_s=60, interval_s=0.5)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert result["stats"].records == 45 and _contents(tmp_path / "c") == pieces
    # Nothing new: another run writes nothing and changes nothing.
    again = archive.run(cfg, once=True)
    assert _contents(tmp_path / "a") == pieces
    print(f"archive: {len(pieces)} files for 45 points; runs {first.summary()} | {second.summary()} | {again.summary()}")
