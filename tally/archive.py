"""The raw-log archive: every record of the points topic, kept in files by event hour.

Layout (``cfg.archive_uri``, default ``<data_dir>/archive``)::

    date=YYYY-MM-DD/hour=HH/part-<partition>-<first offset>.jsonl.gz   one point record a line
    _rejected/part-<partition>-<first offset>.jsonl.gz                 records that are not a JSON
                                                                        object with an integer ts

Day and hour are the point's event time (``ts``, UTC), so the nightly reconciliation reads
exactly the folders of the period it recomputes, late points included (they are in the
points topic like every other point; the late topic is only the stream's side output).

Idempotent by construction: a partition's offsets are cut into fixed segments of
``archive_segment_records`` offsets, and one file holds the records of one segment whose
event time falls in one hour, in offset order, gzip with a zero timestamp.  Its name and
bytes depend only on the log, so archiving the same offsets again writes the same files.
Files are written to a hidden temporary name, fsynced and renamed; the consumer commits its
offsets only after that.  A restart seeks back to the start of the segment holding the
committed offset and rewrites that segment's files with everything read since (a superset of
what they held).  Kafka keeps ``kafka_retention_hours`` (7 days): the archive must not lag
that much; a gap (offsets expired before they were archived) is logged and counted.

Only the Kafka consumer touches an engine (imported when an Archiver is built); the rest is
plain Python.  ``tally archive`` runs the loop, ``tally archive --once`` drains and exits.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from tally.config import TallyConfig

log = logging.getLogger(__name__)

REJECTED_FOLDER = "_rejected"  # leading "_": Flink's file source skips it


class ArchiveError(RuntimeError):
    """The archive location is unusable (unknown scheme, missing client library)."""


# -- pure layout ------------------------------------------------------------------------

def hour_folder(ts_ms: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of an event time (epoch ms, UTC)."""
    when = dt.datetime.fromtimestamp(ts_ms // 1000, tz=dt.timezone.utc)
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def period_folders(date: dt.date, hours) -> list[str]:
    """The hour folders of a period: one day, the given hours of it."""
    return [f"date={date:%Y-%m-%d}/hour={h:02d}" for h in hours]


def segment_start(offset: int, segment_records: int) -> int:
    """First offset of the segment holding ``offset``."""
    return offset - offset % segment_records


def file_name(partition: int, first_offset: int) -> str:
    """A segment file's name: its partition and the first offset it holds (zero padded so
    names sort in log order)."""
    return f"part-{partition:05d}-{first_offset:020d}.jsonl.gz"


def route(value: bytes | None, partition: int, offset: int) -> tuple[str, bytes]:
    """(folder, line) of one record: its event-hour folder and the record itself, or the
    rejected folder and an envelope keeping the raw bytes (base64) for inspection."""
    try:
        record = json.loads(value)
        ts = record["ts"] if isinstance(record, dict) else None
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise ValueError("no integer ts")
        folder = hour_folder(ts)
    except (TypeError, ValueError, KeyError, OverflowError, OSError):
        envelope = {"partition": partition, "offset": offset,
                    "value_b64": base64.b64encode(value or b"").decode()}
        return REJECTED_FOLDER, json.dumps(envelope, separators=(",", ":")).encode()
    if b"\n" in value or b"\r" in value:  # one record per line, whatever the producer sent
        value = json.dumps(record, separators=(",", ":")).encode()
    return folder, value


def encode_file(lines: list[bytes]) -> bytes:
    """Gzip of the lines, byte-for-byte reproducible (no timestamp, no file name inside)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        for line in lines:
            gz.write(line)
            gz.write(b"\n")
    return buf.getvalue()


def read_file(data: bytes) -> list[bytes]:
    """The lines of an archive file (inverse of encode_file)."""
    return [line for line in gzip.decompress(data).split(b"\n") if line]


# -- stores ---------------------------------------------------------------------------------

class Store(Protocol):
    """Where archive files go; ``put`` must replace a file atomically and durably."""

    def put(self, relpath: str, data: bytes) -> None: ...

    def get(self, relpath: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]: ...


class LocalStore:
    """A local folder: temp file in the target folder, fsync, rename, fsync the folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, relpath: str) -> bytes:
        return (self.root / relpath).read_bytes()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*.jsonl.gz")
                      if not p.name.startswith("."))


class S3Store:
    """An S3-compatible bucket (boto3, optional: ``pip install boto3``).  A PUT replaces an
    object atomically, so no temp name is needed.  Not exercised by the test suite (no S3
    server on the test machine); reading it back in reconciliation also needs Flink's S3
    filesystem plugin (flink-s3-fs-hadoop in the cluster's plugins/ folder)."""

    def __init__(self, uri: str, endpoint_url: str | None = None, client=None):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        if client is None:
            try:
                import boto3
            except ImportError as exc:
                raise ArchiveError("archive_uri is s3://… but boto3 is not installed (pip install boto3)") from exc
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self._s3 = client

    def _key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def put(self, relpath: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(relpath), Body=data)

    def get(self, relpath: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=self._key(relpath))["Body"].read()

    def list(self, prefix: str = "") -> list[str]:
        names = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix) + 1:] if self.prefix else obj["Key"]
                if rel.endswith(".jsonl.gz"):
                    names.append(rel)
        return sorted(names)


def archive_location(cfg: TallyConfig) -> str:
    """The archive's root: ``cfg.archive_uri`` or ``<data_dir>/archive``."""
    return cfg.archive_uri or str(cfg.data_dir / "archive")


def open_store(cfg: TallyConfig) -> Store:
    """The store of ``cfg.archive_uri``: a local folder (plain path or file://) or s3://."""
    location = archive_location(cfg)
    if location.startswith("s3://"):
        return S3Store(location, cfg.archive_s3_endpoint_url)
    if "://" in location and not location.startswith("file://"):
        raise ArchiveError(f"unsupported archive_uri {location!r}: use a folder, file://… or s3://…")
    return LocalStore(Path(location.removeprefix("file://")))


# -- the archiver ---------------------------------------------------------------------------

@dataclass
class ArchiveStats:
    """What one run did."""

    records: int = 0
    rejected: int = 0
    files_written: int = 0
    segments_completed: int = 0
    gap_records: int = 0  # offsets that expired from Kafka before they were archived
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> committed offset

    def summary(self) -> str:
        return (f"{self.records} records archived ({self.rejected} rejected), {self.files_written} files written, "
                f"{self.segments_completed} segments completed, gap {self.gap_records}; committed {self.partitions}")


@dataclass
class _Segment:
    start: int
    lines: dict[str, list[bytes]] = field(default_factory=dict)  # folder -> lines in offset order
    first_offset: int | None = None
    next_offset: int = 0
    dirty: bool = False

    def add(self, folder: str, line: bytes, offset: int) -> None:
        if self.first_offset is None:
            self.first_offset = offset
        self.lines.setdefault(folder, []).append(line)
        self.next_offset = offset + 1
        self.dirty = True


class Archiver:
    """Copies the points topic into the archive (see the module docstring)."""

    def __init__(self, cfg: TallyConfig, store: Store | None = None, clock: Callable[[], float] = time.monotonic):
        from kafka import KafkaConsumer

        self.cfg = cfg
        self.store = store or open_store(cfg)
        self.clock = clock
        self.segment_records = cfg.archive_segment_records
        self.stats = ArchiveStats()
        self._consumer = KafkaConsumer(
            bootstrap_servers=cfg.kafka_bootstrap, group_id=cfg.archive_group, client_id="tally-archive",
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=5000,
        )
        self._segments: dict[int, _Segment] = {}
        self._assigned: set = set()

    def _assign(self) -> None:
        """Take every partition of the topic (new ones too) and seek each to the start of
        the segment holding its committed offset."""
        from kafka import TopicPartition

        parts = self._consumer.partitions_for_topic(self.cfg.points_topic) or set()
        tps = {TopicPartition(self.cfg.points_topic, p) for p in parts}
        if tps == self._assigned:
            return
        self._consumer.assign(sorted(tps))
        beginning = self._consumer.beginning_offsets(sorted(tps))
        for tp in sorted(tps):
            if tp in self._assigned:  # assign() keeps the positions of partitions it already had
                continue
            committed = self._consumer.committed(tp)
            first = beginning[tp]
            if committed is None:
                self._consumer.seek(tp, first)
                continue
            if committed < first:
                self.stats.gap_records += first - committed
                log.warning("archive gap on %s: offsets %d..%d expired before they were archived",
                            tp, committed, first - 1)
            self._consumer.seek(tp, max(segment_start(committed, self.segment_records), first))
        self._assigned = tps

    def _flush(self, partition: int, segment: _Segment) -> None:
        for folder, lines in sorted(segment.lines.items()):
            self.store.put(f"{folder}/{file_name(partition, segment.first_offset)}", encode_file(lines))
            self.stats.files_written += 1
        segment.dirty = False

    def _commit(self, offsets: dict[int, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if offsets:
            self._consumer.commit({TopicPartition(self.cfg.points_topic, p): OffsetAndMetadata(o, "", -1)
                                   for p, o in offsets.items()})
            self.stats.partitions.update(offsets)

    def _take(self, records) -> None:
        for record in records:
            partition, offset = record.partition, record.offset
            start = segment_start(offset, self.segment_records)
            segment = self._segments.get(partition)
            if segment is not None and segment.start != start:
                # The segment is complete: its files are final; commit past it.
                self._flush(partition, segment)
                self._commit({partition: segment.next_offset})
                self.stats.segments_completed += 1
                segment = None
            if segment is None:
                segment = self._segments[partition] = _Segment(start)
            folder, line = route(record.value, partition, offset)
            if folder == REJECTED_FOLDER:
                self.stats.rejected += 1
            segment.add(folder, line, offset)
            self.stats.records += 1

    def flush_all(self) -> None:
        """Write every segment read so far (complete or not) and commit its position."""
        commits = {}
        for partition, segment in self._segments.items():
            if segment.dirty:
                self._flush(partition, segment)
                commits[partition] = segment.next_offset
        self._commit(commits)

    def run(self, once: bool = False, stop: threading.Event | None = None, poll_ms: int = 500,
            idle_timeout_s: float = 30.0) -> ArchiveStats:
        """Archive until ``stop`` is set (or, with ``once``, until the end offsets seen at the
        start are archived); everything read is flushed and committed before returning."""
        self._assign()
        targets = self._consumer.end_offsets(sorted(self._assigned)) if once else None
        last_flush = last_record = self.clock()
        try:
            while not (stop and stop.is_set()):
                if once and all(self._consumer.position(tp) >= end for tp, end in targets.items()):
                    break
                if once and self.clock() - last_record > idle_timeout_s:
                    # The end offsets cannot be reached (e.g. transaction markers): stop anyway.
                    log.warning("archive --once: no record for %.0fs before the end offsets %s; stopping",
                                idle_timeout_s, targets)
                    break
                batches = self._consumer.poll(timeout_ms=poll_ms)
                if batches:
                    last_record = self.clock()
                for _tp, records in sorted(batches.items()):
                    self._take(records)
                if not once and self.clock() - last_flush >= self.cfg.archive_flush_interval_seconds:
                    self.flush_all()
                    self._assign()  # pick up partitions added to the topic
                    last_flush = self.clock()
        finally:
            self.flush_all()
        return self.stats

    def close(self) -> None:
        self._consumer.close()


def topic_configs(cfg: TallyConfig) -> dict[str, str]:
    """Kafka topic settings the archive relies on: the points topic keeps
    ``kafka_retention_hours`` (7 days), the archive keeps everything older
    (pass to ``tally.producer.ensure_topic(..., configs=...)`` when creating the topic)."""
    return {"retention.ms": str(cfg.kafka_retention_hours * 3_600_000)}


def lag(cfg: TallyConfig) -> dict[int, int]:
    """Records of the points topic not yet archived, per partition (end offset minus the
    archive group's committed offset)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, group_id=cfg.archive_group,
                             client_id="tally-archive-lag", enable_auto_commit=False)
    try:
        tps = [TopicPartition(cfg.points_topic, p) for p in sorted(consumer.partitions_for_topic(cfg.points_topic) or ())]
        ends = consumer.end_offsets(tps) if tps else {}
        starts = consumer.beginning_offsets(tps) if tps else {}
        return {tp.partition: ends[tp] - (consumer.committed(tp) if consumer.committed(tp) is not None else starts[tp])
                for tp in tps}
    finally:
        consumer.close()


def run(cfg: TallyConfig, once: bool = False, stop: threading.Event | None = None) -> ArchiveStats:
    """Build an archiver for ``cfg``, run it, close it; returns its stats."""
    archiver = Archiver(cfg)
    try:
        return archiver.run(once=once, stop=stop)
    finally:
        archiver.close()
