"""First-order swaps (ude/distill/swaps.py): each input alone and the constant are refitted
in place of a target's support, whatever the screen says of them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ude.distill import Candidate, TrajectorySelector
from ude.distill.integral import IntegralProblem
from ude.distill.library import slot_library
from ude.distill.refit import RefitResult
from ude.distill.selection import Scored
from ude.distill.swaps import (
    first_order,
    first_order_swaps,
    mass_action_support,
    saturating_swaps,
    saturations,
    sibling_swaps,
    siblings,
    single_term_swaps,
)
from ude.spec.reactions import parse_reaction


def test_first_order_terms_are_the_inputs_alone_and_the_constant():
    lib = slot_library(["constant", "mass_action", "michaelis_menten", "hill"], ["x", "y"])
    lib.fit(["x", "y"])
    names = [t.name for t in lib.terms_ if first_order(t)]
    assert sorted(names) == ["1", "x", "y"]


def _library_xyz():
    lib = slot_library(["constant", "mass_action", "michaelis_menten", "hill"], ["x", "y", "z"])
    return lib.fit(["x", "y", "z"]).terms_


def _scored(coef: dict[str, np.ndarray]) -> Scored:
    cand = Candidate(coef, "test", info={"owner": {}})
    return Scored(cand, RefitResult(None, {}, 1e-2, 60, True, 0), 0.0, 1)


def test_a_swap_replaces_one_target_by_a_first_order_term_fitted_by_integral_matching():
    """Target ``a`` holds ``x*y``; its swaps are ``1``, ``x`` and ``y`` alone, each at the
    integral least-squares coefficient; target ``b`` keeps its refitted coefficients."""
    lib = slot_library(["constant", "mass_action"], ["x", "y"]).fit(["x", "y"])
    names = [t.name for t in lib.terms_]
    rng = np.random.default_rng(0)
    F = rng.uniform(0.5, 2.0, (40, len(names)))
    y = -1.3 * F[:, names.index("x")]
    problem = IntegralProblem(F, y, np.zeros(40, dtype=int), names, True)
    coef_a, coef_b = np.zeros(len(names)), np.zeros(len(names))
    coef_a[names.index("x*y")] = 0.4
    coef_b[names.index("y")] = 2.0
    best = _scored({"a": coef_a, "b": coef_b})
    swaps = first_order_swaps(best, {"a": lib.terms_, "b": lib.terms_}, {"a": problem})
    supports = sorted(names[int(np.flatnonzero(c.coef["a"])[0])] for c in swaps)
    assert supports == ["1", "x", "y"]  # b has no integral problem: not swapped
    for c in swaps:
        assert c.origin == "swap" and c.info["swapped"] == "a"
        assert np.count_nonzero(c.coef["a"]) == 1
        np.testing.assert_array_equal(c.coef["b"], coef_b)
    x_alone = next(c for c in swaps if c.coef["a"][names.index("x")] != 0)
    np.testing.assert_allclose(x_alone.coef["a"][names.index("x")], -1.3, rtol=1e-10)


def _binding(arrow: str = "<->"):
    """The enzyme's neural binding step and a mass-action library over its species."""
    species = ["S", "E", "C", "P"]
    reaction = parse_reaction(
        f"binding: E + S {arrow} C; neural", 0, species=species, names=species, parameters=[]
    )
    lib = slot_library(["constant", "mass_action"], species).fit(species)
    return reaction, lib.terms_, [t.name for t in lib.terms_]


def test_a_neural_reactions_mass_action_law_is_its_reactants_product_and_reverse_its_products():
    reaction, terms, names = _binding()
    assert [names[j] for j in mass_action_support(reaction, terms)] in (["E*S", "C"], ["C", "E*S"])
    irreversible, terms, names = _binding("->")
    assert [names[j] for j in mass_action_support(irreversible, terms)] == ["E*S"]
    # a library without the product cannot state the law
    assert mass_action_support(reaction, [t for t in terms if t.name != "E*S"]) is None


def test_a_neural_reaction_is_swapped_for_its_mass_action_law_fitted_by_integral_matching():
    """The binding flux held ``C*S`` (a wrong law); its swaps include the reaction's own
    ``kf*E*S - kr*C``, both coefficients from integral matching, and its forward part
    ``kf*E*S`` alone, besides the first-order terms; a target that is no reaction gets the
    first-order swaps only."""
    reaction, terms, names = _binding()
    rng = np.random.default_rng(1)
    F = rng.uniform(0.5, 2.0, (60, len(names)))
    y = 1.0 * F[:, names.index("E*S")] - 0.5 * F[:, names.index("C")]
    problem = IntegralProblem(F, y, np.zeros(60, dtype=int), names, True)
    coef = np.zeros(len(names))
    coef[names.index("C*S")] = 0.9
    best = _scored({"binding": coef})
    swaps = first_order_swaps(best, {"binding": terms}, {"binding": problem}, {"binding": reaction})
    supports = {tuple(sorted(names[j] for j in np.flatnonzero(c.coef["binding"]))) for c in swaps}
    assert supports == {("1",), ("S",), ("E",), ("C",), ("P",), ("C", "E*S"), ("E*S",)}
    law = next(c for c in swaps if np.count_nonzero(c.coef["binding"]) == 2)
    np.testing.assert_allclose(law.coef["binding"][names.index("E*S")], 1.0, rtol=1e-10)
    np.testing.assert_allclose(law.coef["binding"][names.index("C")], -0.5, rtol=1e-10)
    plain = first_order_swaps(best, {"binding": terms}, {"binding": problem})
    assert all(np.count_nonzero(c.coef["binding"]) == 1 for c in plain)


def _selection(
    swaps: int,
    screens: dict[int, float],
    refused: tuple[int, ...] = (),
    singles: tuple[int, ...] | None = None,
) -> tuple[list[tuple[int, ...]], Scored]:
    """A one-target selection over 6 terms whose truth is term 5 alone: the path proposes
    only 0 and 1; the swap proposes 2, 3, 5 (first order) with the given screens; the
    supports in ``refused`` solve but are refused (ude.distill.admissible); ``singles``: the
    terms the screen's single-term swaps propose (None: no such move)."""

    def cand(support: list[int], origin: str = "path") -> Candidate:
        coef = np.zeros(6)
        coef[support] = 1.0
        info = {"screen": screens.get(support[0], 0.0), "swapped": "x"}
        return Candidate({"x": coef}, origin, info=info)

    refitted = []

    def refit(c: Candidate):
        support = tuple(int(j) for j in np.flatnonzero(c.coef["x"]))
        refitted.append(support)
        nmse = {(5,): 1e-3}.get(support, 5e-3)
        if support[0] in refused:
            return RefitResult(None, {}, np.inf, 60, False, 0, refused="dx/dt < 0 at x = 0"), 1
        return RefitResult(None, {}, nmse, 60, True, 0), c.n_terms

    def screen(c: Candidate, around) -> float:
        return screens.get(int(np.flatnonzero(c.coef["x"])[0]), 0.0)

    selector = TrajectorySelector(grow=False, max_refits=2, swaps=swaps, margin=10.0)
    chosen, _ = selector.select(
        [cand([0]), cand([1])],
        refit,
        screen,
        swap=lambda best: [cand([j], "swap") for j in (2, 3, 5)],
        single=None if singles is None else lambda best: [cand([j], "single") for j in singles],
    )
    return refitted, chosen


def test_every_first_order_swap_is_refitted_past_the_refit_budget_whatever_its_screen():
    """The truth (5) screens 40 units behind the best: the swaps are refitted all the same,
    best-screened first, beyond the budget of 2 the path spent, and the truth is chosen."""
    refitted, chosen = _selection(12, {0: 0.0, 1: 1.0, 2: 30.0, 3: 2.0, 5: 40.0})
    assert refitted == [(0,), (1,), (3,), (2,), (5,)]
    assert chosen.step == "swap"
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [5]


def test_the_swaps_per_target_are_capped_best_screened_first_and_0_turns_them_off():
    refitted, chosen = _selection(2, {0: 0.0, 1: 1.0, 2: 30.0, 3: 2.0, 5: 40.0})
    assert refitted == [(0,), (1,), (3,), (2,)]
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [0]
    refitted, _ = _selection(0, {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 5: 4.0})
    assert refitted == [(0,), (1,)]


def test_when_every_first_candidate_is_refused_the_swaps_are_still_refitted():
    """Every candidate of the path drives a state below zero: the selection does not give up
    (no twin) but refits the first one's swaps, and chooses among them."""
    refitted, chosen = _selection(12, {0: 0.0, 1: 1.0, 2: 30.0, 3: 2.0, 5: 40.0}, (0, 1, 3))
    assert refitted[:2] == [(0,), (1,)] and set(refitted[2:]) == {(2,), (3,), (5,)}
    assert chosen.step == "swap"
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [5]


def test_when_every_first_candidate_fails_the_screens_single_terms_are_refitted_too():
    """Every path candidate is refused, and so is every term but the truth (5). The
    single-term swaps (4, not first order) are refitted beside the first-order swaps (2, 3,
    5), best-screened first and at most ``swaps`` per target, a support the swaps refit not
    a second time; with a first candidate that solves they are not refitted at all."""
    screens = {0: 0.0, 1: 1.0, 2: 30.0, 3: 2.0, 4: 3.0, 5: 40.0}
    refitted, chosen = _selection(12, screens, (0, 1, 2, 3, 4), singles=(2, 4, 5))
    assert refitted[:2] == [(0,), (1,)] and sorted(refitted[2:]) == [(2,), (3,), (4,), (5,)]
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [5]
    refitted, chosen = _selection(12, screens, (0, 1, 2, 3, 5), singles=(4,))
    assert chosen.step == "single"  # the only term that solves is a single's
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [4]
    refitted, _ = _selection(1, screens, (0, 1, 2, 3), singles=(5, 4))
    assert refitted[2:4] == [(3,), (4,)]  # one swap and one single, each the best-screened
    refitted, chosen = _selection(12, screens, (0, 2, 3, 4), singles=(4, 5))
    assert (4,) not in refitted and chosen.step == "swap"  # term 1 solved: no singles


def _saturating_screen() -> tuple[list, list[str], IntegralProblem]:
    """A screen along data whose rate is ``-0.25*x*y/(0.02 + x)``, over a library of mass
    action and saturations in x and y (the rates matched themselves: the integral's weights
    are not tested): the library's terms, their names and the fitted problem."""
    lib = slot_library(["constant", "mass_action", "michaelis_menten"], ["x", "y"])
    lib.fit(["x", "y"])
    terms, names = lib.terms_, lib.get_feature_names()
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.005, 0.5, 120), rng.uniform(0.1, 1.0, 120)
    screen = IntegralProblem(
        F=lib.transform(np.column_stack([x, y])),
        y=-0.25 * x * y / (0.02 + x),
        condition=np.zeros(120, dtype=int),
        terms=names,
        from_data=True,
        W=np.eye(120),
        X={"x": x, "y": y},
        laws={j: t for j, t in enumerate(terms) if t.law is not None},
    ).fit_constants()
    return terms, names, screen


def test_a_single_term_swap_is_one_library_term_solved_on_the_screen_with_its_constants():
    """Along the data the rate is ``-0.25*x*y/(0.02 + x)``; the best (its refit failed) holds
    ``x*y``. Each library term alone replaces it, at the screen's coefficient and fitted
    constants; target ``b`` keeps its coefficients."""
    terms, names, screen = _saturating_screen()
    coef_a, coef_b = np.zeros(len(names)), np.zeros(len(names))
    coef_a[names.index("x*y")] = -12.0
    coef_b[names.index("y")] = 2.0
    best = _scored({"a": coef_a, "b": coef_b})
    found = single_term_swaps(best, {"a": terms, "b": terms}, {"a": screen})
    held = {names[int(np.flatnonzero(c.coef["a"])[0])]: c for c in found}
    assert all(np.count_nonzero(c.coef["a"]) == 1 for c in found)
    assert set(held) == set(names) - {"x*y"}
    truth = held["x*y/(K + x)"]
    k = names.index("x*y/(K + x)")
    assert truth.constants["a"][k]["K"] == pytest.approx(0.02, rel=0.05)
    assert truth.coef["a"][k] == pytest.approx(-0.25, rel=0.05)
    assert truth.origin == "single" and truth.info["swapped"] == "a"
    for c in found:
        np.testing.assert_array_equal(c.coef["b"], coef_b)


def test_a_swap_whose_support_is_also_a_removal_is_refitted_from_its_own_start_too():
    """The best holds terms 0 and 5; removing 0 leaves the truth (5) alone, and so does the
    swap of 5. Refitted from the best's values (the removal) it stops in a poor basin; from
    the swap's start it reaches the optimum: both refits run, and the better one is kept."""

    def cand(support: list[int], origin: str = "path") -> Candidate:
        coef = np.zeros(6)
        coef[support] = 1.0
        return Candidate({"x": coef}, origin, info={"screen": 0.0, "swapped": "x"})

    refitted = []

    def refit(c: Candidate):
        support = tuple(int(j) for j in np.flatnonzero(c.coef["x"]))
        refitted.append((support, c.origin))
        nmse = {((0, 5), "path"): 2e-3, ((5,), "swap"): 1e-3}.get((support, c.origin), 5e-3)
        return RefitResult(None, {}, nmse, 60, True, 0), c.n_terms

    selector = TrajectorySelector(grow=False, max_refits=5, swaps=12)
    chosen, path = selector.select(
        [cand([0, 5])], refit, swap=lambda best: [cand([j], "swap") for j in (2, 5)]
    )
    assert ((5,), "prune") in refitted and ((5,), "swap") in refitted
    assert refitted.index(((5,), "prune")) < refitted.index(((5,), "swap"))
    assert chosen.step == "swap"
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [5]
    assert [tuple(np.flatnonzero(s.candidate.coef["x"])) for s in path].count((5,)) == 1


def _reswap_selection(
    reswap: bool, reswaps: int = 4, stopped: float = 8e-3
) -> tuple[list, Scored, list[Scored]]:
    """A one-target selection whose truth (term 5 alone) refits well only from the settled
    best's fitted initial states, as with a species no data measure: from the trained
    model's states (a swap's start) it stops behind the best (term 0), at NMSE ``stopped``
    (the best's 3e-3: 8e-3 is 59 criterion units behind it, 3.2e-3 is 3.9)."""
    fitted = SimpleNamespace(initial=torch.tensor([[0.7, 0.3]]))

    def cand(support: list[int], origin: str = "path") -> Candidate:
        coef = np.zeros(6)
        coef[support] = 1.0
        return Candidate({"x": coef}, origin, info={"screen": float(support[0]), "swapped": "x"})

    refitted = []

    def refit(c: Candidate):
        support = tuple(int(j) for j in np.flatnonzero(c.coef["x"]))
        from_best = "initial" in c.info
        refitted.append((support, from_best))
        nmse = {(0,): 3e-3, (5,): 1e-3 if from_best else stopped}.get(support, 5e-3)
        return RefitResult(fitted, {}, nmse, 60, True, 0), c.n_terms

    selector = TrajectorySelector(grow=False, prune=False, max_refits=2, reswaps=reswaps)
    chosen, path = selector.select(
        [cand([0]), cand([1])],
        refit,
        swap=lambda best: [cand([j], "swap") for j in (2, 3, 5)],
        reswap=reswap,
    )
    return refitted, chosen, path


def test_with_an_unmeasured_species_the_settled_bests_swaps_are_refitted_from_its_states():
    """The swaps' first refits start from the trained model's states: the truth (5) stops
    behind the best. Once the search settles, each swap is refitted again from the best's
    fitted initial states, once for each best; the truth then wins and the path keeps its
    better refit."""
    refitted, chosen, path = _reswap_selection(True)
    assert ((5,), False) in refitted and ((5,), True) in refitted
    assert refitted.index(((5,), False)) < refitted.index(((5,), True))
    # once from each best's states: term 2 from term 0's, then from the truth's
    assert refitted.count(((5,), True)) == 1 and refitted.count(((2,), True)) == 2
    assert chosen.step == "reswap"
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [5]
    assert [tuple(np.flatnonzero(s.candidate.coef["x"])) for s in path].count((5,)) == 1


def test_reswaps_far_behind_run_only_with_an_unmeasured_species_and_0_turns_them_off():
    for reswap, reswaps in ((False, 4), (True, 0)):
        refitted, chosen, _ = _reswap_selection(reswap, reswaps)
        assert not any(from_best for _, from_best in refitted)
        assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [0]
    refitted, _, _ = _reswap_selection(True, 1)  # the best-screened swap only (2 of 2, 3, 5)
    assert [s for s, from_best in refitted if from_best] == [(2,)]


def test_with_every_species_measured_only_the_swaps_near_the_best_are_refitted_from_its_states():
    """Without an unmeasured species, a swap whose first refit stopped within the tolerance
    of the settled best (the truth, 3.9 units behind) is refitted again from the best's
    states and wins; the swaps far behind (2 and 3, 31 units) are not."""
    refitted, chosen, _ = _reswap_selection(False, stopped=3.2e-3)
    assert [s for s, from_best in refitted if from_best] == [(5,)]
    assert chosen.step == "reswap"
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [5]


def test_a_terms_siblings_are_its_law_over_other_variables():
    terms = _library_xyz()
    names = [t.name for t in terms]

    def kin(name: str) -> set[str]:
        return {names[k] for k in siblings(names.index(name), terms)}

    assert kin("x*y/(K + y)") == {"x*z/(K + z)", "y*z/(K + y)", "x*y/(K + x)"}
    # a monomial also one factor at a time: y**2 -> x*y (Lotka-Volterra's prey)
    assert kin("x*y") == {"x*z", "y*z", "x**2", "y**2"}
    assert kin("y**2") == {"x**2", "z**2", "x*y", "y*z"}
    assert kin("x") == {"y", "z"}
    assert kin("x**n/(K**n + x**n)") == {"y**n/(K**n + y**n)", "z**n/(K**n + z**n)"}
    assert kin("1") == set()


def test_a_sibling_swap_starts_matched_to_the_term_it_replaces_along_the_trajectory():
    """Target ``a`` holds ``-0.7*x`` and ``1.1*x*y/(0.3 + y)`` (refitted values); along the
    trajectory z equals y. Each sibling of either term replaces it, matched to its values:
    ``x*z/(K + z)`` starts at 1.1 with K 0.3; the other term keeps its refitted coefficient
    and constant; target ``b`` is untouched."""
    terms = _library_xyz()
    names = [t.name for t in terms]
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0.5, 2.0, 80), rng.uniform(0.1, 3.0, 80)
    X = {"x": x, "y": y, "z": y.copy()}
    F = np.ones((80, len(names)))  # the coefficients do not come from the integral fit
    along = IntegralProblem(F, np.zeros(80), np.zeros(80, dtype=int), names, True, X=X)
    sat = names.index("x*y/(K + y)")
    coef_a, coef_b = np.zeros(len(names)), np.zeros(len(names))
    coef_a[[names.index("x"), sat]] = [-0.7, 1.1]
    coef_b[names.index("y")] = 2.0
    best = _scored({"a": coef_a, "b": coef_b})
    best.candidate.constants = {"a": {sat: {"K": 0.3}}, "b": {}}
    found = sibling_swaps(best, {"a": terms, "b": terms}, {"a": along})
    held = {tuple(names[j] for j in np.flatnonzero(c.coef["a"])): c for c in found}
    assert set(held) == {
        ("y", "x*y/(K + y)"),
        ("z", "x*y/(K + y)"),
        ("x", "x*z/(K + z)"),
        ("x", "y*z/(K + y)"),
        ("x", "x*y/(K + x)"),
    }
    twin = held[("x", "x*z/(K + z)")]
    new = names.index("x*z/(K + z)")
    assert twin.coef["a"][new] == pytest.approx(1.1, rel=1e-4)
    assert twin.constants["a"][new]["K"] == pytest.approx(0.3, rel=1e-3)
    assert twin.coef["a"][names.index("x")] == -0.7 and sat not in twin.constants["a"]
    kept = held[("z", "x*y/(K + y)")]
    assert kept.coef["a"][sat] == 1.1 and kept.constants["a"] == {sat: {"K": 0.3}}
    for c in found:
        assert c.origin == "sibling" and c.info["swapped"] == "a"
        np.testing.assert_array_equal(c.coef["b"], coef_b)


def test_a_monomials_saturating_forms_are_the_same_product_with_one_variable_saturating():
    terms = _library_xyz()
    names = [t.name for t in terms]

    def forms(name: str) -> set[str]:
        return {names[k] for k in saturations(names.index(name), terms)}

    assert forms("x*y") == {"x*y/(K + x)", "x*y/(K + y)"}
    assert forms("x") == {"x/(K + x)"}
    assert forms("1") == set()
    assert forms("x*y/(K + y)") == set()  # a law already: no saturation of it
    assert forms("x**n/(K**n + x**n)") == set()


def test_a_saturating_swap_starts_from_the_screens_solution_with_its_constant_fitted():
    """Along the data, target ``a``'s missing rate is ``-0.25*x*y/(0.02 + x)``; the best
    holds ``-12*x*y`` (a dead oscillator's rate, refitted far from the data). Its saturating
    form in x starts where the screen puts it, K near 0.02 and the coefficient near -0.25,
    not at the monomial it replaces; target ``b`` keeps its refitted coefficients, and the
    start is the best's fitted initial states."""
    terms, names, screen = _saturating_screen()
    coef_a, coef_b = np.zeros(len(names)), np.zeros(len(names))
    coef_a[names.index("x*y")] = -12.0
    coef_b[names.index("y")] = 2.0
    best = _scored({"a": coef_a, "b": coef_b})
    found = saturating_swaps(best, {"a": terms, "b": terms}, {"a": screen})
    held = {tuple(names[j] for j in np.flatnonzero(c.coef["a"])): c for c in found}
    assert set(held) == {("x*y/(K + x)",)}  # saturating in y matches no better: not refitted
    twin = held[("x*y/(K + x)",)]
    k = names.index("x*y/(K + x)")
    assert twin.constants["a"][k]["K"] == pytest.approx(0.02, rel=0.05)
    assert twin.coef["a"][k] == pytest.approx(-0.25, rel=0.05)
    assert twin.info["saturates"] and twin.info["swapped"] == "a"
    np.testing.assert_array_equal(twin.coef["b"], coef_b)
    assert saturating_swaps(best, {"a": terms, "b": terms}, {}) == []


def test_saturating_forms_have_their_own_allowance_beside_the_siblings():
    """The best (term 0) has three siblings (1, 2, 3) and one saturating form (4, the truth,
    screening last). With one sibling per target the saturating form is still refitted, and
    chosen."""

    def cand(j: int, origin: str = "path", saturates: bool = False) -> Candidate:
        coef = np.zeros(5)
        coef[j] = 1.0
        info = {"swapped": "x", **({"saturates": True} if saturates else {})}
        return Candidate({"x": coef}, origin, info=info)

    refitted = []

    def refit(c: Candidate):
        j = int(np.flatnonzero(c.coef["x"])[0])
        refitted.append(j)
        return RefitResult(None, {}, {4: 1e-3, 0: 3e-3}.get(j, 5e-3), 60, True, 0), 1

    def sibling(best: Scored) -> list[Candidate]:
        if np.flatnonzero(best.candidate.coef["x"]).tolist() != [0]:
            return []
        return [cand(j, "sibling") for j in (1, 2, 3)] + [cand(4, "sibling", saturates=True)]

    selector = TrajectorySelector(grow=False, max_refits=1, swaps=0, siblings=1, rescreen=False)
    chosen, _ = selector.select(
        [cand(0)], refit, lambda c, around: float(np.flatnonzero(c.coef["x"])[0]), sibling=sibling
    )
    assert refitted == [0, 1, 4]
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [4]


def test_each_new_bests_siblings_are_refitted_past_the_budget_best_screened_first():
    """The path's best is term 0; its siblings are 2, 3 and 4, the truth (4) screening last:
    with two siblings per target the truth is never refitted, with three it is, chosen, and
    its own siblings (5) are refitted in turn; with none only the path runs."""

    def cand(j: int, origin: str = "path") -> Candidate:
        coef = np.zeros(6)
        coef[j] = 1.0
        return Candidate({"x": coef}, origin, info={"swapped": "x"})

    kin = {0: (2, 3, 4), 4: (5, 0)}
    screens = {0: 0.0, 2: 1.0, 3: 2.0, 4: 3.0, 5: 0.5}

    def run(n: int) -> tuple[list[int], Scored]:
        refitted = []

        def refit(c: Candidate):
            j = int(np.flatnonzero(c.coef["x"])[0])
            refitted.append(j)
            return RefitResult(None, {}, {4: 1e-3, 0: 3e-3}.get(j, 5e-3), 60, True, 0), 1

        selector = TrajectorySelector(grow=False, max_refits=1, swaps=0, siblings=n, rescreen=False)
        held = lambda c: int(np.flatnonzero(c.coef["x"])[0])  # noqa: E731
        chosen, _ = selector.select(
            [cand(0)],
            refit,
            lambda c, around: screens[held(c)],
            sibling=lambda best: [cand(j, "sibling") for j in kin.get(held(best.candidate), ())],
        )
        return refitted, chosen

    refitted, chosen = run(3)
    assert refitted == [0, 2, 3, 4, 5]
    assert chosen.step == "sibling" and np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [4]
    refitted, chosen = run(2)
    assert refitted == [0, 2, 3] and chosen.step == "path"
    assert run(0)[0] == [0]


def test_once_settled_the_siblings_of_structures_within_tolerance_of_the_best_are_refitted():
    """The path refits terms 0 (the best) and 1, 1.97 units behind it (within the 6 of the
    tolerance); 0's sibling is 2, 1's is 3, the truth. With rivals the settled search refits
    1's siblings from 1's values (the callback is handed 1) and chooses 3; with rivals=0 the
    truth is never refitted, and a rival outside the tolerance is not one."""

    def cand(j: int, origin: str = "path") -> Candidate:
        coef = np.zeros(4)
        coef[j] = 1.0
        return Candidate({"x": coef}, origin, info={"swapped": "x"})

    held = lambda c: int(np.flatnonzero(c.coef["x"])[0])  # noqa: E731
    kin = {0: (2,), 1: (3,)}

    def run(rivals: int, second: float = 3.1e-3) -> tuple[list[int], list[int], Scored]:
        refitted, asked = [], []
        nmse = {0: 3e-3, 1: second, 2: 5e-3, 3: 1e-3}

        def refit(c: Candidate):
            refitted.append(held(c))
            return RefitResult(None, {}, nmse[held(c)], 60, True, 0), 1

        def sibling(best: Scored) -> list[Candidate]:
            asked.append(held(best.candidate))
            return [cand(j, "sibling") for j in kin.get(held(best.candidate), ())]

        selector = TrajectorySelector(
            grow=False, prune=False, swaps=0, rescreen=False, rivals=rivals
        )
        chosen, _ = selector.select(
            [cand(0), cand(1)], refit, lambda c, around: 0.0, sibling=sibling
        )
        return refitted, asked, chosen

    refitted, asked, chosen = run(3)
    assert refitted == [0, 1, 2, 3] and asked[:2] == [0, 1]
    assert held(chosen.candidate) == 3 and chosen.step == "sibling"
    refitted, asked, chosen = run(0)
    assert refitted == [0, 1, 2] and asked == [0] and held(chosen.candidate) == 0
    refitted, _, chosen = run(3, second=9e-3)  # 66 units behind: not a rival
    assert refitted == [0, 1, 2] and held(chosen.candidate) == 0


def _refused_best(rivals: int) -> tuple[list[tuple[int, ...]], Scored]:
    """Term 1 would fit best but is refused (it drives x below zero where x is zero); term 4,
    its sibling, is the truth and fits as well; term 0 fits worse."""

    def cand(support: list[int], origin: str = "path") -> Candidate:
        coef = np.zeros(5)
        coef[support] = 1.0
        return Candidate({"x": coef}, origin, info={"swapped": "x"})

    refitted = []

    def refit(c: Candidate):
        support = tuple(int(j) for j in np.flatnonzero(c.coef["x"]))
        refitted.append(support)
        if support == (1,):
            refused = RefitResult(None, {}, np.inf, 60, False, 0, refused="dx/dt < 0 at x = 0")
            refused.refused_nmse = 1e-3
            return refused, 1
        return RefitResult(None, {}, {(4,): 1e-3}.get(support, 5e-3), 60, True, 0), 1

    def sibling(best: Scored) -> list[Candidate]:
        held = np.flatnonzero(best.candidate.coef["x"]).tolist()
        return [cand([4], "sibling")] if held == [1] else []

    selector = TrajectorySelector(grow=False, max_refits=2, swaps=0, rivals=rivals)
    chosen, _ = selector.select([cand([0]), cand([1])], refit, sibling=sibling)
    return refitted, chosen


def test_the_siblings_of_a_refused_candidate_that_would_fit_best_are_refitted():
    refitted, chosen = _refused_best(rivals=3)
    assert (4,) in refitted
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [4]
    refitted, chosen = _refused_best(rivals=0)  # rivals=0 turns it off, as for the rivals
    assert (4,) not in refitted
    assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [0]


def test_a_terms_forms_that_vanish_with_the_target_state():
    import sympy as sp

    from ude.distill.library import Term
    from ude.distill.swaps import vanishing_forms

    C, M, X, K = sp.symbols("C M X K")
    terms = [
        Term(X),
        Term(C * X),
        Term(C * X / (K + C), {"K": 1.0}, ("K",), "michaelis_menten"),
        Term(M * X / (K + M), {"K": 1.0}, ("K",), "michaelis_menten"),
        Term(X / (K + X), {"K": 1.0}, ("K",), "michaelis_menten"),
        Term(C**2),
        Term(sp.Integer(1)),
    ]
    assert vanishing_forms(0, terms, "C") == [1, 2]  # X: C*X, C*X/(K + C)
    assert vanishing_forms(6, terms, "C") == [5]  # the constant: C**2 (and no C alone here)
    assert vanishing_forms(1, terms, "C") == []  # C*X holds C already
    assert vanishing_forms(4, terms, "C") == [2]  # X/(K + X): its law on C, X a factor


def test_a_saturating_form_is_refitted_only_where_the_screen_gains_more_than_a_tie():
    """Along the data, target ``a``'s rate is the monomial ``-0.3*x*y`` the best holds: its
    saturating forms match it no better (``K`` far above the data) and are not refitted; with
    no gain asked they are."""
    lib = slot_library(["constant", "mass_action", "michaelis_menten"], ["x", "y"])
    lib.fit(["x", "y"])
    terms, names = lib.terms_, lib.get_feature_names()
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.005, 0.5, 120), rng.uniform(0.1, 1.0, 120)
    rate = -0.3 * x * y
    screen = IntegralProblem(
        F=lib.transform(np.column_stack([x, y])),
        y=rate + 0.01 * np.std(rate) * rng.standard_normal(120),
        condition=np.zeros(120, dtype=int),
        terms=names,
        from_data=True,
        W=np.eye(120),
        X={"x": x, "y": y},
        laws={j: t for j, t in enumerate(terms) if t.law is not None},
    ).fit_constants()
    coef = np.zeros(len(names))
    coef[names.index("x*y")] = -0.3
    best = _scored({"a": coef})
    assert saturating_swaps(best, {"a": terms}, {"a": screen}) == []
    assert len(saturating_swaps(best, {"a": terms}, {"a": screen}, gain=-np.inf)) == 2
