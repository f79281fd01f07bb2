"""A bounded on-disk FIFO of flushed point batches, kept while Kafka is unreachable.

One file per batch (``<number>.batch``, written to a temporary name, fsynced, renamed), so a
crash never leaves half a batch behind and replay order is the file order.  A batch keeps
its points exactly as encoded - with their producer id and sequence numbers - plus the
series registrations they need, so a replay after a restart or an outage is deduplicated by
the job like any resend.  When appending would exceed ``max_bytes`` the batch is refused
(the caller counts ``spool_dropped``); the oldest data is kept because the job only accepts
a producer's sequence numbers in increasing order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Batch:
    """Encoded points in send order and the series (sid -> (canonical key, type)) they use;
    ``tick_ms``: the watermark tick that followed the batch (its worker had flushed every
    second before it), None when unknown (a batch spooled by an older version)."""

    points: list[tuple[int, bytes]] = field(default_factory=list)
    series: dict[int, tuple[str, str]] = field(default_factory=dict)
    tick_ms: int | None = None

    def to_bytes(self) -> bytes:
        doc = {"series": [[sid, key, mtype] for sid, (key, mtype) in self.series.items()],
               "points": [[sid, rec.decode()] for sid, rec in self.points], "tick": self.tick_ms}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Batch":
        doc = json.loads(data)
        return cls(points=[(sid, rec.encode()) for sid, rec in doc["points"]],
                   series={sid: (key, mtype) for sid, key, mtype in doc["series"]}, tick_ms=doc.get("tick"))


class Spool:
    """Batches on disk under ``directory``, at most ``max_bytes`` in total."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        for stale in self.directory.glob("*.tmp"):  # a crash mid-write: never renamed, never acked
            stale.unlink()
        files = self._files()
        self._next = int(files[-1].stem) + 1 if files else 1
        self.bytes = sum(f.stat().st_size for f in files)
        self.batches = len(files)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.batch"))

    def __len__(self) -> int:
        return self.batches

    def append(self, batch: Batch) -> bool:
        """Write a batch at the end; False (nothing written) when it would exceed the bound."""
        data = batch.to_bytes()
        if self.bytes + len(data) > self.max_bytes:
            return False
        path = self.directory / f"{self._next:012d}.batch"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._next += 1
        self.bytes += len(data)
        self.batches += 1
        return True

    def oldest(self) -> tuple[Path, Batch] | None:
        """The first batch in FIFO order, or None when the spool is empty."""
        files = self._files()
        if not files:
            return None
        return files[0], Batch.from_bytes(files[0].read_bytes())

    def remove(self, path: Path) -> None:
        """Drop a batch once Kafka acknowledged all of it."""
        size = path.stat().st_size
        path.unlink()
        self.bytes -= size
        self.batches -= 1
