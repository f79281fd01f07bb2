"""StatsD / DogStatsD wire format: a pure line parser and the client's line formatter.

Grammar of one line (many lines per datagram, separated by ``\\n``)::

    name:value[:value...]|type[|@rate][|#tag[:value],...][|T<unix seconds>][|c:<container>]

- types: ``c`` counter, ``g`` gauge (a value starting with ``+`` or ``-`` is a delta on the
  current gauge), ``ms`` timer, ``h`` histogram, ``d`` distribution, ``s`` set (values are
  arbitrary strings: the distinct count is what is aggregated);
- numbers: ``[+-]digits[.digits][e[+-]digits]``, finite and within ±MAX_VALUE (1e300, what a
  sketch can index; sums of such values stay finite); no ``nan``/``inf``/``1_000``;
- ``@rate`` in (0, 1]: a counter sampled at rate r adds value/r and counts 1/r, a timer,
  histogram or distribution value counts 1/r; gauges and sets ignore the rate (as StatsD);
- ``#tags``: ``key:value`` or a bare ``key``, which gets the value ``"true"`` (an empty
  value would make the label disappear in PromQL); a key given twice is an error;
- ``|T`` event time in Unix seconds; ``|c:``, ``|e:`` and ``|card:`` (DogStatsD container,
  external data and cardinality fields) are accepted and ignored for identity.

Names are made usable from PromQL like Prometheus' statsd_exporter does: every character
outside ``[a-zA-Z0-9_:]`` becomes ``_`` (``api.requests`` -> ``api_requests``) and a
leading digit gets a ``_`` prefix.  Tag keys follow the label-name rule (also no ``:``).

A bad line raises (or, per datagram, is returned with) one :class:`StatsdLineError` whose
``reason`` is a stable code used as the ``reason`` label of the agent's ``rejected``
counter; the good lines of the same datagram are always kept.

Pure module: no I/O, no engines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tally.sketch import MAX_INDEXABLE

__all__ = [
    "METRIC_TYPES", "REASONS", "Head", "Sample", "StatsdLineError", "format_line", "normalize_name",
    "normalize_tag_key", "parse_datagram", "parse_head", "parse_line", "parse_value",
]

METRIC_TYPES = frozenset({"c", "g", "ms", "h", "d", "s"})
SAMPLED_TYPES = frozenset({"c", "ms", "h", "d"})  # types whose weight is 1/rate
MAX_NAME_CHARS = 200
MAX_LINE_CHARS = 8192

# Stable reason codes (the agent's rejected{reason=...} label values).
REASONS = {
    "encoding": "line is not valid UTF-8",
    "too_long": f"line longer than {MAX_LINE_CHARS} characters",
    "no_value": "missing ':' between name and value",
    "no_type": "missing '|type' after the value",
    "bad_name": "empty or too long metric name",
    "bad_type": "unknown metric type",
    "bad_value": "value is not a finite decimal number within ±1e300",
    "bad_rate": "sample rate is not a number in (0, 1]",
    "bad_tags": "malformed tag list",
    "duplicate_tag": "a tag key appears twice",
    "bad_timestamp": "timestamp is not a positive integer of Unix seconds",
    "bad_field": "unknown '|' field",
    "event": "DogStatsD events (_e{...}) and service checks (_sc) are not metrics",
}

_NUMBER_CHARS = "0123456789.eE+-"
# The largest accepted magnitude: timers' sketches cannot index more, and counters' sums of
# values this size stay finite.
MAX_VALUE = MAX_INDEXABLE
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")
_IGNORED_FIELDS = ("c:", "e:", "card:")


class StatsdLineError(ValueError):
    """One rejected line: ``reason`` is a code from :data:`REASONS`, ``message`` says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Head:
    """Everything of a line except its values and timestamp: what names the series.

    ``tags`` are sorted (key, value) pairs with normalized keys; ``weight`` is 1/rate for
    sampled types and 1 otherwise."""

    name: str
    type: str
    rate: float
    tags: tuple[tuple[str, str], ...]
    timestamp: int | None = None
    container: str | None = None

    @property
    def weight(self) -> float:
        return 1.0 / self.rate if self.type in SAMPLED_TYPES else 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed line: its head and its values (floats; strings for sets).

    For gauges ``deltas[i]`` says whether ``values[i]`` is a +/- change of the current value."""

    head: Head
    values: tuple
    deltas: tuple[bool, ...] = ()


def normalize_name(name: str) -> str:
    """statsd_exporter-style metric name: ``[^a-zA-Z0-9_:]`` -> ``_``, no leading digit."""
    out = _NAME_BAD.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def normalize_tag_key(key: str) -> str:
    """A Prometheus label name: ``[^a-zA-Z0-9_]`` -> ``_``, no leading digit."""
    out = _LABEL_BAD.sub("_", key)
    return "_" + out if out[:1].isdigit() else out


def parse_number(raw: str) -> float:
    """A finite decimal number, or StatsdLineError('bad_value')."""
    # Python's float() also takes ' 1', '1_0', 'nan', 'inf' and non-ASCII digits: allow only
    # the StatsD characters, then let float() check the structure.
    if raw and not raw.strip(_NUMBER_CHARS):
        try:
            value = float(raw)
        except ValueError:
            pass
        else:
            if -MAX_VALUE <= value <= MAX_VALUE:  # false for inf and nan
                return value
    raise StatsdLineError("bad_value", f"value {raw[:40]!r} is not a finite decimal number within ±{MAX_VALUE:g}")


def all_in_range(values: Sequence[float]) -> bool:
    """True if every value parsed in bulk (float() over number characters only, so never
    NaN) is within ±MAX_VALUE, as parse_number requires."""
    return -MAX_VALUE <= min(values) and max(values) <= MAX_VALUE


def parse_value(metric_type: str, raw: str) -> float | str:
    """One value of a line of the given type (a string for sets, a float otherwise)."""
    if metric_type == "s":
        if not raw:
            raise StatsdLineError("bad_value", "empty set member")
        return raw
    return parse_number(raw)


def parse_head(key: str) -> Head:
    """Parse ``name|type[|field...]``: a line without its ``:values`` part."""
    parts = key.split("|")
    raw_name = parts[0]
    if raw_name.startswith(("_e{", "_sc")):
        raise StatsdLineError("event", REASONS["event"])
    if not raw_name or len(raw_name) > MAX_NAME_CHARS:
        raise StatsdLineError("bad_name", f"metric name {raw_name[:40]!r} is empty or longer than {MAX_NAME_CHARS}")
    if len(parts) < 2 or not parts[1]:
        raise StatsdLineError("no_type", "missing '|type' after the value")
    mtype = parts[1]
    if mtype not in METRIC_TYPES:
        raise StatsdLineError("bad_type", f"unknown metric type {mtype[:20]!r} (expected c, g, ms, h, d or s)")
    rate, tags, ts, container = 1.0, (), None, None
    seen = set()
    for field in parts[2:]:
        kind = field.partition(":")[0] + ":" if field.startswith(_IGNORED_FIELDS) else field[:1]
        if kind in seen:
            raise StatsdLineError("bad_field", f"field '|{kind}' given twice")
        seen.add(kind)
        if kind == "@":
            rate = _parse_rate(field[1:])
        elif kind == "#":
            tags = _parse_tags(field[1:])
        elif kind == "T":
            ts = _parse_timestamp(field[1:])
        elif kind == "c:":
            container = field[2:]
        elif kind not in ("e:", "card:"):
            raise StatsdLineError("bad_field", f"unknown field {field[:40]!r}")
    return Head(normalize_name(raw_name), mtype, rate, tags, ts, container)


def _parse_rate(raw: str) -> float:
    try:
        rate = parse_number(raw)
    except StatsdLineError:
        rate = math.nan
    if not 0.0 < rate <= 1.0:
        raise StatsdLineError("bad_rate", f"sample rate {raw[:20]!r} is not a number in (0, 1]")
    return rate


def _parse_tags(raw: str) -> tuple[tuple[str, str], ...]:
    tags = {}
    for item in raw.split(","):
        key, sep, value = item.partition(":")
        if not key:
            raise StatsdLineError("bad_tags", f"tag {item[:40]!r} has an empty key")
        key = normalize_tag_key(key)
        if key in tags:
            raise StatsdLineError("duplicate_tag", f"tag key {key!r} appears twice")
        tags[key] = value if sep else "true"
    return tuple(sorted(tags.items()))


def _parse_timestamp(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
        raise StatsdLineError("bad_timestamp", f"timestamp {raw[:20]!r} is not a positive integer of Unix seconds")
    return int(raw)


def split_line(line: str) -> tuple[str, str]:
    """(head key ``name|type|...``, raw values ``v1[:v2...]``) of one line."""
    if len(line) > MAX_LINE_CHARS:
        raise StatsdLineError("too_long", REASONS["too_long"])
    i = line.find(":")
    j = line.find("|", i + 1) if i >= 0 else -1
    if i < 0 or (0 <= line.find("|") < i):
        if line.startswith(("_e{", "_sc")):
            raise StatsdLineError("event", REASONS["event"])
        raise StatsdLineError("no_value", "missing ':' between name and value")
    if j < 0:
        raise StatsdLineError("no_type", "missing '|type' after the value")
    return line[:i] + line[j:], line[i + 1:j]


def parse_values(head: Head, raw: str) -> Sample:
    """The sample of a head and its raw ``v1[:v2...]`` values (all or nothing)."""
    parts = raw.split(":")
    if head.type == "g":
        values = tuple(parse_number(p) for p in parts)
        return Sample(head, values, tuple(p[:1] in "+-" for p in parts))
    return Sample(head, tuple(parse_value(head.type, p) for p in parts))


def parse_line(line: str) -> Sample:
    """Parse one line; raises StatsdLineError."""
    key, raw = split_line(line)
    return parse_values(parse_head(key), raw)


def parse_datagram(data: bytes | str) -> tuple[list[Sample], list[tuple[str, StatsdLineError]]]:
    """Every line of a datagram: (samples, [(line, error)]); empty lines are skipped."""
    samples, rejected = [], []
    if isinstance(data, bytes):
        try:
            lines = data.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            lines = []
            for raw in data.split(b"\n"):
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    rejected.append((raw.decode("utf-8", "replace"), StatsdLineError("encoding", REASONS["encoding"])))
    else:
        lines = data.split("\n")
    for line in lines:
        if not line:
            continue
        try:
            samples.append(parse_line(line))
        except StatsdLineError as exc:
            rejected.append((line, exc))
    return samples, rejected


# -- the client's side ---------------------------------------------------------------------

_TAG_KEY_BAD = re.compile(r"[|,#:\n]")
_TAG_VALUE_BAD = re.compile(r"[|,#\n]")


def _format_number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def format_line(name: str, value, metric_type: str, rate: float = 1.0,
                tags: Mapping[str, str] | Iterable[str] | None = None, timestamp: int | None = None,
                delta: bool = False) -> bytes:
    """One DogStatsD line, e.g. ``b'api.requests:1|c|@0.5|#env:prod'``.

    ``tags`` may be a mapping or ``"k:v"`` strings; ``delta`` makes a gauge value a signed
    change (``+3``/``-3``).  Separators are replaced in names and tags so one call yields
    one line - two for an absolute negative gauge, which is first set to 0; raises ValueError for an unknown type, a rate outside (0, 1] or
    a non-finite value (the client counts those as dropped)."""
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"unknown metric type {metric_type!r}")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sample rate must be in (0, 1], got {rate!r}")
    name = _TAG_KEY_BAD.sub("_", name)
    if metric_type == "s":
        text = _TAG_VALUE_BAD.sub("_", str(value)).replace(":", "_")
    else:
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
        text = _format_number(value)
        if delta and metric_type == "g" and value >= 0:
            text = "+" + text
    out = [name, ":", text, "|", metric_type]
    # An absolute negative gauge would read as a delta: set it to 0 first (as StatsD clients do).
    prefix = f"{name}:0|g" if metric_type == "g" and not delta and text.startswith("-") else None
    if rate != 1.0:
        out.append(f"|@{float(rate)!r}")
    if tags:
        items = (f"{k}:{v}" for k, v in tags.items()) if isinstance(tags, Mapping) else tags
        out.append("|#" + ",".join(_fmt_tag(t) for t in items))
    if timestamp is not None:
        out.append(f"|T{int(timestamp)}")
    if prefix is not None:
        suffix = "".join(out[5:])
        return f"{prefix}{suffix}\n".encode("utf-8") + "".join(out).encode("utf-8")
    return "".join(out).encode("utf-8")


def _fmt_tag(tag: str) -> str:
    key, sep, value = str(tag).partition(":")
    return _TAG_KEY_BAD.sub("_", key) + (":" + _TAG_VALUE_BAD.sub("_", value) if sep else "")
