"""bench/agent.py: highest UDP lines/s the agent sustains with <= 0.1 % loss, next to Etsy's StatsD.

Workload (the issue's): 1,000 series - 500 tagged counters, 300 timers, 200 gauges - lines
drawn 50 % counters / 30 % timers / 20 % gauges, 20 lines per datagram, sent from 16 UDP
sockets (distinct source ports, so SO_REUSEPORT spreads them over the agent's workers) at a
paced offered rate that steps up (default 50k, 100k, 150k, 200k, 300k, ... lines/s, 10 s per
step; at each rate the agent's step and the reference's step run back to back, so both see
the same background load of this shared machine).  Loss per step = 1 - received / sent, where
received is the daemon's own count of lines once it has settled (unchanged for 2.5 s after the
step, at most 30 s: lines still queued in the socket buffer, or counted and not yet reported,
are not lost; the kernel's own drop counter of the daemon's sockets is printed next to it): the
agent's ``tally_agent_received_lines_total`` on /metrics, the reference's ``statsd.metrics_received``
summed over its flushes by bench/statsd_count_backend.js (read on its management port).
The highest step with loss <= 0.1 % is each daemon's figure; each step also prints the
daemon's CPU seconds (process + descendants), lines per CPU second and the generator's CPU.

Both daemons get the same UDP receive buffer: the kernel default unless ``--rcvbuf-bytes``
(the agent's ``agent_udp_receive_buffer_bytes``; the reference's socket through
bench/statsd_udp_server.js, statsd's own UDP server plus ``recvBufferSize``), so neither
hides a deficit in a bigger buffer.  The reference's SO_RCVBUF is capped by
``net.core.rmem_max`` (the agent, as root, passes it with SO_RCVBUFFORCE), so a request above
it is lowered to it for both; the buffers the kernel actually gave each socket (``ss``: rb,
and its drop count d) are printed after the run.

A third receiver measures the rig itself in the same run, at the same rates and buffer: the
``null`` receiver is one Python process that only reads and counts datagrams (recv_into, no
parsing).  Its highest loss-free rate is the ceiling of this generator + kernel + one
minimal reader on this machine: a daemon cannot be shown faster than that here.  The agent flushes its 1 s aggregates to the real Kafka of the local stack, on a
private topic removed at the end.  The reference is the npm package ``statsd`` 0.9.0
installed by ``./dev setup`` under ``<TALLY_HOME>/npm`` (a single Node.js process).

``--baseline REV`` adds the agent as it was at git revision REV (its ``tally`` and ``schemas``
extracted with ``git archive``), stepped in the same run: before/after under the same load.

    .venv/bin/python bench/agent.py [--step-seconds 10] [--rates 100000,200000,...] [--rcvbuf-bytes N]
                                    [--baseline REV]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from tally.config import REPO_ROOT, TallyConfig
from tally.producer import delete_topic, ensure_topic

LINES_PER_DATAGRAM = 20
SOCKETS = 16
MAX_LOSS = 0.001


def workload(seed: int = 42, datagrams: int = 5000) -> list[bytes]:
    """Pre-encoded datagrams of the mixed load (so the generator only sends)."""
    rng = random.Random(seed)
    counters = [f"bench.requests.{i}:{{v}}|c|#service:svc{i % 20},host:host{i % 50},route:/r{i}" for i in range(500)]
    timers = [f"bench.latency.{i}:{{v}}|ms" for i in range(300)]
    gauges = [f"bench.queue.{i}:{{v}}|g" for i in range(200)]
    out = []
    for _ in range(datagrams):
        lines = []
        for _ in range(LINES_PER_DATAGRAM):
            r = rng.random()
            if r < 0.5:
                lines.append(rng.choice(counters).format(v=rng.randint(1, 5)))
            elif r < 0.8:
                lines.append(rng.choice(timers).format(v=round(rng.lognormvariate(3, 0.7), 2)))
            else:
                lines.append(rng.choice(gauges).format(v=rng.randint(0, 1000)))
        out.append("\n".join(lines).encode())
    return out


def send_at(port: int, rate_lines: float, seconds: float, datagrams: list[bytes]) -> int:
    """Send at the offered rate for `seconds`; returns lines actually sent."""
    socks = []
    for _ in range(SOCKETS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    sends = itertools.cycle([s.send for s in socks])
    payloads = itertools.cycle(datagrams)
    tick = 0.002
    per_tick = rate_lines / LINES_PER_DATAGRAM * tick
    sent = 0
    acc = 0.0
    start = time.perf_counter()
    next_t = start
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        acc += per_tick
        n = int(acc)
        acc -= n
        for _ in range(n):
            try:
                next(sends)(next(payloads))
                sent += 1
            except OSError:
                pass
        next_t += tick
        delay = next_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.2:  # the generator fell behind: do not burst to catch up
            next_t = time.perf_counter()
    for s in socks:
        s.close()
    return sent * LINES_PER_DATAGRAM


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (the agent's workers
    and their sender processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, cpu
    total = 0.0
    for p, (_, cpu) in procs.items():
        q = p
        while q > 1 and q != pid:
            q = procs.get(q, (0, 0))[0]
        if q == pid:
            total += cpu
    return total


class Daemon:
    """One daemon under test: where to send, how to read its received-lines count."""

    def __init__(self, name: str, port: int, read_received, pid: int):
        self.name, self.port, self.read_received, self.pid = name, port, read_received, pid
        self.best = 0
        self.failures = 0
        self.done = False


def measure(d: Daemon, rate: int, step_s: float, datagrams) -> bool | None:
    """One step at the offered rate; prints it and returns whether loss <= MAX_LOSS, or None
    when the generator could not offer the rate (says nothing about the daemon)."""
    time.sleep(2.5)
    before = settled(d.read_received)[0]
    drops0 = socket_drops(d.port)
    cpu0 = cpu_seconds(d.pid)
    t0, gen0 = time.perf_counter(), time.process_time()
    sent = send_at(d.port, rate, step_s, datagrams)
    elapsed, gen_cpu = time.perf_counter() - t0, time.process_time() - gen0
    # What the daemon took in: its count once it stops moving (what was still queued in its
    # socket buffer, or counted but not yet reported - the agent reports once per flush - is
    # not lost); the kernel's drop counter of its sockets is the cross-check.
    after, waited = settled(d.read_received)
    received = after - before
    dropped = (socket_drops(d.port) - drops0) * LINES_PER_DATAGRAM
    cpu = cpu_seconds(d.pid) - cpu0
    loss = 1 - received / sent if sent else 1.0
    achieved = sent / elapsed
    short = achieved < 0.97 * rate
    ok = loss <= MAX_LOSS and not short
    print(f"  {d.name:15s} offered {rate:>9,}/s (sent {achieved:>9,.0f}/s): received {received:>10,} of "
          f"{sent:>10,} lines (settled {waited:4.1f} s after), loss {loss * 100:6.3f} % (kernel dropped "
          f"{dropped:,}), {cpu:5.1f} CPU s = {received / cpu if cpu else 0:>9,.0f} lines per CPU second; "
          f"generator {gen_cpu / elapsed:4.2f} cores, load {os.getloadavg()[0]:4.1f}"
          f"{'' if ok else '  <- generator short' if short else '  <- over'}", flush=True)
    return None if short else ok


def step_up(daemons: list[Daemon], rates: list[int], step_s: float, datagrams) -> None:
    """For each offered rate, one step per daemon back to back (so both see the same
    background load); a daemon stops after two failed steps in a row.  A step the generator
    could not offer is tried once more, then counts neither way."""
    for rate in rates:
        for d in daemons:
            if d.done:
                continue
            ok = measure(d, rate, step_s, datagrams)
            if ok is None:
                ok = measure(d, rate, step_s, datagrams)
            if ok:
                d.best, d.failures = rate, 0
            elif ok is not None:
                d.failures += 1
                d.done = d.failures >= 2
        if all(d.done for d in daemons):
            break


def null_receiver(port: int, rcvbuf: int, counter) -> None:
    """Read and count datagrams, nothing else (the rig's ceiling); runs in its own process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # as the reference: up to rmem_max
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.5)
    buf = bytearray(65536)
    recv_into = sock.recv_into
    n = 0
    while True:
        try:
            recv_into(buf)
        except TimeoutError:
            continue
        n += 1
        counter.value = n


def settled(read, quiet_s: float = 2.5, max_wait_s: float = 30.0) -> tuple[int, float]:
    """A daemon's received count once it has not changed for quiet_s (at most max_wait_s),
    and how long that took."""
    t0 = last_change = time.monotonic()
    last = read()
    while time.monotonic() - t0 < max_wait_s:
        time.sleep(0.5)
        value = read()
        if value != last:
            last, last_change = value, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            break
    return last, time.monotonic() - t0


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP sockets bound to port (ss: d)."""
    out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    return sum(int(d) for d in re.findall(r"skmem:\(.*?,d(\d+)\)", out))


def socket_buffers(port: int) -> str:
    """What the kernel gave the UDP sockets bound to port: receive buffer and drops (ss)."""
    try:
        out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(ss failed: {exc})"
    found = re.findall(r"rb(\d+),.*?d(\d+)\)", out)
    return ", ".join(f"rb {int(rb):,} B (drops {int(d):,})" for rb, d in found) or "(no socket)"


def agent_received(url: str) -> int:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    m = re.search(r"^tally_agent_received_lines_total (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def reference_received(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"stats\n")
        data = b""
        while b"END" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    m = re.search(rb"tallybench\.metrics_received_total: (\d+)", data)
    return int(m.group(1)) if m else 0


def wait_port(fn, timeout_s=30):
    deadline = time.time() + timeout_s
    while True:
        try:
            return fn()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-seconds", type=float, default=10)
    parser.add_argument("--rates", default="50000,100000,150000,200000,300000,400000,500000,600000,800000,1000000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["agent", "reference", "null"], help="measure only one receiver")
    parser.add_argument("--no-null", action="store_true", help="skip the null receiver (the rig's ceiling)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the agent of this git revision")
    parser.add_argument("--rcvbuf-bytes", type=int, default=0,
                        help="UDP receive buffer of BOTH daemons (0 = kernel default; at most "
                             "net.core.rmem_max, which caps the reference's setting)")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    if args.rcvbuf_bytes > rmem_max:
        print(f"--rcvbuf-bytes {args.rcvbuf_bytes:,} is above net.core.rmem_max {rmem_max:,}, which caps the "
              f"reference's SO_RCVBUF: both get {rmem_max:,} B (raise rmem_max to measure more)")
        args.rcvbuf_bytes = rmem_max
    cfg = TallyConfig.from_env()
    statsd_js = cfg.home / "npm" / "node_modules" / "statsd" / "stats.js"
    datagrams = workload()
    print(f"workload: 1,000 series (500 tagged counters, 300 timers, 200 gauges), lines 50 % counters / "
          f"30 % timers / 20 % gauges, {LINES_PER_DATAGRAM} lines per datagram "
          f"(~{sum(map(len, datagrams)) // len(datagrams)} bytes), {SOCKETS} sender sockets, "
          f"{args.step_seconds:g} s per step; pass = loss <= {MAX_LOSS * 100:g} %")
    print(f"machine: {os.cpu_count()} cores, shared with the local stack (Kafka, Cassandra, Redis, Flink); "
          f"load average {os.getloadavg()[0]:.1f} at start")
    run = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="tally-bench-agent-"))
    statsd_port, http_port, ref_port, ref_mgmt, null_port = 18325, 18326, 18425, 18426, 18525
    daemons, cleanup = [], []
    buf = f"{args.rcvbuf_bytes:,} B requested" if args.rcvbuf_bytes else "kernel default"
    def start_agent(name: str, code_dir: Path, port: int, http: int) -> Daemon:
        tag = name.replace("@", "-")
        topic, series_topic = f"tally.bench.{run}.{tag}.points", f"tally.bench.{run}.{tag}.series"
        ensure_topic(cfg, topic, cfg.kafka_partitions)
        ensure_topic(cfg, series_topic, cfg.kafka_partitions)
        cleanup.append(lambda: (delete_topic(cfg, topic), delete_topic(cfg, series_topic)))
        env = {**os.environ, "TALLY_HOME": str(tmp / tag), "TALLY_STATSD_PORT": str(port),
               "TALLY_AGENT_HTTP_PORT": str(http), "TALLY_POINTS_TOPIC": topic,
               "TALLY_SERIES_TOPIC": series_topic, "TALLY_AGENT_WORKERS": str(args.workers),
               "TALLY_AGENT_UDP_RECEIVE_BUFFER_BYTES": str(args.rcvbuf_bytes),
               "TALLY_KAFKA_PORT": str(cfg.ports.kafka)}
        agent = subprocess.Popen([sys.executable, "-m", "tally.cli", "agent"], env=env, cwd=code_dir,
                                 stdout=open(tmp / f"{tag}.log", "w"), stderr=subprocess.STDOUT)
        cleanup.insert(0, lambda: (agent.send_signal(signal.SIGTERM), agent.wait(60)))
        url = f"http://127.0.0.1:{http}/metrics"
        wait_port(lambda: agent_received(url))
        print(f"{name}: Tally agent ({code_dir}), {args.workers} SO_REUSEPORT worker processes, UDP receive "
              f"buffer {buf}, 1 s aggregates to the real Kafka (topic {topic})")
        return Daemon(name, port, lambda: agent_received(url), agent.pid)

    try:
        if args.only in (None, "agent"):
            daemons.append(start_agent("agent", REPO_ROOT, statsd_port, http_port))
            if args.baseline:
                code = tmp / "baseline"
                code.mkdir()
                archive = subprocess.run(["git", "archive", args.baseline, "tally", "schemas"], cwd=REPO_ROOT,
                                         capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
                daemons.append(start_agent(f"agent@{args.baseline[:7]}", code, 18625, 18626))
        if args.only in (None, "reference"):
            if not statsd_js.exists():
                print(f"reference StatsD not installed at {statsd_js}: run ./dev setup")
                return 2
            conf = tmp / "statsd-config.js"
            backend = REPO_ROOT / "bench" / "statsd_count_backend.js"
            server = REPO_ROOT / "bench" / "statsd_udp_server.js"
            conf.write_text(
                "{ mgmt_port: %d, mgmt_address: '127.0.0.1', flushInterval: 1000, backends: ['%s'], servers: "
                "[{ server: '%s', port: %d, address: '127.0.0.1', recvBufferSize: %d }] }\n"
                % (ref_mgmt, backend, server, ref_port, args.rcvbuf_bytes))
            node = shutil.which("node") or "node"
            ref = subprocess.Popen([node, str(statsd_js), str(conf)], cwd=statsd_js.parent,
                                   stdout=open(tmp / "reference.log", "w"), stderr=subprocess.STDOUT)
            cleanup.insert(0, lambda: (ref.terminate(), ref.wait(30)))
            wait_port(lambda: reference_received(ref_mgmt))
            print(f"reference: Etsy StatsD 0.9.0 (npm statsd, one Node.js process, UDP receive buffer {buf})")
            daemons.append(Daemon("reference", ref_port, lambda: reference_received(ref_mgmt), ref.pid))
        if (args.only is None and not args.no_null) or args.only == "null":
            counter = multiprocessing.Value("q", 0, lock=False)
            null = multiprocessing.get_context("fork").Process(
                target=null_receiver, args=(null_port, args.rcvbuf_bytes, counter), daemon=True)
            null.start()
            cleanup.insert(0, lambda: (null.terminate(), null.join(10)))
            print(f"null: one Python process reading and counting datagrams (no parsing), UDP receive buffer {buf}")
            daemons.insert(0, Daemon("null", null_port, lambda: counter.value * LINES_PER_DATAGRAM, null.pid))
        time.sleep(1.0)
        for d in daemons:
            print(f"  {d.name} socket: {socket_buffers(d.port)}")
        step_up(daemons, rates, args.step_seconds, datagrams)
        print()
        for d in daemons:
            print(f"{d.name:15s} socket after the run: {socket_buffers(d.port)}")
    finally:
        for fn in cleanup:
            fn()
    results = {d.name: d.best for d in daemons}
    print()
    for name, best in results.items():
        capped = " (highest rate tried)" if best == rates[-1] else ""
        print(f"{name:15s} highest rate with <= {MAX_LOSS * 100:g} % loss: {best:,} lines/s{capped}")
    for name, best in results.items():
        if name.startswith("agent") and results.get("reference"):
            print(f"ratio {name} / reference: {best / results['reference']:.2f}x (target >= 2x)")
    if results.get("null") is not None and results.get("reference"):
        print(f"rig ceiling (null receiver) / reference: {results['null'] / results['reference']:.2f}x: "
              f"the most any ratio can show on this machine")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
