"""First-order swaps: the simplest rate laws refitted whatever the screen says of them.

The integral-matching screen is linearised along one trajectory. Where a target's true term is
nearly constant over the data's window (a first-order outflow ``-c*x`` of a state that changes
little), its integral is a near-linear drift that a constant or any slowly varying term
matches about as well, and the screen's order among them is noise; only the feedback through
the state's own dynamics tells them apart, which a refit through the ODE sees and the screen
does not. Yeast glycolysis's missing ``-c*S6`` (the benchmark's cells): at 20 % noise the
screen did not put it forward and the twin chosen without it was ``c*S7``, 33 units of the
criterion worse than ``c*S6`` refitted; with 50 time points it screened 20 units behind the
best single term (a Hill repression) and 18 behind the best start, and the twin chosen without
it was 124 units worse.

First-order terms are few (the slot's inputs and the constant) and the commonest rate laws
(degradation, outflow, transport, constant production), so each is refitted as a one-term
replacement of a target's support (:class:`ude.distill.selection.TrajectorySelector`'s
``swaps``).

A neural reaction's own mass-action law (``E + S <-> C``: ``kf*E*S - kr*C``) is refitted so
too: it is the law its stoichiometry states, and with a species latent the screen's
linearisation along the trained model's path need not put it forward. The enzyme CRN with two
conditions (E and C latent): no candidate of the screen, its rescreens or the first-order swaps
held ``E*S`` and ``C`` together, and the twin chosen, ``c*C*S/(K + S)``, forecasts nothing from
a complex that starts at zero. A reversible law's forward part alone (``kf*E*S``) is refitted
too: at 20 % noise the enzyme's two-term law refitted from the screen's signs failed to solve,
and every other candidate drove a species below zero (:mod:`ude.distill.admissible`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import sympy as sp

from ude.distill.integral import IntegralProblem
from ude.distill.library import Term, match_term
from ude.distill.selection import TIE, Scored, moved_from, refitted_coef, refitted_constants
from ude.distill.sparse import Candidate
from ude.spec.reactions import Reaction, mass_action


def first_order(term: Term) -> bool:
    """Whether ``term`` is the constant or one input alone (``x``, not ``x*y`` or a law)."""
    return term.law is None and (term.expr == sp.Integer(1) or term.expr.is_Symbol)


def mass_action_support(reaction: Reaction, terms: list[Term]) -> list[int] | None:
    """The indices in ``terms`` of ``reaction``'s mass-action law: the product of its
    reactants and, when it is reversible, of its products (None: the library lacks one)."""
    sides = [reaction.reactants, *([reaction.products] if reaction.reversible else [])]
    exprs = [mass_action(side) for side in sides]
    index = {term.expr: j for j, term in enumerate(terms) if term.law is None}
    support = [index.get(e) for e in exprs if e != 1]
    return sorted(set(support)) if support and None not in support else None


def swap_supports(
    target: str, terms: list[Term], reactions: dict[str, Reaction]
) -> list[list[int]]:
    """The supports a swap puts in place of ``target``'s: each first-order term alone and,
    for a neural reaction's flux, its mass-action law and, when it is reversible, the law's
    forward part alone (``kf*E*S``)."""
    out = [[j] for j, term in enumerate(terms) if first_order(term)]
    if target in reactions:
        reaction = reactions[target]
        forward = replace(reaction, reversible=False)
        for law in (mass_action_support(reaction, terms), mass_action_support(forward, terms)):
            if law is not None and law not in out:
                out.append(law)
    return out


def first_order_swaps(
    best: Scored,
    terms: dict[str, list[Term]],
    integral: dict[str, IntegralProblem],
    reactions: dict[str, Reaction] | None = None,
) -> list[Candidate]:
    """``best`` with one target's support replaced by each of its :func:`swap_supports`
    (``reactions``: the neural reactions by name) that it does not hold already, the new
    support's coefficients from integral matching (``integral``: along the trained
    model's trajectory, or along ``best``'s refitted one where the screen ran on the data's
    smoothed path) and the other targets at their refitted values. Each is refitted
    from the trained model's initial states, as the screen's candidates are: a swap changes
    the dynamics, and ``best``'s fitted initial states hold its own structure's errors (yeast
    glycolysis at 20 % noise: ``c*S6`` refitted from the chosen ``c*S7``'s states stopped 320
    units short of its refit from the trained model's)."""
    fitted, constants = refitted_coef(best), refitted_constants(best)
    out = []
    for t, c in fitted.items():
        if t not in integral:
            continue
        for support in swap_supports(t, terms[t], reactions or {}):
            if np.flatnonzero(c).tolist() == support:
                continue
            coef = {s: v.copy() for s, v in fitted.items()}
            coef[t] = integral[t].lstsq(support)[0]
            if not np.all(np.isfinite(coef[t][support])) or np.any(coef[t][support] == 0):
                continue
            kept = {s: cs for s, cs in constants.items() if s != t}
            out.append(Candidate(coef, "swap", info={"swapped": t}, constants=kept))
    return out


def single_term_swaps(
    best: Scored, terms: dict[str, list[Term]], screen: dict[str, IntegralProblem]
) -> list[Candidate]:
    """``best`` with one target's support replaced by each of its library's terms alone that
    it does not hold already, the term's coefficient and constants solved on the screen
    (``screen``: the integral-matching problems the candidates came from,
    :meth:`~ude.distill.integral.IntegralProblem.refine`), the other targets at their
    refitted values, refitted from the trained model's initial states as the screen's
    candidates are.

    The selection's last resort where every first candidate failed or was refused
    (:class:`ude.distill.selection.TrajectorySelector`'s ``single``): the screen's paths all
    grew from its best single term, and where that term's refit cannot solve, every
    candidate holding it fails with it. Goldbeter at seed 5 of the calibration suite (the
    hybrid trained to NMSE 0.94, the screen ran along the smoothed data): every first
    candidate held a Hill switch of ``X`` with ``n`` 15 fitted to the smoothed spikes, and
    none solved; the first-order swaps left ``c*C``, 333 units behind the true
    ``c*C*X/(K + C)``, which the screen ranked seventh of the single terms."""
    fitted, constants = refitted_coef(best), refitted_constants(best)
    out = []
    for t, c in fitted.items():
        if t not in screen or not screen[t].X:
            continue
        for j in range(len(terms[t])):
            if np.flatnonzero(c).tolist() == [j]:
                continue
            solved, _, found = screen[t].refine([j])
            if not np.isfinite(solved[j]) or solved[j] == 0:
                continue
            coef = {s: v.copy() for s, v in fitted.items()}
            coef[t] = np.asarray(solved, dtype=float).copy()
            kept = {s: cs for s, cs in constants.items() if s != t}
            kept[t] = {i: dict(v) for i, v in found.items()}
            out.append(Candidate(coef, "single", info={"swapped": t}, constants=kept))
    return out


def _variables(term: Term) -> set[sp.Symbol]:
    """The variables ``term`` is written over (its constants left out)."""
    return term.expr.free_symbols - {sp.Symbol(k) for k in term.constants}


def siblings(j: int, terms: list[Term]) -> list[int]:
    """The indices in ``terms`` of ``terms[j]``'s siblings: the same law (family and
    constants) over other variables, one of its variables replaced by another input or two
    of them exchanged (``M*X/(K + M)``: ``C*X/(C + K)``, ``C*M/(K + M)``, ``M*X/(K + X)``),
    and for a mass-action term one factor replaced by another input (``y**2``: ``x*y``;
    ``x*y``: ``x**2``, ``y**2``). Lotka-Volterra's prey trained 30 epochs on 20 noisy points
    (x, y declared amounts): every candidate's prey term was ``-c*y**2``, refused for taking
    prey away where there is none, and its sibling the true ``-c*x*y`` (41 units ahead of the
    twin chosen without it) was never refitted."""
    term = terms[j]
    own = sorted(_variables(term), key=str)
    inputs = sorted(set().union(*(_variables(t) for t in terms)), key=str)
    index = {(t.family, t.expr): k for k, t in enumerate(terms)}
    maps = [{v: w} for v in own for w in inputs if w not in own]
    maps += [{a: b, b: a} for i, a in enumerate(own) for b in own[i + 1 :]]
    exprs = [term.expr.xreplace(m) for m in maps]
    if term.law is None:  # a monomial: one factor at a time
        exprs += [term.expr * w / v for v in own for w in inputs if w != v]
    out = []
    for expr in exprs:
        k = index.get((term.family, expr))
        if k is not None and k != j and k not in out:
            out.append(k)
    return out


def saturations(j: int, terms: list[Term]) -> list[int]:
    """The indices in ``terms`` of the saturating forms of the monomial ``terms[j]``: the
    same product with one of its variables saturating, ``x*y``: ``x*y/(K + x)`` and
    ``x*y/(K + y)`` (none for a term that has a law already).

    A search that found a rate's variables but not its saturation stops there: the refit
    only moves coefficients, and the saturating law is another library term whose first move
    (add it beside the monomial) does not pay its way through the criterion. Goldbeter with 4
    conditions settled on ``-12.2*C*X``, a dead oscillator, while the true
    ``-vd*C*X/(Kd + C)``, refitted by the benchmark's oracle, was 1,300 units ahead."""
    term = terms[j]
    if term.law is not None:
        return []
    out = []
    for k, other in enumerate(terms):
        law = other.law
        if law is None or law.kind != "saturation":
            continue
        factor = sp.Symbol(law.factor) if law.factor else sp.Integer(1)
        if sp.Symbol(law.variable) * factor == term.expr:
            out.append(k)
    return out


@lru_cache(maxsize=4096)
def _stops_at_zero(
    expr: sp.Expr, base: sp.Expr, state: sp.Symbol, constants: frozenset[sp.Symbol]
) -> bool:
    """Whether ``expr`` is ``base`` times a factor of ``state`` alone (and the ``constants``)
    that is zero where ``state`` is. Cached: the structure bootstrap replays the selection on
    every resample and asks again for the same pairs, and sympy's ``simplify`` is most of
    its cost (Goldbeter with 8 conditions: 79 s of a 402 s distillation under cProfile)."""
    ratio = sp.simplify(expr / base)
    if not ratio.free_symbols <= {state, *constants}:
        return False
    return bool(ratio.xreplace({state: sp.Integer(0)}).is_zero)


def vanishing_forms(j: int, terms: list[Term], state: str) -> list[int]:
    """The indices in ``terms`` of ``terms[j]`` times a factor of ``state`` alone that is
    zero where ``state`` is (``state`` itself, a saturation ``state/(K + state)``, a Hill
    activation), and the term's law moved onto ``state`` with its old variable as a factor
    (``X/(K + X)``: ``X*C/(K + C)``): the forms of the term that stop where there is none of
    ``state`` (``X``: ``C*X``, ``C*X/(C + K)``)."""
    s = sp.Symbol(state)
    base = terms[j].expr
    out = []
    for k, term in enumerate(terms):
        if k == j or s not in term.expr.free_symbols or s in base.free_symbols:
            continue
        if _stops_at_zero(term.expr, base, s, frozenset(map(sp.Symbol, term.constants))):
            out.append(k)
    # the law moved onto the state, its old variable a factor: X/(K + X) -> X*C/(K + C)
    index = {t.expr: k for k, t in enumerate(terms)}
    for v in _variables(terms[j]):
        k = index.get(sp.expand(v * base.xreplace({v: s}))) or index.get(v * base.xreplace({v: s}))
        if k is not None and k != j and k not in out:
            out.append(k)
    return out


def sibling_swaps(
    best: Scored,
    terms: dict[str, list[Term]],
    along: dict[str, IntegralProblem],
    repair: bool = False,
) -> list[Candidate]:
    """``best`` with one term of one target replaced by each of its :func:`siblings` that the
    target does not hold already, the new term's coefficient and constants matched to the
    replaced term's values (refitted coefficient and constants) along ``best``'s refitted
    trajectory (``along``: its integral problems, whose inputs ``X`` sample it), the rest at
    their refitted values, refitted from ``best``'s fitted initial states.

    A search that found the right law over the wrong variable stops there: the same law over
    the right one is two moves away (add it, then remove the other), and the added term does
    not pay its way through the criterion in between. Goldbeter's cyclin degradation
    ``-vd*X*C/(Kd + C)`` at 10 % noise: the twin chosen was ``c*M*X/(K + M)``, 0.3 units
    behind the truth. The start is the sibling closest to what it replaces, so that the refit
    begins from the best's dynamics: the same support refitted from the screen's constants or
    the integral-matching coefficients stopped at a trajectory NMSE of 0.57 (against 0.047).

    ``repair`` (``best`` refused for driving its target below zero where it is zero:
    :mod:`ude.distill.admissible`): each term's :func:`vanishing_forms` over the target's own
    state too, in its place."""
    fitted, constants = refitted_coef(best), refitted_constants(best)
    start = moved_from(best)
    out = []
    for t, c in fitted.items():
        if t not in along or not along[t].X:
            continue
        problem, library = along[t], terms[t]
        held = np.flatnonzero(c).tolist()
        for j in held:
            old = library[j]
            replaced = c[j] * old.numeric(constants.get(t, {}).get(j, problem.constants.get(j)))
            kin = siblings(j, library)
            if repair:
                kin += [k for k in vanishing_forms(j, library, t) if k not in kin]
            for k in kin:
                if k in held:
                    continue
                first = {**library[k].constants, **problem.constants.get(k, {})}
                if repair:  # the screen's constants, the coefficient matched
                    value, matched = match_term(
                        Term(library[k].numeric(first)), {}, replaced, problem.X
                    )
                    matched = dict(first)
                else:
                    value, matched = match_term(library[k], first, replaced, problem.X)
                if not np.isfinite(value) or value == 0:
                    continue
                coef = {s: v.copy() for s, v in fitted.items()}
                coef[t][j], coef[t][k] = 0.0, value
                kept = {s: {i: dict(v) for i, v in cs.items()} for s, cs in constants.items()}
                kept.setdefault(t, {}).pop(j, None)
                if matched:
                    kept[t][k] = matched
                info = {**start, "swapped": t, "sibling_of": old.name}
                out.append(Candidate(coef, "sibling", info=info, constants=kept))
    return out


SATURATION_GAIN = TIE
"""Screen units by which a monomial's saturating form must beat the target's support it
replaces before it is refitted (:func:`saturating_swaps`): a saturation whose ``K`` changes
the integral match by less than a tie is the monomial again (``K`` far above the data) or a
worse law, and its refit through the ODE costs as much as any. Goldbeter with 4 conditions:
the true ``-vd*C*X/(Kd + C)`` gained 24.4 on the dead oscillator ``-12.2*C*X`` (another form
19.4); the one that gained -1.7 ended 1,331 units behind. Lotka-Volterra with a third of y
unmeasured: 23 of the 24 saturating refits had gained less than 1 (-50 to 0.7). Yeast
glycolysis with 8 conditions: 18 of 21 had gained less than 2 (-185 to -0.96; the nearest
ended 16.9 units behind the twin), and the other three failed to solve."""


def saturating_swaps(
    best: Scored,
    terms: dict[str, list[Term]],
    screen: dict[str, IntegralProblem],
    gain: float = SATURATION_GAIN,
) -> list[Candidate]:
    """``best`` with one monomial of one target replaced by each of its :func:`saturations`
    that the target does not hold, that target's terms solved again on the screen
    (``screen``: the integral-matching problems the candidates came from, with the
    saturation's ``K`` fitted jointly: :meth:`ude.distill.integral.IntegralProblem.refine`),
    the other targets at their refitted values, refitted from ``best``'s fitted initial
    states; ``info["saturates"]`` marks them. Only the forms whose screen criterion is more
    than ``gain`` below that of the target's support in ``best`` (its constants fitted too):
    :data:`SATURATION_GAIN`.

    The start is the screen's, not the best's dynamics: along a best that is far from the
    data (Goldbeter's dead oscillator ``-12.2*C*X``) the saturation matched to the monomial
    is the monomial again (``K`` at the top of its range) and its refit stayed there
    (``-5.01*C*X/(C + 0.0017)``, 1,305 units behind the truth); the same support solved on the
    screen and refitted from the best's initial states is the truth's refit."""
    fitted, constants = refitted_coef(best), refitted_constants(best)
    start = moved_from(best)
    out = []
    for t, c in fitted.items():
        if t not in screen or not screen[t].X:
            continue
        library = terms[t]
        held = np.flatnonzero(c).tolist()
        own = screen[t].refine(held)[1]
        for j in held:
            for k in saturations(j, library):
                if k in held:
                    continue
                support = sorted({*held, k} - {j})
                solved, crit, found = screen[t].refine(support)
                if not np.all(np.isfinite(solved)) or solved[k] == 0 or own - crit <= gain:
                    continue
                coef = {s: v.copy() for s, v in fitted.items()}
                coef[t] = np.asarray(solved, dtype=float).copy()
                kept = {s: {i: dict(v) for i, v in cs.items()} for s, cs in constants.items()}
                kept[t] = {i: dict(v) for i, v in found.items()}
                info = {**start, "swapped": t, "sibling_of": library[j].name, "saturates": True}
                out.append(Candidate(coef, "sibling", info=info, constants=kept))
    return out
