"""PromQL subset parser: precedence, selectors, modifiers, and the error messages users see."""

import pytest

from tally.promql.ast import Aggregate, Binary, Call, MatrixSelector, Number, Unary, VectorSelector
from tally.promql.errors import PromQLSyntaxError, PromQLUnsupported
from tally.promql.lexer import parse_duration_ms
from tally.promql.parser import parse


def test_precedence_and_associativity():
    node = parse("1 + 2 * 3")
    assert isinstance(node, Binary) and node.op == "+" and node.rhs.op == "*"
    node = parse("2 ^ 3 ^ 2")  # right-associative
    assert node.op == "^" and isinstance(node.rhs, Binary) and node.rhs.op == "^"
    node = parse("-2 ^ 2")  # unary minus binds looser than ^
    assert isinstance(node, Unary) and node.expr.op == "^"
    node = parse("a > 1 and b or c")
    assert node.op == "or" and node.lhs.op == "and"
    assert parse("(1 + 2) * 3").lhs.op == "+"


def test_selectors_and_matchers():
    node = parse('http_requests{job="api", code!="200", path=~"/v1/.*", host!~"test-.*"}')
    assert isinstance(node, VectorSelector) and node.name == "http_requests"
    assert [(m.name, m.op, m.value) for m in node.matchers] == [
        ("job", "=", "api"), ("code", "!=", "200"), ("path", "=~", "/v1/.*"), ("host", "!~", "test-.*")]
    regex = node.matchers[2]
    assert regex.matches("/v1/x") and not regex.matches("x/v1/x")  # anchored like Prometheus
    assert parse('{__name__="up", job="x"}').name == "up"
    assert parse("x:recorded:rate5m").name == "x:recorded:rate5m"
    assert parse("x{a='single', b=`raw\\n`}").matchers[1].value == "raw\\n"


def test_range_offset_and_functions():
    node = parse("rate(http_requests[5m] offset 1h)")
    assert isinstance(node, Call) and node.func == "rate"
    arg = node.args[0]
    assert isinstance(arg, MatrixSelector) and arg.range_ms == 300_000 and arg.selector.offset_ms == 3_600_000
    assert parse("x offset 90s").offset_ms == 90_000
    assert parse_duration_ms("1h30m") == 5_400_000 and parse_duration_ms("500ms") == 500


def test_aggregations_both_grouping_positions():
    a = parse("sum by (region, host) (cpu)")
    b = parse("sum(cpu) by (region, host)")
    assert a == b and isinstance(a, Aggregate) and a.grouping == ("region", "host") and not a.without
    assert parse("avg without (host) (cpu)").without
    q = parse("sketch_quantile(0.99, request_latency) by (region)")
    assert q.op == "sketch_quantile" and q.param == Number(0.99) and q.grouping == ("region",)
    assert isinstance(parse("sketch_quantile(0.5, lat[5m])").expr, MatrixSelector)


def test_binary_modifiers():
    node = parse("a > bool 3")
    assert node.return_bool
    node = parse("a / on(host) b")
    assert node.on and node.matching == ("host",)
    node = parse("a - ignoring(code) b")
    assert not node.on and node.matching == ("code",)
    assert parse("1 == bool 1").return_bool


@pytest.mark.parametrize("query, fragment", [
    ("irate(x[5m])", "unsupported function 'irate'"),
    ("histogram_quantile(0.9, x)", "unsupported function 'histogram_quantile'"),
    ("rate(x[5m:1m])", "unsupported subquery"),
    ("topk(3, x)", "unsupported aggregation 'topk'"),
    ("quantile(0.9, x)", "unsupported aggregation 'quantile'"),
    ("x @ 1700000000", "unsupported '@' modifier"),
    ('"a string"', "unsupported string literal"),
    ("a * on(x) group_left(y) b", "unsupported vector matching 'group_left'"),
])
def test_unsupported_syntax_is_named(query, fragment):
    with pytest.raises(PromQLUnsupported) as err:
        parse(query)
    assert fragment in str(err.value)
    assert err.value.status == 400 and err.value.error_type == "bad_data"


@pytest.mark.parametrize("query, fragment", [
    ("", "empty query"),
    ("sum(", "expected an expression, found end of input at position 4"),
    ("x{a=1}", "expected a quoted label value, found '1' at position 4"),
    ("rate(x)", "function 'rate' needs a range vector"),
    ("foo(x)", "unknown function 'foo'"),
    ("1 > 2", "comparisons between scalars must use the bool modifier"),
    ("x[5m] + 1", "needs instant vectors or scalars, got a range vector"),
    ("sum(x[5m])", "sum needs an instant vector, got a range vector"),
    ("{}", "at least one non-empty matcher"),
    ("x{a=~\"(\"}", "bad regex"),
    ("sketch_quantile(2, x)", "number in [0, 1]"),
    ("sketch_quantile(0.5, rate(x[5m]))", "needs a selector of a distribution metric"),
    ("x )", "unexpected token after the end of the expression"),
    ("1 and x", "set operator 'and' not allowed between scalars and vectors"),
])
def test_syntax_errors_say_what_and_where(query, fragment):
    with pytest.raises(PromQLSyntaxError) as err:
        parse(query)
    assert fragment in str(err.value)
