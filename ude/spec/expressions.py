"""Safe parsing of the spec grammar into sympy.

The grammar: numbers, declared names, ``+ - * / **``, parentheses and the functions in
:data:`FUNCTIONS`. A string is parsed by Python's ``ast`` module and every node is checked
against a whitelist before a sympy expression is built from it node by node; no user string is
ever passed to ``eval``, ``exec`` or ``sympify``.
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable, Iterable

import sympy as sp
from sympy.printing.str import StrPrinter

from ude.errors import UdeError


def hill(x: sp.Expr, k: sp.Expr, n: sp.Expr) -> sp.Expr:
    """Hill activation x^n / (K^n + x^n)."""
    return x**n / (k**n + x**n)


def mm(x: sp.Expr, k: sp.Expr) -> sp.Expr:
    """Michaelis–Menten saturation x / (K + x)."""
    return x / (k + x)


FUNCTIONS: dict[str, tuple[int, Callable[..., sp.Expr]]] = {
    "exp": (1, sp.exp),
    "log": (1, sp.log),
    "sqrt": (1, sp.sqrt),
    "tanh": (1, sp.tanh),
    "abs": (1, sp.Abs),
    "hill": (3, hill),
    "mm": (2, mm),
}

_BINOPS: dict[type, Callable[[sp.Expr, sp.Expr], sp.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
_OPERATOR_HINTS = {ast.BitXor: "'^' (use '**' for powers)", ast.FloorDiv: "'//'", ast.Mod: "'%'"}


_MAX_NUMBER = 1e300
MAX_TERMS = 100_000


def tree_size(expr: sp.Basic, memo: dict | None = None) -> int:
    """Nodes of ``expr`` written out as a tree; linear time in its distinct subexpressions."""
    memo = {} if memo is None else memo
    if not expr.args:
        return 1
    if expr not in memo:
        memo[expr] = min(1 + sum(tree_size(a, memo) for a in expr.args), 10 * MAX_TERMS)
    return memo[expr]


_FUNCTIONS = FUNCTIONS


def _short(value: float | int) -> str:
    text = str(value)
    return text if len(text) < 20 else text[:8] + f"...({len(text)} digits)"


def symbol(name: str) -> sp.Symbol:
    """The sympy symbol for a declared name (plain, no assumptions)."""
    return sp.Symbol(name)


def parse_expression(
    text: str,
    names: Iterable[str],
    *,
    source: str | None = None,
    where: str | None = None,
    functions: dict[str, tuple[int, Callable[..., sp.Expr]]] | None = None,
) -> sp.Expr:
    """Parse ``text`` in the spec grammar into a sympy expression over ``names``.

    ``functions`` replaces :data:`FUNCTIONS` for other grammars (PEtab's math). Raises
    :class:`UdeError` naming the offending token, ``source`` (the file) and ``where`` (the
    place in it, e.g. ``equations.x``).
    """
    allowed = set(names)
    FUNCTIONS = _FUNCTIONS if functions is None else functions  # noqa: N806
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UdeError(
            f"expected an expression, got {type(text).__name__} {text!r}",
            source=source,
            where=where,
        )
    if isinstance(text, (int, float)):
        return sp.Float(text) if isinstance(text, float) else sp.Integer(text)
    if len(text) > 10_000:
        raise UdeError("expression is longer than 10000 characters", source=source, where=where)

    def fail(message: str, fix: str | None = None) -> UdeError:
        return UdeError(f"{message} in '{text}'", source=source, where=where, fix=fix)

    try:
        tree = _parse(text, "eval")
    except SyntaxError as err:
        statement = _statement_token(text)
        if statement:
            raise fail(f"statement '{statement}' is not allowed") from None
        col = f" at column {err.offset}" if err.offset else ""
        raise fail(
            f"syntax error{col}",
            "expressions use numbers, names, + - * / ** ( ) and " + ", ".join(FUNCTIONS),
        ) from None
    except (ValueError, RecursionError, MemoryError):
        raise fail("unparseable expression") from None

    def build(node: ast.AST, depth: int = 0) -> sp.Expr:
        if depth > 200:
            raise fail("expression is nested too deeply")
        if isinstance(node, ast.Expression):
            return build(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(f"constant {value!r} is not a number")
            if abs(value) > _MAX_NUMBER:
                raise fail(f"number {_short(value)} is too large")
            return sp.Integer(value) if isinstance(value, int) else sp.Float(value)
        if isinstance(node, ast.Name):
            if node.id not in allowed:
                hint = (
                    "declare it under states, parameters or inputs"
                    if node.id not in FUNCTIONS
                    else f"'{node.id}' is a function: call it"
                )
                raise fail(f"unknown name '{node.id}'", hint)
            return symbol(node.id)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                token = _OPERATOR_HINTS.get(type(node.op), type(node.op).__name__)
                raise fail(f"operator {token} is not allowed")
            left, right = build(node.left, depth + 1), build(node.right, depth + 1)
            if isinstance(node.op, ast.Pow) and right.is_Number and abs(float(right)) > 64:
                raise fail(f"exponent {right} is too large", "exponents are at most 64")
            if isinstance(node.op, ast.Pow) and left.is_Number and right.is_Number and left != 0:
                # Exact integer powers of numbers are computed by sympy: bound their size.
                if abs(left) > _MAX_NUMBER or float(right) * math.log10(abs(float(left))) > 300:
                    raise fail(f"number {left}**{right} is too large")
            return op(left, right)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return -build(node.operand, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return build(node.operand, depth + 1)
            raise fail(f"unary operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise fail(
                    f"call of '{ast.unparse(node.func)}' is not allowed",
                    "allowed functions: " + ", ".join(FUNCTIONS),
                )
            name = node.func.id
            if name not in FUNCTIONS:
                raise fail(
                    f"function '{name}' is not allowed",
                    "allowed functions: " + ", ".join(FUNCTIONS),
                )
            if node.keywords:
                raise fail(f"keyword arguments to '{name}' are not allowed")
            arity, fn = FUNCTIONS[name]
            if len(node.args) != arity:
                raise fail(f"'{name}' takes {arity} argument(s), got {len(node.args)}")
            return fn(*(build(a, depth + 1) for a in node.args))
        if isinstance(node, ast.Attribute):
            raise fail(f"attribute access '.{node.attr}' is not allowed")
        if isinstance(node, ast.Lambda):
            raise fail("lambda is not allowed")
        if isinstance(node, ast.Subscript):
            raise fail(f"indexing '{ast.unparse(node)}' is not allowed")
        token = type(node).__name__
        try:
            token = f"'{ast.unparse(node)}'"
        except Exception:  # noqa: BLE001 - only used to name the token
            pass
        raise fail(f"{token} is not allowed in an expression")

    try:
        expr = build(tree)
    except RecursionError:
        raise fail("expression is nested too deeply") from None
    if tree_size(expr) > MAX_TERMS:
        # Nested mm/hill use their argument twice: the written-out tree doubles per level.
        raise fail(f"expression expands to more than {MAX_TERMS} terms")
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise fail("expression divides by zero or is infinite")
    for sub in sp.preorder_traversal(expr):
        if sub.is_number and sub.is_real is False:
            raise fail(f"'{sub}' is not a real number")
    return expr


class _SpecPrinter(StrPrinter):
    """sympy's string printer, but constants print as numbers the grammar reads back."""

    def _print_Exp1(self, expr: sp.Basic) -> str:
        return "exp(1)"

    def _print_Pi(self, expr: sp.Basic) -> str:
        return repr(float(sp.pi))

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"


def format_expression(expr: sp.Expr) -> str:
    """``expr`` as text in the spec grammar: :func:`parse_expression` reads it back."""
    return _SpecPrinter({"order": "none"}).doprint(expr)


def _parse(text: str, mode: str) -> ast.AST:
    """``ast.parse`` without its SyntaxWarnings (e.g. '1x'): the error message says it all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        return ast.parse(text.strip(), mode=mode)


def _statement_token(text: str) -> str | None:
    """The first statement in ``text`` when it is Python code rather than an expression."""
    try:
        module = _parse(text, "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if module.body and not isinstance(module.body[0], ast.Expr):
        return ast.unparse(module.body[0]).splitlines()[0]
    return None
