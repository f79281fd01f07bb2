"""Writing points to Kafka: idempotent producer keyed by series id, and topic creation."""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping

from tally import point as points
from tally.config import TallyConfig


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
    """Sends points to the points topic with acks=all, idempotence and the series id as key.

    Each producer has its own id and sequence, stamped on every point it builds, so
    replays of the same point can be recognised downstream.
    """

    def __init__(self, cfg: TallyConfig, topic: str | None = None, producer_id: str | None = None):
        from kafka import KafkaProducer

        self.topic = topic or cfg.points_topic
        self.producer_id = producer_id or f"py-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self._producer = KafkaProducer(
            bootstrap_servers=cfg.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
            compression_type="gzip",
        )

    def next_seq(self) -> int:
        """The next idempotency sequence number of this producer."""
        self.seq += 1
        return self.seq

    def send(self, point: Mapping[str, Any]) -> None:
        """Queue one point (validated) for sending."""
        points.validate(dict(point))
        self._producer.send(self.topic, key=series_key_bytes(point["sid"]), value=points.encode(point))

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
