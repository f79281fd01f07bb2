"""Annotation templating, the subset of Prometheus' Go templates that rule files use (pure).

Supported inside ``{{ ... }}``: ``$value`` / ``.Value``, ``$labels.name`` / ``.Labels.name``,
``index $labels "name"``, ``$externalLabels.name``; pipes to ``humanize``,
``humanizePercentage``, ``humanizeDuration``, ``toUpper``, ``toLower``, ``title``;
``printf "<fmt>" <arg>``.  Values print like Go's ``%v`` (``1e+06``, ``0.5``).  As in
Prometheus, an expansion error does not fail the rule: the text becomes
``<error expanding template: ...>``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Mapping

__all__ = ["TemplateError", "expand", "go_float"]

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_PRINTF = re.compile(r'^printf\s+"((?:[^"\\]|\\.)*)"\s+(.+)$')
_INDEX = re.compile(r'^index\s+(\$labels|\.Labels|\$externalLabels)\s+"([^"]*)"$')
_GO_VERB = re.compile(r"%([-+# 0]*\d*(?:\.\d+)?)([vdfegsqxX%])")


class TemplateError(ValueError):
    """A template action Tally does not understand."""


def go_float(value: float) -> str:
    """A float64 as Go's ``%v`` prints it (strconv 'g', shortest)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exp = Decimal(repr(float(value))).normalize().as_tuple()
    ds = "".join(map(str, digits))
    point = len(ds) + exp  # decimal point position relative to the digit string
    e10 = point - 1
    neg = "-" if sign else ""
    if e10 < -4 or e10 >= 6:  # strconv shortest %g: exponent form below 1e-4 and from 1e6 on
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'+' if e10 >= 0 else '-'}{abs(e10):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{ds}"
    if point >= len(ds):
        return f"{neg}{ds}{'0' * (point - len(ds))}"
    return f"{neg}{ds[:point]}.{ds[point:]}"


def _humanize(v: float) -> str:
    if v == 0 or math.isnan(v) or math.isinf(v):
        return go_float(v)
    if abs(v) >= 1:
        prefixes = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"]
        i = 0
        while abs(v) >= 1000 and i < len(prefixes) - 1:
            v /= 1000
            i += 1
        return f"{v:.4g}{prefixes[i]}"
    prefixes = ["", "m", "u", "n", "p", "f", "a", "z", "y"]
    i = 0
    while abs(v) < 1 and i < len(prefixes) - 1:
        v *= 1000
        i += 1
    return f"{v:.4g}{prefixes[i]}"


def _humanize_duration(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return go_float(v)
    if abs(v) < 1:
        return _humanize(v) + "s"
    neg, v = v < 0, abs(v)
    days, rest = divmod(int(v), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             f"{seconds}s" if seconds or not (days or hours or minutes) else ""]
    return ("-" if neg else "") + " ".join(p for p in parts if p)


_FUNCS = {
    "humanize": lambda v: _humanize(_num(v)),
    "humanizePercentage": lambda v: f"{_num(v) * 100:.4g}%",
    "humanizeDuration": lambda v: _humanize_duration(_num(v)),
    "toUpper": lambda v: _text(v).upper(),
    "toLower": lambda v: _text(v).lower(),
    "title": lambda v: _text(v).title(),
}


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TemplateError(f"cannot convert {v!r} to a number") from None


def _text(v) -> str:
    return go_float(v) if isinstance(v, float) else str(v)


def _operand(token: str, labels: Mapping[str, str], value: float, external: Mapping[str, str]):
    token = token.strip()
    if token in ("$value", ".Value"):
        return value
    if token in ("$labels", ".Labels"):
        return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(labels.items())) + "]"
    m = _INDEX.match(token)
    if m:
        source = external if m.group(1) == "$externalLabels" else labels
        return source.get(m.group(2), "")
    for prefix, source in (("$labels.", labels), (".Labels.", labels), ("$externalLabels.", external),
                           (".ExternalLabels.", external)):
        if token.startswith(prefix):
            return source.get(token[len(prefix):], "")  # a missing label prints as empty, as in Go
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return token[1:-1]
    raise TemplateError(f"unsupported template operand {token!r}")


def _printf(fmt: str, arg) -> str:
    def verb(m: re.Match) -> str:
        flags, kind = m.group(1), m.group(2)
        if kind == "%":
            return "%"
        if kind == "v":
            return _text(arg)
        if kind in "dxX":
            return ("%" + flags + kind).replace("%" + flags + "d", "%" + flags + "d") % int(_num(arg))
        if kind in "feg":
            return ("%" + flags + kind) % _num(arg)
        if kind == "q":
            return '"' + _text(arg) + '"'
        return ("%" + flags + "s") % _text(arg)

    return _GO_VERB.sub(verb, fmt.encode().decode("unicode_escape"))


def _action(body: str, labels, value, external) -> str:
    stages = [s.strip() for s in body.split("|")]
    head = stages[0]
    m = _PRINTF.match(head)
    if m:
        result = _printf(m.group(1), _operand(m.group(2), labels, value, external))
    else:
        result = _operand(head, labels, value, external)
    for stage in stages[1:]:
        fn = _FUNCS.get(stage)
        if fn is None:
            raise TemplateError(f"unsupported template function {stage!r}")
        result = fn(result)
    return _text(result)


def expand(text: str, labels: Mapping[str, str], value: float,
           external_labels: Mapping[str, str] | None = None) -> str:
    """Expand every ``{{ ... }}`` action of ``text``; errors become Prometheus' error text."""
    external = external_labels or {}
    if "{{" not in text:
        return text
    try:
        return _ACTION.sub(lambda m: _action(m.group(1), labels, value, external), text)
    except TemplateError as exc:
        return f"<error expanding template: {exc}>"
