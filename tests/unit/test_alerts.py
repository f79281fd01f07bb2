"""Alert rules: parsing, templating, the state machine with an injected clock, and the formats."""

from __future__ import annotations

import pytest

from tally.alerts.payload import alerts_data, rfc3339, rules_data, webhook_payload, ZERO_TIME
from tally.alerts.rules import RuleFileError, parse_duration_seconds, parse_rule_file
from tally.alerts.state import FIRING, INACTIVE, PENDING, RESOLVED, RuleState, fingerprint
from tally.alerts.template import expand, go_float

RULES = """
groups:
  - name: api
    interval: 15s
    tenant: acme
    rules:
      - alert: HighLatency
        expr: p99_by(request_latency, region) > 0.5
        for: 1m
        labels:
          severity: page
          team: "{{ $labels.region }}-oncall"
        annotations:
          summary: "p99 in {{ $labels.region }} is {{ $value }}s"
          human: "{{ $value | humanize }}"
      - alert: Up
        expr: up == 0
"""


def test_rule_file_parses_groups_rules_durations_and_labels():
    (group,) = parse_rule_file(RULES, "rules.yml")
    assert (group.name, group.file, group.interval_seconds, group.tenant) == ("api", "rules.yml", 15.0, "acme")
    high, up = group.rules
    assert high.name == "HighLatency" and high.expr.startswith("p99_by(") and high.for_seconds == 60
    assert dict(high.labels) == {"severity": "page", "team": "{{ $labels.region }}-oncall"}
    assert dict(high.annotations)["summary"] == "p99 in {{ $labels.region }} is {{ $value }}s"
    assert (up.for_seconds, up.labels, up.annotations) == (0.0, (), ())


@pytest.mark.parametrize("text,seconds", [("0", 0), ("15s", 15), ("1m30s", 90), ("2h", 7200), ("500ms", 0.5),
                                          ("1d", 86400), ("1w", 604800)])
def test_durations(text, seconds):
    assert parse_duration_seconds(text) == seconds


@pytest.mark.parametrize("text,message", [
    ("groups: {}", "top-level 'groups:' list"),
    ("groups:\n  - rules: []", "'name' is required"),
    ("groups:\n  - name: a\n  - name: a", "repeated"),
    ("groups:\n  - name: a\n    rules:\n      - record: x\n        expr: up", "recording rules"),
    ("groups:\n  - name: a\n    rules:\n      - alert: X", "'expr' is required"),
    ("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        for: 5 minutes", "not a duration"),
    ("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        labels: {'bad-name': x}",
     "invalid label name"),
    ("groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        severity: x", "unknown field"),
    ("groups: [", "invalid YAML"),
])
def test_bad_rule_files_name_the_problem(text, message):
    with pytest.raises(RuleFileError, match=message):
        parse_rule_file(text, "r.yml")


def test_templates_expand_labels_and_values_like_prometheus():
    labels = {"region": "eu", "host": "a"}
    assert expand("{{ $labels.region }}/{{ .Labels.host }} = {{ $value }}", labels, 0.75) == "eu/a = 0.75"
    assert expand('{{ index $labels "host" }}', labels, 1) == "a"
    assert expand("{{ $labels.missing }}|", labels, 1) == "|"
    assert expand("{{ $value | humanize }}", labels, 1234567.0) == "1.235M"
    assert expand("{{ $value | humanizePercentage }}", labels, 0.256) == "25.6%"
    assert expand('{{ printf "%.2f" $value }}', labels, 3.14159) == "3.14"
    assert expand("{{ $labels.region | toUpper }}", labels, 0) == "EU"
    assert expand("{{ range $x }}", labels, 0).startswith("<error expanding template:")
    assert [go_float(v) for v in (100.0, 1e6, 123456.0, 0.5, 1e-5, 2.5e21, float("nan"))] == [
        "100", "1e+06", "123456", "0.5", "1e-05", "2.5e+21", "NaN"]


def _rule(for_text="1m"):
    (group,) = parse_rule_file(RULES.replace("for: 1m", f"for: {for_text}"))
    return group.rules[0]


def test_state_machine_inactive_pending_firing_resolved_with_for():
    st = RuleState(_rule("1m"))
    eu = {"__name__": "x", "region": "eu"}
    assert st.state == INACTIVE and st.evaluate([], 0) == []
    assert st.evaluate([(eu, 0.9)], 100) == []
    assert st.state == PENDING and st.alerts()[0].active_at_s == 100
    assert st.evaluate([(eu, 0.8)], 130) == []          # 30 s < for
    (note,) = st.evaluate([(eu, 0.7)], 160)               # 60 s >= for: fires once
    assert note.status == FIRING and st.state == FIRING
    a = note.alert
    assert dict(a.labels) == {"alertname": "HighLatency", "region": "eu", "severity": "page", "team": "eu-oncall"}
    assert dict(a.annotations) == {"summary": "p99 in eu is 0.7s", "human": "700m"}
    assert (a.active_at_s, a.fired_at_s) == (100, 160)
    assert st.evaluate([(eu, 0.9)], 175) == []            # still firing: no repeat
    (note,) = st.evaluate([], 190)                        # gone: resolves once
    assert note.status == RESOLVED and note.alert.resolved_at_s == 190 and st.state == INACTIVE
    assert st.evaluate([], 205) == []
    assert st.alerts() == [] and st.alerts(include_resolved=True)[0].state == RESOLVED
    st.evaluate([(eu, 0.9)], 220)                         # comes back: pending again, not firing
    assert st.state == PENDING and st.alerts()[0].active_at_s == 220
    st.evaluate([], 16 * 60 + 230)                        # resolved retention passes
    assert st.alerts(include_resolved=True) == []


def test_pending_alert_that_disappears_never_notifies():
    st = RuleState(_rule("1m"))
    st.evaluate([({"region": "us"}, 1.0)], 0)
    assert st.evaluate([], 30) == [] and st.state == INACTIVE and st.alerts(include_resolved=True) == []


def test_for_zero_fires_at_first_evaluation_and_series_are_independent():
    st = RuleState(_rule("0s"))
    notes = st.evaluate([({"region": "eu"}, 1.0), ({"region": "us"}, 2.0)], 10)
    assert [(n.status, dict(n.alert.labels)["region"]) for n in notes] == [(FIRING, "eu"), (FIRING, "us")]
    (note,) = st.evaluate([({"region": "us"}, 2.0)], 20)
    assert (note.status, dict(note.alert.labels)["region"]) == (RESOLVED, "eu")
    assert st.state == FIRING


def test_error_keeps_alert_state():
    st = RuleState(_rule("0s"))
    st.evaluate([({"region": "eu"}, 1.0)], 10)
    st.record_error("query timed out", 20)
    assert (st.health, st.last_error, st.state) == ("err", "query timed out", FIRING)


def test_fingerprint_matches_alertmanager():
    # Values computed with Alertmanager's model.LabelSet.Fingerprint (FNV-1a 64, 0xff separators).
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint({"alertname": "A"}) == fingerprint([("alertname", "A")])
    assert fingerprint({"a": "b", "c": "d"}) != fingerprint({"a": "bc", "": "d"})
    assert len(fingerprint({"alertname": "HighLatency", "region": "eu"})) == 16


def test_webhook_payload_has_alertmanager_shape():
    st = RuleState(_rule("0s"))
    fired = st.evaluate([({"region": "eu"}, 0.7), ({"region": "us"}, 0.6)], 1_700_000_000.25)
    body = webhook_payload("HighLatency", "p99 > 0.5", fired, FIRING, "http://tally:9200")
    assert set(body) == {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                         "commonLabels", "commonAnnotations", "externalURL", "alerts"}
    assert (body["version"], body["status"], body["groupLabels"]) == ("4", "firing", {"alertname": "HighLatency"})
    assert body["groupKey"] == '{}:{alertname="HighLatency"}'
    assert body["commonLabels"] == {"alertname": "HighLatency", "severity": "page"}
    eu = body["alerts"][0]
    assert set(eu) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert eu["startsAt"] == "2023-11-14T22:13:20.250Z" and eu["endsAt"] == ZERO_TIME
    assert eu["generatorURL"] == "http://tally:9200/?expr=p99%20%3E%200.5"
    assert eu["fingerprint"] == fingerprint(eu["labels"])
    resolved = st.evaluate([], 1_700_000_060)
    body = webhook_payload("HighLatency", "p99 > 0.5", resolved, RESOLVED, "http://tally:9200")
    assert body["status"] == "resolved" and len(body["alerts"]) == 2
    assert {a["endsAt"] for a in body["alerts"]} == {rfc3339(1_700_000_060)} == {"2023-11-14T22:14:20.000Z"}


def test_api_formats_follow_prometheus():
    (group,) = parse_rule_file(RULES, "rules.yml")
    states = [RuleState(r) for r in group.rules]
    states[0].evaluate([({"region": "eu"}, 0.9)], 100)
    states[1].evaluate([], 100)
    alerts = alerts_data(states)["alerts"]
    assert alerts == [{"labels": {"alertname": "HighLatency", "region": "eu", "severity": "page",
                                  "team": "eu-oncall"},
                       "annotations": {"summary": "p99 in eu is 0.9s", "human": "900m"},
                       "state": "pending", "activeAt": rfc3339(100), "value": "0.9"}]
    data = rules_data([(group, 15.0, states)])
    g = data["groups"][0]
    assert (g["name"], g["file"], g["interval"]) == ("api", "rules.yml", 15.0)
    assert [(r["name"], r["state"], r["type"], r["health"], r["duration"]) for r in g["rules"]] == [
        ("HighLatency", "pending", "alerting", "ok", 60.0), ("Up", "inactive", "alerting", "ok", 0.0)]
    assert rules_data([(group, 15.0, states)], kind="record")["groups"][0]["rules"] == []


def test_keep_firing_for_delays_resolution():
    (group,) = parse_rule_file(RULES.replace("for: 1m", "for: 0s\n        keep_firing_for: 30s"))
    st = RuleState(group.rules[0])
    assert [n.status for n in st.evaluate([({"region": "eu"}, 1.0)], 0)] == [FIRING]
    assert st.evaluate([], 10) == [] and st.state == FIRING      # gone for 10 s < 30 s: still firing
    (note,) = st.evaluate([], 30)
    assert note.status == RESOLVED and note.alert.resolved_at_s == 30
