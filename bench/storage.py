"""Storage benchmark: bytes per bucket on Cassandra's disk and in Redis, per tier.

Workload (stack up; own keyspaces ``tally_bench_storage_<hex>_plain`` / ``_sketch``, dropped
at the end, with the snapshot Cassandra keeps of a dropped keyspace):

- ``--buckets`` buckets per tier and per kind (default 200,000), spread over ``--series``
  series (default 1,000) as consecutive buckets of each series ending now, so partitions
  hold as many rows as the tier's partition span allows (tally.tiers);
- kind ``plain``: counters/gauges, no sketch (count, sum, min, max, last of random values);
- kind ``sketch``: timers, each bucket with a tally.sketch.Sketch of 50-200 lognormal values
  (a pool of ``--sketch-pool`` distinct sketches, drawn at random per bucket);
- written as the job's sink writes them: tally.bucketpack.pack → unpack → sinks.cassandra.
  BucketWriter.write_batch (UNLOGGED batches of idempotent upserts), one keyspace per kind.

Cassandra: the bench tables get ``memtable_flush_period_in_ms`` so Cassandra flushes them
itself (no nodetool/JMX on the local stack); the bench waits until every table's SSTable
files have stopped changing, then sums the SSTable files of each table on disk (all
components, and Data.db alone), per bucket.  Compression is the table default (LZ4).  That
is one replica: multiply by the replication factor.  Compaction (TWCS) of freshly flushed,
non-overlapping rows changes little.

Redis: for each tier and kind, ``--redis-series`` series filled to the tier's full Redis
window (schemas/redis.json: 900 x 1 s, 720 x 10 s, 1,440 x 1 m, 168 x 1 h, 30 x 1 d) through
sinks.redis_cache.RedisBucketWriter; bytes per bucket = sum of ``MEMORY USAGE key SAMPLES 0``
/ buckets.  Skipped when the shared Redis lacks headroom under its maxmemory.

Run: ``.venv/bin/python bench/storage.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from sinks.cassandra import BucketWriter, drop_keyspace, ensure_schema
from sinks.redis_cache import RedisBucketWriter, bucket_key, delete_keyspace_keys
from tally.bucketpack import pack, unpack
from tally.config import TallyConfig
from tally.cql import connect
from tally.schema import bucket_table, redis_layout
from tally.sketch import Sketch
from tally.tiers import DEFAULT_TIERS

TENANT = "bench"
KINDS = ("plain", "sketch")
PACK_ROWS = 2_000  # rows per packed batch handed to write_batch (the job's are a few hundred)


def sketch_pool(size: int, rng: np.random.Generator) -> list[bytes]:
    pool = []
    for _ in range(size):
        n = int(rng.integers(50, 201))
        values = rng.lognormal(mean=3.0, sigma=0.8, size=n)  # ~20 ms median latency, long tail
        pool.append(Sketch().add_many(values.tolist()).to_bytes())
    return pool


def bucket_rows(tier, n: int, series: int, now_ms: int, pool: list[bytes] | None, rng: random.Random):
    """n (sid, ts, count, sum, min, max, last, last_ts, sketch) rows: series x consecutive buckets."""
    per_series = max(1, n // series)
    res_ms = tier.resolution_seconds * 1000
    end = now_ms - now_ms % res_ms
    rows = []
    for s in range(series):
        sid = rng.getrandbits(63)
        for i in range(per_series):
            if len(rows) == n:
                return rows
            ts = end - (per_series - i) * res_ms
            count = float(rng.randint(1, 500))
            vmin = rng.uniform(0, 10)
            vmax = vmin + rng.uniform(0, 500)
            last = rng.uniform(vmin, vmax)
            rows.append((sid, ts, count, count * (vmin + vmax) / 2, vmin, vmax, last, ts + res_ms - 1,
                         rng.choice(pool) if pool else None))
    return rows


def kafka_record_bytes(n: int, rng: random.Random) -> tuple[float, float, float]:
    """(mean JSON bytes of a counter point, of a timer point with a one-value sketch, lz4 bytes
    per point of the counters concatenated like a producer batch) for Kafka sizing."""
    import lz4.frame

    from tally import point
    from tally.series import series_id

    counters, timers = [], []
    for i in range(n):
        sid = series_id("tenant-042", f"app.requests.{i % 50}", {"host": f"host-{rng.randint(0, 499_999):06d}",
                                                                 "region": f"r{i % 4}", "env": "prod"})
        ts = 1_763_900_000_000 + i * 7
        counters.append(point.encode(point.from_value(sid, "c", ts, rng.randint(1, 50), "agent-h-w0-0123456789", i)))
        timers.append(point.encode(point.from_value(sid, "ms", ts, rng.lognormvariate(3, 0.8),
                                                    "agent-h-w0-0123456789", i)))
    joined = b"".join(counters)
    return (len(joined) / n, sum(map(len, timers)) / n, len(lz4.frame.compress(joined)) / n)


def cassandra_cpu_s(cfg: TallyConfig) -> float | None:
    """CPU seconds (user + system) the stack's Cassandra process has used so far (Linux /proc)."""
    import os

    try:
        pid = int((cfg.run_dir / "cassandra.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def table_dirs(cfg: TallyConfig, keyspace: str) -> dict[str, Path]:
    """buckets_<tier> -> its data directory under the stack's Cassandra data dir."""
    root = cfg.data_dir / "cassandra" / "data" / keyspace
    return {d.name.split("-")[0]: d for d in root.iterdir() if d.is_dir()} if root.exists() else {}


def sstable_bytes(table_dir: Path) -> tuple[int, int, int]:
    """(all SSTable component bytes, Data.db bytes, number of SSTables) of a table directory."""
    files = [f for f in table_dir.iterdir() if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    data = [f for f in files if f.name.endswith("-Data.db")]
    return total, sum(f.stat().st_size for f in data), len(data)


def wait_flushed(cfg: TallyConfig, keyspaces: list[str], timeout_s: float, stable_s: float = 12.0) -> float:
    """Wait until every bench table has SSTables and none changed for stable_s seconds."""
    start = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - start < timeout_s:
        snap = {}
        for ks in keyspaces:
            for table, d in table_dirs(cfg, ks).items():
                if table.startswith("buckets_"):
                    snap[(ks, table)] = sstable_bytes(d)
        ready = len(snap) == len(keyspaces) * len(DEFAULT_TIERS) and all(v[2] > 0 for v in snap.values())
        if snap != last:
            last, since = snap, time.monotonic()
        elif ready and time.monotonic() - since >= stable_s:
            return time.monotonic() - start
        time.sleep(2)
    raise TimeoutError(f"SSTables still changing or missing after {timeout_s:.0f}s: {last}")


def redis_bytes(cfg: TallyConfig, kind_pool, series: int, now_ms: int, rng: random.Random) -> dict:
    import redis

    client = redis.Redis.from_url(cfg.redis_url)
    writer = RedisBucketWriter(cfg)
    windows = redis_layout()["keys"]["bucket"]["window_seconds"]
    out = {}
    try:
        for tier in DEFAULT_TIERS:
            per_series = windows[tier.name] // tier.resolution_seconds
            for kind, pool in kind_pool.items():
                rows = bucket_rows(tier, per_series * series, series, now_ms, pool, rng)
                # Newest bucket ends now: all fall inside the window.
                batch = unpack(pack(rows))
                written = writer.write_batch(tier.name, f"{TENANT}-{kind}", batch, now_ms)
                sids = sorted({r[0] for r in rows})
                used = sum(client.memory_usage(bucket_key(cfg.keyspace, tier.name, f"{TENANT}-{kind}", sid),
                                               samples=0) or 0 for sid in sids)
                out[(tier.name, kind)] = (used, written, per_series)
    finally:
        writer.close()
        client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=200_000, help="buckets per tier and per kind")
    parser.add_argument("--series", type=int, default=1_000)
    parser.add_argument("--sketch-pool", type=int, default=2_000, help="distinct sketches drawn from")
    parser.add_argument("--redis-series", type=int, default=4, help="series per tier and kind in Redis")
    parser.add_argument("--flush-period-ms", type=int, default=5_000)
    parser.add_argument("--flush-timeout", type=float, default=300)
    args = parser.parse_args()

    base = TallyConfig.from_env()
    tag = uuid.uuid4().hex[:8]
    cfgs = {kind: dataclasses.replace(base, keyspace=f"tally_bench_storage_{tag}_{kind}") for kind in KINDS}
    nprng = np.random.default_rng(7)
    rng = random.Random(7)
    pool = sketch_pool(args.sketch_pool, nprng)
    sizes = [len(s) for s in pool]
    now_ms = int(time.time() * 1000)
    print(f"workload: {args.buckets:,} buckets per tier and kind, {args.series:,} series "
          f"(consecutive buckets ending now), tiers {', '.join(t.name for t in DEFAULT_TIERS)}; "
          f"kinds: plain (no sketch), sketch (tally.sketch.Sketch of 50-200 lognormal values, pool of "
          f"{len(pool):,}, encoded {min(sizes)}-{max(sizes)} bytes, mean {sum(sizes) / len(sizes):.0f}); "
          f"written with BucketWriter.write_batch, RF 1, table compression default (LZ4)", flush=True)
    counter_b, timer_b, lz4_b = kafka_record_bytes(20_000, rng)
    print(f"Kafka point record (tally.point.encode, 20,000 points): counter {counter_b:.0f} B JSON, "
          f"timer {timer_b:.0f} B JSON; counters lz4 as one batch {lz4_b:.1f} B/point", flush=True)
    try:
        for kind, cfg in cfgs.items():
            ensure_schema(cfg)
            cluster, session = connect(cfg, request_timeout_s=60)
            try:
                for tier in DEFAULT_TIERS:
                    session.execute(f"ALTER TABLE {cfg.keyspace}.{bucket_table(tier)} "
                                    f"WITH memtable_flush_period_in_ms = {args.flush_period_ms}")
            finally:
                cluster.shutdown()
            writer = BucketWriter(cfg)
            try:
                for tier in DEFAULT_TIERS:
                    rows = bucket_rows(tier, args.buckets, args.series, now_ms,
                                       pool if kind == "sketch" else None, rng)
                    t0, cpu0 = time.perf_counter(), cassandra_cpu_s(base)
                    for i in range(0, len(rows), PACK_ROWS):
                        writer.write_batch(tier.name, TENANT, unpack(pack(rows[i:i + PACK_ROWS])))
                    took, cpu1 = time.perf_counter() - t0, cassandra_cpu_s(base)
                    cpu = (f"; Cassandra CPU {cpu1 - cpu0:.1f}s = {len(rows) / max(cpu1 - cpu0, 1e-9):,.0f} "
                           "rows per Cassandra CPU-second (shared node: others' load included)"
                           if cpu0 is not None and cpu1 is not None else "")
                    print(f"  wrote {len(rows):,} {kind} buckets to {cfg.keyspace}.{bucket_table(tier)} "
                          f"in {took:.1f}s ({len(rows) / took:,.0f}/s){cpu}", flush=True)
            finally:
                writer.close()
        waited = wait_flushed(base, [c.keyspace for c in cfgs.values()], args.flush_timeout)
        print(f"flushed by memtable_flush_period_in_ms={args.flush_period_ms}; SSTables stable after "
              f"{waited:.0f}s", flush=True)
        print(f"\nCassandra bytes on disk per bucket (one replica; all SSTable components / Data.db only)")
        print(f"  {'tier':5s} {'kind':7s} {'rows':>9s} {'SSTables':>8s} {'all bytes':>12s} {'B/bucket':>9s} "
              f"{'Data.db B/bucket':>17s}")
        for tier in DEFAULT_TIERS:
            for kind, cfg in cfgs.items():
                total, data, n = sstable_bytes(table_dirs(base, cfg.keyspace)[bucket_table(tier)])
                print(f"  {tier.name:5s} {kind:7s} {args.buckets:9,d} {n:8d} {total:12,d} "
                      f"{total / args.buckets:9.1f} {data / args.buckets:17.1f}", flush=True)

        import redis

        client = redis.Redis.from_url(base.redis_url)
        info = client.info("memory")
        client.close()
        headroom = (info.get("maxmemory") or 0) - info["used_memory"]
        estimate = args.redis_series * 2 * 3_258 * 600  # members x generous bytes
        if info.get("maxmemory") and headroom < 2 * estimate:
            print(f"\nRedis: skipped, shared instance has {headroom / 2**20:.0f} MiB under maxmemory "
                  f"(need ~{2 * estimate / 2**20:.0f} MiB)")
        else:
            kind_pool = {"plain": None, "sketch": pool}
            res = redis_bytes(cfgs["plain"], kind_pool, args.redis_series, now_ms, rng)
            print(f"\nRedis bytes per bucket (MEMORY USAGE of the zsets of sinks.redis_cache, full window, "
                  f"{args.redis_series} series per tier and kind)")
            for (tier_name, kind), (used, written, per_series) in res.items():
                print(f"  {tier_name:5s} {kind:7s} {written:7,d} buckets ({per_series:,} per zset) "
                      f"{used:10,d} bytes = {used / max(written, 1):6.1f} B/bucket", flush=True)
    finally:
        for cfg in cfgs.values():
            drop_keyspace(cfg)
            delete_keyspace_keys(cfg)
            # DROP keeps a snapshot (auto_snapshot): remove this bench's own leftovers only.
            shutil.rmtree(base.data_dir / "cassandra" / "data" / cfg.keyspace, ignore_errors=True)
        print(f"dropped keyspaces {', '.join(c.keyspace for c in cfgs.values())} and their Redis keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
