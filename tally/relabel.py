"""Relabel rules (pure): rewrite a series' labels before limits and before its identity.

Prometheus ``relabel_config``-like rules from a YAML file (``TallyConfig.relabel_rules_path``),
applied in order by the agent and the gateway to every new label set (``__name__`` holds the
metric name) before the cardinality limits and before :func:`tally.series.series_id`::

    rules:
      - action: drop            # drop a metric: regex on the joined source_labels
        source_labels: [__name__]   # (the default for drop/keep)
        regex: debug_.*
      - action: labeldrop       # drop every label whose name matches
        regex: trace_id|span_id
        metric: http_.*         # optional: only for metrics whose name matches
      - action: labelkeep       # keep only the labels whose name matches (__name__ always stays)
        regex: host|region|env
      - action: replace         # target_label = replacement, if the joined value matches regex
        source_labels: [path]
        regex: /user/[0-9]+(/.*)?
        target_label: path
        replacement: /user/:id$1
      - action: hash            # target_label = "hash_NN", one of `buckets` stable buckets
        source_labels: [request_id]
        buckets: 16             # target_label defaults to the single source label
      - action: keep            # keep only the series whose joined value matches

Semantics follow Prometheus: regexes are fully anchored, source label values are joined
with ``separator`` (default ``;``; an absent label is the empty string), ``replacement``
expands ``$1``/``${1}``/``${name}`` (default ``$1``) and an empty result removes the target
label; ``regex`` defaults to ``(.*)``.  Differences: ``labeldrop``/``labelkeep`` never touch
``__name__``; ``hash`` produces a label value (:func:`hash_bucket`) instead of ``hashmod``'s
number and leaves series without the source labels unchanged; ``metric`` restricts a rule to
some metric names.  A bad file raises :class:`RelabelError` naming the rule index and field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["RelabelError", "Rule", "RuleSet", "ACTIONS", "parse_rules", "load_rules", "hash_bucket"]

ACTIONS = ("replace", "labeldrop", "labelkeep", "drop", "keep", "hash")
_FIELDS = {"action", "source_labels", "separator", "regex", "target_label", "replacement", "buckets", "metric"}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DOLLAR = re.compile(r"\$(?:(\d+)|\{(\w+)\}|(\$))")
MAX_BUCKETS = 100_000


class RelabelError(ValueError):
    """A relabel rule file that cannot be used; the message names the file, rule and field."""


def hash_bucket(value: str, buckets: int) -> str:
    """A stable label value for ``value`` among ``buckets`` buckets: ``hash_00`` ..
    (zero-padded to the width of ``buckets - 1``, at least 2 digits).  BLAKE2b, so it is
    the same in every process and Python version."""
    n = int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "big") % buckets
    return f"hash_{n:0{max(2, len(str(buckets - 1)))}d}"


def _python_template(replacement: str) -> str:
    """Prometheus' ``$1`` / ``${1}`` / ``${name}`` / ``$$`` as a ``Match.expand`` template."""
    def sub(m: re.Match) -> str:
        if m.group(3):
            return "$"
        return f"\\g<{m.group(1) or m.group(2)}>"
    return _DOLLAR.sub(sub, replacement.replace("\\", "\\\\"))


@dataclass(frozen=True)
class Rule:
    """One parsed rule (see the module docstring for each action)."""

    action: str
    regex: re.Pattern
    source_labels: tuple[str, ...] = ()
    separator: str = ";"
    target_label: str = ""
    replacement: str = "$1"
    buckets: int = 0
    metric: re.Pattern | None = None

    def apply(self, labels: dict[str, str]) -> bool:
        """Apply to ``labels`` (changed in place); False when the series is dropped."""
        if self.metric is not None and not self.metric.fullmatch(labels.get("__name__", "")):
            return True
        action = self.action
        if action in ("labeldrop", "labelkeep"):
            keep_matching = action == "labelkeep"
            for name in [n for n in labels if n != "__name__"]:
                if bool(self.regex.fullmatch(name)) != keep_matching:
                    del labels[name]
            return True
        value = self.separator.join(labels.get(n, "") for n in self.source_labels)
        if action == "drop":
            return not self.regex.fullmatch(value)
        if action == "keep":
            return bool(self.regex.fullmatch(value))
        if action == "hash":
            if any(n in labels for n in self.source_labels):
                labels[self.target_label] = hash_bucket(value, self.buckets)
            return True
        m = self.regex.fullmatch(value)  # replace
        if m is not None:
            result = m.expand(_python_template(self.replacement))
            if result:
                labels[self.target_label] = result
            else:
                labels.pop(self.target_label, None)
        return True


@dataclass(frozen=True)
class RuleSet:
    """Rules applied in order; ``source`` names where they came from (for messages)."""

    rules: tuple[Rule, ...]
    source: str = "<rules>"

    def apply(self, name: str, tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[str, dict[str, str]] | None:
        """The (metric name, tags) after every rule, or None if a rule dropped the series.
        A rule that empties ``__name__`` yields an empty name (refused by validate_series)."""
        labels = dict(tags.items() if isinstance(tags, Mapping) else tags)
        labels["__name__"] = name
        for rule in self.rules:
            if not rule.apply(labels):
                return None
        return labels.pop("__name__", ""), labels

    def __len__(self) -> int:
        return len(self.rules)


def _fail(source: str, index: int, action: Any, field: str, problem: str) -> RelabelError:
    what = f"rule {index}" + (f" (action {action!r})" if isinstance(action, str) else "")
    return RelabelError(f"relabel rules {source}: {what}: field {field!r}: {problem}")


def _regex(raw: Any, source: str, i: int, action: str, field: str) -> re.Pattern:
    if not isinstance(raw, str):
        raise _fail(source, i, action, field, f"must be a string regex, got {type(raw).__name__}")
    try:
        return re.compile(raw)
    except re.error as exc:
        raise _fail(source, i, action, field, f"invalid regex {raw!r}: {exc}") from None


def _label_name(raw: Any, source: str, i: int, action: str, field: str) -> str:
    if not isinstance(raw, str) or not (raw == "__name__" or _LABEL_NAME.fullmatch(raw)):
        raise _fail(source, i, action, field, f"{raw!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return raw


def _parse_rule(i: int, item: Any, source: str) -> Rule:
    if not isinstance(item, dict):
        raise RelabelError(f"relabel rules {source}: rule {i}: must be a mapping with an 'action', "
                           f"got {type(item).__name__}")
    action = item.get("action", "replace")
    if action not in ACTIONS:
        raise _fail(source, i, None, "action", f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise _fail(source, i, action, unknown[0], f"unknown field; known fields: {', '.join(sorted(_FIELDS))}")
    if action in ("labeldrop", "labelkeep"):
        if "regex" not in item:
            raise _fail(source, i, action, "regex", "required: the label names to " + action[5:])
        for field in ("source_labels", "target_label", "replacement", "buckets"):
            if field in item:
                raise _fail(source, i, action, field, f"not used by {action} (it matches label names with regex)")
    default_sources = ["__name__"] if action in ("drop", "keep") else None
    raw_sources = item.get("source_labels", default_sources)
    if raw_sources is None:
        sources: tuple[str, ...] = ()
        if action in ("replace", "hash"):
            raise _fail(source, i, action, "source_labels", "required: a list of label names")
    else:
        if isinstance(raw_sources, str) or not isinstance(raw_sources, list) or not raw_sources:
            raise _fail(source, i, action, "source_labels", "must be a non-empty list of label names")
        sources = tuple(_label_name(s, source, i, action, "source_labels") for s in raw_sources)
    separator = item.get("separator", ";")
    if not isinstance(separator, str):
        raise _fail(source, i, action, "separator", "must be a string")
    regex = _regex(item.get("regex", "(.*)"), source, i, action, "regex")
    metric = _regex(item["metric"], source, i, action, "metric") if "metric" in item else None
    target, replacement, buckets = "", "$1", 0
    if action == "replace":
        if "target_label" not in item:
            raise _fail(source, i, action, "target_label", "required: the label to write")
        target = _label_name(item["target_label"], source, i, action, "target_label")
        replacement = item.get("replacement", "$1")
        if not isinstance(replacement, str):
            raise _fail(source, i, action, "replacement", "must be a string")
        try:  # group references must exist in the regex
            # a pattern "X|" always matches "" (X's groups unmatched), so expand checks the references
            re.compile(regex.pattern + "|").fullmatch("").expand(_python_template(replacement))
        except (re.error, IndexError) as exc:
            raise _fail(source, i, action, "replacement", f"{replacement!r} refers to a group the regex "
                                                          f"does not have: {exc}") from None
    elif action == "hash":
        buckets = item.get("buckets")
        if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= MAX_BUCKETS:
            raise _fail(source, i, action, "buckets", f"required: an integer from 1 to {MAX_BUCKETS}, got {buckets!r}")
        if "target_label" in item:
            target = _label_name(item["target_label"], source, i, action, "target_label")
        elif len(sources) == 1:
            target = sources[0]
        else:
            raise _fail(source, i, action, "target_label", "required when there are several source_labels")
        if target == "__name__":
            raise _fail(source, i, action, "target_label", "cannot hash the metric name")
    elif "target_label" in item or "replacement" in item or "buckets" in item:
        field = next(f for f in ("target_label", "replacement", "buckets") if f in item)
        raise _fail(source, i, action, field, f"not used by {action}")
    return Rule(action=action, regex=regex, source_labels=sources, separator=separator, target_label=target,
                replacement=replacement, buckets=buckets, metric=metric)


def parse_rules(doc: Any, source: str = "<rules>") -> RuleSet:
    """Rules from a parsed YAML document ``{rules: [...]}`` (RelabelError if unusable)."""
    if doc is None:
        return RuleSet((), source)
    if not isinstance(doc, dict) or "rules" not in doc:
        raise RelabelError(f"relabel rules {source}: the file must be a mapping with a 'rules' list")
    unknown = sorted(set(doc) - {"rules"})
    if unknown:
        raise RelabelError(f"relabel rules {source}: unknown top-level key {unknown[0]!r} (only 'rules')")
    items = doc["rules"] or []
    if not isinstance(items, list):
        raise RelabelError(f"relabel rules {source}: 'rules' must be a list, got {type(items).__name__}")
    return RuleSet(tuple(_parse_rule(i, item, source) for i, item in enumerate(items)), source)


def load_rules(path: str | Path) -> RuleSet:
    """Read and parse a YAML rule file (RelabelError for a missing file or bad YAML too)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RelabelError(f"relabel rules {path}: cannot read the file: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RelabelError(f"relabel rules {path}: not valid YAML: {exc}") from None
    return parse_rules(doc, str(path))
