"""Benchmark: one reconciliation run of a synthetic day (stack up: Cassandra, Redis).

Workload: ``--series`` series (a third timers with sketches, the rest counters and gauges),
``--points-per-series`` points each spread over one UTC day (2020-04-01), written straight
into a private archive folder in tally.archive's layout, and a private keyspace with no
buckets.  Run 1 recomputes the day with the Flink batch job (in-process mini-cluster) and
finds every bucket missing, so it rewrites all of them; run 2 finds nothing to do.  Prints
points, buckets, and each run's time split (recompute / read / diff / repair).

    .venv/bin/python bench/reconcile_day.py [--series 100] [--points-per-series 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconcile import job  # noqa: E402
from sinks.cassandra import drop_keyspace, ensure_schema  # noqa: E402
from tally import archive  # noqa: E402
from tally import point as points  # noqa: E402
from tally.config import TallyConfig  # noqa: E402
from tally.series import series_id  # noqa: E402

DAY = dt.date(2020, 4, 1)
DAY_MS = 1_585_699_200_000  # 2020-04-01T00:00:00Z


def write_archive(root: Path, n_series: int, per_series: int, seed: int = 1) -> int:
    """The synthetic day as archive files (one partition, one segment per hour folder)."""
    rng = random.Random(seed)
    folders = defaultdict(list)
    seq = 0
    for i in range(n_series):
        mtype = ("ms", "c", "g")[i % 3]
        s = series_id("bench", f"metric.{mtype}", {"i": str(i)})
        for k in range(per_series):
            ts = DAY_MS + rng.randrange(86_400_000)
            value = round(rng.lognormvariate(3, 1), 3) if mtype == "ms" else float(rng.randint(0, 100))
            seq += 1
            record = points.encode(points.from_value(s, mtype, ts, value, "bench", seq))
            folders[archive.hour_folder(ts)].append(record)
    store = archive.LocalStore(root)
    for folder, lines in folders.items():
        store.put(f"{folder}/{archive.file_name(0, 0)}", archive.encode_file(lines))
    return seq


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--points-per-series", type=int, default=1000)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tally-bench-reconcile-"))
    cfg = dataclasses.replace(TallyConfig.from_env(), home=tmp / "home", archive_uri=str(tmp / "archive"),
                              keyspace=f"tally_bench_{uuid.uuid4().hex[:8]}", archive_group="tally-bench-none")
    try:
        started = time.monotonic()
        n = write_archive(tmp / "archive", args.series, args.points_per_series)
        print(f"workload: {n} points, {args.series} series ({args.series // 3 + (args.series % 3 > 0)} timers), "
              f"one day; archive written in {time.monotonic() - started:.1f}s")
        ensure_schema(cfg)
        for label in ("run 1 (empty keyspace: every bucket missing)", "run 2 (nothing to repair)"):
            started = time.monotonic()
            report, _path = job.run(cfg, job.Period(DAY))
            wall = time.monotonic() - started
            print(f"{label}: {wall:.1f}s wall, {n / wall:,.0f} points/s; " + " | ".join(report.lines()[1:]))
    finally:
        drop_keyspace(cfg)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
