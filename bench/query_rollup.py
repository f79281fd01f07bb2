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
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import time
from pathlib import Path

import orjson

from sinks.cassandra import BucketRow, BucketWriter
from tally.aggregate import Aggregate
from tally.rollup import ROLLUP_LABEL, parse_rules, rollup_buckets
from tally.series import series_id

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
