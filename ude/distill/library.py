"""Candidate libraries of symbolic terms over a network's inputs.

A library is fitted to the names of the variables it may use (``fit(names)``) and then holds its
``terms``; ``transform(X)`` evaluates them on samples. Libraries compose with ``+``. Rational
biology terms (Michaelis–Menten, Hill) carry a nonlinear constant ``K`` taken from a grid; the
refit through the ODE may learn it further.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
import torch

from ude.errors import UdeError
from ude.spec.compile import CompiledExpressions
from ude.spec.expressions import parse_expression


@dataclass(frozen=True)
class Term:
    """One library term: ``expr`` over variable names and the constants in ``constants``.

    ``constants`` maps a constant's symbol name (e.g. ``K``) to its value; ``learnable`` lists
    those a refit through the ODE may change (with ``bounds`` (min, max) each).
    """

    expr: sp.Expr
    constants: dict[str, float] = field(default_factory=dict)
    learnable: tuple[str, ...] = ()
    family: str = "custom"

    def numeric(self) -> sp.Expr:
        """The term with its constants substituted."""
        subs = {sp.Symbol(k): _number(v) for k, v in self.constants.items()}
        return self.expr.xreplace(subs) if subs else self.expr

    @property
    def name(self) -> str:
        return str(self.numeric())

    def __hash__(self) -> int:
        return hash((self.expr, tuple(sorted(self.constants.items())), self.family))


def _number(v: float) -> sp.Expr:
    """A sympy number, integer when ``v`` is integral (so x**2.0 prints as x**2)."""
    return sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v, 6)


class Library:
    """Base class: ``fit(names)`` builds ``terms_``; ``transform(X (sample, name)) -> (sample,
    term)``. ``a + b`` concatenates (duplicate terms kept once)."""

    def fit(self, names: Sequence[str]) -> Library:
        self.names_ = list(names)
        self.terms_ = self._terms(self.names_)
        self._compiled = None
        return self

    def _terms(self, names: list[str]) -> list[Term]:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "terms_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(names) first")

    def get_feature_names(self) -> list[str]:
        self._check_fitted()
        return [t.name for t in self.terms_]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Term values ``(sample, term)`` at ``X (sample, name)``."""
        self._check_fitted()
        if self._compiled is None:
            self._compiled = CompiledExpressions(
                [t.numeric() for t in self.terms_], self.names_
            ).double()
        with torch.no_grad():
            out = self._compiled(torch.as_tensor(np.asarray(X, dtype=float))).numpy()
        return out

    def __add__(self, other: Library) -> ConcatLibrary:
        return ConcatLibrary([self, other])


class ConcatLibrary(Library):
    """The terms of several libraries, in order, each term once."""

    def __init__(self, libraries: Sequence[Library]):
        self.libraries = list(libraries)

    def _terms(self, names: list[str]) -> list[Term]:
        out: list[Term] = []
        seen: set[str] = set()
        for lib in self.libraries:
            for t in lib.fit(names).terms_:
                if t.name not in seen:
                    seen.add(t.name)
                    out.append(t)
        return out

    def __add__(self, other: Library) -> ConcatLibrary:
        return ConcatLibrary([*self.libraries, other])


def _monomials(names: list[str], degree: int, min_degree: int) -> list[sp.Expr]:
    syms = [sp.Symbol(n) for n in names]
    out = []
    for d in range(min_degree, degree + 1):
        for combo in itertools.combinations_with_replacement(syms, d):
            out.append(sp.Mul(*combo) if combo else sp.Integer(1))
    return out


def _select_names(names: list[str], variables: Sequence[str] | None, where: str) -> list[str]:
    if variables is None:
        return names
    unknown = [v for v in variables if v not in names]
    if unknown:
        raise UdeError(
            f"'{unknown[0]}' is not an input of the network",
            source="distill.library",
            where=where,
            fix="network inputs: " + ", ".join(names),
        )
    return list(variables)


class PolynomialLibrary(Library):
    """All monomials of degree ``1..degree`` (and 1 when ``include_bias``) over the variables
    (default: all network inputs)."""

    def __init__(
        self, degree: int = 2, include_bias: bool = False, variables: Sequence[str] | None = None
    ):
        self.degree = degree
        self.include_bias = include_bias
        self.variables = variables

    def _terms(self, names: list[str]) -> list[Term]:
        if not isinstance(self.degree, int) or self.degree < 1:
            raise UdeError(
                f"degree={self.degree!r}", source="distill.library", fix="an integer >= 1"
            )
        use = _select_names(names, self.variables, "polynomial.variables")
        monos = _monomials(use, self.degree, 0 if self.include_bias else 1)
        return [Term(m, family="polynomial") for m in monos]


class MassActionLibrary(Library):
    """Mass-action rate laws: products of up to ``order`` species (with repeats), e.g. x, x*y,
    x**2 for order 2. Species default to all network inputs."""

    def __init__(self, order: int = 2, species: Sequence[str] | None = None):
        self.order = order
        self.species = species

    def _terms(self, names: list[str]) -> list[Term]:
        if not isinstance(self.order, int) or self.order < 1:
            raise UdeError(f"order={self.order!r}", source="distill.library", fix="an integer >= 1")
        use = _select_names(names, self.species, "mass_action.species")
        return [Term(m, family="mass_action") for m in _monomials(use, self.order, 1)]


class MichaelisMentenLibrary(Library):
    """Saturating terms ``x/(K + x)`` for each variable and each ``K`` of ``K_grid``;
    with ``times`` also ``y*x/(K + x)`` for each other variable y (an enzyme-like factor)."""

    def __init__(
        self,
        K_grid: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        variables: Sequence[str] | None = None,
        times: bool = False,
        learn_K: bool = True,
    ):
        self.K_grid = K_grid
        self.variables = variables
        self.times = times
        self.learn_K = learn_K

    def _terms(self, names: list[str]) -> list[Term]:
        _check_grid(self.K_grid, "K_grid")
        use = _select_names(names, self.variables, "michaelis_menten.variables")
        K = sp.Symbol("K")
        out = []
        for v in use:
            x = sp.Symbol(v)
            for k in self.K_grid:
                learn = ("K",) if self.learn_K else ()
                out.append(Term(x / (K + x), {"K": float(k)}, learn, "michaelis_menten"))
                if self.times:
                    for w in use:
                        if w != v:
                            out.append(
                                Term(
                                    sp.Symbol(w) * x / (K + x),
                                    {"K": float(k)},
                                    learn,
                                    "michaelis_menten",
                                )
                            )
        return out


class HillLibrary(Library):
    """Hill activation ``x**n/(K**n + x**n)`` and repression ``K**n/(K**n + x**n)`` for each
    variable, ``K`` of ``K_grid`` and ``n`` of ``n_grid``; ``n`` stays fixed in the refit."""

    def __init__(
        self,
        K_grid: Sequence[float] = (0.5, 1.0, 2.0),
        n_grid: Sequence[float] = (2, 4),
        variables: Sequence[str] | None = None,
        activation: bool = True,
        repression: bool = True,
        learn_K: bool = True,
    ):
        self.K_grid = K_grid
        self.n_grid = n_grid
        self.variables = variables
        self.activation = activation
        self.repression = repression
        self.learn_K = learn_K

    def _terms(self, names: list[str]) -> list[Term]:
        _check_grid(self.K_grid, "K_grid")
        _check_grid(self.n_grid, "n_grid")
        use = _select_names(names, self.variables, "hill.variables")
        K, n = sp.Symbol("K"), sp.Symbol("n")
        learn = ("K",) if self.learn_K else ()
        out = []
        for v in use:
            x = sp.Symbol(v)
            for k in self.K_grid:
                for nn in self.n_grid:
                    c = {"K": float(k), "n": float(nn)}
                    if self.activation:
                        out.append(Term(x**n / (K**n + x**n), c, learn, "hill"))
                    if self.repression:
                        out.append(Term(K**n / (K**n + x**n), c, learn, "hill"))
        return out


class CustomLibrary(Library):
    """Terms written in the spec grammar (e.g. ``"x*y"``, ``"mm(x, 0.5)"``) over the network
    inputs; parsed safely with :func:`ude.spec.parse_expression`."""

    def __init__(self, expressions: Iterable[str]):
        self.expressions = expressions

    def _terms(self, names: list[str]) -> list[Term]:
        exprs = list(self.expressions)
        if not exprs:
            raise UdeError(
                "no expressions", source="distill.library", where="custom", fix="list terms"
            )
        return [
            Term(
                parse_expression(e, names, source="distill.library", where=f"custom[{i}]"),
                family="custom",
            )
            for i, e in enumerate(exprs)
        ]


def _check_grid(grid: Sequence[float], where: str) -> None:
    values = list(grid) if isinstance(grid, Iterable) else []
    if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise UdeError(
            f"{where}={grid!r}", source="distill.library", fix=f"{where}: a list of numbers > 0"
        )


def combine(libraries: Library | Sequence[Library]) -> Library:
    """One library from one or several (concatenated)."""
    if isinstance(libraries, Library):
        return libraries
    libs = list(libraries)
    if not libs or not all(isinstance(lib, Library) for lib in libs):
        raise UdeError(
            "expected one or more libraries",
            source="distill.library",
            fix="e.g. [{_target_: ude.distill.PolynomialLibrary, degree: 2}]",
        )
    return libs[0] if len(libs) == 1 else ConcatLibrary(libs)
