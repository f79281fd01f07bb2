"""Rollup rules (M3-style): aggregate a metric into new series grouped by a subset of labels.

Pure: parsing and validation of the rule file, and the mapping of a raw series to its
rollup series.  The mapping runs once per series at the edge (``tally.producer``); the
point record then carries the rollup series ids (``rsids``) and the streaming job
aggregates every point into its own series and into each rollup series (tally/aggsql.py),
so rollup buckets live in the same tiers and are read like any series.  The query planner
(``tally.query.rollups``) uses them when a query's grouping is covered.

Rule file (YAML, ``TallyConfig.rollup_rules_path`` / ``TALLY_ROLLUP_RULES_FILE``)::

    rollups:
      - name: cpu_by_region          # [a-zA-Z_][a-zA-Z0-9_]*, unique
        match: cpu_usage{env="prod"} # a series selector with a metric name (= != =~ !~)
        by: [region, env]            # labels kept; every other label is aggregated away
        drop_raw: false              # true: the raw series are not aggregated at all
        since: 2026-11-23T00:00:00Z  # optional: data before this has no rollup buckets

A rollup series has the raw series' metric name and tags = its ``by`` labels (those the raw
series has) plus the reserved label ``__rollup__="<rule name>"``; its identity is
``tally.series.series_id`` of that, like any series.  Raw series never carry the reserved
label (a series that does is not rolled up), so a selector that does not mention it never
sees rollup series.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from tally.promql.ast import Matcher, VectorSelector
from tally.series import SeriesId, series_id

if TYPE_CHECKING:
    from tally.aggregate import Aggregate

__all__ = ["ROLLUP_LABEL", "RollupRule", "RollupRuleError", "RollupSet", "Rollups", "load_rules", "parse_rules",
           "rollup_buckets"]

ROLLUP_LABEL = "__rollup__"
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RULE_KEYS = frozenset({"name", "match", "by", "drop_raw", "since"})


class RollupRuleError(ValueError):
    """A rule file that is not valid; the message names the rule and the field."""


@dataclass(frozen=True)
class RollupRule:
    """One rule: series of ``metric`` matching ``matchers`` roll up into series keeping ``by``."""

    name: str
    metric: str
    matchers: tuple[Matcher, ...]
    by: tuple[str, ...]
    drop_raw: bool = False
    since_ms: int | None = None

    def matches(self, name: str, tags: Mapping[str, str]) -> bool:
        """Does the raw series (name, tags) feed this rule?"""
        return name == self.metric and ROLLUP_LABEL not in tags and all(
            m.matches(tags.get(m.name)) for m in self.matchers)

    def rollup_tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        """The tags of the rollup series a raw series with ``tags`` belongs to."""
        out = {k: tags[k] for k in self.by if k in tags}
        out[ROLLUP_LABEL] = self.name
        return out


@dataclass(frozen=True)
class Rollups:
    """What a raw series turns into: the sid its points carry (``sid``: the raw series, or
    the first rollup series when a matching rule drops the raw one), the further series ids
    they are aggregated into (``rsids``, None when none) and the rollup series to register
    (with their rule)."""

    sid: int
    rsids: tuple[int, ...] | None
    series: tuple[tuple[RollupRule, SeriesId], ...]
    drop_raw: bool

    def to_register(self, raw: SeriesId) -> list[SeriesId]:
        """The series a producer names in the series index for ``raw``: its rollup series,
        and the raw series itself unless a rule drops it."""
        return [s for _, s in self.series] + ([] if self.drop_raw else [raw])


class RollupSet:
    """The rules of a file, with a per-series cache of the mapping (one lookup per series)."""

    def __init__(self, rules: Iterable[RollupRule] = (), cache_size: int = 1_000_000):
        self.rules = tuple(rules)
        self._by_metric: dict[str, list[RollupRule]] = {}
        for rule in self.rules:
            self._by_metric.setdefault(rule.metric, []).append(rule)
        self._cache: dict[int, Rollups | None] = {}
        self._cache_size = cache_size

    def __bool__(self) -> bool:
        return bool(self.rules)

    def for_metric(self, name: str) -> list[RollupRule]:
        """The rules whose metric is ``name``."""
        return self._by_metric.get(name, [])

    def rollups(self, series: SeriesId) -> Rollups | None:
        """The rollup mapping of a raw series, or None when no rule matches it."""
        if series.name not in self._by_metric:
            return None
        hit = self._cache.get(series.id, False)
        if hit is not False:
            return hit
        tags = series.tag_dict
        found = [(rule, series_id(series.tenant, series.name, rule.rollup_tags(tags)))
                 for rule in self._by_metric[series.name] if rule.matches(series.name, tags)]
        result = None
        if found:
            drop = any(rule.drop_raw for rule, _ in found)
            ids = [s.id for _, s in found]
            if drop:
                result = Rollups(ids[0], tuple(ids[1:]) or None, tuple(found), True)
            else:
                result = Rollups(series.id, tuple(ids), tuple(found), False)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[series.id] = result
        return result


def rollup_buckets(rules: RollupSet, buckets: Iterable[tuple[SeriesId, int, "Aggregate"]]) -> dict:
    """The rollup buckets of some raw buckets: {(rollup SeriesId, bucket start): Aggregate},
    each the merge (tally.aggregate.Aggregate.merge) of the raw buckets of its group with
    that start; what the streaming job computes, for loaders that write buckets directly
    (benchmarks) and for tests.  Inputs are not modified."""
    out: dict = {}
    for series, ts, agg in buckets:
        mapped = rules.rollups(series)
        if mapped is None:
            continue
        for _rule, rollup in mapped.series:
            key = (rollup, int(ts))
            acc = out.get(key)
            if acc is None:
                out[key] = agg.copy()
            else:
                acc.merge(agg)
    return out


def _parse_since(value: Any, where: str) -> int:
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, dt.date):
        stamp = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RollupRuleError(f"{where}: 'since' must be an ISO 8601 time, got {value!r}") from None
    else:
        raise RollupRuleError(f"{where}: 'since' must be an ISO 8601 time, got {value!r}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return int(stamp.timestamp() * 1000)


def _parse_rule(raw: Any, index: int) -> RollupRule:
    from tally.promql.errors import PromQLError
    from tally.promql.parser import parse

    where = f"rollup rule #{index + 1}"
    if not isinstance(raw, dict):
        raise RollupRuleError(f"{where}: must be a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RollupRuleError(f"{where}: 'name' must match [a-zA-Z_][a-zA-Z0-9_]*, got {name!r}")
    where = f"rollup rule {name!r}"
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise RollupRuleError(f"{where}: unknown field(s) {unknown} (allowed: {sorted(_RULE_KEYS)})")
    match = raw.get("match")
    if not isinstance(match, str) or not match.strip():
        raise RollupRuleError(f"{where}: 'match' must be a series selector such as cpu_usage{{env=\"prod\"}}")
    try:
        sel = parse(match)
    except PromQLError as exc:
        raise RollupRuleError(f"{where}: 'match' is not a series selector: {exc}") from None
    if not isinstance(sel, VectorSelector) or sel.offset_ms:
        raise RollupRuleError(f"{where}: 'match' must be a plain series selector, got {match!r}")
    if sel.name is None or any(m.name == "__name__" for m in sel.matchers):
        raise RollupRuleError(f"{where}: 'match' must name exactly one metric (cpu_usage{{...}}), got {match!r}")
    if any(m.name == ROLLUP_LABEL for m in sel.matchers):
        raise RollupRuleError(f"{where}: 'match' cannot use the reserved label {ROLLUP_LABEL}")
    by = raw.get("by")
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
        raise RollupRuleError(f"{where}: 'by' must be a list of label names, got {by!r}")
    for label in by:
        if not _NAME.match(label) or label.startswith("__"):
            raise RollupRuleError(f"{where}: 'by' label {label!r} is not a plain label name")
    if len(set(by)) != len(by):
        raise RollupRuleError(f"{where}: 'by' lists a label twice: {by}")
    drop_raw = raw.get("drop_raw", False)
    if not isinstance(drop_raw, bool):
        raise RollupRuleError(f"{where}: 'drop_raw' must be true or false, got {drop_raw!r}")
    since = _parse_since(raw["since"], where) if raw.get("since") is not None else None
    return RollupRule(name, sel.name, tuple(sel.matchers), tuple(sorted(by)), drop_raw, since)


def parse_rules(doc: Any) -> RollupSet:
    """Rules from a parsed YAML document ``{rollups: [...]}`` (None/empty: no rules)."""
    if doc is None:
        return RollupSet()
    if not isinstance(doc, dict) or set(doc) - {"rollups"}:
        raise RollupRuleError("a rollup rule file is a mapping with one key, 'rollups' (a list of rules)")
    items = doc.get("rollups") or []
    if not isinstance(items, list):
        raise RollupRuleError(f"'rollups' must be a list of rules, got {type(items).__name__}")
    rules = [_parse_rule(raw, i) for i, raw in enumerate(items)]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RollupRuleError(f"rollup rule names must be unique: {dupes} appear more than once")
    return RollupSet(rules)


def load_rules(path: Path | str | None) -> RollupSet:
    """Rules from a YAML file (None: no rules).  Raises RollupRuleError naming the file."""
    if path is None:
        return RollupSet()
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RollupRuleError(f"{path}: cannot read rollup rules: {exc}") from None
    except yaml.YAMLError as exc:
        raise RollupRuleError(f"{path}: not YAML: {exc}") from None
    try:
        return parse_rules(doc)
    except RollupRuleError as exc:
        raise RollupRuleError(f"{path}: {exc}") from None
