"""The data-quality report and its Prometheus text rendering (tally.quality, pure)."""

from __future__ import annotations

import re

from tally.quality import dq_counters, dq_report, prometheus_text


def _gathered(**over):
    base = {"tenant": "acme", "now_ms": 10_000, "warnings": [],
            "counters": {b"duplicates_dropped": b"400", b"rejected": b"4", b"rejected:bad_value": b"2",
                         b"late_beyond_grace:1s": b"3", b"late_beyond_grace:1d": b"3"},
            "lag": {"total": 7, "partitions": {0: 5, 1: 2}, "committed": 2},
            "watermark_ms": 4_000, "records_per_second": 120.5, "unparseable_records": 3.0}
    return {**base, **over}


def test_report_holds_every_figure():
    r = dq_report(_gathered(), grace_s=2)
    assert r["duplicates_dropped"] == 400 and r["late_beyond_grace"] == 3
    assert r["rejected_by_reason"] == {"malformed_record": 4, "bad_value": 2}
    assert r["kafka_consumer_lag_records"] == 7 and r["kafka_consumer_lag_by_partition"] == {"0": 5, "1": 2}
    assert r["event_time_lag_seconds"] == 6.0 and r["points_per_second"] == 120.5
    assert r["unparseable_records"] == 3.0
    assert r["bucket_status"]["final_before_ms"] == 4_000 and r["late_within_grace"] == 0
    assert dq_counters({b"late_within_grace": b"9"})["late_within_grace"] == 9


def test_unknown_figures_stay_unknown():
    r = dq_report(_gathered(counters=None, lag=None, watermark_ms=None, records_per_second=None,
                            unparseable_records=None, warnings=["lag unavailable"]), grace_s=2)
    assert r["duplicates_dropped"] is None and r["kafka_consumer_lag_records"] is None
    assert r["event_time_lag_seconds"] is None and r["warnings"] == ["lag unavailable"]
    text = prometheus_text([r])
    assert "tally_dq_duplicates_dropped_total" not in text and "lag_records" not in text  # never a made-up 0
    assert "unparseable" not in text


def test_prometheus_text_format():
    a = dq_report(_gathered(), grace_s=2)
    b = dq_report(_gathered(tenant='we"ird', counters={b"duplicates_dropped": b"1"}), grace_s=2)
    text = prometheus_text([a, b])
    assert text.endswith("\n")
    assert 'tally_dq_duplicates_dropped_total{tenant="acme"} 400' in text
    assert 'tally_dq_duplicates_dropped_total{tenant="we\\"ird"} 1' in text
    assert 'tally_dq_rejected_total{tenant="acme",reason="malformed_record"} 4' in text
    assert 'tally_dq_kafka_consumer_lag_records{partition="0"} 5' in text
    assert "tally_dq_event_time_lag_seconds 6" in text and "tally_dq_final_before_timestamp_seconds 4" in text
    assert "tally_dq_unparseable_records_total 3\n" in text
    for line in text.splitlines():  # every line is a comment or `name{labels} value`
        assert line.startswith("# ") or re.match(r'^[a-z_]+(\{[^}]*\})? \S+$', line), line
    names = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")]
    assert len(names) == len(set(names))  # one TYPE line per family
