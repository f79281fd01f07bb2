"""Overflow actions of the cardinality limits (tally.limits): reject, drop_label, hash:N,
the same path for the gateway's ingest and the agent's aggregator, and the counters."""

from __future__ import annotations

import pytest

from tally.agent.aggregator import Aggregator
from tally.config import TallyConfig
from tally.gateway.ingest import from_push
from tally.limits import Limits, Overflow, Rejection, SeriesLimiter, limiter_metric_lines
from tally.series import series_id


def req(i, host="a"):
    return series_id("t", "req", {"request_id": str(i), "host": host})


def test_overflow_setting_is_parsed_and_checked():
    assert Overflow.parse("reject") == Overflow("reject")
    assert Overflow.parse("hash:16") == Overflow("hash", 16) and Overflow("hash", 16).name == "hash:16"
    assert Overflow.parse(" DROP_LABEL ").action == "drop_label"
    for bad in ("hash", "hash:0", "hash:x", "drop", ""):
        with pytest.raises(ValueError, match="label_values_overflow must be"):
            Limits(label_values_overflow=bad)
    cfg = TallyConfig.from_env({"TALLY_LIMIT_LABEL_VALUES_OVERFLOW": "hash:32"})
    assert Limits.from_config(cfg).overflow("too_many_label_values") == Overflow("hash", 32)
    assert Limits.from_config(cfg).overflow("too_many_series_metric") == Overflow("reject")


def test_reject_is_the_default_and_returns_the_series_itself():
    lim = SeriesLimiter(Limits(max_label_values_per_metric_label=10), clock=lambda: 0.0)
    for i in range(10):
        assert lim.admit(req(i)) == req(i)
    with pytest.raises(Rejection) as exc:
        lim.admit(req(10))
    assert exc.value.reason == "too_many_label_values" and exc.value.label == "request_id"
    assert lim.rejections[("t", "req", "request_id", "too_many_label_values")] == 1
    assert lim.admit(req(3)) == req(3)  # existing series keep flowing


def test_hash_overflow_puts_new_values_into_n_buckets():
    lim = SeriesLimiter(Limits(max_label_values_per_metric_label=100, label_values_overflow="hash:8"),
                        clock=lambda: 0.0)
    for i in range(100):
        assert lim.admit(req(i)) == req(i)
    out = [lim.admit(req(i)) for i in range(100, 1100)]
    assert {s.tag_dict["request_id"] for s in out} == {f"hash_{i:02d}" for i in range(8)}
    assert all(s.tag_dict["host"] == "a" and s.name == "req" for s in out)
    assert lim.distinct_values("t", "req", "request_id") == 108  # 100 + 8 buckets, bounded
    assert lim.active("t", "req") == 108
    assert lim.overflowed[("t", "req", "request_id", "too_many_label_values", "hash:8")] == 1000
    assert not lim.rejections
    assert lim.admit(req(5)) == req(5)  # series admitted before the limit keep their own value
    assert lim.admit(req(500)) == out[400]  # the same value goes to the same bucket again


def test_drop_label_overflow_writes_the_series_without_the_label():
    lim = SeriesLimiter(Limits(max_label_values_per_metric_label=3, label_values_overflow="drop_label"),
                        clock=lambda: 0.0)
    for i in range(3):
        lim.admit(req(i))
    assert lim.admit(req(99, host="b")) == series_id("t", "req", {"host": "b"})
    assert lim.admit(req(98, host="b")) == series_id("t", "req", {"host": "b"})
    assert lim.active("t", "req") == 4
    assert lim.overflowed[("t", "req", "request_id", "too_many_label_values", "drop_label")] == 2


def test_series_per_metric_overflow_rewrites_the_label_with_most_values():
    lim = SeriesLimiter(Limits(max_series_per_metric=20, series_per_metric_overflow="hash:4"), clock=lambda: 0.0)
    for i in range(20):
        lim.admit(req(i, host=f"h{i % 2}"))
    s = lim.admit(req(1000, host="h0"))
    assert s.tag_dict == {"host": "h0", "request_id": s.tag_dict["request_id"]}
    assert s.tag_dict["request_id"].startswith("hash_")
    for i in range(1001, 1200):
        lim.admit(req(i, host=f"h{i % 2}"))
    assert lim.active("t", "req") <= 20 + 4 * 2  # bounded by buckets x other label values
    assert lim.overflowed[("t", "req", "request_id", "too_many_series_metric", "hash:4")] == 200


def test_tenant_limit_is_never_exceeded_by_a_rewrite():
    lim = SeriesLimiter(Limits(max_series_per_tenant=5, max_label_values_per_metric_label=2,
                               label_values_overflow="hash:100"), clock=lambda: 0.0)
    lim.admit(req(0))
    lim.admit(req(1))
    admitted = [lim.admit(req(i)) for i in range(2, 5)]  # three hashed series: 5 in all
    assert lim.active("t") == 5
    new_bucket = next(i for i in range(5, 500) if lim._overflow["too_many_label_values"].rewrite(req(i), "request_id")
                      not in admitted)
    with pytest.raises(Rejection) as exc:
        lim.admit(req(new_bucket))
    assert exc.value.reason == "too_many_series_tenant"
    assert lim.rejections[("t", "req", "", "too_many_series_tenant")] == 1


def test_counters_render_as_prometheus_text():
    lim = SeriesLimiter(Limits(max_label_values_per_metric_label=1, label_values_overflow="hash:2"), clock=lambda: 0.0)
    lim.admit(req(0))
    lim.admit(req(1))
    lim2 = SeriesLimiter(Limits(max_series_per_tenant=0), clock=lambda: 0.0)
    with pytest.raises(Rejection):
        lim2.admit(req(0))
    text = "\n".join(limiter_metric_lines("tally_x", [lim.snapshot(), lim2.snapshot()]))
    assert ('tally_x_series_overflowed_total{tenant="t",metric="req",label="request_id",'
            'reason="too_many_label_values",action="hash:2"} 1') in text
    assert 'tally_x_series_limited_total{tenant="t",metric="req",label="",reason="too_many_series_tenant"} 1' in text
    assert 'tally_x_active_series{tenant="t"} 2' in text


def test_gateway_push_uses_the_overflow_rewrite():
    limits = Limits(max_label_values_per_metric_label=5, label_values_overflow="hash:4")
    lim = SeriesLimiter(limits, clock=lambda: 0.0)
    items = [{"name": "req", "tags": {"request_id": str(i)}, "value": 1, "ts": 1000} for i in range(50)]
    items.append({"name": "ok", "value": 2, "ts": 1000})
    batch = from_push(items, "t", limits, lim, now_ms=1000)
    assert len(batch.accepted) == 51 and not batch.rejected
    ids = {s.series.tag_dict.get("request_id") for s in batch.accepted if s.series.name == "req"}
    assert len(ids) <= 5 + 4 and {i for i in ids if i.startswith("hash_")}


def test_gateway_push_counts_relabel_drops_apart_from_errors():
    from tally.relabel import parse_rules

    limits = Limits(relabel=parse_rules({"rules": [{"action": "drop", "regex": "debug_.*"}]}))
    batch = from_push([{"name": "debug_x", "value": 1, "ts": 1000}, {"name": "ok", "value": 1, "ts": 1000}],
                      "t", limits, SeriesLimiter(limits, clock=lambda: 0.0), now_ms=1000)
    assert [s.series.name for s in batch.accepted] == ["ok"]
    assert batch.dropped == {"relabel_drop": 1} and not batch.rejected
    assert batch.summary()["dropped"] == 1


def test_agent_aggregator_uses_the_same_path():
    from tally.relabel import parse_rules

    limits = Limits(max_label_values_per_metric_label=10, label_values_overflow="hash:4",
                    relabel=parse_rules({"rules": [{"action": "labeldrop", "regex": "trace"},
                                                   {"action": "drop", "regex": "noise"}]}))
    agg = Aggregator("t", limits=limits, clock=lambda: 100.0)
    lines = "\n".join(f"req:1|c|#request_id:{i},trace:{i}" for i in range(100)) + "\nnoise:1|c\nok:5|c"
    agg.ingest(lines, 100)
    out = agg.flush()
    req_series = {f.series for f in out if f.series.name == "req"}
    assert all("trace" not in s.tag_dict for s in req_series)
    assert len({s.tag_dict["request_id"] for s in req_series}) <= 10 + 4
    assert sum(f.count for f in out if f.series.name == "req") == 100  # nothing lost, hashed
    assert [f.sum for f in out if f.series.name == "ok"] == [5.0]
    assert agg.rejected == {"relabel_drop": 1}
    assert agg.limiter.overflowed[("t", "req", "request_id", "too_many_label_values", "hash:4")] == 90
