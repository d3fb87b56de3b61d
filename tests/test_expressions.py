import pytest
import sympy as sp

from ude.errors import UdeError
from ude.spec.expressions import parse_expression

NAMES = ["x", "y", "K", "n"]


def test_parses_the_grammar_into_sympy():
    x, y, k, n = sp.symbols("x y K n")
    got = parse_expression("1.3*x - 0.9*x*y + hill(x, K, n) - mm(y, K) + exp(-x)/sqrt(y)", NAMES)
    want = 1.3 * x - 0.9 * x * y + x**n / (k**n + x**n) - y / (k + y) + sp.exp(-x) / sp.sqrt(y)
    assert sp.simplify(got - want) == 0


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("x.__class__", ".__class__"),
        ("__import__('os').system('true')", "__import__"),
        ("import os", "import os"),
        ("lambda: x", "lambda"),
        ("open('f')", "open"),
        ("eval('1')", "eval"),
        ("z + x", "'z'"),
        ("x[0]", "x[0]"),
        ("x ^ 2", "'^'"),
        ("mm(x)", "'mm' takes 2"),
    ],
)
def test_rejects_what_is_not_in_the_grammar_naming_the_token(text, token):
    with pytest.raises(UdeError) as err:
        parse_expression(text, NAMES, source="model.yaml", where="equations.x")
    message = str(err.value)
    assert token in message
    assert message.startswith("model.yaml: equations.x: ")
    assert "\n" not in message


def test_rejects_division_by_zero_and_huge_powers():
    for text in ["x/0", "2**1000"]:
        with pytest.raises(UdeError):
            parse_expression(text, NAMES)
