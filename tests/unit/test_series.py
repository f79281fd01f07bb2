from hypothesis import given, strategies as st

from tally.series import canonical_key, parse_key, series_hash, series_id

text = st.text(min_size=1, max_size=12)


def test_tags_are_sorted_and_key_is_canonical():
    a = series_id("acme", "http.requests", {"host": "a", "env": "prod"})
    b = series_id("acme", "http.requests", [("env", "prod"), ("host", "a")])
    assert a == b
    assert a.key == "acme|http.requests|env=prod,host=a"
    assert a.tags == (("env", "prod"), ("host", "a"))


def test_hash_is_pinned_across_processes_and_versions():
    # A changed value would re-key every stored series: this must never change.
    assert series_hash("acme|http.requests|env=prod,host=a") == series_id(
        "acme", "http.requests", {"host": "a", "env": "prod"}).id
    assert series_hash("d|m|") == 6278773689014466495
    assert -(2**63) <= series_hash("x") < 2**63


def test_tenant_and_separators_distinguish_series():
    assert series_id("a", "m").id != series_id("b", "m").id
    # Escaping keeps "a=b" as one tag value distinct from two tags.
    assert series_id("t", "m", {"k": "a,x=b"}).key != series_id("t", "m", {"k": "a", "x": "b"}).key


def test_duplicate_tag_names_are_rejected():
    try:
        series_id("t", "m", [("k", "1"), ("k", "2")])
    except ValueError as exc:
        assert "duplicate tag" in str(exc)
    else:
        raise AssertionError("duplicate tag names accepted")


@given(text, text, st.dictionaries(text, st.text(max_size=12), max_size=5))
def test_parse_key_inverts_canonical_key(tenant, name, tags):
    sid = series_id(tenant, name, tags)
    assert parse_key(sid.key) == sid
    assert canonical_key(tenant, name, tags.items()) == sid.key
