"""tally.auth: bearer and basic credentials, tenants, 401/403/400 with messages."""

import base64

import pytest
import yaml

from tally.auth import AuthError, KeyRing

KEYS = {"keys": [
    {"key": "writer-key-1", "name": "prom", "tenant": "acme", "permissions": ["write"]},
    {"key": "reader-key-1", "name": "grafana", "tenants": ["acme", "beta"], "tenant": "acme", "permissions": ["read"]},
    {"key": "admin-key-01", "name": "admin", "tenants": "*", "permissions": ["read", "write"]},
]}


@pytest.fixture
def ring(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(KEYS))
    return KeyRing.from_file(path)


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def refused(ring, headers, action):
    with pytest.raises(AuthError) as info:
        ring.authorize(headers, action)
    return info.value


def test_bearer_and_basic_give_default_tenant(ring):
    assert ring.authorize({"Authorization": "Bearer writer-key-1"}, "write") == "acme"
    assert ring.authorize({"authorization": basic("anyone", "writer-key-1")}, "write") == "acme"


def test_tenant_header_selects_an_allowed_tenant(ring):
    assert ring.authorize({"Authorization": "Bearer reader-key-1", "X-Scope-OrgID": "beta"}, "read") == "beta"
    assert ring.authorize({"Authorization": "Bearer admin-key-01", "x-scope-orgid": "zeta"}, "write") == "zeta"


def test_missing_key_is_401(ring):
    e = refused(ring, {}, "write")
    assert e.status == 401 and "missing API key" in e.message


@pytest.mark.parametrize("auth", ["Bearer nope-nope-nope", "Bearer ", "Token writer-key-1", basic("u", "bad"),
                                  "Basic !!!notbase64", basic("writer-key-1", "")])
def test_invalid_key_is_401(ring, auth):
    e = refused(ring, {"Authorization": auth}, "write")
    assert e.status == 401 and ("invalid API key" in e.message or "missing API key" in e.message)


def test_other_tenant_is_403(ring):
    e = refused(ring, {"Authorization": "Bearer writer-key-1", "X-Scope-OrgID": "beta"}, "write")
    assert e.status == 403 and "'prom'" in e.message and "'beta'" in e.message
    assert "writer-key-1" not in e.message  # never echo the key


def test_missing_permission_is_403(ring):
    e = refused(ring, {"Authorization": "Bearer reader-key-1"}, "write")
    assert e.status == 403 and "may not write" in e.message
    e = refused(ring, {"Authorization": "Bearer writer-key-1"}, "read")
    assert e.status == 403 and "may not read" in e.message


def test_wildcard_key_without_default_needs_the_header(ring):
    e = refused(ring, {"Authorization": "Bearer admin-key-01"}, "read")
    assert e.status == 400 and "X-Scope-OrgID" in e.message


def test_malformed_tenant_is_400(ring):
    e = refused(ring, {"Authorization": "Bearer admin-key-01", "X-Scope-OrgID": "a/b"}, "write")
    assert e.status == 400 and "'a/b'" in e.message


def test_open_ring_uses_header_or_default():
    ring = KeyRing.open()
    assert ring.authorize({}, "write") == "default"
    assert ring.authorize({"X-Scope-OrgID": "acme"}, "read") == "acme"
    assert refused(ring, {"X-Scope-OrgID": "../x"}, "write").status == 400


def test_sha256_keys_and_file_errors(tmp_path):
    import hashlib

    ring = KeyRing.from_dict({"keys": [{"key_sha256": hashlib.sha256(b"hashed-key-1").hexdigest(), "tenant": "t"}]})
    assert ring.authorize({"Authorization": "Bearer hashed-key-1"}, "write") == "t"
    for doc, needle in [({"keys": [{"key": "short", "tenant": "t"}]}, "at least 8"),
                        ({"keys": [{"key": "longenough", "tenant": "t", "permissions": ["admin"]}]}, "permissions"),
                        ({"keys": [{"key": "longenough"}]}, "'tenant' or 'tenants'"),
                        ({"keys": [{"key": "longenough", "tenant": "t", "extra": 1}]}, "unknown field"),
                        ({"nokeys": []}, "'keys' list"),
                        ({"keys": [{"key": "longenough", "tenant": "t"}, {"key": "longenough", "tenant": "u"}]},
                         "same key")]:
        with pytest.raises(ValueError, match=needle):
            KeyRing.from_dict(doc)
