"""API keys and tenants for the HTTP servers (ingest gateway, query API).

Credentials are read the way Prometheus' remote_write and Grafana send them:
``Authorization: Bearer <key>`` or HTTP basic auth whose password is the key (the user name
is ignored).  The tenant comes from ``X-Scope-OrgID`` (the Cortex/Mimir convention) and
otherwise is the key's default tenant.  401: no valid key; 403: the key may not read/write
that tenant; 400: the tenant id itself is malformed.

Key file (YAML, ``TallyConfig.api_keys_file`` / ``TALLY_API_KEYS_FILE``)::

    keys:
      - key: "s3cret"              # or key_sha256: <hex of sha256(key)> to keep it out of the file
        name: prometheus-prod      # shown in logs and errors, never the key
        tenant: acme               # default tenant (optional when tenants lists exactly one)
        tenants: [acme, acme-dev]  # tenants it may use; "*" for any
        permissions: [read, write]

Without a key file (:meth:`KeyRing.open`) authentication is off: every request is allowed
and the tenant is ``X-Scope-OrgID`` or ``default``.  Pure: no I/O except ``from_file``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["AuthError", "ApiKey", "KeyRing", "DEFAULT_TENANT", "TENANT_HEADER", "ACTIONS", "validate_tenant"]

DEFAULT_TENANT = "default"
TENANT_HEADER = "X-Scope-OrgID"
ACTIONS = ("read", "write")
# Mimir's tenant id rules: at most 150 characters of this set, not "." or "..".
_TENANT_RE = re.compile(r"[a-zA-Z0-9!\-_.*'()]{1,150}")


class AuthError(Exception):
    """A request refused by authentication (401), authorization (403) or a bad tenant id (400)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def validate_tenant(tenant: str) -> str:
    """Return the tenant id if well formed, else raise AuthError(400)."""
    if not _TENANT_RE.fullmatch(tenant) or tenant in (".", ".."):
        shown = tenant if len(tenant) <= 60 else tenant[:60] + "..."
        raise AuthError(400, f"tenant id {shown!r} is not valid: 1-150 characters of letters, digits "
                             "and !-_.*'() expected")
    return tenant


@dataclass(frozen=True)
class ApiKey:
    """One key's rights: the sha256 of the key, its tenants ("*" = any) and actions."""

    name: str
    key_sha256: str
    tenants: frozenset[str]
    default_tenant: str | None
    permissions: frozenset[str]

    def may(self, tenant: str, action: str) -> bool:
        return action in self.permissions and ("*" in self.tenants or tenant in self.tenants)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup for plain dicts and multidicts alike."""
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for k, v in headers.items():
        if k.lower() == lower:
            return v
    return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key in ``Authorization`` (Bearer token, or basic-auth password), or None."""
    auth = _header(headers, "Authorization")
    if not auth:
        return None
    scheme, _, cred = auth.strip().partition(" ")
    cred = cred.strip()
    if scheme.lower() == "bearer" and cred:
        return cred
    if scheme.lower() == "basic" and cred:
        try:
            decoded = base64.b64decode(cred, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


class KeyRing:
    """The API keys a server accepts; ``authorize`` turns request headers into a tenant."""

    def __init__(self, keys: Iterable[ApiKey] = (), enabled: bool = True):
        self.enabled = enabled
        self._by_digest: dict[str, ApiKey] = {}
        for k in keys:
            if k.key_sha256 in self._by_digest:
                raise ValueError(f"API keys {self._by_digest[k.key_sha256].name!r} and {k.name!r} are the same key")
            self._by_digest[k.key_sha256] = k

    @classmethod
    def open(cls) -> "KeyRing":
        """No key file configured: authentication off, tenant from X-Scope-OrgID or 'default'."""
        return cls((), enabled=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        """Load keys from a YAML file (format in the module docstring); ValueError names the
        entry that is wrong."""
        import yaml

        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: Any, source: str = "key file") -> "KeyRing":
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError(f"{source}: expected a mapping with a 'keys' list")
        keys = []
        for i, entry in enumerate(doc["keys"]):
            where = f"{source}: keys[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a mapping")
            unknown = set(entry) - {"key", "key_sha256", "name", "tenant", "tenants", "permissions"}
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
            if ("key" in entry) == ("key_sha256" in entry):
                raise ValueError(f"{where}: give exactly one of 'key' and 'key_sha256'")
            if "key" in entry:
                if not isinstance(entry["key"], str) or len(entry["key"]) < 8:
                    raise ValueError(f"{where}: 'key' must be a string of at least 8 characters")
                digest = _digest(entry["key"])
            else:
                digest = str(entry["key_sha256"]).lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError(f"{where}: 'key_sha256' must be 64 hex digits")
            name = str(entry.get("name") or f"key#{i}")
            tenants = entry.get("tenants", [])
            if isinstance(tenants, str):
                tenants = [tenants]
            default = entry.get("tenant")
            if default is not None:
                default = validate_tenant(str(default))
                tenants = list(tenants) + [default]
            if not tenants:
                raise ValueError(f"{where}: needs 'tenant' or 'tenants'")
            for t in tenants:
                if t != "*":
                    try:
                        validate_tenant(str(t))
                    except AuthError as exc:
                        raise ValueError(f"{where}: {exc.message}") from None
            if default is None and len(tenants) == 1 and tenants[0] != "*":
                default = str(tenants[0])
            perms = entry.get("permissions", list(ACTIONS))
            if isinstance(perms, str):
                perms = [perms]
            bad = [p for p in perms if p not in ACTIONS]
            if bad or not perms:
                raise ValueError(f"{where}: permissions must be a non-empty list of {list(ACTIONS)}, got {perms!r}")
            keys.append(ApiKey(name, digest, frozenset(map(str, tenants)), default, frozenset(perms)))
        return cls(keys)

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey:
        """The key the request presents; AuthError(401) if none or unknown."""
        key = presented_key(headers)
        if key is None:
            raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>' or basic auth "
                                 "with the key as password")
        found = self._by_digest.get(_digest(key))
        if found is None:
            raise AuthError(401, "invalid API key")
        return found

    def authorize(self, headers: Mapping[str, str], action: str) -> str:
        """The tenant a request acts for, if its key may ``action`` ("read" or "write") it.

        Raises AuthError: 401 without a valid key, 403 when the key may not use the tenant
        for that action, 400 for a malformed tenant id or a missing one the key cannot default.
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
        asked = _header(headers, TENANT_HEADER)
        asked = asked.strip() if asked is not None else None
        if asked:
            validate_tenant(asked)
        if not self.enabled:
            return asked or DEFAULT_TENANT
        key = self.authenticate(headers)
        tenant = asked or key.default_tenant
        if tenant is None:
            raise AuthError(400, f"API key {key.name!r} has no default tenant: send the tenant in {TENANT_HEADER}")
        if not key.may(tenant, action):
            if action not in key.permissions:
                raise AuthError(403, f"API key {key.name!r} may not {action} (permissions: "
                                     f"{sorted(key.permissions)})")
            raise AuthError(403, f"API key {key.name!r} may not {action} tenant {tenant!r}")
        return tenant
