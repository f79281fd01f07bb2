"""The Tally client library: StatsD/DogStatsD metrics from application code.

    from tally.client import StatsClient
    stats = StatsClient.from_config(cfg, prefix="checkout", constant_tags={"env": "prod"})
    stats.incr("orders", tags={"region": "eu"})
    stats.gauge("queue.depth", 12)
    stats.gauge("queue.depth", -2, delta=True)
    with stats.timer("db.query"):
        ...
    @stats.timer("render")
    def render(): ...
    stats.distribution("payload.bytes", 5123, rate=0.1)

- Wire format and sampling live in one pure function, :func:`tally.statsd.format_line`; a
  call sampled out (``random() >= rate``) sends nothing, a sampled-in one carries ``|@rate``
  so the agent weighs it by 1/rate.
- Lines are buffered into packets of at most ``max_packet_bytes`` (1432 for UDP over
  Ethernet, 8192 for Unix sockets) and sent when full, by a daemon thread every
  ``flush_interval_seconds``, and on ``flush()`` / ``close()``.
- Transports: UDP (default), Unix datagram socket, TCP (newline-framed, reconnects).
- Thread-safe (one lock around the buffer); safe across ``fork()`` (the child drops the
  parent's unsent buffer - the parent sends it - and opens its own socket).
- Never raises into the application: a failure increments ``dropped_lines`` (and
  ``dropped_packets`` for a failed send) instead.

:class:`KafkaClient` is the direct Kafka mode for services that produce to Kafka
themselves: the same calls, pre-aggregated per series per second in process by the agent's
aggregator (same semantics for rates, gauge deltas and sets) and sent as points through
:class:`tally.producer.PointProducer` (acks=all, idempotent, keyed by series hash so a series
always lands on the same partition), with watermark ticks.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import threading
import time
import weakref
from datetime import timedelta
from typing import Callable, Iterable, Mapping

from tally.statsd import format_line

__all__ = ["KafkaClient", "StatsClient", "TCPTransport", "UDPTransport", "UnixTransport"]

Tags = Mapping[str, str] | Iterable[str] | None


class UDPTransport:
    """Datagrams to host:port (a connected UDP socket)."""

    default_packet_bytes = 1432

    def __init__(self, host: str, port: int):
        self.address = (host, port)
        self._sock: socket.socket | None = None

    def send(self, packet: bytes) -> None:
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(self.address)
            self._sock = sock
        self._sock.send(packet)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def reset(self) -> None:
        """Forget the socket without closing it (after fork the parent still uses it)."""
        self._sock = None


class UnixTransport(UDPTransport):
    """Datagrams to a Unix datagram socket (e.g. the agent's ``data/agent/statsd.sock``)."""

    default_packet_bytes = 8192

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._sock = None

    def send(self, packet: bytes) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.connect(self.path)
            self._sock = sock
        self._sock.send(packet)


class TCPTransport(UDPTransport):
    """Newline-terminated lines over one TCP connection, reopened after a failure."""

    default_packet_bytes = 8192

    def __init__(self, host: str, port: int, timeout_s: float = 2.0):
        super().__init__(host, port)
        self.timeout_s = timeout_s

    def send(self, packet: bytes) -> None:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=self.timeout_s)
        try:
            self._sock.sendall(packet + b"\n")
        except OSError:
            self.close()
            raise


_CLIENTS: "weakref.WeakSet[_BufferedClient]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _MetricsAPI:
    """The metric calls shared by both clients; subclasses implement ``_emit``."""

    prefix = ""
    constant_tags: tuple[str, ...] = ()

    def _emit(self, name: str, value, metric_type: str, rate: float, tags: Tags, delta: bool = False) -> None:
        raise NotImplementedError

    def incr(self, name: str, value: float = 1, rate: float = 1.0, tags: Tags = None) -> None:
        """Add ``value`` (default 1) to a counter."""
        self._emit(name, value, "c", rate, tags)

    increment = count = incr

    def decr(self, name: str, value: float = 1, rate: float = 1.0, tags: Tags = None) -> None:
        """Subtract ``value`` (default 1) from a counter."""
        self._emit(name, -value, "c", rate, tags)

    decrement = decr

    def gauge(self, name: str, value: float, rate: float = 1.0, tags: Tags = None, delta: bool = False) -> None:
        """Set a gauge, or change it by ``value`` when ``delta`` is true."""
        self._emit(name, value, "g", rate, tags, delta)

    def timing(self, name: str, value: float | timedelta, rate: float = 1.0, tags: Tags = None) -> None:
        """Record a duration in milliseconds (a timedelta is converted)."""
        if isinstance(value, timedelta):
            value = value.total_seconds() * 1000.0
        self._emit(name, value, "ms", rate, tags)

    def timer(self, name: str, rate: float = 1.0, tags: Tags = None) -> "Timer":
        """A context manager and decorator that records the elapsed milliseconds."""
        return Timer(self, name, rate, tags)

    def histogram(self, name: str, value: float, rate: float = 1.0, tags: Tags = None) -> None:
        self._emit(name, value, "h", rate, tags)

    def distribution(self, name: str, value: float, rate: float = 1.0, tags: Tags = None) -> None:
        self._emit(name, value, "d", rate, tags)

    def set(self, name: str, value, rate: float = 1.0, tags: Tags = None) -> None:
        """Count ``value`` as a member of a set (the distinct count is aggregated)."""
        self._emit(name, value, "s", rate, tags)

    def _line(self, name: str, value, metric_type: str, rate: float, tags: Tags, delta: bool) -> bytes:
        all_tags = list(self.constant_tags)
        if tags:
            all_tags += [f"{k}:{v}" for k, v in tags.items()] if isinstance(tags, Mapping) else list(tags)
        full = f"{self.prefix}.{name}" if self.prefix else name
        return format_line(full, value, metric_type, rate, all_tags, delta=delta)


class Timer:
    """Times a block (``with``) or every call of a function (decorator)."""

    def __init__(self, client: _MetricsAPI, name: str, rate: float, tags: Tags):
        self.client, self.name, self.rate, self.tags = client, name, rate, tags
        self._start: float | None = None
        self.ms: float | None = None

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.ms = (time.perf_counter() - self._start) * 1000.0
        self.client.timing(self.name, self.ms, self.rate, self.tags)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.client.timing(self.name, (time.perf_counter() - start) * 1000.0, self.rate, self.tags)
        return wrapped


class _BufferedClient(_MetricsAPI):
    """Buffering, the flush thread and fork handling (shared by the clients)."""

    def __init__(self, flush_interval_seconds: float, rng: Callable[[], float]):
        self.flush_interval_seconds = flush_interval_seconds
        self._random = rng
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()
        self.dropped_lines = 0
        self.dropped_packets = 0
        self.sent_lines = 0
        _CLIENTS.add(self)

    def _emit(self, name, value, metric_type, rate, tags, delta=False) -> None:
        try:
            if rate < 1.0 and self._random() >= rate:
                return  # sampled out: the rate on the sent lines accounts for it
            line = self._line(name, value, metric_type, rate, tags, delta)
            self._ensure_thread()
            self._add(line, name, value, metric_type, rate, tags, delta)
        except Exception:  # noqa: BLE001 - never raise into the application
            self.dropped_lines += 1

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed and self.flush_interval_seconds > 0:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._flush_loop, name="tally-client-flush", daemon=True)
                    self._thread.start()

    def _flush_loop(self) -> None:
        while not self._closed:
            time.sleep(self.flush_interval_seconds)
            if os.getpid() != self._owner_pid:
                return
            self.flush()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # the parent's lock may have been held by another thread
        self._thread = None
        self._owner_pid = os.getpid()
        self._reset_after_fork()

    def close(self) -> None:
        """Flush what is buffered and release the connection (idempotent)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._close_transport()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Lines sent and what was dropped."""
        return {"sent_lines": self.sent_lines, "dropped_lines": self.dropped_lines,
                "dropped_packets": self.dropped_packets}


class StatsClient(_BufferedClient):
    """A buffered StatsD/DogStatsD client (UDP by default)."""

    def __init__(self, host: str | None = None, port: int | None = None, *, transport=None,
                 prefix: str = "", constant_tags: Tags = None, max_packet_bytes: int | None = None,
                 flush_interval_seconds: float = 0.5, rng: Callable[[], float] = random.random):
        if transport is None:
            if host is None or port is None:
                raise ValueError("give host and port (see StatsClient.from_config) or a transport")
            transport = UDPTransport(host, port)
        super().__init__(flush_interval_seconds, rng)
        self.transport = transport
        self.prefix = prefix
        self.constant_tags = tuple(f"{k}:{v}" for k, v in constant_tags.items()) if isinstance(
            constant_tags, Mapping) else tuple(constant_tags or ())
        self.max_packet_bytes = max_packet_bytes or transport.default_packet_bytes
        self._buffer: list[bytes] = []
        self._size = 0

    @classmethod
    def from_config(cls, cfg, transport: str = "udp", **kwargs) -> "StatsClient":
        """A client for the agent of a TallyConfig: ``udp``, ``tcp`` or ``unix``."""
        if transport == "udp":
            t = UDPTransport(cfg.host, cfg.ports.statsd)
        elif transport == "tcp":
            t = TCPTransport(cfg.host, cfg.ports.statsd)
        elif transport == "unix":
            t = UnixTransport(cfg.data_dir / "agent" / "statsd.sock")
        else:
            raise ValueError(f"unknown transport {transport!r} (udp, tcp or unix)")
        return cls(transport=t, **kwargs)

    def _add(self, line: bytes, *_ignored) -> None:
        packet = None
        with self._lock:
            if self._buffer and self._size + 1 + len(line) > self.max_packet_bytes:
                packet, n = self._take()
            self._buffer.append(line)
            self._size += len(line) + (1 if len(self._buffer) > 1 else 0)
        if packet is not None:
            self._send(packet, n)

    def _take(self) -> tuple[bytes, int]:
        packet, n = b"\n".join(self._buffer), len(self._buffer)
        self._buffer, self._size = [], 0
        return packet, n

    def _send(self, packet: bytes, n: int) -> None:
        try:
            self.transport.send(packet)
            self.sent_lines += n
        except Exception:  # noqa: BLE001 - agent down, buffer full, ...: count and go on
            self.dropped_packets += 1
            self.dropped_lines += n

    def flush(self) -> None:
        """Send the buffered lines now."""
        try:
            with self._lock:
                if not self._buffer:
                    return
                packet, n = self._take()
            self._send(packet, n)
        except Exception:  # noqa: BLE001
            pass

    def _reset_after_fork(self) -> None:
        self._buffer, self._size = [], 0
        self.transport.reset()

    def _close_transport(self) -> None:
        try:
            self.transport.close()
        except Exception:  # noqa: BLE001
            pass


class KafkaClient(_BufferedClient):
    """Direct Kafka mode: the same calls, aggregated per second in process, sent as points.

    ``flush()`` sends every closed second (``close()`` everything) and a watermark tick;
    points Kafka did not acknowledge are counted in ``dropped_points``."""

    def __init__(self, cfg, tenant: str | None = None, *, prefix: str = "", constant_tags: Tags = None,
                 flush_interval_seconds: float = 1.0, rng: Callable[[], float] = random.random,
                 producer_factory=None, clock: Callable[[], float] = time.time):
        from tally.agent.aggregator import Aggregator

        super().__init__(flush_interval_seconds, rng)
        self.cfg = cfg
        self.tenant = tenant or cfg.agent_tenant
        self.prefix = prefix
        self.constant_tags = tuple(f"{k}:{v}" for k, v in constant_tags.items()) if isinstance(
            constant_tags, Mapping) else tuple(constant_tags or ())
        self.clock = clock
        self._producer_factory = producer_factory or self._default_producer
        self._producer = None
        self._aggregator_cls = Aggregator
        self._agg = Aggregator(self.tenant)
        self._send_lock = threading.Lock()
        self.sent_points = 0
        self.dropped_points = 0

    def _default_producer(self):
        from tally.agent.sender import AgentProducer

        return AgentProducer(self.cfg, f"client-{socket.gethostname()}-{os.getpid()}-{id(self):x}")

    def _add(self, line: bytes, *_ignored) -> None:
        with self._lock:
            self._agg.ingest(line.decode("utf-8"), int(self.clock()))

    def flush(self, everything: bool = False) -> None:
        """Send the points of every closed second (all seconds when ``everything``)."""
        from tally.agent.spool import Batch
        from tally.agent.worker import point_record
        from tally import point as points

        try:
            now = int(self.clock())
            with self._send_lock:
                with self._lock:
                    flushed = self._agg.flush(None if everything else now)
                    rejected = sum(self._agg.rejected.values())
                    self._agg.rejected.clear()
                self.dropped_lines += rejected
                try:
                    if self._producer is None:
                        self._producer = self._producer_factory()
                    batch = Batch()
                    for f in flushed:
                        mapped = self._producer.rollup_of(f.series)  # rollup rules (tally.rollup)
                        batch.points.append((f.series.id, points.encode(
                            point_record(f, self._producer.producer_id, self._producer.next_seq(), mapped))))
                        for named in (mapped.to_register(f.series) if mapped is not None else (f.series,)):
                            batch.series.setdefault(named.id, (named.key, f.type))
                    if batch.points:
                        self._producer.deliver(batch, timeout_s=10)
                    self._producer.tick(now * 1000)
                    self.sent_points += len(flushed)
                except Exception:  # noqa: BLE001 - Kafka unreachable: count what is lost
                    self.dropped_points += len(flushed)
                    if self._producer is not None:
                        self._producer.abort()
                        self._producer = None
        except Exception:  # noqa: BLE001 - never raise into the application
            pass

    def close(self) -> None:
        if self._closed:
            return
        self.flush(everything=True)
        self._closed = True
        self._close_transport()

    def _reset_after_fork(self) -> None:
        self._agg = self._aggregator_cls(self.tenant)
        self._producer = None  # a new producer id: sequences stay per process
        self._send_lock = threading.Lock()

    def _close_transport(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(5)
                self._producer.close()
            except Exception:  # noqa: BLE001
                self._producer.abort()
            self._producer = None

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "sent_points": self.sent_points, "dropped_points": self.dropped_points}
