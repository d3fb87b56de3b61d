"""Candidate libraries of symbolic terms over a neural slot's inputs.

A library is fitted to the names of the variables it may use (``fit(names)``) and then holds its
``terms``; ``transform(X)`` evaluates them on samples. Libraries compose with ``+``.

Rate laws with nonlinear constants come in two kinds. With *free* constants (the default) a
Michaelis-Menten ``x/(K + x)`` or Hill ``x**n/(K**n + x**n)`` term carries a :class:`RateLaw`:
the distillation fits ``K`` (and ``n``) as continuous parameters by variable projection on the
data (:mod:`ude.distill.projection`) and the ODE refit learns them further. With a ``K_grid``
(and ``n_grid``) there is one term per grid value, as in pysindy-style libraries.

:data:`FAMILY_LIBRARIES` builds the named families of the spec's ``library:`` key
(:mod:`ude.spec.library_key`); :func:`slot_library` builds one slot's library from family names
and custom terms.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
import torch
from scipy.optimize import least_squares
from scipy.special import expit

from ude.errors import UdeError
from ude.spec.compile import CompiledExpressions
from ude.spec.expressions import parse_expression
from ude.spec.library_key import FAMILIES, custom_term

HILL_N_BOUNDS = (1.0, 15.0)
"""Range of a free Hill coefficient: from Michaelis-Menten-like (1) to the steepest switches
reported for gene regulation (about 12), with room above so a true 12 is not on the bound."""


@dataclass(frozen=True)
class RateLaw:
    """The numeric form of a term whose constants are free: ``kind`` (``saturation``
    ``x/(K + x)``, ``activation`` ``|x|**n/(K**n + |x|**n)`` or ``repression``
    ``K**n/(K**n + |x|**n)``) of ``variable``, times the input ``factor`` when given. ``K`` and
    ``n`` name the constants' symbols in the term's expression. A Hill term raises ``|x|``:
    the same for a concentration, and defined when a fitted trajectory or an initial state
    estimated from noisy samples dips below zero (``x**n`` would not be)."""

    kind: str
    variable: str
    factor: str | None = None
    K: str = "K"
    n: str = "n"

    @property
    def free(self) -> tuple[str, ...]:
        """The constants the variable projection fits."""
        return (self.K,) if self.kind == "saturation" else (self.K, self.n)

    def evaluate(
        self, columns: Mapping[str, np.ndarray], constants: Mapping[str, float]
    ) -> np.ndarray:
        """The term at inputs ``columns[name] (sample,)`` and ``constants``. Hill functions
        are the logistic of ``n (log |x| - log K)``: no overflow at large ``n``. A saturation's
        ``x`` below zero (a fitted trajectory's dip) counts as zero."""
        x = np.asarray(columns[self.variable], dtype=float)
        K = float(constants[self.K])
        if self.kind == "saturation":
            x = np.maximum(x, 0.0)
            out = x / (K + x)
        else:
            x = np.abs(x)  # as the term's expression: |x|**n
            with np.errstate(divide="ignore"):
                z = float(constants[self.n]) * (np.log(x) - np.log(K))
            out = expit(z if self.kind == "activation" else -z)
        if self.factor is not None:
            out = out * np.asarray(columns[self.factor], dtype=float)
        return out


@dataclass(frozen=True)
class Term:
    """One library term: ``expr`` over variable names and the constants in ``constants``.

    ``constants`` maps a constant's symbol name (e.g. ``K``) to its value (for free constants:
    the start); ``learnable`` lists those a refit through the ODE may change; ``law``, when
    given, says the constants are free and how to evaluate the term for any values of them.
    """

    expr: sp.Expr
    constants: dict[str, float] = field(default_factory=dict)
    learnable: tuple[str, ...] = ()
    family: str = "custom"
    law: RateLaw | None = None

    def numeric(self, constants: Mapping[str, float] | None = None) -> sp.Expr:
        """The term with its constants (``constants`` over the term's own) substituted."""
        values = {**self.constants, **(constants or {})}
        subs = {sp.Symbol(k): _number(v) for k, v in values.items()}
        return self.expr.xreplace(subs) if subs else self.expr

    @property
    def free(self) -> tuple[str, ...]:
        return self.law.free if self.law is not None else ()

    @property
    def name(self) -> str:
        """The term as written; free constants stay symbols (``x/(K + x)``), a Hill term's
        ``|x|`` shows as ``x``."""
        fixed = {k: v for k, v in self.constants.items() if k not in self.free}
        subs = {sp.Symbol(k): _number(v) for k, v in fixed.items()}
        expr = self.expr.xreplace(subs) if subs else self.expr
        return str(expr.replace(sp.Abs, lambda a: a))

    def evaluate(
        self, columns: Mapping[str, np.ndarray], constants: Mapping[str, float] | None = None
    ) -> np.ndarray:
        """The term at ``columns[name] (sample,)``, a free law at ``constants``."""
        if self.law is not None:
            return self.law.evaluate(columns, {**self.constants, **(constants or {})})
        n = len(next(iter(columns.values())))
        f = CompiledExpressions([self.numeric(constants)], list(columns)).double()
        X = np.stack([np.asarray(v, dtype=float) for v in columns.values()], axis=1)
        with torch.no_grad():
            return f(torch.as_tensor(X.reshape(n, -1))).numpy()[:, 0]

    def __hash__(self) -> int:
        return hash((self.expr, tuple(sorted(self.constants.items())), self.family))


def match_term(
    term: Term, start: dict[str, float], truth_term: sp.Expr, X: dict[str, np.ndarray]
) -> tuple[float, dict[str, float]]:
    """The coefficient and constants with which ``term`` best matches ``truth_term`` (least
    squares over the inputs ``X`` along the trajectory: ``log K``, ``n``, the coefficient
    solved for each)."""
    names = sorted(str(v) for v in (term.expr.free_symbols | truth_term.free_symbols))
    names = [v for v in names if v in X]
    cols = [np.asarray(X[v], dtype=float) for v in names]
    target = np.broadcast_to(sp.lambdify(names, truth_term, "numpy")(*cols), cols[0].shape)
    free = list(term.free)
    fixed = {sp.Symbol(k): v for k, v in term.constants.items() if k not in free}
    law = sp.lambdify(names + free, term.expr.xreplace(fixed), "numpy") if free else None

    def column(theta: np.ndarray) -> np.ndarray:
        if law is None:
            value = sp.lambdify(names, term.numeric(), "numpy")(*cols)
        else:
            value = law(*cols, np.exp(theta[0]), *theta[1:])
        return np.broadcast_to(value, cols[0].shape)

    def solved(col: np.ndarray) -> float:
        return float(col @ target / max(col @ col, 1e-300))

    if not free:
        return solved(column(np.zeros(0))), {}
    x0 = [np.log(start[free[0]]), *[start[k] for k in free[1:]]]

    def residual(theta: np.ndarray) -> np.ndarray:
        col = column(theta)
        r = solved(col) * col - target
        return np.where(np.isfinite(r), r, 1e6)

    theta = least_squares(residual, x0, max_nfev=200).x
    constants = dict(zip(free, [float(np.exp(theta[0])), *map(float, theta[1:])], strict=False))
    return solved(column(theta)), constants


def _number(v: float) -> sp.Expr:
    """A sympy number, integer when ``v`` is integral (so x**2.0 prints as x**2)."""
    return sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v, 6)


def _constant_symbol(base: str, names: Sequence[str]) -> str:
    """``base`` (K, n) unless a variable has that name: then ``base_c``, ``base_c1``, ..."""
    out, i = base, 0
    while out in names:
        out = f"{base}_c" if i == 0 else f"{base}_c{i}"
        i += 1
    return out


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

    def transform(
        self, X: np.ndarray, constants: Mapping[int, Mapping[str, float]] | None = None
    ) -> np.ndarray:
        """Term values ``(sample, term)`` at ``X (sample, name)``; free terms at
        ``constants[j]`` (default: their start values)."""
        self._check_fitted()
        X = np.asarray(X, dtype=float)
        fixed = [j for j, t in enumerate(self.terms_) if t.law is None]
        out = np.empty((X.shape[0], len(self.terms_)))
        if fixed:
            if self._compiled is None:
                exprs = [self.terms_[j].numeric() for j in fixed]
                self._compiled = CompiledExpressions(exprs, self.names_).double()
            with torch.no_grad():
                out[:, fixed] = self._compiled(torch.as_tensor(X)).numpy()
        columns = {n: X[:, i] for i, n in enumerate(self.names_)}
        for j, t in enumerate(self.terms_):
            if t.law is not None:
                out[:, j] = t.evaluate(columns, (constants or {}).get(j))
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


class ConstantLibrary(Library):
    """The zero-order rate ``1`` (a constant production or influx)."""

    def _terms(self, names: list[str]) -> list[Term]:
        return [Term(sp.Integer(1), family="constant")]


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
    """Saturation ``x/(K + x)`` of each variable; with ``times`` also ``y*x/(K + x)`` for each
    other variable y (an enzyme, or a catalyst, times the saturation in its substrate).

    ``K_grid=None`` (the default): one term per variable with ``K`` free, fitted as a
    continuous parameter. A grid: one term per ``K`` in it (``learn_K``: the ODE refit may
    move it).
    """

    def __init__(
        self,
        K_grid: Sequence[float] | None = None,
        variables: Sequence[str] | None = None,
        times: bool = False,
        learn_K: bool = True,
    ):
        self.K_grid = K_grid
        self.variables = variables
        self.times = times
        self.learn_K = learn_K

    def _terms(self, names: list[str]) -> list[Term]:
        use = _select_names(names, self.variables, "michaelis_menten.variables")
        K = sp.Symbol(_constant_symbol("K", names))
        grid = [None] if self.K_grid is None else [float(k) for k in _check_grid(self.K_grid)]
        learn = (K.name,) if self.learn_K or self.K_grid is None else ()
        out = []
        for v in use:
            x = sp.Symbol(v)
            factors = [None, *(w for w in use if w != v)] if self.times else [None]
            for w in factors:
                expr = x / (K + x) if w is None else sp.Symbol(w) * x / (K + x)
                for k in grid:
                    law = RateLaw("saturation", v, w, K=K.name) if k is None else None
                    c = {K.name: 1.0 if k is None else k}
                    out.append(Term(expr, c, learn, "michaelis_menten", law))
        return out


class HillLibrary(Library):
    """Hill activation ``x**n/(K**n + x**n)`` and repression ``K**n/(K**n + x**n)`` of each
    variable.

    ``K_grid=None`` (the default): one term of each kind per variable with ``K`` and ``n``
    free (``n`` in :data:`HILL_N_BOUNDS`), fitted as continuous parameters. A grid: one term
    per ``K`` of ``K_grid`` and ``n`` of ``n_grid`` (``n`` fixed, ``K`` learnable in the refit
    with ``learn_K``).
    """

    def __init__(
        self,
        K_grid: Sequence[float] | None = None,
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
        use = _select_names(names, self.variables, "hill.variables")
        K = sp.Symbol(_constant_symbol("K", names))
        n = sp.Symbol(_constant_symbol("n", names))
        kinds = [k for k in ("activation", "repression") if getattr(self, k)]
        out = []
        for v in use:
            x = sp.Symbol(v)
            forms = {"activation": x**n / (K**n + x**n), "repression": K**n / (K**n + x**n)}
            if self.K_grid is None:
                # a free n: |x|**n, defined for a dip below zero (see RateLaw)
                ax = sp.Abs(x)
                forms = {"activation": ax**n / (K**n + ax**n), "repression": K**n / (K**n + ax**n)}
                for kind in kinds:
                    law = RateLaw(kind, v, K=K.name, n=n.name)
                    c = {K.name: 1.0, n.name: 2.0}
                    out.append(Term(forms[kind], c, (K.name, n.name), "hill", law))
                continue
            learn = (K.name,) if self.learn_K else ()
            for k in _check_grid(self.K_grid):
                for nn in _check_grid(self.n_grid, "n_grid"):
                    c = {K.name: float(k), n.name: float(nn)}
                    out += [Term(forms[kind], c, learn, "hill") for kind in kinds]
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


def _check_grid(grid: Sequence[float], where: str = "K_grid") -> list[float]:
    values = list(grid) if isinstance(grid, Iterable) else []
    if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise UdeError(
            f"{where}={grid!r}", source="distill.library", fix=f"{where}: a list of numbers > 0"
        )
    return values


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


FAMILY_LIBRARIES: dict[str, Callable[[], Library]] = {
    "constant": ConstantLibrary,
    "mass_action": lambda: MassActionLibrary(order=2),
    "michaelis_menten": lambda: MichaelisMentenLibrary(times=True),
    "hill": HillLibrary,
    "polynomial": lambda: PolynomialLibrary(degree=3),
}
"""The library of each family name of :data:`ude.spec.library_key.FAMILIES`."""
assert set(FAMILY_LIBRARIES) == set(FAMILIES)


def slot_library(
    items: Sequence[str], inputs: Sequence[str], declared: Sequence[str] | None = None
) -> Library:
    """One slot's library from family names and custom terms over the ``declared`` names
    (default: the slot's ``inputs``); a custom term over names the slot's network does not see
    is left out for this slot."""
    libs: list[Library] = []
    custom = []
    for i, item in enumerate(items):
        if item in FAMILY_LIBRARIES:
            libs.append(FAMILY_LIBRARIES[item]())
            continue
        names = list(inputs if declared is None else declared)
        expr = custom_term(item, names, source="distill.library", where=f"[{i}]")
        if expr is not None and {str(s) for s in expr.free_symbols} <= set(inputs):
            custom.append(item)
    if custom:
        libs.append(CustomLibrary(custom))
    if not libs:
        raise UdeError(
            "no library term reaches this network",
            source="distill.library",
            fix="network inputs: " + ", ".join(inputs),
        )
    return combine(libs)
