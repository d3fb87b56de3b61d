"""The truth as an oracle, for a distillation of synthetic data.

When the chosen twin's structure is not the truth's, was the truth out of the search's reach
(the screen never proposed it), or do the data prefer the twin? The true terms of each target
are found in its library (by form: a term's constants, ``K`` and a Hill ``n``, are fitted, as
the search fits them), their coefficients and constants solved on the integral-matching screen
(:meth:`ude.distill.integral.IntegralProblem.refine`), and the resulting candidate refitted and
scored exactly as the search scores its own candidates (from the screen's solution and from
the chosen twin's refit of the terms they share). A truth the selection would have taken,
offered beside its own candidates, is a miss of the search; otherwise the data prefer the
twin under the criterion (no method that selects by fit to these data would choose the truth).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp

from ude.benchmark.metrics import expression_terms, numeric, skeleton
from ude.distill.integral import IntegralProblem
from ude.distill.library import Term
from ude.distill.selection import Scored, moved_from, refitted_coef, refitted_constants
from ude.distill.sparse import Candidate
from ude.spec.model_spec import ModelSpec


def form(basis: str) -> str:
    """A canonical basis (:func:`ude.benchmark.metrics.expression_terms`) with its exponents
    taken out: a Hill term's form whatever its ``n``."""
    return skeleton(basis)[0]


def true_terms(
    target: str,
    missing: dict[str, sp.Expr],
    truth: ModelSpec,
    routes: dict[str, dict[str, float]],
) -> dict[str, float] | None:
    """``{canonical basis: coefficient}`` of what ``target``'s network replaces in the truth:
    a state's missing terms, or a neural reaction's flux (a state it changes, divided by the
    change); None when the truth does not say."""
    for state, factor in routes.get(target, {target: 1.0}).items():
        if state in missing and factor:
            return expression_terms(numeric(missing[state] / sp.nsimplify(factor), truth))
    return None


def true_support(
    terms: dict[str, list[Term]],
    integral: dict[str, IntegralProblem],
    missing: dict[str, sp.Expr],
    truth: ModelSpec,
    routes: dict[str, dict[str, float]],
) -> dict[str, list[int]] | str:
    """The library index of every true term of every target, or why there is none (a true
    term whose form no library term has)."""
    out: dict[str, list[int]] = {}
    for target, library in terms.items():
        true = true_terms(target, missing, truth, routes)
        if true is None:
            return f"the truth does not give {target}'s term"
        forms = []
        for j, term in enumerate(library):
            expr = term.numeric(integral[target].constants.get(j)) if term.free else term.numeric()
            keys = list(expression_terms(expr))
            forms.append(form(keys[0]) if len(keys) == 1 else None)
        support = []
        for basis in true:
            j = next((j for j, f in enumerate(forms) if f == form(basis)), None)
            if j is None:
                return f"{target}: no library term has the form of the true term {basis}"
            support.append(j)
        out[target] = sorted(support)
    return out


def truth_candidate(
    support: dict[str, list[int]], integral: dict[str, IntegralProblem]
) -> Candidate:
    """The true support with coefficients and constants solved on the screen, as a search
    candidate (origin ``truth``)."""
    coef, constants = {}, {}
    for target, s in support.items():
        coef[target], _, constants[target] = integral[target].refine(s)
    return Candidate(coef, "truth", constants=constants)


def from_twin(truth: Candidate, chosen: Scored) -> Candidate | None:
    """``truth`` started where the chosen twin's refit left the terms the two share (their
    coefficients and constants, and the twin's fitted initial states); None when they share
    none. The screen's start can lie in another basin of a steep law than the twin's refit
    found (Goodwin's Hill ``n``), which would blame the data for a poor start."""
    coef = refitted_coef(chosen)
    constants = refitted_constants(chosen)
    start = Candidate({t: c.copy() for t, c in truth.coef.items()}, "truth (from the twin)")
    start.constants = {t: {j: dict(c) for j, c in cs.items()} for t, cs in truth.constants.items()}
    shared = False
    for t, c in start.coef.items():
        for j in np.flatnonzero(c):
            if t in coef and coef[t][j] != 0:
                c[j] = coef[t][j]
                if j in constants.get(t, {}):
                    start.constants.setdefault(t, {})[j] = dict(constants[t][j])
                shared = True
    if not shared:
        return None
    start.info.update(moved_from(chosen))
    return start


def verdict(truth: float, chosen: float, taken: bool) -> dict[str, Any]:
    """The oracle's finding from the criteria of the truth and the chosen twin (lower is
    better) and whether the selection, offered the truth beside its own candidates, would
    have ``taken`` it (its parsimony rule can take a sparser truth a little behind)."""
    return {
        "truth_criterion": float(truth),
        "chosen_criterion": float(chosen),
        "delta": float(truth - chosen),
        "verdict": "search missed the truth" if taken else "data prefer the twin",
    }
