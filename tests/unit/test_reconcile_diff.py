"""reconcile.diff: what counts as the same bucket, what the report counts."""

import pytest

from reconcile.diff import REL_TOL, Bucket, Report, compare, diff
from tally.sketch import Sketch


def bucket(tier="1m", ts=60_000, sketch=None, **values):
    base = dict(count=3.0, sum=6.0, min=1.0, max=3.0, last=2.0, last_ts=61_500)
    base.update(values)
    return Bucket(tier, "t", 7, ts, base["count"], base["sum"], base["min"], base["max"], base["last"],
                  base["last_ts"], sketch)


def test_equal_buckets_and_float_rounding_are_the_same():
    assert compare(bucket(), bucket()) is None
    # Sums accumulated in another order differ in the last bits only.
    assert compare(bucket(sum=0.1 + 0.2 + 0.3), bucket(sum=0.3 + 0.2 + 0.1)) is None
    assert compare(bucket(sum=1.0), bucket(sum=1.0 + 1e-12)) is None


def test_missing_and_drifted_buckets_name_their_fields():
    missing = compare(bucket(), None)
    assert (missing.status, missing.relative, missing.stored) == ("missing", 1.0, None)
    drift = compare(bucket(), bucket(count=4.0, last_ts=1))
    assert drift.status == "drifted" and drift.fields == ("count", "last_ts")
    assert drift.relative == pytest.approx(1 / 3)
    assert compare(bucket(), bucket(min=1.0 + 1e-6)).fields == ("min",)


def test_sketches_compare_by_decoded_content():
    a = Sketch().add(1.0).add(5.0).add(5.0)
    same = Sketch().add(5.0).add(1.0).add(5.0)
    assert compare(bucket(sketch=a.to_bytes()), bucket(sketch=same.to_bytes())) is None
    other = compare(bucket(sketch=a.to_bytes()), bucket(sketch=Sketch().add(1.0).add(5.0).to_bytes()))
    assert other.fields == ("sketch",) and other.relative == pytest.approx(1 / 3)
    shifted = compare(bucket(sketch=a.to_bytes()), bucket(sketch=Sketch().add(1.0).add(5.0).add(9.0).to_bytes()))
    assert shifted.fields == ("sketch",) and shifted.relative == REL_TOL  # same count, other values
    assert compare(bucket(sketch=a.to_bytes()), bucket(sketch=b"\x07garbage")).relative == 1.0
    assert compare(bucket(sketch=a.to_bytes()), bucket()).fields == ("sketch",)
    assert compare(bucket(), bucket(sketch=a.to_bytes())).fields == ("sketch",)


def test_diff_fills_the_report_and_returns_what_to_rewrite():
    expected = [bucket(ts=0), bucket(ts=60_000), bucket(ts=120_000), bucket("1h", ts=0)]
    stored = {b.key: b for b in (bucket(ts=0), bucket(ts=60_000, count=30.0), bucket("1h", ts=0, sum=6.5),
                                 bucket(ts=180_000))}
    report = Report(period="2020-03-01", tiers=("1m", "1h"))
    drifts = diff(expected, stored, report)
    assert [(d.key[0], d.key[3], d.status) for d in drifts] == [
        ("1m", 60_000, "drifted"), ("1m", 120_000, "missing"), ("1h", 0, "drifted")]
    assert (report.checked, report.missing, report.drifted, report.unexpected) == (4, 1, 2, 1)
    assert report.by_tier == {"1m": {"checked": 3, "missing": 1, "drifted": 1},
                              "1h": {"checked": 1, "missing": 0, "drifted": 1}}
    assert report.largest_drift["ts"] == 60_000 and report.largest_drift["relative"] == pytest.approx(9.0)
    text = "\n".join(report.lines())
    assert "buckets checked 4, missing 1, drifted 2, repaired 0" in text and "largest drift: 9" in text
    assert report.as_dict()["largest_drift"]["fields"] == ["count"]
