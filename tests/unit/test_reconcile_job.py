"""reconcile.job and reconcile.sql without Flink: periods, flags, schedule, report files, SQL."""

import datetime as dt
import json

import pytest

from reconcile import job, sql
from reconcile.diff import Report
from tally.config import TallyConfig
from tally.tiers import DEFAULT_TIERS

DAY = dt.date(2020, 3, 1)
DAY_MS = 1_583_020_800_000
UTC = dt.timezone.utc


def test_parse_hours():
    assert job.parse_hours(None) == job.ALL_HOURS
    assert job.parse_hours("3,4") == (3, 4)
    assert job.parse_hours("0-2, 12") == (0, 1, 2, 12)
    with pytest.raises(ValueError, match="--hours"):
        job.parse_hours("x")
    with pytest.raises(ValueError, match="0..23"):
        job.Period(DAY, (24,))


def test_period_tiers_and_ranges():
    day = job.Period(DAY)
    assert day.whole_day and day.tiers == DEFAULT_TIERS and day.label() == "2020-03-01"
    assert day.ranges_ms == [(DAY_MS, DAY_MS + 86_400_000)]
    some = job.Period(DAY, (5, 3, 4, 9))
    assert [t.name for t in some.tiers] == ["1s", "10s", "1m", "1h"]  # 1 d needs the whole day
    assert some.ranges_ms == [(DAY_MS + 3 * 3_600_000, DAY_MS + 6 * 3_600_000),
                              (DAY_MS + 9 * 3_600_000, DAY_MS + 10 * 3_600_000)]
    assert some.label() == "2020-03-01 hours 3,4,5,9"


def test_batch_classify_reads_only_the_period_and_dedups_by_idempotency_id():
    views = dict(sql.batch_classify_views("archive", DAY, (3, 4)))
    assert list(views) == ["period_points", "numbered", "classified"]
    assert "`date` = '2020-03-01' AND `hour` IN ('03', '04')" in views["period_points"]
    assert f"`ts` >= {DAY_MS + 3 * 3_600_000} AND `ts` < {DAY_MS + 5 * 3_600_000}" in views["period_points"]
    assert "PARTITION BY kind0, pid, seq" in views["numbered"]
    assert "'dup'" in views["classified"] and "rt" in views["classified"]
    ddl = sql.archive_ddl("file:///a/b")
    assert "PARTITIONED BY (`date`, `hour`)" in ddl and "'path' = 'file:///a/b'" in ddl


def test_next_run_is_strictly_after_now():
    at = dt.time(2, 30)
    assert job.next_run(dt.datetime(2026, 11, 23, 1, 0, tzinfo=UTC), at) == dt.datetime(2026, 11, 23, 2, 30, tzinfo=UTC)
    assert job.next_run(dt.datetime(2026, 11, 23, 2, 30, tzinfo=UTC), at) == dt.datetime(2026, 11, 24, 2, 30, tzinfo=UTC)
    assert job.next_run(dt.datetime(2026, 12, 31, 23, 0, tzinfo=UTC), at) == dt.datetime(2027, 1, 1, 2, 30, tzinfo=UTC)


def test_schedule_reconciles_the_previous_day_and_survives_a_failure(monkeypatch, capsys):
    clock = [dt.datetime(2026, 11, 23, 1, 0, tzinfo=UTC)]
    slept, periods = [], []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += dt.timedelta(seconds=seconds)

    def fake_run(cfg, period, dry_run):
        periods.append(period.date)
        if len(periods) == 1:
            raise RuntimeError("cassandra down")
        return Report(period=period.label(), tiers=()), "report.json"

    monkeypatch.setattr(job, "run", fake_run)
    job.schedule(TallyConfig(), dt.time(2, 30), sleep=sleep, now=lambda: clock[0], runs=2)
    assert slept == [5400.0, 86400.0]
    assert periods == [dt.date(2026, 11, 22), dt.date(2026, 11, 23)]
    out = capsys.readouterr()
    assert "failed: RuntimeError('cassandra down')" in out.err and "report: report.json" in out.out


def test_report_is_stored_as_json_under_data_dir(tmp_path):
    cfg = TallyConfig(home=tmp_path, keyspace="ks")
    report = Report(period="2020-03-01 hours 3,4", tiers=("1s",), checked=5, missing=1, repaired=1)
    path = job.save_report(cfg, job.Period(DAY, (3, 4)), report, now=dt.datetime(2026, 11, 23, 2, 30, 5, tzinfo=UTC))
    assert path == tmp_path / "data" / "reconcile" / "ks" / "2020-03-01_h03-04_20261123T023005Z.json"
    assert json.loads(path.read_text())["missing"] == 1


def test_cli_parses_reconcile_and_archive():
    from tally.cli import build_parser

    args = build_parser().parse_args(["reconcile", "--date", "2020-03-01", "--hours", "3,4", "--dry-run"])
    assert (args.date, args.hours, args.dry_run, args.schedule) == ("2020-03-01", "3,4", True, None)
    args = build_parser().parse_args(["archive", "--once"])
    assert args.once
