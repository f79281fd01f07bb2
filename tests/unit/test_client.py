"""tally.client over real local sockets (Unix datagram, loopback UDP/TCP): wire lines, sampling,
packet sizes, flush thread, threads, fork, never raising."""

import os
import socket
import threading
import time

import pytest

from tally.client import StatsClient, TCPTransport, UDPTransport, UnixTransport
from tally.statsd import parse_datagram


@pytest.fixture
def unix_server(tmp_path):
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def recv_all(sock, timeout_s=0.3):
    packets = []
    sock.settimeout(timeout_s)
    try:
        while True:
            packets.append(sock.recv(65535))
    except (socket.timeout, BlockingIOError):
        return packets


def lines_of(packets):
    return [ln for p in packets for ln in p.decode().split("\n")]


def test_every_call_gives_its_dogstatsd_line(unix_server):
    path, server = unix_server
    c = StatsClient(transport=UnixTransport(path), prefix="app", constant_tags={"env": "prod"},
                    flush_interval_seconds=0)
    c.incr("req")
    c.increment("req", 2, tags={"route": "/a"})
    c.decr("req")
    c.count("req", 5, tags=["canary"])
    c.gauge("q", 7)
    c.gauge("q", 3, delta=True)
    c.gauge("q", -2, delta=True)
    c.timing("lat", 12.5)
    c.histogram("size", 3)
    c.distribution("payload", 1024)
    c.set("users", "alice")
    c.close()
    assert lines_of(recv_all(server)) == [
        "app.req:1|c|#env:prod", "app.req:2|c|#env:prod,route:/a", "app.req:-1|c|#env:prod",
        "app.req:5|c|#env:prod,canary", "app.q:7|g|#env:prod", "app.q:+3|g|#env:prod", "app.q:-2|g|#env:prod",
        "app.lat:12.5|ms|#env:prod", "app.size:3|h|#env:prod", "app.payload:1024|d|#env:prod",
        "app.users:alice|s|#env:prod"]


def test_timer_as_context_manager_and_decorator(unix_server):
    path, server = unix_server
    c = StatsClient(transport=UnixTransport(path), flush_interval_seconds=0)
    with c.timer("block") as t:
        time.sleep(0.01)

    @c.timer("fn", tags={"k": "v"})
    def work(x):
        return x * 2

    assert work(21) == 42
    c.flush()
    samples, rejected = parse_datagram(b"\n".join(recv_all(server)))
    assert not rejected
    assert [(s.head.name, s.head.type) for s in samples] == [("block", "ms"), ("fn", "ms")]
    assert 10 <= samples[0].values[0] == pytest.approx(t.ms)
    assert samples[1].head.tags == (("k", "v"),)


def test_sampling_happens_in_the_client_and_the_rate_goes_on_the_wire(unix_server):
    path, server = unix_server
    draws = iter([0.05, 0.5, 0.09, 0.95])
    c = StatsClient(transport=UnixTransport(path), flush_interval_seconds=0, rng=lambda: next(draws))
    for _ in range(4):
        c.incr("sampled", rate=0.1)
    c.flush()
    assert lines_of(recv_all(server)) == ["sampled:1|c|@0.1", "sampled:1|c|@0.1"]


def test_packets_never_exceed_the_packet_size(unix_server):
    path, server = unix_server
    c = StatsClient(transport=UnixTransport(path), max_packet_bytes=200, flush_interval_seconds=0)
    for i in range(100):
        c.incr(f"metric.number.{i}")
    c.flush()
    packets = recv_all(server)
    assert len(packets) > 10 and max(len(p) for p in packets) <= 200
    assert lines_of(packets) == [f"metric.number.{i}:1|c" for i in range(100)]


def test_the_daemon_thread_flushes_without_being_asked(unix_server):
    path, server = unix_server
    c = StatsClient(transport=UnixTransport(path), flush_interval_seconds=0.05)
    c.incr("x")
    assert lines_of(recv_all(server, timeout_s=1)) == ["x:1|c"]
    assert c._thread.daemon
    c.close()


def test_thread_safe_under_concurrent_calls(unix_server):
    path, server = unix_server
    c = StatsClient(transport=UnixTransport(path), flush_interval_seconds=0.01)
    received = []
    stop = threading.Event()

    def drain():
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                received.append(server.recv(65535))
            except socket.timeout:
                pass

    reader = threading.Thread(target=drain)
    reader.start()
    threads = [threading.Thread(target=lambda i=i: [c.incr(f"t{i}") for _ in range(2000)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c.close()
    time.sleep(0.2)
    stop.set()
    reader.join()
    lines = lines_of(received)
    assert c.stats()["dropped_lines"] == 0
    assert len(lines) == 16000 and all(lines.count(f"t{i}:1|c") == 2000 for i in range(8))


def test_fork_child_sends_its_own_lines_and_never_the_parents_buffer(unix_server):
    path, server = unix_server
    c = StatsClient(transport=UnixTransport(path), flush_interval_seconds=0.05)
    c.incr("before_fork")  # buffered in the parent when the fork happens
    pid = os.fork()
    if pid == 0:  # child
        c.incr("in_child")
        c.flush()
        os._exit(0)
    os.waitpid(pid, 0)
    c.incr("in_parent")
    c.close()
    assert sorted(lines_of(recv_all(server, timeout_s=0.5))) == ["before_fork:1|c", "in_child:1|c", "in_parent:1|c"]


def test_never_raises_and_counts_what_it_dropped(tmp_path):
    c = StatsClient(transport=UnixTransport(tmp_path / "nobody-listens.sock"), flush_interval_seconds=0)
    c.incr("a")
    c.gauge("bad", float("nan"))  # refused by the formatter
    c.incr("b", rate=7)  # invalid rate
    c.flush()
    c.close()
    c.incr("after.close")
    assert c.stats()["dropped_lines"] >= 3 and c.stats()["dropped_packets"] == 1


def test_udp_and_tcp_transports(tmp_path):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    c = StatsClient("127.0.0.1", udp.getsockname()[1], flush_interval_seconds=0)
    assert isinstance(c.transport, UDPTransport) and c.max_packet_bytes == 1432
    c.incr("over.udp")
    c.close()
    assert lines_of(recv_all(udp)) == ["over.udp:1|c"]
    udp.close()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    c = StatsClient(transport=TCPTransport("127.0.0.1", listener.getsockname()[1]), flush_interval_seconds=0)
    c.incr("over.tcp")
    c.gauge("g", 1)
    c.close()
    conn, _ = listener.accept()
    conn.settimeout(2)
    data = b""
    while not data.endswith(b"\n"):
        data += conn.recv(1024)
    assert data == b"over.tcp:1|c\ng:1|g\n"  # newline framed
    conn.close()
    listener.close()
