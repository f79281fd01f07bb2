"""Series identity: the one function that names a series, used by every component.

A series is (tenant, metric name, tag set).  Its canonical key sorts the tags and escapes
the separators, so equal series always produce byte-equal keys; its id is a stable
signed 64-bit hash of that key (BLAKE2b, never Python's per-process ``hash()``), the
Kafka partition key and the Cassandra partition key component.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", "|": "\\|"})


def _escape(text: str) -> str:
    return text.translate(_ESCAPES)


@dataclass(frozen=True)
class SeriesId:
    """A series: tenant, metric name, sorted tags, canonical key and 64-bit id."""

    tenant: str
    name: str
    tags: tuple[tuple[str, str], ...]
    key: str
    id: int

    @property
    def tag_dict(self) -> dict[str, str]:
        return dict(self.tags)


def canonical_key(tenant: str, name: str, tags: Iterable[tuple[str, str]]) -> str:
    """``tenant|name|k1=v1,k2=v2`` with tags sorted by name and separators escaped."""
    body = ",".join(f"{_escape(k)}={_escape(v)}" for k, v in sorted(tags))
    return f"{_escape(tenant)}|{_escape(name)}|{body}"


def series_hash(key: str) -> int:
    """Stable signed 64-bit id of a canonical key (fits a Cassandra bigint / Java long)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def series_id(tenant: str, name: str, tags: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> SeriesId:
    """Build the identity of a series; tags may be a mapping or (name, value) pairs.

    Duplicate tag names in pairs are an error rather than silently last-wins.
    """
    pairs = list(tags.items()) if isinstance(tags, Mapping) else list(tags)
    sorted_tags = tuple(sorted((str(k), str(v)) for k, v in pairs))
    names = [k for k, _ in sorted_tags]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tag name in {names}")
    key = canonical_key(tenant, name, sorted_tags)
    return SeriesId(tenant=tenant, name=name, tags=sorted_tags, key=key, id=series_hash(key))


def _split_raw(text: str, sep: str) -> list[str]:
    """Split on unescaped ``sep``, keeping escape sequences in the parts."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, escaped = [], False
    for ch in text:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def parse_key(key: str) -> SeriesId:
    """Inverse of :func:`canonical_key`: the series a canonical key names."""
    fields = _split_raw(key, "|")
    if len(fields) != 3:
        raise ValueError(f"not a canonical series key: {key!r}")
    tenant, name, body = fields
    tags = []
    for raw in _split_raw(body, ",") if body else []:
        kv = _split_raw(raw, "=")
        if len(kv) != 2:
            raise ValueError(f"bad tag {raw!r} in series key {key!r}")
        tags.append((_unescape(kv[0]), _unescape(kv[1])))
    return series_id(_unescape(tenant), _unescape(name), tags)
