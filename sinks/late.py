"""The late side output: beyond-grace points written back as point records to the late topic."""

from __future__ import annotations

import base64

from tally import point as points
from sinks.aio import callback_future
from tally.config import TallyConfig
from tally.producer import series_key_bytes


class LateTopicWriter:
    """Produces late rows (tally.aggsql.BUCKET_COLUMNS, kind 'late') as point records."""

    def __init__(self, cfg: TallyConfig):
        from kafka import KafkaProducer

        self.topic = cfg.late_topic
        self._producer = KafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, acks="all", linger_ms=5)

    @staticmethod
    def record(row) -> dict:
        """The point record of a late row (the fields it was read with)."""
        sk = row["sk"]
        return {
            "v": points.SCHEMA_VERSION, "tenant": row["tenant"], "sid": row["sid"], "type": row["mtype"],
            "ts": row["ts"], "count": row["cnt"], "sum": row["total"], "min": row["vmin"], "max": row["vmax"],
            "last": row["vlast"], "sk": base64.b64encode(bytes(sk)).decode() if sk else None,
            "pid": row["pid"], "seq": row["seq"],
        }

    def _send(self, row):
        """Queue one late point; the Kafka future of its record."""
        record = self.record(row)
        return self._producer.send(self.topic, key=series_key_bytes(record["sid"]), value=points.encode(record))

    def write_sync(self, row) -> None:
        """Send one late point and block until the broker acknowledged it."""
        self._send(row).get(timeout=60)

    async def write(self, row) -> None:
        """Send one late point and wait for the broker's acknowledgement."""
        future = self._send(row)
        await callback_future(lambda ok, err: (future.add_callback(ok), future.add_errback(err)))

    def close(self) -> None:
        self._producer.close()
