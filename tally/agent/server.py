"""`tally agent`: start the worker processes and serve their self-metrics on /metrics.

The parent process only supervises: it forks ``agent_workers`` workers (each binds the
StatsD port with SO_REUSEPORT, see tally.agent.worker), collects the counters they report
once per flush, and serves them in Prometheus text format on
``http://<host>:<ports.agent_http>/metrics``.  SIGTERM / SIGINT stop the workers, which
flush every open second and deliver (or spool) it before exiting.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import threading

from tally.agent.worker import run_worker
from tally.config import TallyConfig
from tally.limits import Limits, limiter_metric_lines

log = logging.getLogger("tally.agent")

# (name, type, help, snapshot key); per-reason rejections are rendered separately.
_METRICS = (
    ("tally_agent_received_lines_total", "counter", "StatsD lines received (UDP, TCP, Unix socket)", "received"),
    ("tally_agent_parsed_lines_total", "counter", "Lines that parsed and passed the limits", "parsed"),
    ("tally_agent_aggregated_values_total", "counter", "Values aggregated (a multi-value line counts each)", "aggregated"),
    ("tally_agent_datagrams_total", "counter", "Datagrams received", "datagrams"),
    ("tally_agent_tcp_connections_total", "counter", "TCP connections accepted", "tcp_connections"),
    ("tally_agent_points_flushed_total", "counter", "Points acknowledged by Kafka (incl. replays)", "points_flushed"),
    ("tally_agent_points_spooled_total", "counter", "Points written to the disk spool", "points_spooled"),
    ("tally_agent_points_replayed_total", "counter", "Spooled points delivered after recovery", "points_replayed"),
    ("tally_agent_spool_dropped_total", "counter", "Points dropped because the spool was full", "spool_dropped"),
    ("tally_agent_batches_failed_total", "counter", "Flush batches Kafka did not acknowledge", "batches_failed"),
    ("tally_agent_sibling_waits_total", "counter",
     "Batches held until a sibling worker caught up to within the grace (tally.agent.sender.Progress)",
     "sibling_waits"),
    ("tally_agent_sibling_wait_seconds_total", "counter", "Time batches were held for sibling workers",
     "sibling_wait_seconds"),
    ("tally_agent_spool_bytes", "gauge", "Bytes in the disk spool", "spool_bytes"),
    ("tally_agent_spool_batches", "gauge", "Batches in the disk spool", "spool_batches"),
    ("tally_agent_kafka_up", "gauge", "1 when the last delivery to Kafka succeeded", "kafka_up"),
    ("tally_agent_loop_max_turn_seconds", "gauge",
     "Longest receive-loop turn in the last flush interval (reading + a flush slice): the longest "
     "the sockets went unread",
     "loop_max_turn_seconds"),
)


def render_metrics(snapshots: dict) -> str:
    """Prometheus text exposition of the latest counter snapshots of every worker's receive
    loop and sender process (summed; per worker for the gauges)."""
    out = []
    for name, mtype, help_text, key in _METRICS:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {mtype}")
        if key in ("kafka_up", "spool_bytes", "spool_batches", "loop_max_turn_seconds"):
            for snap in sorted(snapshots.values(), key=lambda sn: sn.get("worker", 0)):
                if key in snap:
                    out.append(f'{name}{{worker="{snap.get("worker", 0)}"}} {snap[key]}')
        else:
            out.append(f"{name} {sum(s.get(key, 0) for s in snapshots.values())}")
    name = "tally_agent_rejected_lines_total"
    out.append(f"# HELP {name} Lines rejected, by reason (tally.statsd.REASONS, tally.limits)")
    out.append(f"# TYPE {name} counter")
    reasons: dict[str, int] = {}
    for snap in snapshots.values():
        for reason, n in snap.get("rejected", {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    for reason, n in sorted(reasons.items()):
        out.append(f'{name}{{reason="{reason}"}} {n}')
    # new series refused / rewritten by the cardinality limits, per tenant, metric and label
    out.extend(limiter_metric_lines("tally_agent", [s["limiter"] for s in snapshots.values() if "limiter" in s]))
    out.append("# HELP tally_agent_workers Worker processes reporting")
    out.append("# TYPE tally_agent_workers gauge")
    out.append(f"tally_agent_workers {sum(1 for s in snapshots.values() if s.get('role') != 'sender')}")
    return "\n".join(out) + "\n"


class Agent:
    """Supervises the workers and holds their latest counters."""

    def __init__(self, cfg: TallyConfig):
        self.cfg = cfg
        self.ctx = multiprocessing.get_context("fork")
        self.stats_queue = self.ctx.Queue()
        self.stop_event = self.ctx.Event()
        self.snapshots: dict[tuple[int, str], dict] = {}
        self.workers: list = []

    def start(self) -> None:
        for index in range(self.cfg.agent_workers):
            proc = self.ctx.Process(target=run_worker, name=f"tally-agent-w{index}",
                                    args=(self.cfg, index, self.stats_queue, self.stop_event))
            proc.start()
            self.workers.append(proc)
        threading.Thread(target=self._collect, name="tally-agent-stats", daemon=True).start()

    def _collect(self) -> None:
        while True:
            try:
                snap = self.stats_queue.get(timeout=1)
            except queue.Empty:
                if self.stop_event.is_set() and not any(p.is_alive() for p in self.workers):
                    return
                continue
            except (EOFError, OSError):
                return
            self.snapshots[(snap["worker"], snap.get("role", "receiver"))] = snap

    def stop(self, timeout_s: float = 60) -> None:
        self.stop_event.set()
        for proc in self.workers:
            proc.join(timeout_s)
            if proc.is_alive():
                log.error("worker %s did not stop in %ss; terminating", proc.name, timeout_s)
                proc.terminate()

    async def serve(self) -> None:
        from aiohttp import web

        async def metrics(_request):
            return web.Response(text=render_metrics(dict(self.snapshots)),
                                content_type="text/plain", charset="utf-8",
                                headers={"X-Prometheus-Format": "0.0.4"})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.ports.agent_http)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("agent: StatsD on udp/tcp %s:%d and %s, /metrics on http://%s:%d/metrics, %d workers",
                 self.cfg.host, self.cfg.ports.statsd, self.cfg.data_dir / "agent" / "statsd.sock",
                 self.cfg.host, self.cfg.ports.agent_http, self.cfg.agent_workers)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=2)
            except asyncio.TimeoutError:
                for proc in self.workers:
                    if not proc.is_alive():
                        log.error("worker %s exited (code %s)", proc.name, proc.exitcode)
                        stop.set()
        await loop.run_in_executor(None, self.stop)
        await runner.cleanup()


def main(cfg: TallyConfig) -> int:
    """Run the agent until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter every reconnect
    Limits.from_config(cfg)  # a bad relabel rule file or overflow setting fails here, before the workers fork
    agent = Agent(cfg)
    agent.start()
    try:
        asyncio.run(agent.serve())
    finally:
        agent.stop()
    return 0
