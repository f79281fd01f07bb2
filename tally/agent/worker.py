"""One agent worker process: sockets, its own aggregator, producer id and sender thread.

Every worker binds the StatsD UDP port and a TCP listener with SO_REUSEPORT, so the kernel
spreads datagrams (by sender address) and connections over the workers; worker 0 also owns
the Unix datagram socket.  Nothing is shared between workers on the hot path: each has its
own :class:`Aggregator`, its own producer id and sequence, its own spool directory.  Every
``agent_flush_interval_seconds`` the closed seconds are turned into points (pid + seq
stamped here, in send order) and handed to the sender thread with a watermark tick at the
current second.  Counters go to the parent process once per flush for ``/metrics``.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

from tally import point as points
from tally.agent.aggregator import Aggregator, Flushed
from tally.agent.sender import AgentProducer, Progress, Sender
from tally.agent.spool import Batch, Spool
from tally.config import TallyConfig
from tally.limits import Limits
from tally.rollup import RollupSet, load_rules

log = logging.getLogger("tally.agent")
_RECV_BYTES = 65535
_FLUSH_SLICE_S = 0.002  # flush work between two socket drains


def unix_socket_path(cfg: TallyConfig) -> Path:
    """Where the agent's Unix datagram socket lives."""
    return cfg.data_dir / "agent" / "statsd.sock"


def spool_dir(cfg: TallyConfig, index: int) -> Path:
    """The spool directory of worker ``index`` (kept across restarts, replayed at start)."""
    return cfg.data_dir / "agent" / "spool" / f"worker-{index}"


def point_record(f: Flushed, pid: str, seq: int, rollups=None) -> dict:
    """The Kafka point (schemas/point.json) of one flushed partial aggregate; ``rollups``:
    the series' rollup mapping (tally.rollup.Rollups) sets sid/rsids."""
    return points.apply_rollups(
        {"v": points.SCHEMA_VERSION, "tenant": f.series.tenant, "sid": f.series.id, "type": f.type,
         "ts": f.ts_ms, "count": f.count, "sum": f.sum, "min": f.min, "max": f.max, "last": f.last,
         "sk": points.sketch_field(f.sketch), "pid": pid, "seq": seq}, rollups)


def encode_flushed(items, pid: str, rules: RollupSet | None = None, batch: Batch | None = None) -> Batch:
    """The batch of (aggregate, seq) pairs: encoded points in order and their series (with
    the rollup series of ``rules``, tally.rollup); appended to ``batch`` when given."""
    batch = Batch() if batch is None else batch
    for f, seq in items:
        mapped = rules.rollups(f.series) if rules else None
        batch.points.append((f.series.id, points.encode(point_record(f, pid, seq, mapped))))
        for named in (mapped.to_register(f.series) if mapped is not None else (f.series,)):
            batch.series.setdefault(named.id, (named.key, f.type))
    return batch


def _udp_socket(host: str, port: int, rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    _big_rcvbuf(sock, rcvbuf)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _big_rcvbuf(sock: socket.socket, size: int) -> None:
    # Bursts are absorbed by the kernel buffer; SO_RCVBUFFORCE passes rmem_max when allowed.
    if size <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _tcp_listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _unix_socket(path: Path, rcvbuf: int) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    _big_rcvbuf(sock, rcvbuf)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


class Worker:
    """The receive loop of one worker process."""

    def __init__(self, cfg: TallyConfig, index: int, stats_queue=None, stop_event=None, make_producer=None,
                 sender_process: bool = False):
        self.cfg = cfg
        self.index = index
        self.stats_queue = stats_queue
        self.stop_event = stop_event
        self.pid = f"agent-{socket.gethostname()}-w{index}-{uuid.uuid4().hex[:10]}"
        self.rollups = load_rules(cfg.rollup_rules_path)  # rollup rules (tally.rollup)
        self.seq = 0
        limits = Limits.from_config(cfg)
        self.agg = Aggregator(cfg.agent_tenant, limits=limits)
        self.stats: dict = {"datagrams": 0, "tcp_connections": 0, "worker": index, "loop_max_turn_seconds": 0.0}
        if sender_process:
            self.sender = SenderProcess(cfg, index, self.pid, stats_queue)
        else:
            self.sender = Sender(
                Spool(spool_dir(cfg, index), cfg.agent_spool_max_mb * 1024 * 1024),
                make_producer or (lambda: AgentProducer(cfg, self.pid)), self.stats,
                retry_seconds=cfg.agent_kafka_retry_seconds)
        self._conns: dict[socket.socket, bytes] = {}
        self._running = True
        # A flush in progress: (aggregates still to compute, batch so far, tick); its work is
        # done in slices between socket reads so the receive buffer never waits for a flush.
        self._pending = None

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
        cfg = self.cfg
        sel = selectors.DefaultSelector()
        udp = _udp_socket(cfg.host, cfg.ports.statsd, cfg.agent_udp_receive_buffer_bytes)
        tcp = _tcp_listener(cfg.host, cfg.ports.statsd)
        sel.register(udp, selectors.EVENT_READ, "udp")
        sel.register(tcp, selectors.EVENT_READ, "tcp")
        unix = None
        if self.index == 0:
            unix = _unix_socket(unix_socket_path(cfg), cfg.agent_udp_receive_buffer_bytes)
            sel.register(unix, selectors.EVENT_READ, "udp")
        self.sender.start()
        interval = cfg.agent_flush_interval_seconds
        next_flush = time.time() + interval
        ingest = self.agg.ingest_bytes
        try:
            while self._running and not (self.stop_event is not None and self.stop_event.is_set()):
                timeout = 0.0 if self._pending else max(0.0, next_flush - time.time())
                events = sel.select(min(timeout, 0.5))
                turn_start = time.perf_counter()
                for key, _ in events:
                    kind = key.data
                    if kind == "udp":
                        sock = key.fileobj
                        recv = sock.recv
                        sec = int(time.time())
                        n = 0
                        # Drain what is queued (bounded, so the flush is never starved).
                        while n < 500:
                            try:
                                data = recv(_RECV_BYTES)
                            except (BlockingIOError, InterruptedError):
                                break
                            ingest(data, sec)
                            n += 1
                        self.stats["datagrams"] += n
                    elif kind == "tcp":
                        self._accept(sel, tcp)
                    else:
                        self._read_tcp(sel, key.fileobj)
                if self._pending:
                    self._advance(_FLUSH_SLICE_S)
                # The longest turn is the longest the sockets went unread (GIL, GC, descheduling).
                turn = time.perf_counter() - turn_start
                if turn > self.stats["loop_max_turn_seconds"]:
                    self.stats["loop_max_turn_seconds"] = turn
                now = time.time()
                if now >= next_flush:
                    self.start_flush(int(now))
                    next_flush = now + interval
        finally:
            self.flush(None)
            self.sender.stop()
            self._report()
            for sock in [udp, tcp, unix, *self._conns]:
                if sock is not None:
                    sock.close()
            if unix is not None:
                try:
                    unix_socket_path(cfg).unlink()
                except FileNotFoundError:
                    pass

    def _stop(self) -> None:
        self._running = False

    def _accept(self, sel, listener) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._conns[conn] = b""
        self.stats["tcp_connections"] += 1
        sel.register(conn, selectors.EVENT_READ, "conn")

    def _read_tcp(self, sel, conn) -> None:
        try:
            data = conn.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                log.warning("TCP read failed: %s", exc)
            data = b""
        buf = self._conns[conn] + data
        sec = int(time.time())
        if not data:  # closed: the last line needs no trailing newline
            if buf:
                self.agg.ingest_bytes(buf, sec)
            sel.unregister(conn)
            conn.close()
            del self._conns[conn]
            return
        cut = buf.rfind(b"\n")
        if cut >= 0:
            self.agg.ingest_bytes(buf[:cut], sec)
            buf = buf[cut + 1:]
        self._conns[conn] = buf

    def start_flush(self, now_sec: int | None) -> None:
        """Close every second before now_sec (all when None); the points are computed in
        slices by :meth:`_advance` and handed to the sender with a tick at now_sec."""
        if self._pending:
            self._advance(None)  # the previous flush first: sequences stay in time order
        tick = now_sec * 1000 if now_sec is not None else int(time.time()) * 1000
        self._pending = (self.agg.flush_iter(now_sec), Batch(), tick)

    def flush(self, now_sec: int | None) -> None:
        """Flush completely now (at shutdown)."""
        self.start_flush(now_sec)
        self._advance(None)

    def _advance(self, budget_s: float | None) -> None:
        """Compute and encode pending aggregates for up to budget_s (all when None), in
        slices between socket drains.  (Encoding in the sender process instead was tried and
        measured no better with bench/agent.py --baseline: pickling the aggregates over and
        the sender's unsliced burst every second cost the agent more CPU than it saved the loop.)"""
        aggregates, batch, tick = self._pending
        deadline = time.perf_counter() + budget_s if budget_s is not None else None
        for f in aggregates:
            self.seq += 1
            encode_flushed(((f, self.seq),), self.pid, self.rollups, batch)
            if deadline is not None and time.perf_counter() >= deadline:
                return
        self._pending = None
        self.sender.submit(batch, tick)
        self._report()

    def _report(self) -> None:
        if self.stats_queue is None:
            return
        snapshot = {**self.stats, **self.agg.counters(), "role": "receiver", "pid": self.pid, "os_pid": os.getpid(),
                    "limiter": self.agg.limiter.snapshot()}  # cardinality limits (tally.limits)
        self.stats["loop_max_turn_seconds"] = 0.0  # a gauge per report interval
        try:
            self.stats_queue.put_nowait(snapshot)
        except Exception:  # noqa: BLE001 - metrics must never stop the worker
            pass


class SenderProcess:
    """The worker's Sender in a process of its own, fed through a pipe: kafka-python's threads
    (encoding, compression, network) then never hold the GIL the receive loop needs - measured
    on the 2-core machine, they stretched receive-loop turns to 50-130 ms, longer than a
    default-sized socket buffer lasts.  It reports its own counters (role "sender")."""

    def __init__(self, cfg: TallyConfig, index: int, producer_id: str, stats_queue):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.queue = ctx.Queue()
        self.proc = ctx.Process(target=_run_sender, name=f"tally-agent-s{index}",
                                args=(cfg, index, producer_id, self.queue, stats_queue, os.getpid()))

    def start(self) -> None:
        self.proc.start()

    def submit(self, batch: Batch, tick_ms: int | None) -> None:
        self.queue.put((batch.points, batch.series, tick_ms))

    def stop(self, timeout_s: float = 60) -> None:
        self.queue.put(None)
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            log.error("sender of %s did not stop in %ss", self.proc.name, timeout_s)
            self.proc.terminate()


def progress_dir(cfg: TallyConfig) -> Path:
    """Where the workers share what each has delivered (tally.agent.sender.Progress)."""
    return cfg.data_dir / "agent" / "progress"


def siblings_spooling(cfg: TallyConfig, index: int) -> bool:
    """True while another worker of this agent holds spooled batches (on disk, so batches
    left by a previous run count too): until they are replayed, no worker may send a tick
    (fault suite: after a kill -9, worker 0's first tick made worker 1's replay late)."""
    return any(next(spool_dir(cfg, i).glob("*.batch"), None) is not None
               for i in range(cfg.agent_workers) if i != index)


def _run_sender(cfg: TallyConfig, index: int, producer_id: str, q, stats_queue, parent_pid: int) -> None:
    import queue as queue_mod

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stops when its worker says so (after the last flush)
    stats: dict = {"worker": index, "role": "sender"}
    sender = Sender(Spool(spool_dir(cfg, index), cfg.agent_spool_max_mb * 1024 * 1024),
                    lambda: AgentProducer(cfg, producer_id), stats, retry_seconds=cfg.agent_kafka_retry_seconds,
                    hold_ticks=lambda: siblings_spooling(cfg, index),
                    progress=Progress(progress_dir(cfg), index, cfg.agent_workers) if cfg.agent_workers > 1 else None,
                    grace_ms=cfg.grace_seconds * 1000)
    sender.start()
    last_report = 0.0
    while True:
        try:
            item = q.get(timeout=1)
        except queue_mod.Empty:
            item = ()
            if os.getppid() != parent_pid:  # the worker is gone without saying so
                break
        if item is None:
            break
        if item:
            points_, series, tick_ms = item
            sender.submit(Batch(points_, series), tick_ms)
        if stats_queue is not None and time.monotonic() - last_report >= 1.0:
            last_report = time.monotonic()
            stats_queue.put_nowait(dict(stats))
    sender.stop()
    if stats_queue is not None:
        stats_queue.put_nowait(dict(stats))


def run_worker(cfg: TallyConfig, index: int, stats_queue, stop_event) -> None:
    """Process entry point of worker ``index``."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s agent[w{index}] %(levelname)s %(message)s")
    # The Kafka threads must not keep the receive loop off the GIL for the default 5 ms: at
    # 25k datagrams/s that alone would overflow a default-sized socket buffer.
    sys.setswitchinterval(0.0005)
    worker = Worker(cfg, index, stats_queue, stop_event, sender_process=True)
    # Full garbage collections pause the receive loop for as long as they walk every object;
    # what exists at start-up (modules, Kafka client) is frozen out of them, and the hot path
    # allocates few container objects (one list per series and second), so collections can
    # be rarer.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    worker.run()
