"""Fuzz tests of the expression and reaction parsers (hypothesis).

Any string either parses or raises UdeError: no other exception, no code run, bounded time.
"Code run" is watched with a Python audit hook that records exec/eval, processes, sockets and
file writes while a parser runs.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ude.errors import UdeError
from ude.spec.compile import CompiledExpressions
from ude.spec.expressions import FUNCTIONS, parse_expression
from ude.spec.reactions import parse_reaction

NAMES = ["x", "y", "S", "E", "k", "K_m"]
SPECIES = ["x", "y", "S", "E"]
MASS_ACTION = ["k_r1", "k_r1_f", "k_r1_r", "k_bind_f", "k_bind_r"]
_WATCHED = {
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "subprocess.Popen",
    "socket.connect",
    "os.remove",
    "os.rename",
    "shutil.rmtree",
    "ctypes.dlopen",
}
_events: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _events is None:
        return
    if event == "exec":
        # Imports run module code from files; code compiled from a string is named "<...>".
        name = getattr(args[0], "co_filename", "<unknown>") if args else "<unknown>"
        if name.startswith("<"):
            _events.append(f"exec of {name}")
    elif event in _WATCHED:
        _events.append(event)
    elif event == "open" and len(args) > 1 and isinstance(args[1], str):
        if any(c in args[1] for c in "wax+"):
            _events.append(f"open for writing {args[0]!r}")


sys.addaudithook(_audit)


def watched(fn, *args, **kwargs):
    """Run ``fn``; return its result or its UdeError; fail on any other exception or event."""
    global _events
    _events = []
    try:
        try:
            result = fn(*args, **kwargs)
        except UdeError as err:
            result = err
        events = list(_events)
    finally:
        _events = None
    assert events == [], f"side effects: {events}"
    return result


FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
TOKENS = [
    *NAMES,
    *FUNCTIONS,
    "+", "-", "*", "/", "**", "(", ")", ",", ".", "0", "1", "2.5", "1e3", "64", "99",
    "__import__", "'os'", ".system", "(lambda: 1)", "[", "]", "{", "}", ":", ";", "=",
    "__class__", "__subclasses__", "eval", "exec", "open", "import", "os", "^", "%", "//",
    " ", "\n", "if", "else", "not", "and", "@", "~", "1j", "None", "True", "...", "\\",
]  # fmt: skip
token_text = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)
any_text = st.one_of(st.text(max_size=60), token_text)


@FUZZ
@given(any_text)
def test_expression_parser_only_raises_udeerror(text):
    result = watched(parse_expression, text, NAMES, source="fuzz.yaml", where="equations.x")
    if isinstance(result, UdeError):
        assert str(result).startswith("fuzz.yaml: equations.x: ")
        return
    assert isinstance(result, sp.Expr)
    assert {str(s) for s in result.free_symbols} <= set(NAMES)
    # Whatever parses also compiles.
    CompiledExpressions([result], NAMES)


side = st.lists(
    st.tuples(st.sampled_from(["", "2 ", "2*", "0.5 ", "1e9 "]), st.sampled_from([*SPECIES, "Z"])),
    max_size=3,
).map(lambda terms: " + ".join(c + s for c, s in terms))
rates = st.lists(
    st.one_of(token_text, st.sampled_from(["k*x", "neural", "mm(S, K_m)"])), max_size=3
)
reaction_text = st.builds(
    lambda name, left, arrow, right, rs: (
        f"{name}{left} {arrow} {right}" + (f"; {', '.join(rs)}" if rs else "")
    ),
    st.sampled_from(["", "r: ", "bind:", "9x: "]),
    side,
    st.sampled_from(["->", "<->", "<-", "=>", "->->", ""]),
    side,
    rates,
)


@FUZZ
@given(st.one_of(st.text(max_size=60), reaction_text, token_text))
def test_reaction_parser_only_raises_udeerror(text):
    result = watched(
        parse_reaction,
        text,
        0,
        species=SPECIES,
        names=[*NAMES, *MASS_ACTION],
        parameters=["k", "K_m", *MASS_ACTION],
        source="fuzz.yaml",
        where="reactions[0]",
    )
    if isinstance(result, UdeError):
        assert str(result).startswith("fuzz.yaml: reactions[0]")
        return
    assert set(result.reactants) | set(result.products) <= set(SPECIES)
    used = {str(s) for s in result.flux.free_symbols} if result.rate is not None else set()
    assert used <= {*NAMES, *MASS_ACTION}


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/ude_pwned')",
        "().__class__.__bases__[0].__subclasses__()",
        "exec('import os')",
        "eval('1')",
        "open('/tmp/ude_pwned', 'w')",
        "(lambda: __import__('os'))()",
        "x.__class__",
        "x if y else k",
        "[x for x in ()]",
        "import os",
        "x = 1",
        "9**9**9",
        "((9**64)**64)**64",
        "1" + "0" * 400,
        "-" * 5000 + "x",
        "(" * 300 + "x" + ")" * 300,
        "x" + "+x" * 4999,
        "sqrt(-1)",
        "log(0)",
        "mm(" * 40 + "x" + ", k)" * 40,  # each level doubles the written-out tree
        "hill(" * 30 + "x" + ", k, 2)" * 30,
    ],
)
def test_hostile_expressions_are_refused_without_side_effects(text, tmp_path):
    result = watched(parse_expression, text, NAMES, source="evil.yaml")
    assert isinstance(result, UdeError)


def test_the_audit_hook_sees_code_execution():
    # The watch is real: eval of a compiled string is recorded.
    with pytest.raises(AssertionError, match="side effects"):
        watched(eval, "1 + 1")
