"""Tally nightly reconciliation: recompute a period from the raw-log archive, repair drift.

What it computes: every bucket of every tier for one UTC day (or some hours of it) from
the archived points (tally/archive.py), with the stream's own SQL (tally.aggsql.bucket_views:
phase 1, phase 2, rollup cascade) and Java UDFs (sketch_agg, last_by_time), on Flink in
BATCH mode.  Differences from the stream: nothing is late (points beyond grace, which the
stream sent to the late topic, are counted now) and replays are every further copy of an
idempotency id (pid, seq), grouped rather than compared in arrival order (reconcile/sql.py).

Then (Python, finished buckets only): read the period's partitions from Cassandra, compare
(reconcile/diff.py: floats within a relative 1e-9, sketches by decoded content), upsert the
missing and drifted buckets with the stream's BucketWriter, set their ``repaired_ms``, and
store + print a report (buckets checked, missing, drifted, repaired, largest drift) under
``<data_dir>/reconcile/<keyspace>/``.  Running it again repairs nothing.

Period: ``--date YYYY-MM-DD`` (UTC) and optionally ``--hours 3,4``.  With hours, the tiers
up to 1 h are reconciled for those hours; the 1 d tier needs the whole day and is skipped.

Run it:  ``tally reconcile --date 2026-11-22`` (in-process Flink mini-cluster), or on the
cluster: ``flink run -py reconcile/job.py --date 2026-11-22``.  Nightly: ``tally reconcile
--schedule 02:30`` (reconciles the previous UTC day every day at 02:30 UTC) or cron.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reconcile import ReconcileError, sql
from reconcile.diff import Bucket, Report, diff
from tally import aggsql
from tally.archive import archive_location, period_folders
from tally.config import TallyConfig
from tally.tiers import DEFAULT_TIERS, Tier

JOB_NAME = "tally-reconcile"
ALL_HOURS = tuple(range(24))


@dataclass(frozen=True)
class Period:
    """One UTC day, or some hours of it, and the tiers that can be recomputed from it."""

    date: dt.date
    hours: tuple[int, ...] = ALL_HOURS

    def __post_init__(self):
        if not self.hours or any(not 0 <= h <= 23 for h in self.hours):
            raise ValueError(f"hours must be in 0..23, got {self.hours}")
        object.__setattr__(self, "hours", tuple(sorted(set(self.hours))))

    @property
    def whole_day(self) -> bool:
        return self.hours == ALL_HOURS

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """Tiers whose buckets lie inside the period: all for a whole day, else up to 1 h."""
        return tuple(t for t in DEFAULT_TIERS if self.whole_day or t.resolution_seconds <= 3_600)

    @property
    def ranges_ms(self) -> list[tuple[int, int]]:
        return sql.period_bounds_ms(self.date, self.hours)

    def label(self) -> str:
        if self.whole_day:
            return f"{self.date:%Y-%m-%d}"
        return f"{self.date:%Y-%m-%d} hours {','.join(str(h) for h in self.hours)}"


Source = Callable[["TableEnvironment", TallyConfig, Period], str]  # registers a table, returns its name
Sink = Callable[["TableEnvironment", "Table", TallyConfig, Period], Report]


def job_name(cfg: TallyConfig, period: Period) -> str:
    return f"{JOB_NAME} {period.label()} -> {cfg.keyspace}"


def archive_source(t_env, cfg: TallyConfig, period: Period) -> str:
    """Register the archive (``cfg.archive_uri``) as table ``archive``."""
    location = archive_location(cfg)
    uri = location if "://" in location else Path(location).resolve().as_uri()
    t_env.execute_sql(sql.archive_ddl(uri, "archive"))
    return "archive"


RESTART_ATTEMPTS = 2  # of the reconciliation job on the cluster (it is a batch job)


def build(t_env, source: Source, sink: Sink, cfg: TallyConfig, period: Period) -> Report:
    """Wire the batch job on ``t_env`` (a batch TableEnvironment) and hand the ``buckets``
    table (tally.aggsql.BUCKET_COLUMNS) to ``sink``; returns the sink's report."""
    from tally.udf import register_udfs

    conf = t_env.get_config()
    conf.set("table.local-time-zone", aggsql.JOB_SETTINGS["table.local-time-zone"])
    conf.set("pipeline.name", job_name(cfg, period))
    # A failure that repeats (bad data, a bug) surfaces after RESTART_ATTEMPTS, not after the
    # cluster's 1,000 restarts meant for the streaming job; a lost TaskManager is still retried.
    conf.set("restart-strategy.type", "fixed-delay")
    conf.set("restart-strategy.fixed-delay.attempts", str(RESTART_ATTEMPTS))
    conf.set("restart-strategy.fixed-delay.delay", "2 s")
    register_udfs(t_env)
    table = source(t_env, cfg, period)
    for name, query in sql.batch_classify_views(table, period.date, period.hours):
        t_env.create_temporary_view(name, t_env.sql_query(query))
    for name, query in aggsql.bucket_views("classified", tiers=period.tiers, salt_buckets=cfg.phase1_salts):
        t_env.create_temporary_view(name, t_env.sql_query(query))
        if name == "buckets":  # one row per bucket; later views are the stream sink's packing
            break
    return sink(t_env, t_env.from_path("buckets"), cfg, period)


def collect(t_env, table) -> tuple[list[Bucket], dict[str, int]]:
    """Run the job: the recomputed buckets, and counts of the other row kinds (dup, rejected).

    Rows come back through Arrow batches (``to_pandas``): PyFlink's row-by-row collect
    costs ~1 ms a row.  Keys are made NOT NULL first (a rejected row has no sid), so the
    64-bit ids stay int64 columns and never pass through a float."""
    t_env.create_temporary_view("reconcile_rows", table)
    frame = t_env.sql_query(sql.COLLECT_QUERY.format(table="reconcile_rows")).to_pandas()
    buckets, others = [], {}
    columns = [frame[c].tolist() for c in sql.COLLECT_COLUMNS]
    for kind, tier, tenant, sid, ts, cnt, total, vmin, vmax, vlast, last_ts, sk in zip(*columns):
        if kind == "bucket":
            buckets.append(Bucket(tier, tenant, sid, ts, cnt, total, vmin, vmax, vlast, last_ts,
                                  bytes(sk) if sk is not None else None))
        else:
            others[kind] = others.get(kind, 0) + 1
    return buckets, others


def repair_sink(dry_run: bool = False) -> Sink:
    """The production sink: diff against Cassandra, rewrite what differs (unless dry_run)."""

    def sink(t_env, table, cfg: TallyConfig, period: Period) -> Report:
        from reconcile.store import BucketStore

        started = time.monotonic()
        report = Report(period=period.label(), tiers=tuple(t.name for t in period.tiers))
        store = BucketStore(cfg, period.tiers)
        try:
            # Cassandra first: a missing keyspace fails in a second, not after the batch job.
            altered = store.ensure_marker_column()
            if altered:
                report.notes.append(f"added repaired_ms to {', '.join(sorted(set(altered)))}")
            if not _archive_folders(cfg, period):
                report.notes.append(f"no archive folder for {period.label()} under {archive_location(cfg)}: "
                                    "nothing recomputed")
                return report
            _check_archive_lag(cfg, report)
            clock = time.monotonic()
            expected, others = collect(t_env, table)
            report.timings_s["recompute"] = time.monotonic() - clock
            report.duplicates, report.rejected = others.get("dup", 0), others.get("rejected", 0)
            by_tier: dict[str, list[Bucket]] = {t.name: [] for t in period.tiers}
            for b in expected:
                by_tier[b.tier].append(b)
            to_repair = []
            report.timings_s.update(read=0.0, diff=0.0)
            for tier in period.tiers:
                mine = by_tier[tier.name]
                clock = time.monotonic()
                stored = store.read(tier.name, sorted({(b.tenant, b.sid) for b in mine}), period.ranges_ms)
                report.timings_s["read"] += time.monotonic() - clock
                clock = time.monotonic()
                drifts = diff(mine, stored, report)
                by_key = {b.key: b for b in mine}
                to_repair.extend(by_key[d.key] for d in drifts)
                report.timings_s["diff"] += time.monotonic() - clock
            if dry_run:
                report.notes.append("dry run: nothing rewritten")
            else:
                clock = time.monotonic()
                report.repaired = store.repair(to_repair)
                report.timings_s["repair"] = time.monotonic() - clock
        finally:
            store.close()
            report.duration_s = time.monotonic() - started
        return report

    return sink


def _check_archive_lag(cfg: TallyConfig, report: Report) -> None:
    """Note in the report when the archiver has not caught up with the points topic: the
    records it has not archived yet may belong to the period."""
    from tally.archive import lag

    try:
        behind = sum(lag(cfg).values())
    except Exception as exc:  # Kafka unreachable: the archive may still be complete
        report.notes.append(f"archive lag unknown: {exc!r}")
        return
    if behind:
        report.notes.append(f"the archiver is {behind} records behind the points topic: run `tally archive "
                            "--once` first if they belong to this period")


def _archive_folders(cfg: TallyConfig, period: Period) -> list[str]:
    location = archive_location(cfg)
    if "://" in location and not location.startswith("file://"):
        return period_folders(period.date, period.hours)  # remote store: let Flink list it
    root = Path(location.removeprefix("file://"))
    return [f for f in period_folders(period.date, period.hours) if (root / f).is_dir()]


def report_path(cfg: TallyConfig, period: Period, now: dt.datetime) -> Path:
    """Where a run's JSON report is stored."""
    hours = "" if period.whole_day else "_h" + "-".join(f"{h:02d}" for h in period.hours)
    return cfg.data_dir / "reconcile" / cfg.keyspace / f"{period.date:%Y-%m-%d}{hours}_{now:%Y%m%dT%H%M%SZ}.json"


def save_report(cfg: TallyConfig, period: Period, report: Report, now: dt.datetime | None = None) -> Path:
    path = report_path(cfg, period, now or dt.datetime.now(dt.timezone.utc))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    return path


def run(cfg: TallyConfig, period: Period, dry_run: bool = False, t_env=None) -> tuple[Report, Path]:
    """Reconcile one period (a Flink batch job in this process unless ``t_env`` is given);
    returns the report and where it was stored."""
    if t_env is None:
        from pyflink.table import EnvironmentSettings, TableEnvironment

        t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    started = time.monotonic()
    report = build(t_env, archive_source, repair_sink(dry_run), cfg, period)
    report.duration_s = time.monotonic() - started
    return report, save_report(cfg, period, report)


def next_run(now: dt.datetime, at: dt.time) -> dt.datetime:
    """The next UTC time of day ``at`` strictly after ``now`` (an aware datetime)."""
    candidate = now.astimezone(dt.timezone.utc).replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + dt.timedelta(days=1)


def schedule(cfg: TallyConfig, at: dt.time, dry_run: bool = False, sleep=time.sleep,
             now=lambda: dt.datetime.now(dt.timezone.utc), runs: int | None = None) -> None:
    """Every day at ``at`` (UTC), reconcile the previous UTC day; a failed run is printed and
    the schedule goes on."""
    done = 0
    while runs is None or done < runs:
        when = next_run(now(), at)
        print(f"next reconciliation at {when:%Y-%m-%d %H:%M} UTC", flush=True)
        sleep(max(0.0, (when - now()).total_seconds()))
        period = Period(when.date() - dt.timedelta(days=1))
        try:
            report, path = run(cfg, period, dry_run)
            print("\n".join(report.lines()) + f"\nreport: {path}", flush=True)
        except Exception as exc:  # keep the schedule alive; the next night retries
            print(f"reconciliation of {period.label()} failed: {exc!r}", file=sys.stderr, flush=True)
        done += 1


def parse_hours(text: str | None) -> tuple[int, ...]:
    """``"3,4"`` or ``"0-5,12"`` → hours; None → the whole day."""
    if not text:
        return ALL_HOURS
    hours = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            hours.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"--hours: {part!r} is not an hour or a range like 3-5") from None
    return tuple(hours)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The reconcile flags (shared by ``tally reconcile`` and this module's main)."""
    parser.add_argument("--date", help="UTC day to reconcile, YYYY-MM-DD (default: yesterday)")
    parser.add_argument("--hours", help="only these hours of the day, e.g. 3,4 or 0-5 (tiers up to 1h)")
    parser.add_argument("--dry-run", action="store_true", help="report differences, rewrite nothing")
    parser.add_argument("--schedule", metavar="HH:MM",
                        help="run forever: every day at HH:MM UTC reconcile the previous day")
    parser.add_argument("--keyspace", help="Cassandra keyspace (default TALLY_KEYSPACE or tally)")
    parser.add_argument("--archive-uri", help="archive location (default TALLY_ARCHIVE_URI or <data_dir>/archive)")
    parser.add_argument("--on-cluster", action="store_true",
                        help="run the batch job on the local Flink cluster (flink run -py reconcile/job.py) "
                             "instead of an in-process mini-cluster")


def execute(args, cfg: TallyConfig) -> int:
    """Run what the parsed flags ask for; returns the exit code."""
    overrides = {k: v for k, v in (("keyspace", args.keyspace), ("archive_uri", args.archive_uri)) if v}
    cfg = dataclasses.replace(cfg, **overrides)
    if args.schedule:
        try:
            at = dt.datetime.strptime(args.schedule, "%H:%M").time()
        except ValueError:
            raise ReconcileError(f"--schedule wants HH:MM (UTC), got {args.schedule!r}") from None
        schedule(cfg, at, args.dry_run)
        return 0
    if getattr(args, "on_cluster", False):
        return _run_on_cluster(args, cfg)
    try:
        date = (dt.date.fromisoformat(args.date) if args.date
                else dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))
        period = Period(date, parse_hours(args.hours))
    except ValueError as exc:
        raise ReconcileError(f"bad period: {exc}") from None
    report, path = run(cfg, period, args.dry_run)
    print("\n".join(report.lines()) + f"\nreport: {path}")
    return 0


def _run_on_cluster(args, cfg: TallyConfig) -> int:
    """``flink run -py reconcile/job.py`` (attached) against the stack's Flink cluster, with
    the same flags; the client process diffs, repairs and prints the report."""
    import subprocess

    from tally.config import REPO_ROOT
    from tally.stack.components import Flink

    flags = ["--keyspace", cfg.keyspace, "--archive-uri", archive_location(cfg)]
    for name in ("date", "hours"):
        if getattr(args, name):
            flags += [f"--{name}", getattr(args, name)]
    if args.dry_run:
        flags.append("--dry-run")
    flink = Flink()
    cmd = ["bash", str(flink.flink_home() / "bin" / "flink"), "run", "-py", str(Path(__file__).resolve()), *flags]
    return subprocess.run(cmd, env=flink.env(cfg), cwd=REPO_ROOT).returncode


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="reconcile/job.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        sys.exit(execute(parser.parse_args(argv), TallyConfig.from_env()))
    except ReconcileError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
