"""The PromQL subset's syntax tree: frozen value types produced by :mod:`tally.promql.parser`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Matcher", "Number", "VectorSelector", "MatrixSelector", "Call", "Aggregate", "Binary",
           "Unary", "Node", "selectors", "range_windows_ms"]

MATCH_OPS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True)
class Matcher:
    """A label matcher; regexes are fully anchored, as in Prometheus."""

    name: str
    op: str
    value: str
    regex: re.Pattern | None = field(default=None, compare=False, repr=False)

    @classmethod
    def make(cls, name: str, op: str, value: str) -> "Matcher":
        regex = re.compile(f"(?:{value})\\Z", re.DOTALL) if op in ("=~", "!~") else None
        return cls(name, op, value, regex)

    def matches(self, value: str | None) -> bool:
        """Does a label value (None = label absent, i.e. empty) satisfy this matcher?"""
        v = value or ""
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = self.regex.match(v) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class VectorSelector:
    """``name{matchers} offset d``; ``name`` is None when only matchers were given."""

    name: str | None
    matchers: tuple[Matcher, ...]
    offset_ms: int = 0


@dataclass(frozen=True)
class MatrixSelector:
    """``selector[range]`` (offset lives on the inner selector)."""

    selector: VectorSelector
    range_ms: int


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple


@dataclass(frozen=True)
class Aggregate:
    """``op [by|without (labels)] ([param,] expr)``."""

    op: str
    expr: object
    param: object = None
    grouping: tuple[str, ...] = ()
    without: bool = False


@dataclass(frozen=True)
class Binary:
    """``lhs op [bool] [on|ignoring (labels)] rhs``; ``matching`` None means default matching."""

    op: str
    lhs: object
    rhs: object
    return_bool: bool = False
    on: bool = False
    matching: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Unary:
    op: str
    expr: object


Node = Number | VectorSelector | MatrixSelector | Call | Aggregate | Binary | Unary


def _children(node) -> tuple:
    if isinstance(node, MatrixSelector):
        return (node.selector,)
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Aggregate):
        return tuple(x for x in (node.param, node.expr) if x is not None)
    if isinstance(node, Binary):
        return (node.lhs, node.rhs)
    if isinstance(node, Unary):
        return (node.expr,)
    return ()


def selectors(node) -> list[VectorSelector]:
    """Every vector selector in the tree (also those inside matrix selectors), in order."""
    if isinstance(node, VectorSelector):
        return [node]
    return [s for child in _children(node) for s in selectors(child)]


def range_windows_ms(node) -> list[int]:
    """The ranges of every matrix selector in the tree."""
    own = [node.range_ms] if isinstance(node, MatrixSelector) else []
    return own + [w for child in _children(node) for w in range_windows_ms(child)]
