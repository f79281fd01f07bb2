"""Q5 of bench/query.py answered from a rollup rule (issue 8): ``cpu_usage by (region)``.

Called by bench/query.py after its own queries, on its data and its VictoriaMetrics:

1. the rule ``cpu_by_region`` (match cpu_usage, by [region]) in a temporary rule file;
2. its rollup buckets for the 1 m and 1 s tiers computed from the bench's raw gauge buckets
   with the domain merge (``tally.rollup.rollup_buckets``: Aggregate.merge per region and
   bucket, what the streaming job computes) and written exactly like the raw buckets
   (bench/query.py ``load_tally``: Cassandra rows + the Redis window), the 4 rollup series
   named in the series index;
3. a second ``tally api`` with ``TALLY_ROLLUP_RULES_FILE`` set; Q5
   ``avg(cpu_usage{region="us-east"})`` over 6 h at 1 m timed cold (``nocache=1``) and warm
   on it, next to the same query on the API without the rule (250 raw series) and on
   VictoriaMetrics; the response must name the rule (``data.rollups``) and the values must
   equal the raw answer (every bench series has one sample per bucket: the planner's
   condition for gauge averages, see tally/query/rollups.py).

Alone (only that comparison, about 3 minutes): ``.venv/bin/python bench/query_rollup.py``
(own keyspace ``tally_bench_rollup``, removed at the end).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import time

import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages

from sinks.cassandra import BucketRow, BucketWriter  # noqa: E402
from tally.aggregate import Aggregate  # noqa: E402
from tally.rollup import ROLLUP_LABEL, parse_rules, rollup_buckets  # noqa: E402
from tally.series import series_id  # noqa: E402

RULE = {"name": "cpu_by_region", "match": "cpu_usage", "by": ["region"]}
RULE_YAML = "rollups:\n  - name: cpu_by_region\n    match: cpu_usage\n    by: [region]\n"


def rollup_rows(data, tenant: str) -> dict:
    """tier -> BucketRows of the rollup series, merged from the bench's raw gauge buckets."""
    rules = parse_rules({"rollups": [RULE]})
    out = {}
    for tier in ("1m", "1s"):
        sids, _labels, ts, values = data.gauge[tier]
        tsl = ts.tolist()
        raw = ((sid, t, Aggregate(1.0, v, v, v, v, t)) for sid, row in zip(sids, values.tolist())
               for t, v in zip(tsl, row))
        merged = rollup_buckets(rules, raw)
        out[tier] = [BucketRow(tenant, s.id, t, a.count, a.sum, a.min, a.max, a.last, a.last_time_ms)
                     for (s, t), a in merged.items()]
    return out


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(cfg, data, args, bench, api_port: int, vm_port: int | None) -> None:
    """Load the rollup, start an API with the rule, time Q5 three ways, print the table."""
    print("\nQ5 from a rollup rule (cpu_usage by region):", flush=True)
    t0 = time.perf_counter()
    rows = rollup_rows(data, bench.TENANT)
    print("  rollup buckets merged from the raw buckets: " + ", ".join(
        f"{tier} {len(r):,}" for tier, r in rows.items()) + f" in {time.perf_counter() - t0:.1f} s", flush=True)
    bench.load_tally(cfg, data, rows)
    writer = BucketWriter(cfg)
    try:
        for region in bench.REGIONS:
            sid = series_id(bench.TENANT, "cpu_usage", {"region": region, ROLLUP_LABEL: RULE["name"]})
            writer.index_series({"series": sid.key, "sid": sid.id, "type": "g"})
    finally:
        writer.close()
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-rollup-"))
    rules_path = workdir / "rollups.yaml"
    rules_path.write_text(RULE_YAML)
    with _env(TALLY_ROLLUP_RULES_FILE=str(rules_path)):
        rollup_proc, rollup_port = bench.start_api(cfg)
    try:
        expr = 'avg(cpu_usage{region="us-east"})'
        params = {"query": expr, "start": (data.end_1m - 6 * bench.HOUR + bench.MIN) / 1000,
                  "end": data.end_1m / 1000, "step": 60}
        plain = http.client.HTTPConnection("127.0.0.1", api_port, timeout=120)
        rolled = http.client.HTTPConnection("127.0.0.1", rollup_port, timeout=120)
        # One untimed query per API first (another region): a fresh API connects to Cassandra
        # on its first query, and VictoriaMetrics' first run is dropped as well.
        warmup = {**params, "query": 'avg(cpu_usage{region="eu-west"})', "nocache": 1}
        for conn in (plain, rolled):
            bench.timed_get(conn, "/api/v1/query_range", warmup)
        raw_times, raw_body, raw_err = bench.timed_runs(plain, "/api/v1/query_range", {**params, "nocache": 1},
                                                        args.runs)
        cold, body, err = bench.timed_runs(rolled, "/api/v1/query_range", {**params, "nocache": 1}, args.runs)
        bench.timed_get(rolled, "/api/v1/query_range", params)  # fill the result cache
        warm, _, werr = bench.timed_runs(rolled, "/api/v1/query_range", params, args.runs)
        vm_txt, ratio = "-", "-"
        if vm_port:
            vm = http.client.HTTPConnection("127.0.0.1", vm_port, timeout=120)
            vt, _, verr = bench.timed_runs(vm, "/api/v1/query_range", {**params, "nocache": 1}, args.runs + 1)
            vt = vt[1:]
            vm_txt = bench.fmt(vt, verr)
            if cold and vt:
                ratio = f"{bench.percentiles(cold)[0] / bench.percentiles(vt)[0]:.2f}x"
        doc = orjson.loads(body) if body else {}
        used = [u["rule"] for u in doc.get("data", {}).get("rollups", [])]
        same = "-"
        if body and raw_body:
            a = orjson.loads(body)["data"]["result"][0]["values"]
            b = orjson.loads(raw_body)["data"]["result"][0]["values"]
            diff = max(abs(float(x[1]) - float(y[1])) for x, y in zip(a, b))
            same = f"{len(a)} steps, max |rollup - raw| = {diff:.2e}" if len(a) == len(b) else "step counts differ"
        print(f"  {'':30} {'p50 / p99 ms':>15}")
        print(f"  {'without the rule (250 series)':30} {bench.fmt(raw_times, raw_err):>15}")
        print(f"  {'with the rule, cold':30} {bench.fmt(cold, err):>15}   answered from rollup: {used or 'NO'}")
        print(f"  {'with the rule, warm':30} {bench.fmt(warm, werr):>15}")
        print(f"  {'VictoriaMetrics (raw data)':30} {vm_txt:>15}   cold p50 / VM p50 = {ratio} (target <= 3x)")
        print(f"  values: {same}", flush=True)
        if not used:
            print("  WARNING: the rollup was not used")
    finally:
        rollup_proc.terminate()
        try:
            rollup_proc.wait(timeout=15)
        except Exception:  # noqa: BLE001
            rollup_proc.kill()
        for p in workdir.iterdir():
            p.unlink()
        workdir.rmdir()


def main(argv=None) -> int:
    """Only Q5 with and without the rule and on VictoriaMetrics (the cpu_usage 1 m buckets of
    bench/query.py's workload; own keyspace): ``.venv/bin/python bench/query_rollup.py``."""
    import argparse
    import dataclasses
    import shutil

    import query as bench  # bench/query.py, the same folder

    from sinks.cassandra import drop_keyspace
    from sinks.redis_cache import delete_keyspace_keys
    from tally.config import TallyConfig

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keyspace", default="tally_bench_rollup")
    parser.add_argument("--skip-vm", action="store_true")
    args = parser.parse_args(argv)
    args.dist_hosts, args.dist_rate = 1, 1  # the distribution part of the workload is not used here
    cfg = dataclasses.replace(TallyConfig.from_env(), keyspace=args.keyspace)
    print(f"workload: cpu_usage (gauge), {args.series} series (host, region; 4 regions), 6 h of 1 m buckets")
    data = bench.make_data(args)
    rows = {"1m": [r for r in bench.bucket_rows(data)["1m"]]}
    drop_keyspace(cfg)
    delete_keyspace_keys(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-rollup-main-"))
    procs = []
    try:
        bench.load_tally(cfg, data, rows)
        vm_port = None
        if not args.skip_vm:
            vm_proc, vm_port = bench.start_vm(workdir)
            if vm_proc:
                procs.append(vm_proc)
                bench.load_vm(vm_port, data)
        api_proc, api_port = bench.start_api(cfg)
        procs.append(api_proc)
        print(f"(load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; 2 cores shared)")
        run(cfg, data, args, bench, api_port, vm_port)
        print(f"(load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except Exception:  # noqa: BLE001
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        drop_keyspace(cfg)
        delete_keyspace_keys(cfg)
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
