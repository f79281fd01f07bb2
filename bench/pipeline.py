"""Pipeline benchmark: Kafka → aggregation job on the local Flink cluster → Cassandra + Redis.

Prints, with the workload next to the figures:
- baseline: bare Flink SQL datagen → 1 s TUMBLE (COUNT/SUM/MIN/MAX by key) → blackhole on the
  same cluster, same parallelism, rows/s;
- throughput: a backlog of points (>= 10,000 series, Zipf-skewed so a few are hot, from
  several producers, with as many points per second of event time as the live rate it
  stands for) is put in Kafka first, then the job drains it: once with a sink that discards
  the buckets in Java (the SQL stages alone), once for real; points/s read, points/s and
  bucket rows/s until every bucket is in Cassandra, the ratio to the baseline, and the CPU
  seconds each stack process used (points per CPU-second = points/s per core, which a
  noisy shared machine does not distort);
- freshness: live traffic at a steady rate with event time = now; for probe buckets, the
  time from the bucket's end (event time) until it is readable in Redis and in Cassandra,
  p50 / p99.

Run with the stack up and no other job on the cluster:
  .venv/bin/python bench/pipeline.py [--series 10000] [--points 6000000] [--parallelism 1] [--live-seconds 60]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sinks.redis_cache import bucket_key  # noqa: E402
from tally import jobctl  # noqa: E402
from tally.config import TallyConfig  # noqa: E402
from tally.cql import connect  # noqa: E402
from tally.producer import PointProducer  # noqa: E402
from tally.series import series_id  # noqa: E402
from tally.sketch import Sketch  # noqa: E402
from tally.stack import launcher  # noqa: E402
from tally.stack.components import Flink  # noqa: E402


def rest(cfg, path):
    with urllib.request.urlopen(f"{cfg.flink_rest_url}{path}", timeout=10) as resp:
        return json.load(resp)


def source_records(cfg, job_id, name_part):
    """Records emitted by the source operator itself (summed over subtasks).  Not the
    vertex's write-records: operators chained after the source (e.g. a local
    pre-aggregation) would make that count their output instead."""
    for v in rest(cfg, f"/jobs/{job_id}")["vertices"]:
        if v["name"].startswith("Source") and name_part in v["name"]:
            ids = {m["id"].split(".", 1)[1] for m in rest(cfg, f"/jobs/{job_id}/vertices/{v['id']}/metrics")
                   if m["id"].split(".", 1)[-1].startswith("Source__") and m["id"].endswith(".numRecordsOut")}
            if not ids:  # not registered yet: the job is still starting
                return 0
            (metric,) = ids
            got = rest(cfg, f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics?get={urllib.parse.quote(metric)}&agg=sum")
            return int(float(got[0]["sum"])) if got else 0
    raise RuntimeError(f"no source vertex matching {name_part!r}")


def measure_rate(cfg, job_id, name_part, seconds, until_total=None):
    """(records/s over the steady part, samples) from the source vertex's counter.

    With ``until_total`` (draining a backlog of that size) the steady part is 10 % to 90 %
    of the backlog; without it (an endless source) it is the whole sampling window."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), source_records(cfg, job_id, name_part)))
        if until_total and samples[-1][1] >= until_total:
            break
        time.sleep(1.0)
    if until_total:  # skip the warm-up and the tail of the drain
        total = samples[-1][1]
        lo = next((s for s in samples if s[1] >= 0.1 * total), samples[0])
        hi = next((s for s in samples if s[1] >= 0.9 * total), samples[-1])
    else:
        lo, hi = samples[0], samples[-1]
    rate = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else 0.0
    return rate, samples


def run_baseline(cfg, keys, parallelism, seconds):
    flink = Flink()
    script = Path(__file__).resolve().parent / "baseline_job.py"
    cmd = ["bash", str(flink.flink_home() / "bin" / "flink"), "run", "-d", "-py", str(script),
           "--keys", str(keys), "--parallelism", str(parallelism)]
    out = subprocess.run(cmd, env=flink.env(cfg), capture_output=True, text=True, timeout=300)
    job_id = out.stdout.split("JobID ")[-1].split()[0] if "JobID" in out.stdout else None
    if not job_id:
        raise RuntimeError(f"baseline submit failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
            v["status"] == "RUNNING" for v in rest(cfg, f"/jobs/{job_id}")["vertices"]):
        time.sleep(1)
    time.sleep(10)  # warm-up
    while time.monotonic() < deadline + 60 and source_records(cfg, job_id, "gen") == 0:
        time.sleep(1)  # operator metrics register a little after the tasks run
    rate, _ = measure_rate(cfg, job_id, "gen", seconds)
    if rate <= 0:
        raise RuntimeError("the baseline job produced no records; see `tally stack logs flink`")
    jobctl.cancel(cfg, job_id)
    return rate


class PointFactory:
    """Pre-encoded point records (fast JSON by string formatting) for a Zipf-skewed series set."""

    def __init__(self, n_series, rng):
        self.series = [series_id("bench", f"bench.metric{i % 50}", {"host": f"h{i}"}) for i in range(n_series)]
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(n_series)]
        total = sum(weights)
        self.cum = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.types = ["c" if i % 10 < 7 else ("g" if i % 10 < 9 else "ms") for i in range(n_series)]
        self.sketches = {v: base64.b64encode(Sketch().add(float(v)).to_bytes()).decode() for v in range(1, 200)}
        self.rng = rng

    def pick(self):
        import bisect

        return min(bisect.bisect_left(self.cum, self.rng.random()), len(self.series) - 1)

    def draw(self):
        """(series index, value) of the next point."""
        return self.pick(), self.rng.randint(1, 199)

    def record(self, i, v, ts, pid, seq):
        s = self.series[i]
        t = self.types[i]
        sk = f'"{self.sketches[v]}"' if t == "ms" else "null"
        return (f'{{"v":1,"tenant":"bench","sid":{s.id},"type":"{t}","ts":{ts},"count":1.0,"sum":{v}.0,'
                f'"min":{v}.0,"max":{v}.0,"last":{v}.0,"sk":{sk},"pid":"{pid}","seq":{seq}}}').encode()


def fill_backlog(cfg, factory, points, event_seconds, producers=16, workers=2):
    """Put ``points`` points over ``event_seconds`` of event time (ending when the fill
    starts, so the drain minutes later writes its buckets through to Redis as a live stream
    would: every tier keeps at least 16 min there) into the topic, as if ``producers``
    agents had sent them (each its own producer id and sequence, points dealt round-robin),
    then a watermark tick past the end.

    ``workers`` processes share the work (the Python producer, not Kafka, bounds the fill
    rate) by Kafka partition: every worker draws the same point sequence and sends the points
    of its own partitions, so each partition still receives its points in event-time order
    (a partition written by two processes at different speeds would receive late points)."""
    import multiprocessing

    from kafka.partitioner.default import murmur2

    from tally.producer import series_key_bytes

    run = uuid.uuid4().hex[:8]
    start_ms = (int(time.time() * 1000) - event_seconds * 1000) // 1000 * 1000
    closer = PointProducer(cfg, producer_id=f"bench-{run}-end")
    partitions = closer.points_partitions()
    # Kafka's default partitioner (the Java client's, which kafka-python follows) for keyed records.
    owner = [partitions[(murmur2(series_key_bytes(s.id)) & 0x7FFFFFFF) % len(partitions)] % workers
             for s in factory.series]
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_fill_part, args=(cfg, factory, owner, points, event_seconds, producers, run,
                                                   start_ms, worker)) for worker in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError(f"backlog fill failed: exit codes {[proc.exitcode for proc in procs]}")
    closer.tick(start_ms + event_seconds * 1000 + 10_000)  # after every point of every partition
    closer.flush(timeout_s=300)
    closer.close()
    return time.monotonic() - t0, start_ms


def _fill_part(cfg, factory, owner, points, event_seconds, producers, run, start_ms, worker):
    """One fill process: the points whose series' partition ``owner`` gives to ``worker``."""
    factory.rng = random.Random(1)  # the same draws in every worker
    agents = [PointProducer(cfg, producer_id=f"bench-{run}-{k}") for k in range(producers)]
    if worker == 0:
        for s, t in zip(factory.series, factory.types):
            agents[0].register(s, t)
    for n in range(points):  # pre-encoded records: the bench measures the job, not the encoder
        i, v = factory.draw()
        if owner[i] != worker:
            continue
        ts = start_ms + (n * event_seconds * 1000) // points
        agent = agents[n % producers]
        agent.send_encoded(factory.series[i].id, factory.record(i, v, ts, agent.producer_id, agent.next_seq()))
    for agent in agents:
        agent.flush(timeout_s=300)
        agent.close()


def buckets_written(cfg, job_id, counter="buckets_written_"):
    """Bucket rows the sink has written to Cassandra (its buckets_written_<tier> counters;
    ``counter="buckets_cached_"``: rows written through to Redis)."""
    for v in rest(cfg, f"/jobs/{job_id}")["vertices"]:
        if "bucket-sink" in v["name"]:
            # Ids are "<subtask>.<operator>.tally.<name>"; the aggregate endpoint takes them
            # without the subtask.
            names = sorted({m["id"].split(".", 1)[1] for m in rest(cfg, f"/jobs/{job_id}/vertices/{v['id']}/metrics")
                            if f".tally.{counter}" in m["id"]})
            total = 0
            for name in names:
                got = rest(cfg, f"/jobs/{job_id}/vertices/{v['id']}/subtasks/metrics?get={urllib.parse.quote(name)}&agg=sum")
                total += int(float(got[0]["sum"])) if got else 0
            return total
    raise RuntimeError("no bucket-sink vertex")


def wait_sink_settled(cfg, job_id, quiet_s=8, timeout_s=900):
    """Wait until the bucket sink has written no new row for quiet_s; (time, rows)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = buckets_written(cfg, job_id)
        if rows != last:
            last, last_change = rows, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            break
        time.sleep(1.0)
    return last_change, last


def live_freshness(cfg, factory, rate, seconds):
    """Send live points (ts = now) and probe the 1 s buckets of one series in Redis and Cassandra."""
    import redis

    producer = PointProducer(cfg, producer_id=f"live-{uuid.uuid4().hex[:8]}")
    probe = series_id("bench", "bench.probe", {})
    producer.register(probe, "g")
    stop = threading.Event()
    sent_buckets = []

    def traffic():
        next_tick = 0.0
        while not stop.is_set():
            now = time.time()
            now_ms = int(now * 1000)
            for _ in range(int(rate / 20)):
                i, v = factory.draw()
                producer.send_encoded(factory.series[i].id,
                                      factory.record(i, v, now_ms, producer.producer_id, producer.next_seq()))
            if now >= next_tick:
                producer.emit(probe, "g", now_ms, 1.0)
                sent_buckets.append(now_ms - now_ms % 1000)
                producer.tick(now_ms)
                next_tick = now + 1.0
            time.sleep(max(0.0, 0.05 - (time.time() - now)))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    r = redis.Redis.from_url(cfg.redis_url)
    cluster, session = connect(cfg)
    stmt = session.prepare(f"SELECT ts FROM {cfg.keyspace}.buckets_1s WHERE tenant = 'bench' AND sid = ? AND part = ? "
                           "AND ts = ?")
    redis_fresh, cass_fresh = {}, {}
    key = bucket_key(cfg.keyspace, "1s", "bench", probe.id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now_ms = time.time() * 1000
        for b in list(sent_buckets[-15:]):
            if b not in redis_fresh and r.zrangebyscore(key, b, b):
                redis_fresh[b] = now_ms - (b + 1000)
            if b not in cass_fresh and session.execute(stmt, (probe.id, b - b % 3_600_000, b)).one():
                cass_fresh[b] = now_ms - (b + 1000)
        time.sleep(0.05)
    stop.set()
    thread.join()
    producer.close()
    cluster.shutdown()
    r.close()
    return list(redis_fresh.values())[3:], list(cass_fresh.values())[3:]  # skip warm-up buckets


def stack_cpu_seconds(cfg):
    """CPU seconds (user + system) used so far by each stack process and its descendants
    (the TaskManager's Python workers count as the TaskManager's).  Robust to a shared,
    noisy machine, unlike wall-clock rates: points per CPU-second is points/s per core."""
    tck = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck)
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for pid_file in sorted(cfg.run_dir.glob("*.pid")):
        try:
            root = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += stats.get(pid, (0, 0.0))[1]
            todo.extend(children.get(pid, []))
        out[pid_file.stem] = total
    return out


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else float("nan")


def drain(cfg, base_cfg, points, sink, group):
    """Run the job over the whole backlog from the start (its own consumer group) with the
    given sink; returns (read rate, bucket rows, rows also written to Redis, end-to-end
    seconds, CPU seconds by component)."""
    run_cfg = dataclasses.replace(cfg, consumer_group=group)
    cpu0 = stack_cpu_seconds(base_cfg)
    job_id = jobctl.submit(base_cfg, "aggregate", jobctl.job_flags(run_cfg) + ["--sink", sink])
    try:
        rate, samples = measure_rate(run_cfg, job_id, "points", 900, until_total=points + 4)
        first_read = next(t for t, n in samples if n > 0)
        if sink == "discard":
            done_at, rows, cached = samples[-1][0], 0, 0
        else:
            done_at, rows = wait_sink_settled(run_cfg, job_id)
            cached = buckets_written(run_cfg, job_id, "buckets_cached_")
        cpu1 = stack_cpu_seconds(base_cfg)
    finally:
        jobctl.cancel(base_cfg, job_id)
    return rate, rows, cached, done_at - first_read, {k: cpu1.get(k, 0.0) - v for k, v in cpu0.items()}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=6_000_000)
    parser.add_argument("--event-rate", type=int, default=150_000,
                        help="points per second of event time in the backlog (the live rate it stands for)")
    parser.add_argument("--producers", type=int, default=16, help="agents the backlog comes from")
    parser.add_argument("--parallelism", type=int, default=TallyConfig.job_parallelism,
                        help="job parallelism (default: the job's own default)")
    parser.add_argument("--salt-buckets", type=int, default=TallyConfig.salt_buckets,
                        help="phase-1 salts per series (default: the job's own, 0 = auto from the parallelism)")
    parser.add_argument("--baseline-seconds", type=int, default=30)
    parser.add_argument("--live-seconds", type=int, default=60)
    parser.add_argument("--live-rate", type=float, default=5_000, help="live points/s for freshness")
    parser.add_argument("--grace-seconds", type=int, default=1)
    parser.add_argument("--no-sql-only", action="store_true", help="skip the run with a discarding sink")
    parser.add_argument("--object-reuse-off-too", action="store_true",
                        help="repeat the discarding run with pipeline.object-reuse off (the job's setting before)")
    args = parser.parse_args(argv)

    base_cfg = TallyConfig.from_env()
    launcher.up(base_cfg, log=lambda *_: None)
    run = uuid.uuid4().hex[:6]
    cfg = dataclasses.replace(
        base_cfg, points_topic=f"bench.{run}.points", series_topic=f"bench.{run}.series",
        late_topic=f"bench.{run}.late", keyspace=f"bench_{run}", consumer_group=f"bench-{run}",
        job_parallelism=args.parallelism, salt_buckets=args.salt_buckets, grace_seconds=args.grace_seconds,
        source_idle_timeout_seconds=0,
    )
    event_seconds = max(1, round(args.points / args.event_rate))
    top_share = 100 / sum(1 / (r + 1) ** 1.1 for r in range(args.series))
    print(f"workload: {args.series:,} series (Zipf s=1.1: the top series has ~{top_share:.0f} % of the points), "
          f"70 % counters / 20 % gauges / 10 % timers with sketches; backlog {args.points:,} points from "
          f"{args.producers} producers over {event_seconds} s of event time ({args.event_rate:,} points per "
          f"event-second, as a live stream at that rate); {args.parallelism} parallel, {cfg.phase1_salts} phase-1 "
          f"salt(s) per series, grace {args.grace_seconds} s, "
          f"every stack service on this {os.cpu_count()}-core machine; live {args.live_rate:,.0f} points/s for "
          f"{args.live_seconds} s for freshness", flush=True)

    factory = PointFactory(args.series, random.Random(1))
    if args.points == 0:  # freshness only
        try:
            jobctl.prepare(cfg)
            live(cfg, base_cfg, factory, args)
        finally:
            jobctl.remove_data(cfg)
        return
    baseline = run_baseline(base_cfg, args.series, args.parallelism, args.baseline_seconds)
    print(f"baseline  Flink SQL datagen → TUMBLE 1 s → blackhole ({args.series:,} keys): {baseline:,.0f} rows/s",
          flush=True)
    try:
        jobctl.prepare(cfg)
        fill_s, start_ms = fill_backlog(cfg, factory, args.points, event_seconds, args.producers)
        print(f"backlog   {args.points:,} points produced in {fill_s:.1f}s (before the job runs)", flush=True)
        if not args.no_sql_only:
            for reuse in ((True, False) if args.object_reuse_off_too else (True,)):
                run_cfg = dataclasses.replace(cfg, job_object_reuse=reuse)
                rate, _, _, _, cpu = drain(run_cfg, base_cfg, args.points, "discard",
                                        f"{cfg.consumer_group}-sql-{int(reuse)}")
                print(f"sql only  (buckets discarded in Java{'' if reuse else ', object reuse OFF'}): read "
                      f"{rate:,.0f} points/s, ratio to baseline {rate / baseline:.3f}; CPU s: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items()))
                      + f"; {args.points / max(cpu.get('flink-taskmanager', 0), 1e-9):,.0f} points per "
                        f"TaskManager CPU-second", flush=True)
        rate, rows, cached, seconds, cpu = drain(cfg, base_cfg, args.points, "production", cfg.consumer_group)
        cpu_total = sum(cpu.values())
        print(f"tally     read {rate:,.0f} points/s (steady 10–90 %), ratio to baseline {rate / baseline:.3f}", flush=True)
        print(f"tally     Kafka → Cassandra: {args.points:,} points became {rows:,} bucket rows (all tiers, "
              f"{rows / args.points:.3f} rows per point; {cached:,} of them also written through to Redis) "
              f"in {seconds:.0f}s from the first read: "
              f"{args.points / seconds:,.0f} points/s and {rows / seconds:,.0f} rows/s end to end, ratio to "
              f"baseline {args.points / seconds / baseline:.3f}", flush=True)
        print(f"tally     CPU seconds while draining: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items()))
              + f"; {args.points / cpu_total:,.0f} points per CPU-second of the whole stack "
              f"({args.points / max(cpu.get('flink-taskmanager', 0), 1e-9):,.0f} per TaskManager CPU-second)",
              flush=True)
        live(cfg, base_cfg, factory, args)
    finally:
        jobctl.remove_data(cfg)


def live(cfg, base_cfg, factory, args):
    """The job on live traffic (resuming after any backlog), and the 1 s tier's freshness."""
    job_id = jobctl.submit(base_cfg, "aggregate", jobctl.job_flags(cfg))
    try:
        closer = PointProducer(cfg)
        closer.tick(int(time.time() * 1000) - 5_000)
        closer.flush()
        closer.close()
        live_r, live_c = live_freshness(cfg, factory, args.live_rate, args.live_seconds)
    finally:
        jobctl.cancel(base_cfg, job_id)
    print(f"freshness 1 s tier, event-time bucket end → readable (live {args.live_rate:,.0f} points/s, grace "
          f"{args.grace_seconds} s): Redis p50 {pct(live_r, .5) / 1000:.2f}s p99 {pct(live_r, .99) / 1000:.2f}s "
          f"(n={len(live_r)}); Cassandra p50 {pct(live_c, .5) / 1000:.2f}s p99 {pct(live_c, .99) / 1000:.2f}s "
          f"(n={len(live_c)})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
