"""Benchmark metrics: the equation x term matrix of a model, term-inclusion F1, exact recovery,
coefficient error on the true terms, forecast NMSE and interval coverage.

A model's terms are read from its full right-hand sides (known plus discovered terms, parameters
at their values), expanded by sympy into a sum of ``coefficient * basis``. Numbers inside a basis
(the ``K`` of ``x/(K + x)``, the ``1`` of ``1/(1 + z**10)``) are replaced by one placeholder so
that a saturating term counts as the same term whatever its constant; exponents are kept, so
``z**4`` and ``z**10`` differ. A Hill exponent fitted as a continuous constant is kept to three
significant digits and matched against the truth's (:func:`aligned`) within
:data:`EXPONENT_RTOL`: ``z**9.31`` is the true ``z**10``, ``z**8.5`` is not.
"""

from __future__ import annotations

import math
import re

import numpy as np
import sympy as sp

from ude.spec.model_spec import ModelSpec

_K = sp.Symbol("K_")

EXPONENT_RTOL = 0.1
"""A fitted exponent is the truth's when within this relative distance of it: the issue's
"K and n within 10 %". Rounding to the nearest integer instead would count ``9.49`` as ``9``
and ``9.51`` as ``10`` (a 5 % difference deciding the support), and a steep true ``n = 10``
fitted at ``9.3`` as a wrong term."""
_EXPONENT = re.compile(r"\*\*\(?(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\)?")

TermMatrix = dict[tuple[str, str], float]
"""``{(state, canonical basis): coefficient}``: the nonzero entries of the equation x term
matrix."""


def _number(v: float) -> sp.Expr:
    return sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v)


def _canonical(e: sp.Expr, exponent: bool = False) -> sp.Expr:
    if e.is_Number:
        if not exponent:
            return _K
        v = float(e)
        # a Hill coefficient fitted as a continuous constant: matched by :func:`aligned`
        return _number(v if v.is_integer() else float(f"{v:.3g}"))
    if e.is_Pow:
        return sp.Pow(_canonical(e.base), _canonical(e.exp, exponent=True))
    if not e.args:
        return e
    return e.func(*[_canonical(a) for a in e.args])


def expression_terms(expr: sp.Expr) -> dict[str, float]:
    """``{canonical basis: coefficient}`` of an expression with numbers for its parameters
    (a Hill term's ``|x|`` counts as ``x``)."""
    out: dict[str, float] = {}
    expr = expr.replace(sp.Abs, lambda a: a)
    for term in sp.Add.make_args(sp.expand(expr)):
        if term == 0:
            continue
        coeff, basis = term.as_coeff_Mul()
        key = "1" if basis == 1 else str(_canonical(basis))
        out[key] = out.get(key, 0.0) + float(coeff)
    return {k: c for k, c in out.items() if c != 0.0 and math.isfinite(c)}


def numeric(expr: sp.Expr, spec: ModelSpec) -> sp.Expr:
    """``expr`` with ``spec``'s parameters replaced by their values."""
    return expr.xreplace({sp.Symbol(k): _number(p.value) for k, p in spec.parameters.items()})


def term_matrix(spec: ModelSpec, states: list[str] | None = None) -> TermMatrix:
    """The nonzero entries of ``spec``'s equation x term matrix over ``states`` (default all)."""
    rhs = dict(zip(spec.states, spec.known_rhs(), strict=True))
    out: TermMatrix = {}
    for s in states or spec.states:
        if s not in rhs:
            continue
        for basis, c in expression_terms(numeric(rhs[s], spec)).items():
            out[(s, basis)] = c
    return out


def skeleton(basis: str) -> tuple[str, list[float]]:
    """A basis with its exponents taken out, and the exponents."""
    return _EXPONENT.sub("**#", basis), [float(x) for x in _EXPONENT.findall(basis)]


def _same_exponents(found: list[float], true: list[float], rtol: float) -> bool:
    return len(found) == len(true) and all(
        abs(f - t) <= rtol * abs(t) for f, t in zip(found, true, strict=True)
    )


def aligned(found: dict, true: dict, rtol: float = EXPONENT_RTOL) -> dict:
    """``found`` (a :data:`TermMatrix`, or ``{basis: coefficient}`` of one state) with each
    term that is not the truth's but differs from a true term only by exponents within
    ``rtol`` (a fitted Hill ``n``) renamed to that true term; a true term takes one found term,
    the closest."""
    out = {k: c for k, c in found.items() if k in true}
    taken = set(out)
    for k, c in found.items():
        if k in true:
            continue
        state, basis = k if isinstance(k, tuple) else (None, k)
        skel, exps = skeleton(basis)
        best, gap = None, math.inf
        for t in true:
            t_state, t_basis = t if isinstance(t, tuple) else (None, t)
            if t in taken or t_state != state:
                continue
            t_skel, t_exps = skeleton(t_basis)
            if t_skel == skel and _same_exponents(exps, t_exps, rtol):
                pairs = zip(exps, t_exps, strict=True)
                d = max((abs(f - e) / abs(e) for f, e in pairs), default=0.0)
                if d < gap:
                    best, gap = t, d
        if best is None:
            out[k] = c
        else:
            out[best] = c
            taken.add(best)
    return out


def support_f1(found: TermMatrix, true: TermMatrix) -> float:
    """F1 of the found support against the true one (1: identical; 0: disjoint)."""
    a, t = set(found), set(true)
    if not a and not t:
        return 1.0
    return 2 * len(a & t) / (len(a) + len(t))


def exact_recovery(found: TermMatrix, true: TermMatrix) -> bool:
    """True when the found support equals the true support."""
    return set(found) == set(true)


def coefficient_error(found: TermMatrix, true: TermMatrix) -> float:
    """``||c_found - c_true|| / ||c_true||`` over the true terms (a missed term counts as 0)."""
    keys = list(true)
    c = np.array([true[k] for k in keys])
    f = np.array([found.get(k, 0.0) for k in keys])
    return float(np.linalg.norm(f - c) / max(np.linalg.norm(c), 1e-300))


def state_nmse(pred: np.ndarray | None, truth: np.ndarray) -> np.ndarray:
    """Per state (the last axis) ``(state,)``: the mean squared error over every other axis
    (time, condition) divided by the truth's variance over them (1 for a constant truth).
    A missing forecast, one of another shape, or a state with a non-finite value is ``inf``:
    a failed forecast never scores."""
    truth = np.asarray(truth, dtype=float)
    if pred is None or np.shape(pred) != truth.shape:
        return np.full(truth.shape[-1], math.inf)
    axes = tuple(range(truth.ndim - 1))
    var = np.var(truth, axis=axes)
    var = np.where(var > 0, var, 1.0)
    with np.errstate(all="ignore"):
        nmse = np.mean((pred - truth) ** 2, axis=axes) / var
    return np.where(np.isfinite(pred).all(axis=axes), nmse, math.inf)


def forecast_nmse(pred: np.ndarray | None, truth: np.ndarray) -> float:
    """The mean over states of :func:`state_nmse`; ``pred``, ``truth`` ``(..., state)``."""
    return float(np.mean(state_nmse(pred, truth)))


def bounded(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Where a band ``(time, state)`` is finite: an unbounded band (``ude``'s predictive band
    once too many draws have blown up) says nothing there and is not scored."""
    return np.isfinite(lower) & np.isfinite(upper)


def interval_coverage(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true values ``(time, state)`` inside ``[lower, upper]``, over the
    entries where the band is bounded (nan where it never is)."""
    finite = bounded(lower, upper)
    if not finite.any():
        return math.nan
    inside = (truth >= lower) & (truth <= upper)
    return float(np.mean(inside[finite]))


def band_width(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> float:
    """Mean width of the band ``(time, state)`` where it is bounded, each state's in units of
    its true range over the forecast (comparable across systems)."""
    span = np.ptp(truth, axis=0)
    span = np.where(span > 0, span, 1.0)
    finite = bounded(lower, upper)
    if not finite.any():
        return math.nan
    return float(np.mean(((upper - lower) / span)[finite]))


BAND_MIN_BOUNDED = 0.5
"""A band bounded over less than this share of the forecast's entries is scored as no band: no
coverage and no width, only the share (``band_bounded``). Scored where bounded, a band bounded
only at the forecast's first time (every draw starts from the true initial state, so its width
there is 0) covered 1.0 with width 0: Lotka-Volterra's unobserved cells on f7f41fa. The half
is the rule that already gives no band when fewer than half of its draws solve (``ude``'s and
E-SINDy's)."""


def band_scores(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """A band's scores against ``truth (time, state)``: ``band_bounded``, the share of the
    entries where it is bounded, and where that is at least :data:`BAND_MIN_BOUNDED` its
    ``coverage`` and ``band_width`` there (:func:`interval_coverage`, :func:`band_width`)."""
    scores = {"band_bounded": float(np.mean(bounded(lower, upper)))}
    if scores["band_bounded"] >= BAND_MIN_BOUNDED:
        scores["coverage"] = interval_coverage(lower, upper, truth)
        scores["band_width"] = band_width(lower, upper, truth)
    return scores


_FUNCTION_NAMES = {"Abs", "exp", "log", "sqrt", "sin", "cos", "tanh"}


def _parse_term(term: str) -> sp.Expr:
    """A term written as text, every name in it a plain symbol: a species called ``S``, ``I``,
    ``E`` or ``N`` is not sympy's singleton registry, imaginary unit, Euler's number or
    ``N()``."""
    names = set(re.findall(r"[A-Za-z_]\w*", term)) - _FUNCTION_NAMES
    return sp.parse_expr(term, local_dict={n: sp.Symbol(n) for n in names})


def _basis(term: str) -> tuple[str, float] | None:
    """``(canonical basis, factor)`` of one library term written as text (its constants at
    their values), as :func:`expression_terms` counts it; None when it is not one term."""
    found = expression_terms(_parse_term(term))
    if len(found) != 1:
        return None
    ((basis, factor),) = found.items()
    return basis, factor


def coefficient_coverage(intervals: dict[str, dict[str, list[float]]], true: TermMatrix) -> float:
    """Share of the true terms ``true`` whose coefficient lies inside the method's interval
    for that term (``intervals``: ``{state: {term: [lo, hi]}}``); a true term without an
    interval is not covered (the definition of the BaSIC benchmark)."""
    if not true:
        return math.nan
    found: dict[tuple[str, str], tuple[float, float]] = {}
    for state, terms in intervals.items():
        for term, (lo, hi) in terms.items():
            b = _basis(term)
            if b is not None:
                a, c = sorted((lo * b[1], hi * b[1]))
                found[(state, b[0])] = (a, c)
    found = aligned(found, true)
    inside = [k in found and found[k][0] <= c <= found[k][1] for k, c in true.items()]
    return float(np.mean(inside))


def inclusion_scores(
    inclusion: dict[str, dict[str, float]], true: TermMatrix
) -> dict[tuple[str, str], float]:
    """``{(state, basis): p}`` over the terms of ``inclusion`` (``{state: {term: p}}``)
    and the true terms of its states (a true term not listed has p = 0)."""
    scored: dict[tuple[str, str], float] = {}
    for state, terms in inclusion.items():
        for term, p in terms.items():
            b = _basis(term)
            if b is not None:
                key = (state, b[0])
                scored[key] = max(scored.get(key, 0.0), float(p))
    scored = aligned(scored, true)
    states = set(inclusion)
    for key in true:
        if key[0] in states:
            scored.setdefault(key, 0.0)
    return scored


def inclusion_brier(inclusion: dict[str, dict[str, float]], true: TermMatrix) -> dict[str, float]:
    """``brier``: the Brier score of the inclusion probabilities against the true support,
    the mean of ``(p - 1[term is true])²`` over :func:`inclusion_scores`; ``inclusion_true``
    and ``inclusion_false``: the mean probability of the true and of the false terms."""
    scored = inclusion_scores(inclusion, true)
    out = {"brier": math.nan, "inclusion_true": math.nan, "inclusion_false": math.nan}
    if scored:
        out["brier"] = float(np.mean([(p - (k in true)) ** 2 for k, p in scored.items()]))
        t = [p for k, p in scored.items() if k in true]
        f = [p for k, p in scored.items() if k not in true]
        out["inclusion_true"] = float(np.mean(t)) if t else math.nan
        out["inclusion_false"] = float(np.mean(f)) if f else math.nan
    return out
