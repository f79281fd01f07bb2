"""Data-quality figures and the sketch histogram behind the dashboard's panels (pure)."""

from __future__ import annotations

import pytest

from tally.quality import bucket_status, dq_counters, histogram, ingestion_figures, sketch_bins
from tally.sketch import Sketch


def test_dq_counters_read_the_jobs_hash():
    raw = {b"duplicates_dropped": b"3", b"rejected": b"2", b"late_beyond_grace:1s": b"5",
           b"late_beyond_grace:10s": b"5"}
    c = dq_counters(raw)
    assert (c["duplicates_dropped"], c["rejected"], c["late_beyond_grace"]) == (3, 2, 5)
    assert c["late_beyond_grace_by_tier"]["10s"] == 5 and c["late_beyond_grace_by_tier"]["1d"] == 0
    assert dq_counters({})["duplicates_dropped"] == 0


def test_ingestion_lag_and_points_per_second():
    now = 1_000_000
    buckets = [(now - 70_000, 100.0), (now - 30_000, 40.0), (now - 5_000, 20.0)]
    lag, pps = ingestion_figures(buckets, now)
    assert lag == 4.0 and pps == pytest.approx(60 / 60)
    assert ingestion_figures([], now) == (None, 0.0)


def test_bucket_status_provisional_final_repaired():
    # 10 s buckets over [1000, 1100], now 1100, grace 5: buckets starting after 1085 are provisional.
    st = bucket_status(1000, 1100, 10, 5, 1100, repaired_starts_s=[1020, 1030, 2000])
    assert st["total"] == 11
    # 1090 and 1100 end at 1100 and 1110: plus grace, both after now
    assert st["provisional"] == 2 and st["provisional_from"] == 1090.0
    assert st["repaired"] == 2 and st["final"] == 7
    old = bucket_status(0, 100, 10, 5, 10_000)
    assert (old["provisional"], old["final"], old["provisional_from"]) == (0, 11, None)
    edge = bucket_status(1000, 1100, 10, 5, 1095)   # 1080 ends 1090, + grace = 1095: final exactly now
    assert edge["provisional"] == 2 and edge["provisional_from"] == 1090.0
    assert bucket_status(1000, 1100, 10, 5, 1094)["provisional"] == 3


def test_histogram_bins_cover_the_values_and_mark_quantiles():
    sk = Sketch()
    values = [1.0 + i * 0.01 for i in range(1000)] + [-2.0, 0.0]
    sk.add_many(values)
    bins = sketch_bins(sk)
    assert sum(b["count"] for b in bins) == len(values)
    assert [b["lo"] for b in bins] == sorted(b["lo"] for b in bins)
    for b in bins:
        assert b["lo"] <= b["hi"]
    # every value falls in a bin of its own sign (bins are (lo, hi])
    for v in (1.0, 5.5, 10.99, -2.0):
        assert any(b["lo"] < v <= b["hi"] or (b["lo"] <= v <= b["hi"] and v < 0) for b in bins), v
    h = histogram(sk)
    assert h["count"] == len(values) and h["alpha"] == 0.01
    assert h["quantiles"]["p50"] == pytest.approx(5.99, rel=0.011)
    assert h["quantiles"]["p99"] == pytest.approx(10.89, rel=0.011)
    assert histogram(None)["bins"] == [] and histogram(Sketch())["quantiles"]["p50"] is None
