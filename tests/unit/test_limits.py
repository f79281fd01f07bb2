"""tally.limits: every limit refuses with its reason and a message naming the value."""

import pytest

from tally.limits import PROMETHEUS, STATSD, Limits, RateLimiter, Rejection, SeriesLimiter, validate_series, \
    validate_timestamp
from tally.series import series_id


def reject(fn, *args, **kw) -> Rejection:
    with pytest.raises(Rejection) as info:
        fn(*args, **kw)
    return info.value


def test_valid_series_pass_both_dialects():
    validate_series("http_requests_total", {"code": "200", "__meta": "x"}, Limits())
    validate_series("node:cpu:rate5m", {}, Limits())
    validate_series("http.requests", {"service-name": "api", "k8s.pod": "p"}, Limits(), dialect=STATSD)


@pytest.mark.parametrize("name", ["", "1abc", "http.requests", "a-b", "caf\u00e9", "a b"])
def test_bad_metric_name(name):
    e = reject(validate_series, name, {}, Limits(), dialect=PROMETHEUS)
    assert e.reason == "bad_metric_name"
    assert (repr(name) in e.message) or name == ""


@pytest.mark.parametrize("label", ["1x", "a:b", "a.b", "a-b", "\u00e9"])
def test_bad_label_name(label):
    e = reject(validate_series, "m", {label: "v"}, Limits())
    assert e.reason == "bad_label_name"
    assert repr(label) in e.message and e.label == label


@pytest.mark.parametrize("dialect", [PROMETHEUS, STATSD])
def test_reserved_rollup_label_is_refused(dialect):
    # A raw series carrying __rollup__ would be hidden from ordinary selectors (tally.query.rollups).
    e = reject(validate_series, "cpu_usage", {"host": "a", "__rollup__": "by_region"}, Limits(), dialect=dialect)
    assert e.reason == "reserved_label" and e.label == "__rollup__"
    assert "'__rollup__'" in e.message and "reserved" in e.message


def test_statsd_dialect_still_refuses_leading_digit_and_spaces():
    assert reject(validate_series, "9lives", {}, Limits(), dialect=STATSD).reason == "bad_metric_name"
    assert reject(validate_series, "m", {"a b": "v"}, Limits(), dialect=STATSD).reason == "bad_label_name"


def test_label_count_limit_is_30_by_default():
    validate_series("m", {f"l{i}": "v" for i in range(30)}, Limits())
    e = reject(validate_series, "m", {f"l{i}": "v" for i in range(31)}, Limits())
    assert e.reason == "too_many_labels"
    assert "31 labels" in e.message and "limit of 30" in e.message


def test_label_value_length_limit_is_2048_by_default():
    validate_series("m", {"path": "x" * 2048}, Limits())
    e = reject(validate_series, "m", {"path": "x" * 2049}, Limits())
    assert e.reason == "label_value_too_long" and e.label == "path"
    assert "2049 characters" in e.message and "'path'" in e.message and "2048" in e.message
    assert len(e.message) < 400  # the value is shortened, not copied whole


def test_metric_name_length_is_bounded_like_a_label_value():
    e = reject(validate_series, "m" * 3000, {}, Limits())
    assert e.reason == "bad_metric_name" and "3000 characters" in e.message


def test_timestamps():
    lim = Limits(max_future_seconds=300, max_age_seconds=600)
    now = 1_700_000_000_000
    validate_timestamp(now + 300_000, now, lim)
    validate_timestamp(now - 600_000, now, lim)
    e = reject(validate_timestamp, now + 300_001, now, lim)
    assert e.reason == "future_timestamp" and "in the future" in e.message and "300 s" in e.message
    e = reject(validate_timestamp, now - 600_001, now, lim)
    assert e.reason == "too_old" and "600 s" in e.message


def test_series_limit_per_tenant_keeps_existing_series_flowing():
    lim = SeriesLimiter(Limits(max_series_per_tenant=3), clock=lambda: 0.0)
    series = [series_id("t", "m", {"i": str(i)}) for i in range(4)]
    for s in series[:3]:
        lim.admit(s)
    e = reject(lim.admit, series[3])
    assert e.reason == "too_many_series_tenant" and "'t'" in e.message and "3 active series" in e.message
    for s in series[:3]:  # existing series always pass
        lim.admit(s)
    lim.admit(series_id("other", "m", {"i": "9"}))  # other tenants are not affected
    assert lim.rejections == {("t", "m", "", "too_many_series_tenant"): 1}


def test_series_limit_per_metric():
    lim = SeriesLimiter(Limits(max_series_per_metric=2), clock=lambda: 0.0)
    lim.admit(series_id("t", "a", {"i": "1"}))
    lim.admit(series_id("t", "a", {"i": "2"}))
    e = reject(lim.admit, series_id("t", "a", {"i": "3"}))
    assert e.reason == "too_many_series_metric" and "'a'" in e.message
    lim.admit(series_id("t", "b", {"i": "3"}))
    assert lim.active("t") == 3 and lim.active("t", "a") == 2


def test_distinct_label_values_per_metric_label():
    lim = SeriesLimiter(Limits(max_label_values_per_metric_label=100), clock=lambda: 0.0)
    for i in range(100):
        lim.admit(series_id("t", "req", {"request_id": str(i), "host": "a"}))
    e = reject(lim.admit, series_id("t", "req", {"request_id": "100", "host": "a"}))
    assert e.reason == "too_many_label_values" and e.label == "request_id"
    assert "'request_id'" in e.message and "'100'" in e.message
    # An existing value of the label still makes new series (host=b with request_id=5).
    lim.admit(series_id("t", "req", {"request_id": "5", "host": "b"}))
    # A well-behaved metric with the same label name is counted on its own.
    lim.admit(series_id("t", "other", {"request_id": "100"}))
    assert lim.rejections[("t", "req", "request_id", "too_many_label_values")] == 1
    assert lim.distinct_values("t", "req", "request_id") == 100


def test_idle_series_stop_counting():
    now = [0.0]
    lim = SeriesLimiter(Limits(max_series_per_tenant=1, active_series_idle_seconds=60), clock=lambda: now[0])
    lim.admit(series_id("t", "m", {"i": "1"}))
    now[0] = 30.0
    assert reject(lim.admit, series_id("t", "m", {"i": "2"})).reason == "too_many_series_tenant"
    now[0] = 91.0
    lim.admit(series_id("t", "m", {"i": "2"}))
    assert lim.active("t") == 1 and lim.distinct_values("t", "m", "i") == 1


def test_rate_limiter_token_bucket():
    rl = RateLimiter(rate_per_s=100, burst=200)
    assert rl.take("t", 150, now=0.0) is None
    wait = rl.take("t", 100, now=0.0)  # 50 left, 100 needed: 0.5 s at 100/s
    assert wait == pytest.approx(0.5)
    assert rl.take("other", 200, now=0.0) is None  # per tenant
    assert rl.take("t", 100, now=0.5) is None
    # Larger than the burst: allowed from a full bucket, then the tenant owes tokens.
    assert rl.take("big", 1000, now=0.0) is None
    assert rl.take("big", 1, now=5.0) == pytest.approx(3.01)
    assert rl.take("big", 1, now=8.01) is None


def test_limits_from_config_reads_limit_fields():
    class Cfg:
        limit_max_age_seconds = 42
        limit_max_series_per_tenant = 7

    lim = Limits.from_config(Cfg())
    assert lim.max_age_seconds == 42 and lim.max_series_per_tenant == 7 and lim.max_labels_per_series == 30
