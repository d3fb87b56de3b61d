"""The truth as an oracle for a distillation of synthetic data (ude.distill.oracle)."""

from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp

from ude.distill.cli import oracle_clause
from ude.distill.library import slot_library
from ude.distill.oracle import form, true_support, verdict
from ude.spec.library_key import DEFAULT_FAMILIES
from ude.systems import get_system


def _library(families, inputs):
    """A slot's library over ``inputs`` and screen-fitted constants for its free terms (a
    Hill n of 9.6, K of 1.1: where the screen leaves Goodwin's repression)."""
    lib = slot_library(list(families), inputs)
    lib.fit(list(inputs))
    terms = list(lib.terms_)
    constants = {
        j: {c: {"K": 1.1, "n": 9.6}[c] for c in t.free} for j, t in enumerate(terms) if t.free
    }
    return terms, SimpleNamespace(constants=constants)


def _names(terms, support, integral):
    return [
        str(terms[j].numeric(integral.constants.get(j)) if terms[j].free else terms[j].numeric())
        for j in support
    ]


def test_a_hill_repression_is_found_in_the_library_whatever_its_fitted_n():
    goodwin = get_system("goodwin")  # x' = a/(1 + z**10) - b x: the network replaces a/(1+z^10)
    terms, integral = _library(DEFAULT_FAMILIES, ["x", "y", "z"])
    support = true_support({"x": terms}, goodwin.missing, goodwin.truth, routes={})
    assert isinstance(support, dict) and len(support["x"]) == 1
    (name,) = _names(terms, support["x"], integral)
    assert "z" in name and "x" not in name and "y" not in name
    assert form("1/(K + z**9.61)") == form("1/(K + z**10)") != form("z**10/(K + z**10)")


def test_a_neural_reactions_true_flux_comes_from_a_state_it_changes():
    enzyme = get_system("enzyme")  # the binding flux kf E S - kr C, learned as one network
    terms, integral = _library(["mass_action"], ["S", "E", "C", "P"])
    routes = enzyme.known.neural_routes()
    (target,) = routes
    support = true_support({target: terms}, enzyme.missing, enzyme.truth, routes)
    assert sorted(_names(terms, support[target], integral)) == ["C", "E*S"]


def test_a_truth_the_library_cannot_express_is_said_so():
    goodwin = get_system("goodwin")
    terms, integral = _library(["mass_action"], ["x", "y", "z"])
    why = true_support({"x": terms}, goodwin.missing, goodwin.truth, routes={})
    assert isinstance(why, str) and "no library term" in why


def test_the_verdict_follows_what_the_selection_would_take():
    assert verdict(-404.1, -412.6, taken=False)["verdict"] == "data prefer the twin"
    found = verdict(-410.0, -412.6, taken=True)  # sparser and within the tolerance: taken
    assert found["verdict"] == "search missed the truth"
    assert found["delta"] == pytest.approx(2.6)
    assert "scores +2.6" in oracle_clause(found)
    assert oracle_clause({"verdict": "chosen is the truth's support"}) == ""
    assert "not in the library" in oracle_clause({"verdict": "truth not in the library"})


def test_a_truth_whose_every_refit_is_refused_says_why_not_that_it_failed_to_solve():
    from ude.distill.oracle import unsolved

    why = "from the truth's start, dS/dt = -0.08 at S = 0"
    refused = unsolved([why])
    assert refused == {"verdict": "truth's refit not admissible", "why": why}
    assert oracle_clause(refused) == f" (oracle: truth's refit not admissible: {why})"
    assert unsolved([]) == {"verdict": "truth's refit failed to solve"}


@pytest.mark.slow
def test_a_distillation_that_misses_the_truth_says_whether_the_data_prefer_its_twin():
    """Lotka-Volterra seed 5 at 5 % noise: docs/recovery.md's oracle finds a rival beating
    the truth there. A short training leaves a twin that is not the truth; the oracle scores
    the truth as the search would."""
    from ude import simulate_measurements
    from ude.distill import Distiller
    from ude.fit import fit

    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=31, seed=5)
    trained = fit("lotka_volterra", m, max_epochs=30, warm_start_steps=500)
    found = Distiller().fit(trained.model, m)
    oracle = found.oracle
    assert oracle is not None and "delta" in oracle, oracle
    assert oracle["chosen_criterion"] == pytest.approx(found.chosen.criterion)
    assert np.isfinite(oracle["truth_criterion"])
    assert oracle["verdict"] in {"data prefer the twin", "search missed the truth"}
    reached = [c for c in oracle["starts"].values() if c is not None]
    assert set(oracle["starts"]) <= {"screen", "twin", "truth"}
    assert min(reached) == pytest.approx(oracle["truth_criterion"], abs=1e-3)


def test_the_benchmark_counts_the_cells_not_exact_by_the_oracles_verdict():
    from ude.benchmark.report import targets_table

    def row(exact, oracle=None, corruption="none"):
        r = {"id": f"goodwin/ude/{len(rows)}", "system": "goodwin", "method": "ude"}
        r.update(axis="base", dimension=3, corruption=corruption)
        r.update(exact=exact, f1_unknown=1.0 if exact else 0.0, forecast_nmse=0.01)
        return r | ({"oracle": oracle} if oracle else {})

    rows: list[dict] = []
    for case in [
        (True,),
        (False, "data prefer the twin"),
        (False, "data prefer the twin"),
        (False, "search missed the truth"),
        (False, "chosen is the truth's support"),  # the right terms, a Hill n off
        (False, "truth's refit not admissible"),  # the true form fits only below zero
        (False, "chosen is the truth's support", "form"),  # right terms, a known one corrupted
        (False, None),  # a cell run before the oracle existed
    ]:
        rows.append(row(*case))
    line = next(x for x in targets_table(rows).splitlines() if x.startswith("| goodwin"))
    # most first, ties by name (the same line whatever order the rows come in)
    assert "| data 2, constants 1, inadmissible 1, no oracle 1, prior 1, search 1 |" in line


def test_the_truth_also_starts_from_the_twins_refit_of_the_terms_they_share():
    from ude.distill.oracle import from_twin
    from ude.distill.refit import RefitResult
    from ude.distill.selection import Scored
    from ude.distill.sparse import Candidate

    def fitted(coef, constants):
        cand = Candidate({"x": np.array(coef)}, "path", constants={"x": constants})
        return Scored(cand, RefitResult(None, {}, 0.1, 30, True, 1), -100.0, 2)

    twin = fitted([0.0, 2.0, 0.5], {1: {"K": 1.2, "n": 9.3}})  # the truth's term and another
    truth = Candidate({"x": np.array([0.0, 1.0, 0.0])}, "truth", constants={"x": {1: {"K": 3.0}}})
    start = from_twin(truth, twin)
    np.testing.assert_array_equal(start.coef["x"], [0.0, 2.0, 0.0])  # the extra term stays out
    assert start.constants["x"][1] == {"K": 1.2, "n": 9.3}
    assert truth.coef["x"][1] == 1.0  # the screen's start is left as it was
    assert from_twin(truth, fitted([0.0, 0.0, 0.5], {})) is None  # nothing shared


def test_the_truths_own_values_are_matched_by_its_library_terms():
    """The oracle's third start (ude.distill.oracle.at_truth): each true term's constants and
    coefficient read off by its library term along the true trajectories, Hill n included."""
    from ude.distill.library import match_term

    goldbeter = get_system("goldbeter")  # the network replaces -vd X C/(Kd + C), Kd = 0.02
    competence = get_system("competence")  # a2 x^2/(a3 + x^2): K = 0.2, n = 2
    rng = np.random.default_rng(0)
    samples = {s: rng.uniform(0.0, 1.0, 300) for s in ["C", "M", "X", "x", "y"]}
    cases = [
        (goldbeter, ["C", "M", "X"], "C", -0.25, {"K": 0.02}),
        (competence, ["x", "y"], "x", 0.07, {"K": 0.2, "n": 2.0}),
    ]
    for system, inputs, state, coefficient, constants in cases:
        terms, integral = _library(DEFAULT_FAMILIES, inputs)
        support = true_support({state: terms}, system.missing, system.truth, routes={})
        (j,) = support[state]
        truth = system.missing[state].xreplace(
            {sp.Symbol(k): p.value for k, p in system.truth.parameters.items()}
        )
        # from the screen's constants, and from a Hill n the screen left on its bound of 1
        # (where the term reads as Michaelis-Menten's form: competence at 10 % noise)
        at_bound = {c: {"K": 0.3, "n": 1.0}[c] for c in terms[j].free}
        for start in (integral.constants[j], at_bound):
            c, found = match_term(terms[j], start, truth, samples)
            assert c == pytest.approx(coefficient, rel=1e-6)
            for name, value in constants.items():
                assert found[next(k for k in found if k.startswith(name))] == pytest.approx(value)


def test_the_truths_own_values_start_from_its_hill_term_where_the_screen_left_n_at_1():
    """Competence at 10 % noise: the screen left the Hill activation's n on its bound of 1,
    where the fitted term reads as Michaelis-Menten's form. The true x**2/(a3 + x**2) is still
    that library term, and the oracle's third start has the truth's K and n."""
    from ude import simulate_measurements
    from ude.distill.oracle import at_truth

    competence = get_system("competence")
    terms, integral = _library(DEFAULT_FAMILIES, ["x", "y"])
    integral.constants = {
        j: {c: {"K": 0.3, "n": 1.0}[c] for c in terms[j].free} for j in integral.constants
    }
    support = true_support({"x": terms}, competence.missing, competence.truth, routes={})
    assert isinstance(support, dict), support
    (j,) = support["x"]
    assert terms[j].family == "hill" and terms[j].law.kind == "activation"
    m = simulate_measurements("competence", noise=0.1, seed=0)
    start = at_truth(support, {"x": terms}, {"x": integral}, m, routes={}, states=["x", "y"])
    assert start is not None
    assert start.coef["x"][j] == pytest.approx(0.07, rel=1e-3)
    found = start.constants["x"][j]
    assert found[next(k for k in found if k.startswith("n"))] == pytest.approx(2.0, rel=1e-3)


def test_a_twin_with_the_truths_terms_is_asked_about_its_hill_n_only_when_it_is_10_percent_off():
    from ude.distill.oracle import constants_verdict, hill_n_off
    from ude.distill.refit import RefitResult
    from ude.distill.selection import Scored
    from ude.distill.sparse import Candidate

    terms, _ = _library(DEFAULT_FAMILIES, ["x", "y"])
    j = next(i for i, t in enumerate(terms) if t.law and t.law.kind == "activation")
    n = terms[j].law.n
    coef = np.zeros(len(terms))
    coef[j] = 0.07
    truth = Candidate({"x": coef}, "truth", constants={"x": {j: {"K": 0.2, n: 2.0}}})

    def twin(fitted_n):
        cand = Candidate({"x": coef}, "path", constants={"x": {j: {"K": 0.1, n: fitted_n}}})
        return Scored(cand, RefitResult(None, {}, 0.1, 30, True, 1), -100.0, 2)

    assert hill_n_off(truth, twin(9.9), {"x": terms})  # competence with 4 replicates
    assert not hill_n_off(truth, twin(2.15), {"x": terms})  # within 10 %: exact
    found = constants_verdict(-99.9, -100.0, taken=False, kept=True)
    assert found["verdict"] == "data prefer the twin's constants"
    assert "scores +0.1" in oracle_clause(found)
    taken = constants_verdict(-104.0, -100.0, taken=True, kept=True)
    assert taken["verdict"] == "search missed the truth's constants"
    # refitted from the truth's own values, it moved to the twin's n: the twin's optimum,
    # even a hair ahead (the benchmark's competence cells: 0.0002 apart)
    moved = constants_verdict(-100.0002, -100.0, taken=True, kept=False)
    assert moved["verdict"] == "data prefer the twin's constants" and not moved["kept"]


def test_the_summary_gives_the_oracles_verdict_only_for_a_structure_that_is_not_exact():
    """The oracle runs before the final refit: a twin whose scoring refit left a Hill n off
    can come out exact (Goodwin's calibration seed 9), and its line says nothing of the
    oracle."""
    from ude.distill.cli import summary

    oracle = {
        "verdict": "data prefer the twin's constants",
        "delta": -0.0,
        "kept": False,
    }
    metrics = {"discovered": {"x": "1/(1 + z**10)"}, "timings": {"total_seconds": 1.0}}
    truth = {"median_relative_error": 0.01, "oracle": oracle}
    exact = summary(metrics | {"truth": truth | {"exact": True}})
    assert "structure exact" in exact and "oracle" not in exact
    missed = summary(metrics | {"truth": truth | {"exact": False}})
    assert "NOT exact, median coefficient error 1.0% (oracle: data prefer the twin's" in missed
