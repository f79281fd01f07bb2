"""Recursive-descent (precedence-climbing) parser of Tally's PromQL subset.

``parse(text)`` returns an AST from :mod:`tally.promql.ast` or raises
``PromQLSyntaxError`` (not PromQL) / ``PromQLUnsupported`` (PromQL that Tally does not
implement; the message names the construct, e.g. ``subquery``, ``function 'irate'``).
Operator precedence follows Prometheus: ``^`` (right-associative) > ``* / %`` > ``+ -`` >
comparisons > ``and unless`` > ``or``; unary minus binds looser than ``^``.
"""

from __future__ import annotations

from tally.promql.ast import (
    MATCH_OPS, Aggregate, Binary, Call, MatrixSelector, Matcher, Number, Unary, VectorSelector,
)
from tally.promql.errors import PromQLSyntaxError, PromQLUnsupported
from tally.promql.lexer import Token, tokenize

__all__ = ["parse", "FUNCTIONS", "AGGREGATIONS"]

# Supported functions: name -> argument kinds ("matrix", "vector", "scalar").
FUNCTIONS = {
    "rate": ("matrix",), "increase": ("matrix",),
    "sum_over_time": ("matrix",), "avg_over_time": ("matrix",), "min_over_time": ("matrix",),
    "max_over_time": ("matrix",), "count_over_time": ("matrix",),
    "abs": ("vector",), "time": (), "vector": ("scalar",), "scalar": ("vector",),
}
# Known Prometheus functions we do not implement: named in the error message.
_KNOWN_UNSUPPORTED_FUNCS = frozenset({
    "irate", "delta", "idelta", "deriv", "predict_linear", "resets", "changes", "histogram_quantile",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    "absent", "absent_over_time", "label_replace", "label_join", "sort", "sort_desc", "clamp", "clamp_min",
    "clamp_max", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt", "timestamp", "day_of_month",
    "day_of_week", "days_in_month", "hour", "minute", "month", "year", "holt_winters", "sgn",
})
AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "sketch_quantile"})
_KNOWN_UNSUPPORTED_AGGS = frozenset({"stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
                                     "group", "limitk", "limit_ratio"})
_PARAM_AGGS = frozenset({"sketch_quantile"})

_BINARY_PRECEDENCE = {
    "or": 1, "and": 2, "unless": 2,
    "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
    "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "^": 6,
}
COMPARISONS = frozenset({"==", "!=", "<=", "<", ">=", ">"})
SET_OPS = frozenset({"and", "or", "unless"})
_UNARY_PRECEDENCE = 6  # operand of unary minus may contain ^ only


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    # -- token helpers ------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, kind: str, text: str | None = None) -> bool:
        tok = self.tok
        return tok.kind == kind and (text is None or tok.text == text)

    def expect(self, kind: str, text: str | None = None, what: str | None = None) -> Token:
        if not self.at(kind, text):
            self.fail(f"expected {what or text or kind.lower()}")
        return self.next()

    def fail(self, message: str):
        tok = self.tok
        found = "end of input" if tok.kind == "EOF" else repr(tok.text)
        raise PromQLSyntaxError(f"{message}, found {found} at position {tok.pos}")

    # -- grammar ------------------------------------------------------------------------

    def parse(self):
        if self.at("EOF"):
            raise PromQLSyntaxError("empty query")
        node = self.expr(0)
        if not self.at("EOF"):
            self.fail("unexpected token after the end of the expression")
        return node

    def binary_op(self) -> str | None:
        tok = self.tok
        if tok.kind == "OP" and tok.text in _BINARY_PRECEDENCE:
            return tok.text
        if tok.kind == "KEYWORD" and tok.text in SET_OPS:
            return tok.text
        if tok.kind == "KEYWORD" and tok.text == "atan2":
            raise PromQLUnsupported(f"unsupported binary operator 'atan2' at position {tok.pos}")
        return None

    def expr(self, min_prec: int):
        lhs = self.unary()
        while True:
            op = self.binary_op()
            if op is None or _BINARY_PRECEDENCE[op] < min_prec:
                return lhs
            prec = _BINARY_PRECEDENCE[op]
            op_pos = self.next().pos
            return_bool, on, matching = self.binary_modifiers(op, op_pos)
            # ^ is right-associative: its right side may hold another ^.
            rhs = self.expr(prec if op == "^" else prec + 1)
            lhs = self.check_binary(Binary(op, lhs, rhs, return_bool, on, matching), op_pos)

    def binary_modifiers(self, op: str, pos: int):
        return_bool = False
        if self.at("KEYWORD", "bool"):
            if op not in COMPARISONS:
                self.fail("bool modifier is only allowed on comparison operators")
            self.next()
            return_bool = True
        on, matching = False, None
        if self.at("KEYWORD", "on") or self.at("KEYWORD", "ignoring"):
            on = self.next().text == "on"
            matching = self.label_list()
        if self.at("KEYWORD", "group_left") or self.at("KEYWORD", "group_right"):
            raise PromQLUnsupported(f"unsupported vector matching '{self.tok.text}' (many-to-one) "
                                    f"at position {self.tok.pos}")
        return return_bool, on, matching

    def check_binary(self, node: Binary, pos: int) -> Binary:
        scalar_l, scalar_r = _is_scalar(node.lhs), _is_scalar(node.rhs)
        if node.op in SET_OPS and (scalar_l or scalar_r):
            raise PromQLSyntaxError(f"set operator '{node.op}' not allowed between scalars and vectors "
                                    f"(position {pos})")
        if node.op in COMPARISONS and scalar_l and scalar_r and not node.return_bool:
            raise PromQLSyntaxError(f"comparisons between scalars must use the bool modifier (position {pos})")
        if node.matching is not None and (scalar_l or scalar_r):
            raise PromQLSyntaxError(f"vector matching only allowed between vectors (position {pos})")
        for side in (node.lhs, node.rhs):
            if isinstance(side, MatrixSelector):
                raise PromQLSyntaxError(f"binary operator '{node.op}' needs instant vectors or scalars, "
                                        f"got a range vector (position {pos})")
        return node

    def unary(self):
        if self.at("OP", "-") or self.at("OP", "+"):
            op = self.next().text
            operand = self.expr(_UNARY_PRECEDENCE)
            if isinstance(operand, MatrixSelector):
                raise PromQLSyntaxError("unary expression only allowed on scalars or instant vectors")
            if op == "+":
                return operand
            if isinstance(operand, Number):
                return Number(-operand.value)
            return Unary("-", operand)
        return self.postfix(self.primary())

    def postfix(self, node):
        while True:
            if self.at("OP", "["):
                pos = self.next().pos
                if self.at("OP", ":"):
                    raise PromQLUnsupported(f"unsupported subquery at position {pos}")
                dur = self.expect("DURATION", what="a range duration like 5m")
                if self.at("OP", ":") or self.tok.text.startswith(":"):
                    raise PromQLUnsupported(f"unsupported subquery at position {pos}")
                self.expect("OP", "]")
                if not isinstance(node, VectorSelector):
                    raise PromQLUnsupported(f"unsupported subquery (range on a non-selector expression) "
                                            f"at position {pos}")
                if node.offset_ms:
                    raise PromQLSyntaxError(f"offset must follow the range: write x[5m] offset 1h "
                                            f"(position {pos})")
                node = MatrixSelector(node, dur.value)
            elif self.at("KEYWORD", "offset"):
                pos = self.next().pos
                negative = False
                if self.at("OP", "-"):
                    self.next()
                    negative = True
                dur = self.expect("DURATION", what="an offset duration like 5m")
                ms = -dur.value if negative else dur.value
                if isinstance(node, VectorSelector) and not node.offset_ms:
                    node = VectorSelector(node.name, node.matchers, ms)
                elif isinstance(node, MatrixSelector) and not node.selector.offset_ms:
                    inner = node.selector
                    node = MatrixSelector(VectorSelector(inner.name, inner.matchers, ms), node.range_ms)
                else:
                    raise PromQLSyntaxError(f"offset modifier must follow a selector (position {pos})")
            elif self.at("OP", "@"):
                raise PromQLUnsupported(f"unsupported '@' modifier at position {self.tok.pos}")
            else:
                return node

    def primary(self):
        tok = self.tok
        if tok.kind == "NUMBER":
            self.next()
            return Number(tok.value)
        if tok.kind == "STRING":
            raise PromQLUnsupported(f"unsupported string literal at position {tok.pos}")
        if tok.kind == "DURATION":
            self.fail("unexpected duration")
        if self.at("OP", "("):
            self.next()
            node = self.expr(0)
            self.expect("OP", ")", what="')'")
            return node
        if self.at("OP", "{"):
            return self.selector(None, tok.pos)
        if tok.kind == "IDENT":
            name = tok.text
            self.next()
            lname = name.lower()
            if lname in AGGREGATIONS or lname in _KNOWN_UNSUPPORTED_AGGS:
                if self.at("OP", "(") or self.at("KEYWORD", "by") or self.at("KEYWORD", "without"):
                    if lname in _KNOWN_UNSUPPORTED_AGGS:
                        raise PromQLUnsupported(f"unsupported aggregation '{lname}' at position {tok.pos}")
                    return self.aggregate(lname, tok.pos)
            if self.at("OP", "("):
                return self.call(name, tok.pos)
            return self.selector(name, tok.pos)
        self.fail("expected an expression")

    def label_list(self) -> tuple[str, ...]:
        self.expect("OP", "(", what="'(' starting a label list")
        labels = []
        while not self.at("OP", ")"):
            tok = self.tok
            if tok.kind not in ("IDENT", "KEYWORD"):
                self.fail("expected a label name")
            self.next()
            labels.append(tok.text)
            if not self.at("OP", ","):
                break
            self.next()
        self.expect("OP", ")", what="')' closing the label list")
        return tuple(labels)

    def aggregate(self, op: str, pos: int):
        grouping, without = (), False
        if self.at("KEYWORD", "by") or self.at("KEYWORD", "without"):
            without = self.next().text == "without"
            grouping = self.label_list()
        self.expect("OP", "(", what=f"'(' after {op}")
        param = None
        if op in _PARAM_AGGS:
            param = self.expr(0)
            self.expect("OP", ",", what=f"',' after the parameter of {op}")
        body = self.expr(0)
        self.expect("OP", ")", what=f"')' closing {op}")
        if self.at("KEYWORD", "by") or self.at("KEYWORD", "without"):
            if grouping or without:
                self.fail("grouping given twice")
            without = self.next().text == "without"
            grouping = self.label_list()
        if op == "sketch_quantile":
            if not isinstance(param, Number) or not 0.0 <= param.value <= 1.0:
                raise PromQLSyntaxError(f"sketch_quantile needs a number in [0, 1] as first argument "
                                        f"(position {pos})")
            if not isinstance(body, (VectorSelector, MatrixSelector)):
                raise PromQLSyntaxError(f"sketch_quantile needs a selector of a distribution metric, "
                                        f"optionally with a range, e.g. sketch_quantile(0.99, latency[5m]) "
                                        f"(position {pos})")
        elif isinstance(body, MatrixSelector):
            raise PromQLSyntaxError(f"{op} needs an instant vector, got a range vector (position {pos})")
        elif _is_scalar(body):
            raise PromQLSyntaxError(f"{op} needs an instant vector, got a scalar (position {pos})")
        return Aggregate(op, body, param, grouping, without)

    def call(self, name: str, pos: int):
        if name not in FUNCTIONS:
            if name in _KNOWN_UNSUPPORTED_FUNCS:
                raise PromQLUnsupported(f"unsupported function '{name}' at position {pos}")
            raise PromQLSyntaxError(f"unknown function '{name}' at position {pos}")
        self.expect("OP", "(")
        args = []
        while not self.at("OP", ")"):
            args.append(self.expr(0))
            if not self.at("OP", ","):
                break
            self.next()
        self.expect("OP", ")", what=f"')' closing {name}(")
        kinds = FUNCTIONS[name]
        if len(args) != len(kinds):
            raise PromQLSyntaxError(f"function '{name}' takes {len(kinds)} argument(s), got {len(args)} "
                                    f"(position {pos})")
        for arg, kind in zip(args, kinds):
            if kind == "matrix" and not isinstance(arg, MatrixSelector):
                raise PromQLSyntaxError(f"function '{name}' needs a range vector like x[5m] (position {pos})")
            if kind == "vector" and (isinstance(arg, MatrixSelector) or _is_scalar(arg)):
                raise PromQLSyntaxError(f"function '{name}' needs an instant vector (position {pos})")
            if kind == "scalar" and not _is_scalar(arg):
                raise PromQLSyntaxError(f"function '{name}' needs a scalar (position {pos})")
        return Call(name, tuple(args))

    def selector(self, name: str | None, pos: int):
        matchers = []
        if self.at("OP", "{"):
            self.next()
            while not self.at("OP", "}"):
                label = self.tok
                if label.kind not in ("IDENT", "KEYWORD"):
                    self.fail("expected a label name in the selector")
                self.next()
                op = self.tok
                if op.kind != "OP" or op.text not in MATCH_OPS:
                    self.fail(f"expected one of {', '.join(MATCH_OPS)} after label {label.text!r}")
                self.next()
                value = self.expect("STRING", what="a quoted label value")
                try:
                    matchers.append(Matcher.make(label.text, op.text, value.value))
                except Exception as exc:  # re.error
                    raise PromQLSyntaxError(f"bad regex {value.value!r} for label {label.text!r}: {exc}") from None
                if not self.at("OP", ","):
                    break
                self.next()
            self.expect("OP", "}", what="'}' closing the selector")
        names = [m for m in matchers if m.name == "__name__"]
        if name is not None and names:
            raise PromQLSyntaxError(f"metric name given twice (position {pos})")
        if name is None:
            if len(names) == 1 and names[0].op == "=":
                name = names[0].value
                matchers = [m for m in matchers if m.name != "__name__"]
            elif not any(not m.matches("") for m in matchers):
                raise PromQLSyntaxError(f"vector selector must contain at least one non-empty matcher "
                                        f"(position {pos})")
        return VectorSelector(name, tuple(matchers))


def _is_scalar(node) -> bool:
    if isinstance(node, Number):
        return True
    if isinstance(node, Call):
        return node.func in ("time", "scalar")
    if isinstance(node, Unary):
        return _is_scalar(node.expr)
    if isinstance(node, Binary):
        return _is_scalar(node.lhs) and _is_scalar(node.rhs)
    return False


def is_scalar(node) -> bool:
    """True when the expression evaluates to a scalar (not a vector)."""
    return _is_scalar(node)


def parse(text: str):
    """Parse a PromQL expression of Tally's subset into an AST."""
    if not isinstance(text, str):
        raise PromQLSyntaxError("query must be a string")
    return _Parser(text).parse()
