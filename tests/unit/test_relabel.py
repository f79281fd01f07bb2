"""Relabel rules (tally.relabel): every action, rule order, and errors for bad rule files."""

from __future__ import annotations

import pytest

from tally.limits import Dropped, Limits, Rejection, resolve_series
from tally.relabel import RelabelError, hash_bucket, load_rules, parse_rules
from tally.series import series_id


def rules(*items):
    return parse_rules({"rules": list(items)})


def test_labeldrop_removes_matching_labels_but_never_the_name():
    r = rules({"action": "labeldrop", "regex": "request_id|trace_.*|__name__"})
    assert r.apply("http", {"request_id": "1", "trace_id": "2", "host": "a"}) == ("http", {"host": "a"})


def test_labelkeep_keeps_only_listed_labels():
    r = rules({"action": "labelkeep", "regex": "host|env"})
    assert r.apply("cpu", {"host": "a", "env": "p", "pod": "x", "request_id": "9"}) == ("cpu", {"host": "a", "env": "p"})


def test_replace_by_regex_with_groups_and_defaults():
    r = rules({"action": "replace", "source_labels": ["path"], "regex": "/user/[0-9]+(/.*)?",
               "target_label": "path", "replacement": "/user/:id$1"})
    assert r.apply("h", {"path": "/user/42/orders"}) == ("h", {"path": "/user/:id/orders"})
    assert r.apply("h", {"path": "/other"}) == ("h", {"path": "/other"})  # no match: unchanged
    # several sources joined by the separator; ${name} groups; a new target label
    r = rules({"action": "replace", "source_labels": ["region", "zone"], "separator": "/",
               "regex": "(?P<r>[a-z]+)/(.*)", "target_label": "where", "replacement": "${r}-${2}"})
    assert r.apply("m", {"region": "eu", "zone": "b"}) == ("m", {"region": "eu", "zone": "b", "where": "eu-b"})
    # default regex (.*) and replacement $1 copy a value; an empty result removes the target
    assert rules({"source_labels": ["a"], "target_label": "b"}).apply("m", {"a": "x"}) == ("m", {"a": "x", "b": "x"})
    assert rules({"source_labels": ["nope"], "target_label": "b"}).apply("m", {"b": "old"}) == ("m", {})


def test_replace_can_rename_the_metric():
    r = rules({"action": "replace", "source_labels": ["__name__"], "regex": "old_(.*)",
               "target_label": "__name__", "replacement": "new_$1"})
    assert r.apply("old_requests", {}) == ("new_requests", {})


def test_hash_puts_a_value_into_n_stable_buckets():
    r = rules({"action": "hash", "source_labels": ["request_id"], "buckets": 16})
    values = {r.apply("req", {"request_id": str(i)})[1]["request_id"] for i in range(2000)}
    assert values == {f"hash_{i:02d}" for i in range(16)}
    assert r.apply("req", {"request_id": "abc"})[1]["request_id"] == hash_bucket("abc", 16) == "hash_09"
    assert r.apply("req", {"host": "a"}) == ("req", {"host": "a"})  # no source label: unchanged
    assert hash_bucket("x", 1000).startswith("hash_") and len(hash_bucket("x", 1000)) == 8  # 3 digits
    r = rules({"action": "hash", "source_labels": ["user"], "target_label": "user_bucket", "buckets": 4})
    out = r.apply("m", {"user": "bob"})[1]
    assert out["user"] == "bob" and out["user_bucket"] in {"hash_00", "hash_01", "hash_02", "hash_03"}


def test_drop_and_keep_metrics():
    r = rules({"action": "drop", "regex": "debug_.*"})
    assert r.apply("debug_heap", {"a": "b"}) is None
    assert r.apply("heap", {}) == ("heap", {})
    r = rules({"action": "drop", "source_labels": ["env"], "regex": "dev"})
    assert r.apply("m", {"env": "dev"}) is None and r.apply("m", {"env": "prod"}) is not None
    r = rules({"action": "keep", "regex": "api_.*"})
    assert r.apply("api_x", {}) is not None and r.apply("other", {}) is None


def test_metric_restricts_a_rule_and_rules_apply_in_order():
    r = rules({"action": "labeldrop", "regex": "request_id", "metric": "http_.*"},
              {"action": "replace", "source_labels": ["host"], "regex": "(.*)\\.example\\.com",
               "target_label": "host"})
    assert r.apply("http_requests", {"request_id": "1", "host": "a.example.com"}) == ("http_requests", {"host": "a"})
    assert r.apply("db_calls", {"request_id": "1"}) == ("db_calls", {"request_id": "1"})


def test_resolve_series_applies_rules_before_identity_and_limits():
    limits = Limits(relabel=rules({"action": "labeldrop", "regex": "request_id"},
                                  {"action": "drop", "regex": "noise"}))
    s = resolve_series("t", "http", {"request_id": "7", "host": "a"}, limits)
    assert s == series_id("t", "http", {"host": "a"})
    with pytest.raises(Dropped) as exc:
        resolve_series("t", "noise", {}, limits)
    assert exc.value.reason == "relabel_drop"
    # a rule producing an invalid name is refused by the syntax check after the rules
    bad = Limits(relabel=rules({"source_labels": ["__name__"], "target_label": "__name__", "replacement": "1bad"}))
    with pytest.raises(Rejection) as exc:
        resolve_series("t", "ok", {}, bad)
    assert exc.value.reason == "bad_metric_name"
    # input is checked before the rules read it (types, lengths)
    with pytest.raises(Rejection) as exc:
        resolve_series("t", "ok", {"a": 5}, limits)
    assert exc.value.reason == "bad_label_value"


@pytest.mark.parametrize("item, where", [
    ({"action": "explode"}, "rule 1: field 'action': unknown action 'explode'"),
    ({"action": "replace", "source_labels": ["a"], "regex": "(", "target_label": "b"},
     "rule 1 (action 'replace'): field 'regex': invalid regex '('"),
    ({"action": "replace", "source_labels": ["a"]}, "rule 1 (action 'replace'): field 'target_label': required"),
    ({"action": "replace", "target_label": "b"}, "rule 1 (action 'replace'): field 'source_labels': required"),
    ({"action": "replace", "source_labels": "a", "target_label": "b"},
     "rule 1 (action 'replace'): field 'source_labels': must be a non-empty list"),
    ({"action": "replace", "source_labels": ["a"], "target_label": "b-c"},
     "rule 1 (action 'replace'): field 'target_label': 'b-c' is not a label name"),
    ({"action": "replace", "source_labels": ["a"], "target_label": "b", "replacement": "$3"},
     "rule 1 (action 'replace'): field 'replacement': '$3' refers to a group"),
    ({"action": "hash", "source_labels": ["a"]}, "rule 1 (action 'hash'): field 'buckets': required"),
    ({"action": "hash", "source_labels": ["a"], "buckets": 0}, "rule 1 (action 'hash'): field 'buckets'"),
    ({"action": "hash", "source_labels": ["a", "b"], "buckets": 4},
     "rule 1 (action 'hash'): field 'target_label': required when there are several"),
    ({"action": "labeldrop"}, "rule 1 (action 'labeldrop'): field 'regex': required"),
    ({"action": "labelkeep", "regex": "a", "target_label": "x"}, "rule 1 (action 'labelkeep'): field 'target_label'"),
    ({"action": "drop", "regex": "a", "buckets": 3}, "rule 1 (action 'drop'): field 'buckets': not used"),
    ({"action": "drop", "regex": "a", "colour": "red"}, "rule 1 (action 'drop'): field 'colour': unknown field"),
    ({"action": "drop", "metric": "["}, "rule 1 (action 'drop'): field 'metric': invalid regex"),
    ("drop", "rule 1: must be a mapping"),
])
def test_bad_rules_name_the_rule_index_and_field(item, where):
    with pytest.raises(RelabelError) as exc:
        parse_rules({"rules": [{"action": "labeldrop", "regex": "ok"}, item]}, "r.yaml")
    assert str(exc.value).startswith("relabel rules r.yaml: ")
    assert where in str(exc.value), str(exc.value)


def test_bad_files(tmp_path):
    with pytest.raises(RelabelError, match="cannot read the file"):
        load_rules(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(RelabelError, match="not valid YAML"):
        load_rules(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- action: drop\n")
    with pytest.raises(RelabelError, match="mapping with a 'rules' list"):
        load_rules(tmp_path / "list.yaml")
    (tmp_path / "extra.yaml").write_text("rules: []\nrelabel: []\n")
    with pytest.raises(RelabelError, match="unknown top-level key 'relabel'"):
        load_rules(tmp_path / "extra.yaml")
    (tmp_path / "ok.yaml").write_text("rules:\n  - action: labeldrop\n    regex: request_id\n")
    assert len(load_rules(tmp_path / "ok.yaml")) == 1


def test_limits_from_config_loads_the_rule_file(tmp_path):
    from tally.config import TallyConfig

    path = tmp_path / "relabel.yaml"
    path.write_text("rules:\n  - action: hash\n    source_labels: [request_id]\n    buckets: 8\n")
    cfg = TallyConfig.from_env({"TALLY_RELABEL_RULES_PATH": str(path)})
    assert cfg.relabel_rules_path == path
    limits = Limits.from_config(cfg)
    assert resolve_series("t", "m", {"request_id": "x"}, limits).tag_dict["request_id"].startswith("hash_")
    path.write_text("rules:\n  - action: hash\n    source_labels: [request_id]\n")
    with pytest.raises(RelabelError, match="rule 0 .*'buckets'"):
        Limits.from_config(cfg)
