"""Query benchmark: Tally's Prometheus API vs VictoriaMetrics on the same samples.

Workload (stack up; own keyspace ``tally_bench_query``, removed at the end):

- gauge ``cpu_usage{host, region}``: ``--series`` series (default 1,000; 4 regions), 6 h of
  1 m buckets plus the last 15 min of 1 s buckets;
- distribution ``request_latency{host, region}``: ``--dist-hosts`` hosts per region (default
  5, so 20 series), ``--dist-rate`` raw values per second per series (lognormal), 24 h of 1 h
  buckets and the last 15 min of 1 s buckets, each with its DDSketch.

Buckets go straight into Cassandra (sinks.cassandra.BucketWriter) and, where the tier's Redis
window holds them, into Redis (sinks.redis_cache key and member format): the bench measures
queries, not ingestion.  Every query range ends two minutes ago (1 m tier) or ten seconds
ago (1 s tier), on buckets that are final, as a dashboard showing closed data.  The 1 s tier
is loaded last, ending when its queries run (see load_recent), so Q3/Q4 read Redis as a
live "last 15 minutes" panel does (the tier's Redis window is 16 min, schemas/redis.json).

Queries, each timed over HTTP (full body read) ``--runs`` times:
  Q1 avg by (host) (cpu_usage)                            6 h at 1 m
  Q2 p99 by region of request_latency                     24 h at 1 h
  Q3 avg by (host) (cpu_usage)                            15 min at 1 s (Redis path)
  Q4 p99 by region of request_latency                     15 min at 1 s (Redis path)
  Q5 avg(cpu_usage{region="us-east"})                     6 h at 1 m
Tally cold = ``nocache=1`` (no result cache; every bucket read and evaluated), warm = the
repeated query (result cache; with nothing written in between, as in a paused stream, even
the open steps' response is reused: the loader bumps the tier's write counter as the job's
sink does).  Each server gets one untimed run of each query first (its
series-index cache and connection pools filled, as a running server has them); Tally's is
printed apart.  Q1 and Q5 also run on ``tally api --no-redis`` (Cassandra
path).  VictoriaMetrics (Debian ``victoria-metrics``, started here on a free port with a temp
dir) gets the same samples through /api/v1/import: cpu_usage as samples at the bucket
starts, the distribution as a histogram ``request_latency_bucket{le}`` of per-bucket counts
(30 log-spaced bounds), queried with ``histogram_quantile(0.99, sum by (region, le) (...))``;
always with ``nocache=1``.

Run: ``.venv/bin/python bench/query.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sinks.cassandra import BucketRow, BucketWriter, drop_keyspace, ensure_schema  # noqa: E402
from sinks.redis_cache import bucket_key, delete_keyspace_keys, encode_member, write_version_key  # noqa: E402
from tally.config import TallyConfig  # noqa: E402
from tally.schema import redis_layout  # noqa: E402
from tally.series import series_id  # noqa: E402
from tally.sketch import Sketch  # noqa: E402
from tally.stack.process import free_port  # noqa: E402

TENANT = "bench"
REGIONS = ("us-east", "us-west", "eu-west", "ap-south")
MIN, HOUR, SEC = 60_000, 3_600_000, 1000


# -- data --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    now_ms: int
    end_1m: int
    end_1s: int
    end_1h: int
    gauge: dict  # tier -> (sids, labels, ts array, values (series, n))
    dist: dict  # tier -> (sids, labels, ts array, list per series of per-bucket value arrays)


def make_data(args) -> Data:
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    end_1m = now - now % MIN - 2 * MIN
    end_1s = now - now % SEC - 10 * SEC
    end_1h = now - now % HOUR - HOUR
    data = Data(now, end_1m, end_1s, end_1h, {}, {})
    _gauge_tier(data, rng, "1m", end_1m, MIN, 360, args)
    _dist_tier(data, rng, "1h", end_1h, HOUR, 24, args.dist_rate * 3600, args)
    recent_tier(data, args, end_1s)
    return data


def _gauge_tier(data: Data, rng, tier: str, end: int, step: int, n: int, args) -> None:
    labels = [{"host": f"host-{i:04d}", "region": REGIONS[i % 4]} for i in range(args.series)]
    sids = [series_id(TENANT, "cpu_usage", l) for l in labels]
    ts = end - step * np.arange(n - 1, -1, -1, dtype=np.int64)
    walk = np.clip(50 + np.cumsum(rng.normal(0, 2, (len(sids), n)), axis=1), 0, 100)
    data.gauge[tier] = (sids, labels, ts, np.round(walk, 2))


def _dist_tier(data: Data, rng, tier: str, end: int, step: int, n: int, per_bucket: int, args) -> None:
    dlabels = [{"host": f"api-{r}-{i}", "region": r} for r in REGIONS for i in range(args.dist_hosts)]
    dsids = [series_id(TENANT, "request_latency", l) for l in dlabels]
    ts = end - step * np.arange(n - 1, -1, -1, dtype=np.int64)
    mu = {r: m for r, m in zip(REGIONS, (3.0, 3.2, 3.5, 4.0))}
    values = [[rng.lognormal(mu[l["region"]], 0.6, per_bucket) for _ in range(n)] for l in dlabels]
    data.dist[tier] = (dsids, dlabels, ts, values)


def recent_tier(data: Data, args, end_1s: int, n: int = 900) -> None:
    """(Re)generate the 1 s tier: ``n`` buckets per series ending at ``end_1s``."""
    rng = np.random.default_rng(2 + end_1s % 1000_003)
    data.end_1s = end_1s
    _gauge_tier(data, rng, "1s", end_1s, SEC, n, args)
    _dist_tier(data, rng, "1s", end_1s, SEC, n, args.dist_rate, args)


def bucket_rows(data: Data):
    """tier -> list of BucketRow (the full value of each bucket, as the job writes it)."""
    out = {}
    for tier, (sids, _, ts, values) in data.gauge.items():
        rows = out.setdefault(tier, [])
        tsl = ts.tolist()
        for sid, row in zip(sids, values.tolist()):
            rows.extend(BucketRow(TENANT, sid.id, t, 1.0, v, v, v, v, t) for t, v in zip(tsl, row))
    for tier, (sids, _, ts, values) in data.dist.items():
        rows = out.setdefault(tier, [])
        for sid, per_bucket in zip(sids, values):
            for t, vals in zip(ts.tolist(), per_bucket):
                rows.append(BucketRow(TENANT, sid.id, t, float(len(vals)), float(vals.sum()), float(vals.min()),
                                      float(vals.max()), float(vals[-1]), t, Sketch().add_many(vals).to_bytes()))
    return out


def _write_rows(writer: BucketWriter, tier: str, rows) -> None:
    """Upsert rows with the writer's batched path when it has one (one request per 100
    rows of a partition), else row by row."""
    if hasattr(writer, "write_batch"):
        from tally.bucketpack import RECORD, BucketBatch

        for i in range(0, len(rows), 50_000):
            chunk = rows[i:i + 50_000]
            records = np.array([(r.sid, r.ts, r.count, r.sum, r.min, r.max, r.last, r.last_ts,
                                 len(r.sketch) if r.sketch else -1) for r in chunk], dtype=RECORD)
            writer.write_batch(tier, TENANT, BucketBatch(records, [r.sketch for r in chunk]))
    else:
        writer.write(tier, rows)


def load_tally(cfg: TallyConfig, data: Data, rows_by_tier) -> None:
    ensure_schema(cfg)
    writer = BucketWriter(cfg)
    try:
        for tier, sids, mtype in (("1m", data.gauge["1m"][0], "g"), ("1h", data.dist["1h"][0], "d")):
            for sid in sids:
                writer.index_series({"series": sid.key, "sid": sid.id, "type": mtype})
        for tier, rows in rows_by_tier.items():
            t0 = time.perf_counter()
            _write_rows(writer, tier, rows)
            print(f"  cassandra {tier}: {len(rows):,} buckets in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        writer.close()
    # Redis: the tier's recent window, as the sink's write-through keeps it (one ZADD per key).
    import redis

    windows = {t: s * 1000 for t, s in redis_layout()["keys"]["bucket"]["window_seconds"].items()}
    client = redis.Redis.from_url(cfg.redis_url)
    evicted_before = client.info("stats").get("evicted_keys", 0)
    try:
        for tier, rows in rows_by_tier.items():
            by_key: dict = {}
            for r in rows:
                if r.ts >= data.now_ms - windows[tier]:
                    by_key.setdefault(bucket_key(cfg.keyspace, tier, TENANT, r.sid), {})[encode_member(r)] = r.ts
            pipe = client.pipeline(transaction=False)
            for key, members in by_key.items():
                pipe.zadd(key, members)
                pipe.pexpire(key, windows[tier])
            pipe.incr(write_version_key(cfg.keyspace, tier, TENANT))  # after the buckets, as the sink does
            pipe.execute()
            print(f"  redis {tier}: {sum(len(m) for m in by_key.values()):,} buckets", flush=True)
        evicted = client.info("stats").get("evicted_keys", 0) - evicted_before
        memory = client.info("memory")
        print(f"  redis memory {memory.get('used_memory_human')} of maxmemory {memory.get('maxmemory_human')}; "
              f"keys evicted while loading: {evicted} (those series are read from Cassandra)", flush=True)
    finally:
        client.close()


def bump_write_version(cfg: TallyConfig, tier: str) -> None:
    """What the job's sink does after writing a batch of the tier (schemas/redis.json)."""
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    try:
        client.incr(write_version_key(cfg.keyspace, tier, TENANT))
    finally:
        client.close()


def load_recent(cfg: TallyConfig, data: Data, args, vm_port) -> None:
    """Load the 1 s tier so that Q3/Q4 ("the last 15 min", ending 10 s before they run) read
    Redis as a live dashboard does: 15 minutes ending now - 10 s, then, while loading took
    long enough for that end to fall behind (a busy machine), the seconds since, until the
    data ends 10 s ago.  Loaded first instead, 15 min of 1 s buckets would already be partly
    older than the tier's Redis window (16 min) when the queries run, and read from Cassandra."""
    t0 = time.perf_counter()
    end_1s, n, total = int(time.time() * 1000), 900, 0
    end_1s -= end_1s % SEC + 10 * SEC
    parts = []
    for _ in range(10):
        recent_tier(data, args, end_1s, n)
        parts.append((data.gauge["1s"], data.dist["1s"]))
        rows = {t: r for t, r in bucket_rows(data).items() if t == "1s"}
        data.now_ms = end_1s + 10 * SEC  # Redis gets the buckets of the window before the queries' "now"
        load_tally(cfg, data, rows)
        if vm_port:
            load_vm(vm_port, data, ("1s",))
        total += len(rows["1s"])
        behind = int(time.time() * 1000) - 10 * SEC - end_1s
        if behind < 5 * SEC:
            break
        n = behind // SEC
        end_1s += n * SEC
    # The whole tier (the queries and the rollup read the last 900 buckets of it).
    sids, labels = parts[0][0][0], parts[0][0][1]
    ts = np.concatenate([g[2] for g, _ in parts])
    data.gauge["1s"] = (sids, labels, ts[-900:], np.concatenate([g[3] for g, _ in parts], axis=1)[:, -900:])
    dsids, dlabels = parts[0][1][0], parts[0][1][1]
    values = [sum((list(d[3][i]) for _, d in parts), [])[-900:] for i in range(len(dsids))]
    data.dist["1s"] = (dsids, dlabels, ts[-900:], values)
    behind_s = time.time() - end_1s / 1000
    print(f"  1 s tier: {total:,} buckets loaded in {time.perf_counter() - t0:.1f} s ({len(parts)} round(s)); "
          f"its end is {behind_s:.1f} s ago", flush=True)
    if behind_s < 10:
        time.sleep(10 - behind_s)


# -- VictoriaMetrics ---------------------------------------------------------------------------

LE = np.round(np.geomspace(2, 400, 30), 3)


def vm_lines(data: Data, tiers=("1m", "1h", "1s")):
    for tier in (t for t in ("1m", "1s") if t in tiers):
        sids, labels, ts, values = data.gauge[tier]
        tsl = ts.tolist()
        for l, row in zip(labels, values.tolist()):
            yield orjson.dumps({"metric": {"__name__": "cpu_usage", **l}, "values": row, "timestamps": tsl})
    for tier in (t for t in ("1h", "1s") if t in tiers):
        sids, labels, ts, values = data.dist[tier]
        tsl = ts.tolist()
        for l, per_bucket in zip(labels, values):
            counts = np.array([np.searchsorted(np.sort(v), LE, side="right") for v in per_bucket], dtype=float)
            totals = [float(len(v)) for v in per_bucket]
            for j, le in enumerate(LE.tolist()):
                yield orjson.dumps({"metric": {"__name__": "request_latency_bucket", **l, "le": str(le)},
                                    "values": counts[:, j].tolist(), "timestamps": tsl})
            yield orjson.dumps({"metric": {"__name__": "request_latency_bucket", **l, "le": "+Inf"},
                                "values": totals, "timestamps": tsl})


def start_vm(workdir: Path):
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not Path(binary).exists():
        print("victoria-metrics not installed (./dev setup installs it): skipping the comparison")
        return None, None
    port = free_port()
    proc = subprocess.Popen([binary, f"-storageDataPath={workdir / 'vm'}", f"-httpListenAddr=127.0.0.1:{port}",
                             "-retentionPeriod=100y", "-search.latencyOffset=0s", "-loggerLevel=ERROR",
                             "-search.disableCache"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("victoria-metrics did not start")


def load_vm(port: int, data: Data, tiers=("1m", "1h", "1s")) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    batch, n = [], 0
    for line in vm_lines(data, tiers):
        batch.append(line)
        if len(batch) >= 500:
            conn.request("POST", "/api/v1/import", body=b"\n".join(batch))
            conn.getresponse().read()
            n += len(batch)
            batch = []
    if batch:
        conn.request("POST", "/api/v1/import", body=b"\n".join(batch))
        conn.getresponse().read()
    conn.request("GET", "/internal/force_flush")
    conn.getresponse().read()


# -- timing ------------------------------------------------------------------------------------


def timed_get(conn: http.client.HTTPConnection, path: str, params: dict) -> tuple[float, bytes]:
    url = path + "?" + urllib.parse.urlencode(params)
    for attempt in (1, 2):
        t0 = time.perf_counter()
        try:
            conn.request("GET", url, headers={"X-Scope-OrgID": TENANT})
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed the idle keep-alive connection (e.g. while a slow mode ran
            # on another server): reconnect and time the request again.
            conn.close()
            if attempt == 2:
                raise
            continue
        body = resp.read()
        elapsed = time.perf_counter() - t0
        break
    if resp.status != 200:
        raise RuntimeError(f"{path} {params}: HTTP {resp.status}: {body[:300]!r}")
    return elapsed, body


def timed_runs(conn, path: str, params: dict, runs: int, before=None):
    """(times, last body, error): the runs that answered; an error stops the series.
    ``before()`` runs untimed ahead of each run."""
    times, body = [], b""
    for _ in range(runs):
        if before is not None:
            before()
        try:
            t, body = timed_get(conn, path, params)
        except Exception as exc:  # e.g. a Cassandra read timeout under load: report, go on
            return times, body, str(exc)[-300:]
        times.append(t)
    return times, body, None


def fmt(times: list[float], error: str | None) -> str:
    if not times:
        return "error"
    p50, p99 = percentiles(times)
    return f"{p50:.0f} / {p99:.0f}" + (f" ({len(times)} ok)" if error else "")


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def start_api(cfg: TallyConfig, extra_args=()):
    port = free_port()
    env = dict(os.environ, TALLY_KEYSPACE=cfg.keyspace, TALLY_API_PORT=str(port))
    env.pop("TALLY_API_KEYS_FILE", None)
    tally = Path(sys.executable).with_name("tally")
    proc = subprocess.Popen([str(tally), "api", *extra_args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/api/v1/status/buildinfo")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("tally api did not start")


def summarize(body: bytes) -> str:
    doc = orjson.loads(body)
    result = doc["data"]["result"]
    points = sum(len(r.get("values", [])) for r in result)
    return f"{len(result)} series, {points:,} points, {len(body) / 1e6:.1f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--dist-hosts", type=int, default=5, help="distribution hosts per region")
    parser.add_argument("--dist-rate", type=int, default=20, help="raw values per second per distribution series")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query and mode")
    parser.add_argument("--skip-vm", action="store_true")
    parser.add_argument("--print-samples", action="store_true", help="every timed run of Tally cold/warm, in order")
    parser.add_argument("--load-only", action="store_true", help="load the keyspace, keep it, exit (profiling)")
    parser.add_argument("--keyspace", default="tally_bench_query",
                        help="Cassandra keyspace and Redis prefix (dropped at the end): two runs side by side")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(TallyConfig.from_env(), keyspace=args.keyspace)

    print("workload:")
    print(f"  cpu_usage (gauge): {args.series} series (host, region; 4 regions): 6 h of 1 m buckets "
          f"(360/series) + last 15 min of 1 s buckets (900/series)")
    print(f"  request_latency (distribution): {4 * args.dist_hosts} series, {args.dist_rate} values/s each: "
          f"24 h of 1 h buckets + last 15 min of 1 s buckets, DDSketch per bucket")
    t0 = time.perf_counter()
    data = make_data(args)
    rows = bucket_rows(data)
    print(f"  generated {sum(len(r) for r in rows.values()):,} buckets in {time.perf_counter() - t0:.1f} s", flush=True)
    drop_keyspace(cfg)
    delete_keyspace_keys(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-query-"))
    procs = []
    try:
        # The 1 s tier is loaded last (below), right before its queries, unless --load-only.
        load_tally(cfg, data, rows if args.load_only else {t: r for t, r in rows.items() if t != "1s"})
        if args.load_only:
            print(f"loaded keyspace {cfg.keyspace}; ranges end at 1m {data.end_1m}, 1s {data.end_1s}, "
                  f"1h {data.end_1h}")
            procs.append("keep")
            return 0
        vm_proc = vm_port = None
        if not args.skip_vm:
            vm_proc, vm_port = start_vm(workdir)
            if vm_proc:
                procs.append(vm_proc)
                t0 = time.perf_counter()
                load_vm(vm_port, data, ("1m", "1h"))
                print(f"  victoria-metrics: imported in {time.perf_counter() - t0:.1f} s", flush=True)
        api_proc, api_port = start_api(cfg)
        procs.append(api_proc)
        cass_proc, cass_port = start_api(cfg, ["--no-redis"])
        procs.append(cass_proc)
        load_recent(cfg, data, args, vm_port)

        s = lambda ms: ms / 1000  # noqa: E731
        p99 = "sketch_quantile(0.99, request_latency) by (region)"
        vm_p99 = "histogram_quantile(0.99, sum by (region, le) (request_latency_bucket))"
        # The 1 s queries first: their 15 minutes leave the Redis window as time passes.
        queries = [
            ("Q1", "avg by (host) (cpu_usage)", "avg by (host) (cpu_usage)", data.end_1m - 6 * HOUR + MIN,
             data.end_1m, 60, "6 h at 1 m"),
            ("Q2", p99, vm_p99, data.end_1h - 23 * HOUR, data.end_1h, 3600, "24 h at 1 h"),
            ("Q3", "avg by (host) (cpu_usage)", "avg by (host) (cpu_usage)", data.end_1s - 899 * SEC,
             data.end_1s, 1, "15 min at 1 s"),
            ("Q4", p99, vm_p99, data.end_1s - 899 * SEC, data.end_1s, 1, "15 min at 1 s"),
            ("Q5", 'avg(cpu_usage{region="us-east"})', 'avg(cpu_usage{region="us-east"})',
             data.end_1m - 6 * HOUR + MIN, data.end_1m, 60, "6 h at 1 m"),
        ]
        print(f"\nlatency in ms over {args.runs} runs each (p50 / p99); Tally cold = nocache=1, warm = result cache")
        header = (f"{'':4} {'query':52} {'range':14} {'tier':4} {'cold p50/p99':>15} {'warm p50/p99':>13} "
                  f"{'cassandra-only cold':>20} {'VM p50/p99':>15} {'cold p99 / VM p99':>17}")
        print(header)
        print("-" * len(header))
        tally = http.client.HTTPConnection("127.0.0.1", api_port, timeout=120)
        cass = http.client.HTTPConnection("127.0.0.1", cass_port, timeout=120)
        vm = http.client.HTTPConnection("127.0.0.1", vm_port, timeout=120) if vm_port else None
        details = []
        queries = [queries[2], queries[3], queries[0], queries[1], queries[4]]
        print(f"(load average before timing: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; 2 cores shared)")
        errors = []
        first_runs: dict = {}
        live_warm: dict = {}
        for name, expr, vm_expr, start, end, step, label in queries:
            params = {"query": expr, "start": s(start), "end": s(end), "step": step}
            # One untimed run first, as for VictoriaMetrics below: the process's first read of a
            # metric fills its series-index cache and connection pools (reported apart).
            cold, body, err = timed_runs(tally, "/api/v1/query_range", {**params, "nocache": 1}, args.runs + 1)
            first_runs[name], cold = cold[:1], cold[1:]
            if err:
                errors.append(f"{name} cold: {err}")
            tier = orjson.loads(body)["data"]["tier"] if body else "?"
            warm, warm_body, werr = [], b"", None
            try:
                timed_get(tally, "/api/v1/query_range", params)  # fill the cache
                warm, warm_body, werr = timed_runs(tally, "/api/v1/query_range", params, args.runs)
            except Exception as exc:
                werr = str(exc)[:200]
            if werr:
                errors.append(f"{name} warm: {werr}")
            if tier == "1s":  # a live stream: the job writes the tier between two refreshes
                live, _, lerr = timed_runs(tally, "/api/v1/query_range", params, args.runs,
                                           before=lambda: bump_write_version(cfg, tier))
                live_warm[name] = fmt(live, lerr)
            if body and warm_body and warm_body != body:
                a, b = orjson.loads(body)["data"]["result"], orjson.loads(warm_body)["data"]["result"]
                differing = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
                if differing:
                    print(f"  WARNING {name}: warm and cold results differ in {differing} series")
            if args.print_samples:
                print(f"  {name} cold ms: {' '.join(f'{t * 1000:.0f}' for t in cold)}; "
                      f"warm ms: {' '.join(f'{t * 1000:.0f}' for t in warm)}", flush=True)
            cass_cold = ""
            if name in ("Q1", "Q5"):
                cc, _, cerr = timed_runs(cass, "/api/v1/query_range", {**params, "nocache": 1}, args.runs + 1)
                cc = cc[1:]
                cass_cold = fmt(cc, cerr)
                if cerr:
                    errors.append(f"{name} cassandra-only: {cerr}")
            vm_txt, ratio = "", ""
            if vm:
                vm_params = {"query": vm_expr, "start": s(start), "end": s(end), "step": step, "nocache": 1}
                vt, vbody, verr = timed_runs(vm, "/api/v1/query_range", vm_params, args.runs + 1)
                vt = vt[1:]
                vm_txt = fmt(vt, verr)
                if cold and vt:
                    ratio = f"{percentiles(cold)[1] / percentiles(vt)[1]:.2f}x"
                details.append(f"  {name}: tally {summarize(body) if body else '-'}; "
                               f"VM {summarize(vbody) if vbody else '-'}")
            else:
                details.append(f"  {name}: tally {summarize(body) if body else '-'}")
            print(f"{name:4} {expr:52} {label:14} {tier:4} {fmt(cold, err):>15} {fmt(warm, werr):>13} "
                  f"{cass_cold:>20} {vm_txt:>15} {ratio:>17}", flush=True)
        import query_rollup  # bench/query_rollup.py: Q5 from a rollup rule (issue 8)

        query_rollup.run(cfg, data, args, sys.modules[__name__], api_port, vm_port)
        if errors:
            print("\nerrors:\n  " + "\n  ".join(errors))
        print("\nwarm while the tier is being written (its write counter bumped before each run, so the open "
              "steps are read and evaluated again; the closed ones come from the cache), p50 / p99 ms: "
              + ", ".join(f"{n} {v}" for n, v in live_warm.items()))
        print("\nuntimed first run per query (the API's first read of the metric), ms: "
              + ", ".join(f"{n} {t[0] * 1000:.0f}" for n, t in first_runs.items() if t))
        print("\nresponses:")
        print("\n".join(details))
        print(f"\n(load average after timing: {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
        print("targets: p99 <= 300 ms cold, <= 30 ms warm")
        return 0
    finally:
        if "keep" in procs:
            return 0
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        drop_keyspace(cfg)
        delete_keyspace_keys(cfg)


if __name__ == "__main__":
    sys.exit(main())
