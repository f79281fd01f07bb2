"""Helpers of the fault-injection suite (tests/integration/test_faults.py): a private stack,
a steady load with its own ground truth, and the bucket comparison.

The private stack has its own TALLY_HOME and ports for every component (the shared stack
is never touched); it reuses the shared stack's downloaded jars (``cache/lib``) read-only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
import urllib.request
from pathlib import Path

from tally import point as points
from tally.config import Ports, TallyConfig
from tally.producer import PointProducer
from tally.series import series_id
from tally.sketch import Sketch
from tally.stack.process import Managed, free_port
from tests.integration.truth import expected_buckets, read_buckets, wait_for

DAY_MS = 86_400_000
# Ports of the stack's components (Tally's own servers keep theirs: tests pick free ones).
STACK_PORTS = ("kafka", "kafka_controller", "cassandra_cql", "cassandra_storage", "redis", "flink_rest", "flink_rpc")


def private_config(shared: TallyConfig, home: Path) -> TallyConfig:
    """A config for a private stack under ``home``: free ports, own topics and keyspace, the
    job tuned like the integration pipeline (grace 2 s, no idleness, checkpoints every 5 s)."""
    (home / "cache").mkdir(parents=True, exist_ok=True)
    lib = home / "cache" / "lib"
    if not lib.exists():
        lib.symlink_to(shared.cache_dir / "lib")  # jars only; Flink's lib folder stays private
    chosen: set[int] = set()
    while len(chosen) < len(STACK_PORTS):
        chosen.add(free_port())
    ports = dataclasses.replace(Ports(), **dict(zip(STACK_PORTS, sorted(chosen))))
    return dataclasses.replace(
        shared, home=home, ports=ports, kafka_bootstrap_servers="", cassandra_contact_points=(),
        redis_url_override="", points_topic="tally.faults.points", series_topic="tally.faults.series",
        late_topic="tally.faults.late", keyspace="tally_faults", consumer_group="tally-faults",
        grace_seconds=2, source_idle_timeout_seconds=0, job_parallelism=2, salt_buckets=4,
        checkpoint_interval_seconds=5, flink_task_slots=2, flink_taskmanager_process_mb=2048)


def flink_rest(cfg: TallyConfig, path: str) -> dict:
    with urllib.request.urlopen(f"{cfg.flink_rest_url}{path}", timeout=10) as resp:
        return json.load(resp)


def job_running(cfg: TallyConfig, job_id: str) -> bool:
    """The job and every one of its tasks RUNNING."""
    try:
        job = flink_rest(cfg, f"/jobs/{job_id}")
    except OSError:
        return False
    return job.get("state") == "RUNNING" and all(v.get("status") == "RUNNING" for v in job.get("vertices", []))


def restarts(cfg: TallyConfig, job_id: str) -> int:
    metrics = flink_rest(cfg, f"/jobs/{job_id}/metrics?get=numRestarts")
    return int(float(metrics[0]["value"])) if metrics else 0


def kill9(cfg: TallyConfig, name: str) -> int:
    """SIGKILL the stack process ``name`` and wait until it is gone, as an operator would see
    it before running ``tally stack up``: right after the signal a big JVM can still be
    tearing down, and the launcher would find it alive and start nothing (a TaskManager-kill
    run failed that way: no TaskManager for 5 minutes).  Returns the PID killed."""
    managed = Managed(name, cfg.run_dir, cfg.log_dir)
    pid = managed.pid()
    assert pid, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: managed.pid() is None, timeout_s=30, interval_s=0.1), f"{name} (pid {pid}) did not die"
    return pid


def task_attempts(cfg: TallyConfig, job_id: str) -> int | None:
    """The sum of every subtask's execution attempt number (None when Flink does not answer):
    it grows when tasks are redeployed after a failure.  Read from the tasks themselves, not
    from the ``numRestarts`` metric, which the REST metric cache was seen to keep at its old
    value for minutes after a TaskManager was killed."""
    try:
        job = flink_rest(cfg, f"/jobs/{job_id}")
        return sum(task.get("attempt", 0)
                   for vertex in job.get("vertices", [])
                   for task in flink_rest(cfg, f"/jobs/{job_id}/vertices/{vertex['id']}").get("subtasks", []))
    except OSError:
        return None


class Load(threading.Thread):
    """A steady stream of points (Kafka client mode, PointProducer) for one tenant in its own
    event-time region: 16 counter series and one timer, event time = region start + elapsed
    wall time, a watermark tick every 0.5 s.  ``events`` is the ground truth (every point
    handed to the producer); ``futures`` tell whether Kafka acknowledged each of them."""

    def __init__(self, cfg: TallyConfig, tenant: str, base_ms: int, rate_per_s: float = 150, seed: int = 1):
        super().__init__(daemon=True, name=f"load-{tenant}")
        self.cfg, self.tenant, self.base_ms, self.rate = cfg, tenant, base_ms, rate_per_s
        self.rng = random.Random(seed)
        self.counters = [series_id(tenant, "fault.work.items", {"w": str(i)}) for i in range(16)]
        self.timer = series_id(tenant, "fault.work.latency", {})
        self.series = [*self.counters, self.timer]
        self.events: list[tuple] = []  # (SeriesId, ts_ms, value)
        self.futures: list = []
        self.producer = PointProducer(cfg)
        self.running = True
        self.error: BaseException | None = None
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        """The load's current event time."""
        return self.base_ms + int((time.monotonic() - self._t0) * 1000)

    def run(self) -> None:
        try:
            i, next_tick = 0, 0.0
            next_t = time.monotonic()
            while self.running:
                ts = self.now_ms()
                if i % 4 == 3:
                    s, mtype, value = self.timer, "ms", round(self.rng.lognormvariate(2, 0.7), 3)
                else:
                    s, mtype, value = self.counters[i % len(self.counters)], "c", float(self.rng.randint(1, 9))
                self.producer.register(s, mtype)
                p = points.from_value(s, mtype, ts, value, self.producer.producer_id, self.producer.next_seq())
                self.futures.append(self.producer.send(p, validate=False))
                self.events.append((s, ts, value))
                i += 1
                if time.monotonic() >= next_tick:
                    self.producer.tick(ts)
                    next_tick = time.monotonic() + 0.5
                next_t += 1 / self.rate
                time.sleep(max(0.0, next_t - time.monotonic()))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self, close_at_ms: int) -> None:
        """Stop sending, wait for every acknowledgement, then tick to ``close_at_ms`` so
        every window of the region (up to its day) fires."""
        self.running = False
        self.join()
        assert self.error is None, f"load failed: {self.error!r}"
        self.producer.flush(180)
        failed = [f for f in self.futures if not (f.is_done and f.succeeded())]
        assert not failed, f"{len(failed)} of {len(self.futures)} points not acknowledged by Kafka: " \
                           f"{failed[0].exception!r}"
        self.producer.tick(close_at_ms)
        self.producer.flush(60)
        self.producer.close()


def compare_with_truth(cfg: TallyConfig, tenant: str, events, timeout_s: float = 300) -> dict:
    """Poll Cassandra until every bucket of every tier equals the ground truth computed from
    ``events`` ((sid, ts, value, count) tuples); raise with the differences if it never does.
    Returns the counts compared."""
    truth = expected_buckets(events)
    sids = sorted({e[0] for e in events})
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_buckets(cfg, tenant, sids, truth)
        diffs = _differences(truth, rows)
        if not diffs:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(diffs)} of {len(truth)} buckets differ from the ground truth "
                                 f"(extra rows {len(set(rows) - set(truth))}), e.g. {diffs[:5]}")
        time.sleep(3)
    tiers = sorted({k[0] for k in truth}, key=lambda t: ["1s", "10s", "1m", "1h", "1d"].index(t))
    total = sum(t["count"] for k, t in truth.items() if k[0] == "1d")
    return {"buckets": len(truth), "tiers": tiers, "points": len(events), "count_total": total}


def _differences(truth, rows) -> list:
    diffs = []
    for key, t in truth.items():
        r = rows.get(key)
        if r is None:
            diffs.append((key, "missing"))
            continue
        if (r.count, r.min, r.max, r.last) != (t["count"], t["min"], t["max"], t["last"]) \
                or abs(r.sum - t["sum"]) > 1e-9 * max(1.0, abs(t["sum"])):
            diffs.append((key, f"count {r.count} vs {t['count']}, sum {r.sum} vs {t['sum']}"))
            continue
        if r.sketch is not None and Sketch.from_bytes(r.sketch).count != t["count"]:
            diffs.append((key, "sketch count"))
    diffs.extend((key, "extra") for key in set(rows) - set(truth))
    return diffs


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
