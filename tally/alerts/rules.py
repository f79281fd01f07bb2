"""Prometheus rule files: parsing and validation (pure).

The accepted format is Prometheus' own::

    groups:
      - name: api
        interval: 15s            # optional, else TallyConfig.alert_eval_interval_seconds
        tenant: acme             # Tally extension: the tenant whose series the rules read
        rules:
          - alert: HighErrorRate
            expr: sum by (service) (rate(errors[1m])) > 5
            for: 2m
            keep_firing_for: 0s  # accepted, as in Prometheus
            labels: {severity: page}
            annotations:
              summary: "{{ $labels.service }} errors at {{ $value }}"

Recording rules (``record:``) are refused with a message (Tally evaluates alerts only).
Every error is a ``RuleFileError`` naming the file, group and rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

__all__ = ["AlertRule", "RuleGroup", "RuleFileError", "parse_duration_seconds", "parse_rule_file",
           "load_rule_files"]

_DURATION_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_GROUP_KEYS = {"name", "interval", "rules", "tenant", "limit", "query_offset", "labels"}
_RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


class RuleFileError(ValueError):
    """A rule file that cannot be used: bad YAML, a missing or unknown field, a bad duration."""


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule of a group."""

    name: str
    expr: str
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RuleGroup:
    """A named group of rules evaluated together, on one interval, for one tenant."""

    name: str
    file: str
    rules: tuple[AlertRule, ...]
    interval_seconds: float | None = None  # None: the configured default
    tenant: str | None = None  # None: the configured default tenant
    labels: tuple[tuple[str, str], ...] = field(default=())


def parse_duration_seconds(text: Any, where: str = "duration") -> float:
    """Prometheus duration (``1h30m``, ``15s``, ``500ms``, ``0``) in seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text == 0:
        return 0.0
    if not isinstance(text, str) or not text:
        raise RuleFileError(f"{where}: expected a duration like 30s or 5m, got {text!r}")
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise RuleFileError(f"{where}: not a duration: {text!r}")
    return total


def _string_map(value: Any, where: str, check_names: bool) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise RuleFileError(f"{where}: expected a mapping of names to strings")
    out = []
    for k, v in value.items():
        if check_names and not (isinstance(k, str) and _LABEL_NAME.match(k)):
            raise RuleFileError(f"{where}: invalid label name {k!r}")
        if isinstance(v, (dict, list)) or v is None:
            raise RuleFileError(f"{where}: value of {k!r} must be a string")
        out.append((str(k), str(v)))
    return tuple(sorted(out))


def _parse_rule(raw: Any, where: str) -> AlertRule:
    if not isinstance(raw, Mapping):
        raise RuleFileError(f"{where}: a rule must be a mapping")
    if "record" in raw:
        raise RuleFileError(f"{where}: recording rules ('record: {raw['record']}') are not supported; "
                            "use an 'alert:' rule")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RuleFileError(f"{where}: unknown field(s) {sorted(unknown)}")
    name = raw.get("alert")
    if not isinstance(name, str) or not name.strip():
        raise RuleFileError(f"{where}: 'alert' (the alert name) is required")
    where = f"{where} ({name})"
    expr = raw.get("expr")
    if isinstance(expr, (int, float)) and not isinstance(expr, bool):
        expr = str(expr)
    if not isinstance(expr, str) or not expr.strip():
        raise RuleFileError(f"{where}: 'expr' is required")
    return AlertRule(
        name=name, expr=expr.strip(),
        for_seconds=parse_duration_seconds(raw.get("for", 0), f"{where}: for"),
        keep_firing_for_seconds=parse_duration_seconds(raw.get("keep_firing_for", 0), f"{where}: keep_firing_for"),
        labels=_string_map(raw.get("labels"), f"{where}: labels", check_names=True),
        annotations=_string_map(raw.get("annotations"), f"{where}: annotations", check_names=False),
    )


def parse_rule_file(text: str, file: str = "<rules>") -> tuple[RuleGroup, ...]:
    """Parse one rule file's YAML text into its groups; raises RuleFileError."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{file}: invalid YAML: {exc}") from None
    if doc is None:
        return ()
    if not isinstance(doc, Mapping) or not isinstance(doc.get("groups"), list):
        raise RuleFileError(f"{file}: expected a top-level 'groups:' list")
    groups, seen = [], set()
    for i, raw in enumerate(doc["groups"]):
        where = f"{file}: group {i + 1}"
        if not isinstance(raw, Mapping):
            raise RuleFileError(f"{where}: a group must be a mapping")
        unknown = set(raw) - _GROUP_KEYS
        if unknown:
            raise RuleFileError(f"{where}: unknown field(s) {sorted(unknown)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise RuleFileError(f"{where}: 'name' is required")
        if name in seen:
            raise RuleFileError(f"{file}: group name {name!r} is repeated")
        seen.add(name)
        where = f"{file}: group {name!r}"
        rules = raw.get("rules") or []
        if not isinstance(rules, list):
            raise RuleFileError(f"{where}: 'rules' must be a list")
        interval = raw.get("interval")
        tenant = raw.get("tenant")
        if tenant is not None and not (isinstance(tenant, str) and tenant):
            raise RuleFileError(f"{where}: 'tenant' must be a non-empty string")
        groups.append(RuleGroup(
            name=name, file=file,
            rules=tuple(_parse_rule(r, f"{where} rule {j + 1}") for j, r in enumerate(rules)),
            interval_seconds=None if interval is None else parse_duration_seconds(interval, f"{where}: interval"),
            tenant=tenant,
            labels=_string_map(raw.get("labels"), f"{where}: labels", check_names=True),
        ))
    return tuple(groups)


def load_rule_files(paths) -> tuple[RuleGroup, ...]:
    """Read and parse every file in ``paths`` (in order); raises RuleFileError."""
    groups = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise RuleFileError(f"{path}: cannot read rule file: {exc.strerror}") from None
        groups.extend(parse_rule_file(text, str(path)))
    return tuple(groups)
