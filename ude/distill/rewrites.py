"""Equivalent forms of a refitted twin with a term fewer: moves the ODE refit cannot take.

A refit only moves coefficients and constants; some structures it reaches are a simpler
structure written the long way, and the simpler one is a term or a constant away:

- :func:`limits`: a saturation ``w*x/(K + x)`` whose ``K`` went to the edge of its range is
  linear (``w*x``) or constant (``w``) over the data.
- :func:`complements`: a rate law and a constant that cancel, ``c0 + c*act(x)`` with
  ``c0 ≈ -c``, are the complementary law ``-c*rep(x)`` (``1 - act = rep`` for a Hill function
  of the same ``K`` and ``n``; ``1 - x/(K + x) = K/(K + x)``, a Hill repression with ``n = 1``):
  one term instead of two, and well conditioned (the two cancelling coefficients grow without
  bound together, as Goodwin's ``1e10 - 1e10*act(z)`` did).

Each candidate starts from the refitted twin's coefficients and constants rewritten exactly
(up to what the dropped term held); its own refit decides whether the data agree.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ude.distill.library import HILL_N_BOUNDS, RateLaw, Term
from ude.distill.selection import Scored, refitted_coef, refitted_constants
from ude.distill.sparse import Candidate


def limits(
    best: Scored, terms: dict[str, list[Term]], bounds: dict[str, dict[int, dict]]
) -> list[Candidate]:
    """``best`` with each saturation ``w*x/(K + x)`` that is nearly linear or nearly constant
    over the data swapped for the library term it approaches: ``w*x`` (coefficient ``c/K``)
    when ``K`` is above three times the largest ``x``, ``w`` (or the constant) when below three
    times the smallest. That term has one constant fewer; the refit cannot take the step
    itself, it only moves ``K`` towards the edge of its range."""
    from ude.distill.projection import K_RANGE

    fitted, constants = refitted_coef(best), refitted_constants(best)
    out = []
    for t, c in fitted.items():
        names = [term.name for term in terms[t]]
        for j in np.flatnonzero(c):
            law: RateLaw | None = terms[t][j].law
            if law is None or law.kind != "saturation":
                continue
            K = constants.get(t, {}).get(int(j), {}).get(law.K)
            lo, hi = bounds.get(t, {}).get(int(j), {}).get(law.K, (0.0, np.inf))
            # the range is K_RANGE times the variable's: back to three times the variable's
            linear, flat = hi * 3 / K_RANGE, lo * K_RANGE * 3
            if K is None or flat < K < linear:
                continue
            factors = [law.variable, law.factor] if K >= linear else [law.factor or "1"]
            target = _product(factors)
            if target not in names:
                continue
            k = names.index(target)
            coef = {s: v.copy() for s, v in fitted.items()}
            coef[t][k] += c[j] / K if K >= linear else c[j]
            coef[t][j] = 0.0
            out.append(Candidate(coef, "limit", constants=constants))
    return out


def complement(terms: list[Term], j: int) -> tuple[int, dict[str, str], dict[str, float]] | None:
    """The library index of the term that is ``unit - terms[j]`` (``unit``: the law's input
    factor, else the constant 1), which of its constants take which of ``terms[j]``'s
    (``{its name: name in terms[j]}``) and which are fixed (``{name: value}``); None when the
    library has no such term. Hill activation and repression of the same variable are each
    other's complement at the same ``K`` and ``n``; a saturation's is the Hill repression of
    its variable with ``n = 1`` (only without a factor: Hill terms have none)."""
    law = terms[j].law
    if law is None:
        return None
    kinds = {"activation": "repression", "repression": "activation", "saturation": "repression"}
    want = kinds.get(law.kind)
    for k, term in enumerate(terms):
        other = term.law
        if k == j or other is None or other.kind != want or other.variable != law.variable:
            continue
        if other.factor != law.factor:
            continue
        if law.kind == "saturation":
            return k, {other.K: law.K}, {other.n: HILL_N_BOUNDS[0]}
        return k, {other.K: law.K, other.n: law.n}, {}
    return None


def complements(best: Scored, terms: dict[str, list[Term]]) -> list[Candidate]:
    """``best`` with each rate law whose unit (the constant, or the law's input factor) is
    also in its target's support written as its complement with the unit dropped:
    ``c0*unit + c*law`` becomes ``-c*complement(law)``, exact when ``c0 = -c`` (see the
    module docstring). A term and a coefficient fewer, the same fit where the two cancel."""
    fitted, constants = refitted_coef(best), refitted_constants(best)
    out = []
    for t, c in fitted.items():
        names = [term.name for term in terms[t]]
        for j in np.flatnonzero(c):
            law = terms[t][j].law
            found = complement(terms[t], int(j))
            if law is None or found is None:
                continue
            unit = law.factor or "1"
            if unit not in names or c[names.index(unit)] == 0:
                continue
            k, renamed, fixed = found
            if c[k] != 0:
                continue  # the complement is in the support already: no simpler form
            own = constants.get(t, {}).get(int(j), {})
            moved = {name: own[source] for name, source in renamed.items() if source in own}
            coef = {s: v.copy() for s, v in fitted.items()}
            coef[t][k] = -c[j]
            coef[t][j] = 0.0
            coef[t][names.index(unit)] = 0.0
            new = {s: {i: dict(v) for i, v in cs.items()} for s, cs in constants.items()}
            new.setdefault(t, {})[k] = {**moved, **fixed}
            out.append(Candidate(coef, "complement", constants=new))
    return out


def _product(factors: list[str | None]) -> str:
    """The library name of the product of ``factors`` (``"1"``: none)."""
    return str(sp.Mul(*[sp.Symbol(f) if f != "1" else sp.Integer(1) for f in factors if f]))
