"""The benchmark's calibration columns and its Bayesian sparse-regression baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ude.benchmark.metrics import (
    band_scores,
    band_width,
    coefficient_coverage,
    inclusion_brier,
    interval_coverage,
)

TRUE = {("x", "x"): 1.0, ("x", "x*y"): -0.9, ("y", "x*y"): 0.8}


def test_coefficient_coverage_counts_true_terms_inside_their_interval():
    """Two of three true terms inside their intervals (a term written with its constant
    folded, ``2*x``, counts as ``x``), the third outside: 2/3; a missed true term counts as
    outside; an extra false term changes nothing."""
    intervals = {
        "x": {"2*x": [0.4, 0.6], "x*y": [-1.0, -0.8], "y": [0.0, 1.0]},
        "y": {"x*y": [0.9, 1.1]},
    }
    assert coefficient_coverage(intervals, TRUE) == pytest.approx(2 / 3)
    del intervals["y"]
    assert coefficient_coverage(intervals, TRUE) == pytest.approx(2 / 3)
    assert math.isnan(coefficient_coverage(intervals, {}))


def test_inclusion_brier_and_means():
    """Certain and right: 0; certain and wrong on one of four listed terms: 1/4; a true term
    not listed has probability 0."""
    right = {"x": {"x": 1.0, "x*y": 1.0, "y": 0.0}, "y": {"x*y": 1.0}}
    assert inclusion_brier(right, TRUE) == {
        "brier": 0.0,
        "inclusion_true": 1.0,
        "inclusion_false": 0.0,
    }
    wrong = {"x": {"x": 1.0, "x*y": 1.0, "y": 1.0}, "y": {"x*y": 1.0}}
    assert inclusion_brier(wrong, TRUE)["brier"] == pytest.approx(0.25)
    missing = {"x": {"x": 1.0, "y": 0.0}, "y": {"x*y": 0.5}}
    out = inclusion_brier(missing, TRUE)
    assert out["brier"] == pytest.approx((0 + 0 + 1 + 0.25) / 4)
    assert out["inclusion_true"] == pytest.approx(0.5)


def test_species_named_like_sympy_singletons_are_plain_symbols():
    """SEIR's S, E, I (sympy's registry, Euler's number, the imaginary unit when parsed as
    text) score like any other names: this crashed every SEIR cell that had intervals or
    inclusion probabilities."""
    true = {("I", "E"): 0.5, ("E", "I*S"): 0.3}
    intervals = {"E": {"I*S": [0.2, 0.4]}, "I": {"2*E": [0.2, 0.3], "I/(E + 2.0)": [0.0, 1.0]}}
    assert coefficient_coverage(intervals, true) == 1.0
    inclusion = {"E": {"I*S": 1.0, "S": 0.0}, "I": {"E": 1.0}}
    assert inclusion_brier(inclusion, true)["brier"] == 0.0


def test_an_unbounded_band_is_scored_where_it_is_bounded_only():
    """ude's predictive band is ±inf once too many draws blew up: those entries neither
    cover (which would be free) nor count in the width."""
    truth = np.array([[1.0], [2.0], [3.0], [4.0]])
    lower = np.array([[0.5], [2.5], [-np.inf], [-np.inf]])
    upper = np.array([[1.5], [3.5], [np.inf], [np.inf]])
    assert interval_coverage(lower, upper, truth) == 0.5
    assert band_width(lower, upper, truth) == pytest.approx(1.0 / 3.0)
    assert math.isnan(interval_coverage(lower[2:], upper[2:], truth[2:]))


def test_a_band_bounded_over_too_little_of_the_forecast_is_no_band():
    """Lotka-Volterra's unobserved cells on f7f41fa: the band was bounded at the forecast's
    first time only, where every draw starts from the true state, and scored coverage 1.0
    with width 0. Bounded over less than half of the entries, a band gets no coverage and no
    width, only the share it bounds; over half or more, it is scored where it is bounded."""
    truth = np.linspace(1.0, 2.0, 10)[:, None]
    lower, upper = np.full_like(truth, -np.inf), np.full_like(truth, np.inf)
    lower[0] = upper[0] = truth[0]  # the initial state, exact
    assert interval_coverage(lower, upper, truth) == 1.0  # what the cells scored
    assert band_scores(lower, upper, truth) == {"band_bounded": pytest.approx(0.1)}
    lower[:5], upper[:5] = truth[:5] - 0.1, truth[:5] + 0.1
    lower[4] = upper[4] = truth[4] + 1.0  # bounded, off the truth
    scores = band_scores(lower, upper, truth)
    assert scores["band_bounded"] == 0.5 and scores["coverage"] == pytest.approx(0.8)
    assert scores["band_width"] == pytest.approx(0.16)


def test_the_targets_table_gives_each_systems_coverage_and_its_cells_without_a_band():
    from ude.benchmark.report import targets_table

    def row(i, system, coverage=None):
        r = {"id": f"{system}/ude/{i}", "system": system, "method": "ude", "axis": "base"}
        r.update(dimension=2, exact=True, f1_unknown=1.0, forecast_nmse=0.01)
        return r | ({} if coverage is None else {"coverage": coverage})

    rows = [row(0, "seir", 0.9), row(1, "seir", 1.0), row(2, "seir")]
    rows += [row(3, "enzyme", 0.8), row(4, "enzyme", 0.85)]
    lines = {x.split(" |")[0]: x for x in targets_table(rows).splitlines()}
    assert lines["| seir"].endswith("| 0.95 met (2 of 3 cells have a band) |")
    assert lines["| enzyme"].endswith("| 0.82 short |")


def test_band_width_is_in_units_of_the_true_range():
    truth = np.stack([np.linspace(0, 2, 11), np.linspace(5, 6, 11)], axis=1)
    assert band_width(truth - 0.1, truth + 0.1, truth) == pytest.approx((0.1 + 0.2) / 2)


@pytest.mark.slow
def test_bayes_baseline_on_lotka_volterra():
    """The horseshoe baseline on noisy Lotka-Volterra with the mass-action library: the true
    terms included, a band and intervals reported, its chains diagnosed."""
    from ude.benchmark.methods import BayesianSparse
    from ude.benchmark.scenario import Scenario, build_problem

    problem = build_problem(
        Scenario(system="lotka_volterra", seed=0, noise=0.05, n_times=30, library="mass_action")
    )
    result = BayesianSparse().fit(problem)
    incl = result.info["inclusion"]
    assert incl["x"]["x"] > 0.8 and incl["y"]["y"] > 0.8, incl
    assert result.lower is not None and set(result.info["intervals"]) == {"x", "y"}
    assert set(result.info["convergence"]) == {"x", "y"}


def test_the_calibration_table_shows_the_horseshoes_inclusion_beside_the_products():
    """ude's cells score the inclusion the product reports (the structure bootstrap's) in the
    inclusion columns; its horseshoe's go on a line of their own, not in place of them."""
    from ude.benchmark.report import calibration_table

    rows = [
        {"method": "ude", "brier": 0.1, "inclusion_true": 0.9, "inclusion_false": 0.2}
        | {"brier_horseshoe": 0.3, "inclusion_true_horseshoe": 0.6}
        | {"inclusion_false_horseshoe": 0.4, "coverage": 0.9},
        {"method": "sindy", "brier": 0.5, "inclusion_true": 0.5, "inclusion_false": 0.5},
    ]
    lines = calibration_table(rows).splitlines()
    ude, horseshoe, sindy = lines[2:]
    assert "| 0.10 (1) | 0.90 (1) | 0.20 (1) |" in ude and "0.30" not in ude
    assert horseshoe.startswith("| ude: its horseshoe's inclusion |")
    assert horseshoe.endswith("| 0.30 (1) | 0.60 (1) | 0.40 (1) |")
    assert horseshoe.count("–") == 5 and sindy.startswith("| sindy |")


def test_the_calibration_per_system_counts_the_seeds_its_cells_span():
    """Each system's cells are averaged apart, per method, with the seeds they span: a system's
    cells of one seed share its noise, and the table says how many independent draws it
    holds. A failed cell and a method without cells on a system give no line. The last column
    scores the twin's own intervals on its exact cells alone."""
    from ude.benchmark.report import calibration_by_system

    rows = [
        {"system": "seir", "method": "ude", "seed": s, "coverage": c, "coef_coverage": k}
        | {"exact": k == 1.0, "coef_coverage_chosen": k}
        for s, c, k in [(0, 0.9, 1.0), (0, 0.8, 1.0), (1, 1.0, 0.0)]
    ] + [
        {"system": "goodwin", "method": "ude", "seed": 0, "coverage": 0.5},
        {"system": "goodwin", "method": "bayes", "seed": 0, "error": "failed"},
    ]
    lines = calibration_by_system(rows).splitlines()
    assert len(lines) == 4
    goodwin, seir = lines[2], lines[3]
    assert goodwin.startswith("| goodwin | ude | 1 | 0.50 (1) |")
    assert seir.startswith("| seir | ude | 2 | 0.90 (3) |")
    assert "| 0.67 (3) |" in seir and seir.endswith("| 1.00 (2) |")
    assert goodwin.endswith("| – |")  # no exact cell


def test_a_neural_reactions_inclusion_is_scored_in_the_states_it_changes():
    """SEIR's unknown flux is the reaction ``infection`` (S -> E): its inclusion table is keyed
    by the reaction, and scored as it was, keyed by no state, its true term I*S counted as a
    false one (Brier 0.29 on an exact cell, the true terms' inclusion nan). Per state, as the
    truth is written, the same table is right."""
    from ude.benchmark.methods import by_state

    routes = {"infection": {"S": -1.0, "E": 1.0}}
    table = {"infection": {"I*S": 0.925, "S": 0.075, "E**2": 0.025}}
    true = {("S", "I*S"): -0.6, ("E", "I*S"): 0.6, ("E", "E"): -0.2}
    given = {("E", "E"): -0.2}  # the prior's term: not the reaction's to find
    unknown = {k: c for k, c in true.items() if k not in given}
    assert math.isnan(inclusion_brier(table, unknown)["inclusion_true"])
    out = inclusion_brier(by_state(table, routes), unknown)
    assert out["inclusion_true"] == pytest.approx(0.925)
    assert out["inclusion_false"] == pytest.approx(0.05)
    assert by_state({"x": {"y": 0.5}}, {}) == {"x": {"y": 0.5}}


def test_a_neural_reactions_intervals_are_scored_in_the_states_it_changes():
    """A reaction's coefficient interval counts in each state it changes, times its change
    there (S loses what E gains: the interval's sign flips in S); a state's own target keeps
    its interval; the averaged and the chosen structure's intervals are scored alike."""
    from ude.benchmark.methods import per_state
    from ude.benchmark.metrics import coefficient_coverage

    routes = {"infection": {"S": -1.0, "E": 1.0}}
    found = per_state(
        [("infection", "I*S", [0.5, 0.7]), ("E", "E", [-0.3, 0.0])],
        routes,
    )
    assert found == {"S": {"I*S": [-0.7, -0.5]}, "E": {"I*S": [0.5, 0.7], "E": [-0.3, 0.0]}}
    true = {("S", "I*S"): -0.6, ("E", "I*S"): 0.6, ("E", "E"): -0.2}
    assert coefficient_coverage(found, true) == 1.0
    true[("E", "E")] = -0.4  # outside [-0.3, 0]
    assert coefficient_coverage(found, true) == pytest.approx(2 / 3)
