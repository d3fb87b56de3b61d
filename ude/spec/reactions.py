"""Reaction networks: parse ``"S + E <-> C; kf*S*E, kr*C"``, stoichiometry, conservation laws.

A reaction string is ``[name:] reactants -> products [; rate]`` or ``[name:] reactants <->
products [; forward rate, reverse rate]``. A side is ``0`` (or empty) for a source or a sink, or
species joined by ``+`` with optional coefficients (``2 A``, ``2*A``). The rate is the whole
flux (amount per time), an expression of the spec grammar, or ``neural`` for a flux that a
network learns. Without a rate the reaction follows mass action with the rate constant(s)
``k_<name>`` (``k_<name>_f`` and ``k_<name>_r`` when reversible), which must be declared
parameters. The default name of the i-th reaction (from 1) is ``r<i>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sympy as sp

from ude.errors import UdeError
from ude.spec.expressions import parse_expression, symbol

NEURAL = "neural"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PREFIX = re.compile(rf"^\s*({_NAME})\s*:(.*)$", re.S)
_TERM = re.compile(rf"^(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)?\s*\*?\s*({_NAME})$")
_MAX_LENGTH = 10_000


@dataclass(frozen=True)
class Reaction:
    """One reaction: ``reactants -> products`` at net flux ``rate - reverse``.

    ``rate`` is None for a flux learned by a network (a neural reaction). ``reverse`` is the
    reverse flux of a reaction written with ``<->`` and two rates (None otherwise);
    ``reversible`` is True for ``<->`` (and for SBML reactions marked reversible).
    """

    name: str
    reactants: dict[str, float] = field(default_factory=dict)
    products: dict[str, float] = field(default_factory=dict)
    rate: sp.Expr | None = None
    reverse: sp.Expr | None = None
    reversible: bool = False

    @property
    def neural(self) -> bool:
        return self.rate is None

    @property
    def flux(self) -> sp.Expr:
        """The net flux ``rate - reverse`` (a known reaction only)."""
        if self.rate is None:
            raise ValueError(f"reaction {self.name} has a learned (neural) flux")
        return self.rate - (self.reverse if self.reverse is not None else 0)

    def change(self, species: str) -> float:
        """Net stoichiometric change of ``species`` per unit of flux."""
        return self.products.get(species, 0.0) - self.reactants.get(species, 0.0)

    def species(self) -> list[str]:
        return list(dict.fromkeys([*self.reactants, *self.products]))

    def to_string(self, printer=str) -> str:
        """The reaction in the spec format, ``printer`` turning rates into text."""

        def side(terms: dict[str, float]) -> str:
            if not terms:
                return "0"
            return " + ".join(_coef(c) + s for s, c in terms.items())

        arrow = "<->" if self.reversible else "->"
        text = f"{self.name}: {side(self.reactants)} {arrow} {side(self.products)}"
        if self.rate is None:
            return text + f"; {NEURAL}"
        if self.reversible and self.reverse is not None:
            return text + f"; {printer(self.rate)}, {printer(self.reverse)}"
        if self.reversible:
            # A reversible reaction with one net rate (from SBML): written as two rates, the
            # reverse one zero, so that the text reads back to the same flux.
            return text + f"; {printer(self.rate)}, 0"
        return text + f"; {printer(self.rate)}"


def _coef(c: float) -> str:
    if c == 1:
        return ""
    return f"{int(c)} " if float(c).is_integer() else f"{c!r} "


def parse_reaction(
    text: str,
    index: int,
    *,
    species: Sequence[str],
    boundary: Iterable[str] = (),
    names: Iterable[str],
    parameters: Iterable[str],
    source: str | None = None,
    where: str | None = None,
) -> Reaction:
    """Parse one reaction string (see the module docstring).

    ``species`` are the states a reaction may change; ``boundary`` names (inputs, parameters)
    may appear as reactants or products held constant. ``names`` are what rates may use,
    ``parameters`` the declared parameter names (for mass-action constants). ``index`` (from 0)
    gives the default name ``r<index+1>``. Raises :class:`UdeError` naming the problem.
    """

    def fail(message: str, fix: str | None = None) -> UdeError:
        return UdeError(f"{message} in '{text}'", source=source, where=where, fix=fix)

    if not isinstance(text, str):
        raise UdeError(
            f"expected a reaction string like 'S + E -> C; k*S*E', got {type(text).__name__}",
            source=source,
            where=where,
        )
    if len(text) > _MAX_LENGTH:
        raise UdeError("reaction is longer than 10000 characters", source=source, where=where)
    body = text
    name = f"r{index + 1}"
    match = _PREFIX.match(body)
    if match and not match.group(2).lstrip().startswith((">", "-")):
        name, body = match.group(1), match.group(2)
    equation, _, rates_text = body.partition(";")
    if ";" in rates_text:
        raise fail("more than one ';'", "write 'reactants -> products; rate'")
    if "<->" in equation:
        arrow, reversible = "<->", True
    elif "->" in equation:
        arrow, reversible = "->", False
    else:
        raise fail("no arrow '->' or '<->'", "write 'reactants -> products; rate'")
    left, _, right = equation.partition(arrow)
    if "->" in right or "<-" in right or "<" in left:
        raise fail("more than one arrow")
    species = list(species)
    allowed = set(species) | set(boundary)
    reactants = _side(left, allowed, fail)
    products = _side(right, allowed, fail)
    if not reactants and not products:
        raise fail("both sides are empty")
    if not any(products.get(s, 0.0) != reactants.get(s, 0.0) for s in species):
        raise fail("the reaction changes no state", "a reaction must consume or produce a state")

    rate_texts = _split_top_level(rates_text) if rates_text.strip() else []
    names = list(names)
    parameters = set(parameters)
    rate_where = f"{where}.rate" if where else "rate"

    def parse_rate(t: str) -> sp.Expr:
        return parse_expression(t.strip(), names, source=source, where=rate_where)

    if len(rate_texts) == 1 and rate_texts[0].strip() == NEURAL:
        return Reaction(name, reactants, products, None, None, reversible)
    if any(t.strip() == NEURAL for t in rate_texts):
        raise fail("'neural' must be the only rate", "the network learns the net flux")
    if not rate_texts:
        constants = [f"k_{name}_f", f"k_{name}_r"] if reversible else [f"k_{name}"]
        missing = [k for k in constants if k not in parameters]
        if missing:
            raise fail(
                f"mass-action rate constant '{missing[0]}' is not a declared parameter",
                f"declare it, e.g. {missing[0]}: {{value: 1.0, learn: true, min: 0}}, "
                "or give the rate after ';'",
            )
        forward = symbol(constants[0]) * mass_action(reactants)
        reverse = symbol(constants[1]) * mass_action(products) if reversible else None
        return Reaction(name, reactants, products, forward, reverse, reversible)
    if reversible and len(rate_texts) != 2:
        raise fail(
            f"a reversible reaction needs two rates, got {len(rate_texts)}",
            "write 'A <-> B; forward rate, reverse rate'",
        )
    if not reversible and len(rate_texts) != 1:
        raise fail(f"expected one rate, got {len(rate_texts)}", "write 'A -> B; rate'")
    forward = parse_rate(rate_texts[0])
    reverse = parse_rate(rate_texts[1]) if reversible else None
    return Reaction(name, reactants, products, forward, reverse, reversible)


def _side(text: str, allowed: set[str], fail) -> dict[str, float]:
    text = text.strip()
    if text in ("", "0", "∅"):
        return {}
    out: dict[str, float] = {}
    for term in text.split("+"):
        term = term.strip()
        match = _TERM.match(term)
        if not match:
            raise fail(f"'{term}' is not a species with an optional coefficient", "e.g. '2 A'")
        coef = float(match.group(1)) if match.group(1) else 1.0
        name = match.group(2)
        if name not in allowed:
            raise fail(f"unknown species '{name}'", "reacting species must be states")
        if not 0 < coef <= 1000:
            raise fail(f"coefficient {coef:g} of '{name}' is not in (0, 1000]")
        out[name] = out.get(name, 0.0) + coef
    return out


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses (function calls keep their arguments)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def mass_action(terms: dict[str, float]) -> sp.Expr:
    """The mass-action product of one side of a reaction (``{E: 1, S: 1}``: ``E*S``; none: 1)."""
    out: sp.Expr = sp.Integer(1)
    for s, c in terms.items():
        out *= symbol(s) ** (sp.Integer(int(c)) if float(c).is_integer() else sp.Float(c))
    return out


def stoichiometry(reactions: Sequence[Reaction], states: Sequence[str]) -> sp.Matrix:
    """The stoichiometric matrix ``(state, reaction)`` of net changes (exact rationals)."""
    return sp.Matrix(
        len(states),
        len(reactions),
        lambda i, j: sp.nsimplify(reactions[j].change(states[i]), rational=True),
    )


def reaction_rhs(reactions: Sequence[Reaction], states: Sequence[str]) -> dict[str, sp.Expr]:
    """Stoichiometry × flux of the known (non-neural) reactions, per state they change."""
    out: dict[str, sp.Expr] = {}
    for r in reactions:
        if r.neural:
            continue
        for s in states:
            c = r.change(s)
            if c:
                coef = sp.Integer(int(c)) if float(c).is_integer() else sp.Float(c)
                out[s] = out.get(s, sp.Integer(0)) + coef * r.flux
    return out


def conservation_laws(
    reactions: Sequence[Reaction], states: Sequence[str], free: Iterable[str] = ()
) -> list[dict[str, sp.Rational]]:
    """Moieties: weight vectors ``c`` with ``c^T N = 0`` over the stoichiometric matrix ``N``.

    States in ``free`` (those with other terms: equations, networks, discovered terms) carry
    no weight, so ``sum_s c_s s`` is constant along every solution. States in no reaction are
    left out too (they are trivially unchanged by the reactions, not conserved). The basis is
    in reduced row echelon form with integer weights.
    """
    free = set(free)
    involved = [s for s in states if any(r.change(s) for r in reactions) and s not in free]
    if not involved:
        return []
    # Free states have weight zero, so only the other states' rows of N constrain c.
    basis = stoichiometry(reactions, involved).T.nullspace()
    if not basis:
        return []
    mat = sp.Matrix.hstack(*basis).T.rref()[0]
    laws = []
    for i in range(mat.rows):
        row = mat.row(i)
        if all(v == 0 for v in row):
            continue
        denominators = [sp.fraction(v)[1] for v in row]
        scale = sp.ilcm(*denominators) if len(denominators) > 1 else denominators[0]
        law = {s: sp.Rational(v * scale) for s, v in zip(involved, row, strict=True) if v != 0}
        if all(v < 0 for v in law.values()):
            law = {s: -v for s, v in law.items()}
        laws.append(law)
    return laws


def format_law(law: dict[str, sp.Rational]) -> str:
    """``{E: 1, C: 1}`` as ``E + C``."""
    parts = []
    for s, c in law.items():
        sign = "-" if c < 0 else "+"
        mag = abs(c)
        term = s if mag == 1 else f"{mag}*{s}"
        parts.append((sign, term))
    text = " ".join(f"{sign} {term}" for sign, term in parts)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]
