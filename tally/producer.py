"""Writing points to Kafka: idempotent producer keyed by series id, and topic creation."""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping

from tally import point as points
from tally.config import TallyConfig
from tally.rollup import Rollups, RollupSet, load_rules
from tally.series import SeriesId


def ensure_topic(cfg: TallyConfig, topic: str, partitions: int = 4, replication: int = 1,
                 configs: Mapping[str, str] | None = None) -> bool:
    """Create the topic if missing; True if it was created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="tally-admin")
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, partitions, replication, topic_configs=dict(configs or {}))])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


def delete_topic(cfg: TallyConfig, topic: str) -> None:
    """Delete a topic (tests clean up their own)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="tally-admin")
    try:
        if topic in admin.list_topics():
            admin.delete_topics([topic])
    finally:
        admin.close()


def series_key_bytes(sid: int) -> bytes:
    """The Kafka record key of a series: its 64-bit id, big-endian (partitions by series)."""
    return sid.to_bytes(8, "big", signed=True)


class PointProducer:
    """Sends points and series registrations to Kafka with acks=all and idempotence.

    Each producer has its own id and a sequence stamped on every point it builds; the job
    drops a point whose sequence is not above the highest it has seen from the same
    producer on the same partition, so replays of sent points are counted once.  That
    needs sequences in send order per partition: a PointProducer is not thread-safe and
    callers serialise ``emit``/``send`` (the client library holds a lock).

    Rollup rules (tally.rollup; ``rollups``, default: the file ``cfg.rollup_rules_path``)
    are applied here, once per series: ``emit`` stamps the rollup series ids on the point
    (``rsids``; with ``drop_raw`` the point's sid is the first rollup series) and
    ``register`` names the rollup series on the series topic like any series.
    """

    def __init__(self, cfg: TallyConfig, producer_id: str | None = None, rollups: RollupSet | None = None):
        from kafka import KafkaProducer

        self.rollups = rollups if rollups is not None else load_rules(cfg.rollup_rules_path)

        self.points_topic = cfg.points_topic
        self.series_topic = cfg.series_topic
        self.producer_id = producer_id or f"py-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self._registered: set[int] = set()
        self._producer = KafkaProducer(
            bootstrap_servers=cfg.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            max_in_flight_requests_per_connection=5,
            linger_ms=20,
            batch_size=256 * 1024,
            # lz4: ~25x cheaper on the CPU than kafka-python's gzip (level 9) at ~60 % of its
            # ratio on point records; at 150k points/s gzip alone would need more than a core.
            compression_type="lz4",
        )

    def next_seq(self) -> int:
        """The next idempotency sequence number of this producer."""
        self.seq += 1
        return self.seq

    def register(self, series: SeriesId, metric_type: str) -> None:
        """Name a series and its metric type on the series topic, once per producer; and the
        rollup series it feeds (a raw series whose rule drops it is not named)."""
        if series.id in self._registered:
            return
        mapped = self.rollup_of(series)
        for named in (mapped.to_register(series) if mapped is not None else [series]):
            if named.id not in self._registered:
                self._send_registration(named, metric_type)
        self._registered.add(series.id)

    def _send_registration(self, series: SeriesId, metric_type: str) -> None:
        self._producer.send(self.series_topic, key=series_key_bytes(series.id),
                            value=points.encode(points.series_record(series, metric_type)))
        self._registered.add(series.id)

    def rollup_of(self, series: SeriesId) -> Rollups | None:
        """The series' rollup mapping under this producer's rules (None: no rule matches)."""
        return self.rollups.rollups(series) if self.rollups else None

    def emit(self, series: SeriesId, metric_type: str, ts_ms: int, value: float, count: float = 1.0) -> dict:
        """Register the series if new, then send one raw event as a point; returns the point."""
        self.register(series, metric_type)
        point = points.from_value(series, metric_type, ts_ms, value, self.producer_id, self.next_seq(), count,
                                  rollups=self.rollup_of(series))
        # Keyed by the raw series even when its rule replaced the point's sid: a hot rollup
        # series stays spread over the partitions.
        self._producer.send(self.points_topic, key=series_key_bytes(series.id), value=points.encode(point))
        return point

    def send(self, point: Mapping[str, Any], validate: bool = True):
        """Queue one point (validated unless the caller built it) for sending; returns the
        Kafka future, settled when the broker acknowledged (or refused) the record."""
        if validate:
            points.validate(dict(point))
        return self._producer.send(self.points_topic, key=series_key_bytes(point["sid"]), value=points.encode(point))

    def send_encoded(self, sid: int, record: bytes):
        """Queue an already encoded, already valid point (benchmarks pre-encode their load);
        returns the Kafka future."""
        return self._producer.send(self.points_topic, key=series_key_bytes(sid), value=record)

    def points_partitions(self) -> list[int]:
        """The partitions of the points topic, sorted."""
        return sorted(self._producer.partitions_for(self.points_topic))

    def tick(self, ts_ms: int) -> list:
        """Send a watermark tick at ts_ms to every partition of the points topic: all points
        before ts_ms from this producer are sent (callers keep that promise).  Returns the
        Kafka futures, one per partition."""
        record = points.encode(points.tick(ts_ms, self.producer_id))
        return [self._producer.send(self.points_topic, value=record, partition=partition)
                for partition in self.points_partitions()]

    def send_all(self, batch: Iterable[Mapping[str, Any]]) -> int:
        """Queue many points and wait until the broker acknowledged all of them."""
        n = 0
        for p in batch:
            self.send(p)
            n += 1
        self.flush()
        return n

    def flush(self, timeout_s: float = 30) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()
