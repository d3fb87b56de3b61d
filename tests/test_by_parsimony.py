"""Terms the data identify only because the selection left another term out
(ude.distill.identifiability.identified_by_parsimony), and how the reports say so."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import sympy as sp

from ude.distill.identifiability import identified_by_parsimony

NAMES = {"binding": ["S", "C", "E*S", "C**2"]}


def scored(support: list[int], nmse: float, criterion: float = 0.0) -> SimpleNamespace:
    """A refitted candidate of ``binding``'s library terms ``support`` (100 data points)."""
    coef = np.zeros(4)
    coef[support] = 1.0
    refit = SimpleNamespace(ok=True, model=object(), n_points=100, nmse=nmse)
    return SimpleNamespace(
        candidate=SimpleNamespace(coef={"binding": coef}), refit=refit, criterion=criterion
    )


def report(errors: dict[int, float | None]) -> dict:
    """An identifiability report of ``binding``'s coefficients: term -> relative error."""
    params = {
        f"c_binding_{j}": {"term": j, "constant": None, "value": 1.0, "relative_error": e}
        for j, e in errors.items()
    }
    return {"threshold": 0.5, "targets": {"binding": {"parameters": params}}}


def test_a_term_identified_only_beside_an_absent_one_is_named_with_its_errors():
    """The twin ``E*S`` (6 % alone) and its one-term-larger refits: ``+C`` fits as well,
    the data do not need ``C`` and beside it ``E*S`` is 94 %: named. ``+S`` fits as well and
    the data need ``S`` (the twin's structure is not the data's choice): not named. ``+C**2``
    fits as well, the data do not need it, and ``E*S`` stays identified: not named. A refit
    that fits worse by more than the margin (a refit stopped short), one with two terms more
    and one whose Fisher information fails are not named either; the first is not looked at."""
    chosen = scored([2], nmse=0.010, criterion=-500.0)
    fit = 100 * math.log(0.010)
    with_c = scored([1, 2], nmse=math.exp((fit - 0.3) / 100), criterion=-490.0)
    with_s = scored([0, 2], nmse=math.exp((fit - 1.0) / 100), criterion=-492.0)
    with_c2 = scored([2, 3], nmse=0.010, criterion=-491.0)
    worse = scored([0, 2], nmse=0.02)  # fits worse by 69 units: a refit stopped short
    two_more = scored([0, 1, 2], nmse=0.010)
    failing = scored([2, 3], nmse=0.010)
    reports = {
        id(with_c): report({1: 52.0, 2: 0.94}),
        id(with_s): report({0: 0.1, 2: 0.9}),
        id(with_c2): report({3: None, 2: 0.2}),
    }
    asked = []

    def report_of(s):
        asked.append(s)
        if s is failing:
            raise np.linalg.LinAlgError("singular")
        return reports[id(s)]

    path = [chosen, with_c, worse, with_s, two_more, with_c2, failing]
    rows = identified_by_parsimony(
        report({2: 0.06}),
        chosen,
        path,
        report_of,
        NAMES,
        lambda s: {"binding": "terms"},
        margin=2.0,
    )
    assert rows == [
        {
            "target": "binding",
            "term": "C",
            "structure": {"binding": "terms"},
            "criterion_difference": 10.0,
            "fit_difference": -0.3,
            "extra_relative_error": 52.0,
            "parameters": {"c_binding_2": {"term": "E*S", "alone": 0.06, "with": 0.94}},
        }
    ]
    assert not any(s is worse or s is two_more for s in asked)
    assert identified_by_parsimony(None, chosen, path, report_of, NAMES, str, 2.0) == []


def test_a_term_that_is_one_of_the_twins_own_again_is_not_a_rival_mechanism():
    """A Hill term that went to n = 1 beside the twin's Michaelis-Menten term is the same
    function (the dose-response example's superset): skipped before its Fisher information
    is asked for. Unrelated terms, a term that is a multiple of a sum of the twin's, and the
    edge cases (no twin terms, a zero term) come out as the function says."""
    from ude.distill.identifiability import spanned

    rng = np.random.default_rng(0)
    D = rng.uniform(0, 8, 500)
    assert spanned(D / (D + 3.63), (D / (D + 3.88))[:, None])
    C, E, S = rng.uniform(0, 1, 500), rng.uniform(0, 1.2, 500), rng.uniform(0, 13, 500)
    assert not spanned(C, (E * S)[:, None])
    assert spanned(2 * C - E, np.column_stack([C, E, S]))
    assert not spanned(C, np.zeros((500, 0))) and not spanned(0 * C, C[:, None])

    chosen = scored([2], nmse=0.010)
    same = scored([2, 3], nmse=0.010)
    asked = []

    def report_of(s):
        asked.append(s)
        return report({3: 9.0, 2: 0.9})

    rows = identified_by_parsimony(
        report({2: 0.06}),
        chosen,
        [chosen, same],
        report_of,
        NAMES,
        str,
        2.0,
        redundant=lambda s, target, j: (target, j) == ("binding", 3),
    )
    assert rows == [] and asked == []


def test_the_limit_keeps_the_refits_that_fit_best():
    chosen = scored([2], nmse=0.010)
    fit = 100 * math.log(0.010)
    near = scored([1, 2], nmse=math.exp((fit - 3.0) / 100))
    far = scored([0, 2], nmse=math.exp((fit + 1.5) / 100))
    asked = []

    def report_of(s):
        asked.append(s)
        return report({1: 9.0, 0: 9.0, 2: 0.9})

    rows = identified_by_parsimony(
        report({2: 0.06}), chosen, [chosen, far, near], report_of, NAMES, str, 2.0, limit=1
    )
    assert len(asked) == 1 and asked[0] is near and [r["term"] for r in rows] == ["C"]


def test_the_summary_and_equations_md_name_the_term_and_both_errors():
    from ude.distill.cli import parsimony_sentence
    from ude.spec.model_spec import ModelSpec
    from ude.twin.symbolic import equations_markdown

    row = {
        "target": "binding",
        "term": "C",
        "structure": {"binding": "-0.0177*C +0.48*E*S"},
        "criterion_difference": 10.491,
        "fit_difference": -0.003,
        "extra_relative_error": None,
        "parameters": {"c_binding_6": {"term": "E*S", "alone": 0.0602, "with": 0.937}},
    }
    sentence = parsimony_sentence(row)
    assert sentence.startswith("IDENTIFIED ONLY BY PARSIMONY: binding's E*S (c_binding_6)")
    assert "6% alone, 94% beside a C term" in sentence and "relative error unbounded" in sentence
    spec = ModelSpec(states=["x"], equations={"x": sp.sympify("-x")})
    ident = {"threshold": 0.5, "targets": {}, "by_parsimony": [row]}
    md = equations_markdown(spec, spec, identifiability=ident)
    assert "## Terms identified only by parsimony" in md
    assert "| binding | E*S | c_binding_6 | 0.06 | C | 0.94 | ∞ | -0.0 | +10.5 |" in md


def test_the_enzymes_binding_rate_is_identified_only_without_unbinding(enzyme_refits):
    """The data give the quasi-steady state's K_M = (kr + kcat) / kf and little of the fast
    binding: -kf E S alone is identified; beside kr C the pair runs out along the ridge to
    rapid equilibrium (kf about 1e6, kr = 2 kf, a little better a fit), where only their ratio
    is fixed: neither is bounded by the data, though their relative errors from the
    eigenvalue-floored Hessian alone read 0.0003."""
    alone, alone_report, _ = enzyme_refits.fits["E*S"]
    both, both_report, _ = enzyme_refits.fits["C + E*S"]
    gap = both.n_points * math.log(both.nmse) - alone.n_points * math.log(alone.nmse)
    assert gap <= 2.0, gap
    assert both_report["n_floored"] >= 1
    chosen = SimpleNamespace(
        candidate=SimpleNamespace(coef={"binding": np.array([0.0, 1.0])}),
        refit=alone,
        criterion=0.0,
    )
    larger = SimpleNamespace(
        candidate=SimpleNamespace(coef={"binding": np.array([1.0, 1.0])}),
        refit=both,
        criterion=8.0,
    )
    rows = identified_by_parsimony(
        alone_report,
        chosen,
        [chosen, larger],
        lambda s: both_report,
        {"binding": ["C", "E*S"]},
        str,
        margin=2.0,
    )
    assert [r["term"] for r in rows] == ["C"], (alone_report, both_report)
    (lost,) = rows[0]["parameters"].values()
    assert lost["term"] == "E*S" and lost["alone"] < 0.5 and lost["with"] is None
    assert rows[0]["extra_relative_error"] is None


def test_entries_along_a_floored_direction_are_the_ones_unbounded():
    """A precision whose smallest eigenvalue was raised to the floor along ``(a + 2 b)``:
    ``a`` and ``b`` lie along it, ``c`` does not; an entry the data hold (``free`` False) is
    never flagged, and without a floored eigenvalue none is."""
    from ude.distill.identifiability import floored_entries

    flat = np.array([1.0, 2.0, 0.0, 0.0]) / math.sqrt(5)
    other = np.array([2.0, -1.0, 0.0, 0.0]) / math.sqrt(5)
    V = np.stack([flat, other, [0, 0, 1.0, 0], [0, 0, 0, 1.0]], axis=1)
    precision = (V * np.array([1e-8, 1.0, 1.0, 1.0])) @ V.T
    free = np.array([True, True, True, False])
    approx = SimpleNamespace(names=list("abcd"), free=free, n_floored=1, precision=precision)
    assert floored_entries(approx).tolist() == [True, True, False, False]
    approx.n_floored = 0
    assert not floored_entries(approx).any()


def test_the_benchmark_counts_the_cells_its_run_said_were_identified_only_by_parsimony(
    tmp_path,
):
    """A cell's row carries the terms its run named (``by_parsimony``; "none" where it
    checked and found none), also filled in from the stored run's report for rows written
    before the column, through results.csv; the targets table counts them among the cells
    not exact."""
    import json

    from ude.benchmark.report import read_csv, targets_table, write_csv
    from ude.benchmark.suite import parsimony_terms, read_results

    named = {"identifiability": {"by_parsimony": [{"target": "binding", "term": "C"}]}}
    assert parsimony_terms(named) == "binding +C"
    assert parsimony_terms({"identifiability": {"by_parsimony": []}}) == "none"
    assert parsimony_terms({"identifiability": {"targets": {}}}) is None

    def row(i, exact, info):
        return {
            "id": f"enzyme/ude/{i}",
            "system": "enzyme",
            "method": "ude",
            "axis": "base",
            "value": None,
            "dimension": 4,
            "exact": exact,
            "f1_unknown": 0.5,
            "forecast_nmse": 0.01,
            "oracle": "data prefer the twin",
            "info": info,
        }

    rows = [
        row(0, False, named),
        row(1, False, {"identifiability": {"by_parsimony": []}}),
        row(2, False, {}),  # before the check
        row(3, True, named),  # exact: not counted among the missed
    ]
    (tmp_path / "results-0of1-1.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    read = read_results(tmp_path)
    assert [r.get("by_parsimony") for r in read] == ["binding +C", "none", None, "binding +C"]
    write_csv(read, tmp_path / "results.csv")
    again = read_csv(tmp_path / "results.csv")
    assert sorted(str(r.get("by_parsimony")) for r in again) == sorted(
        ["binding +C", "none", "None", "binding +C"]
    )
    line = next(x for x in targets_table(again).splitlines() if x.startswith("| enzyme"))
    assert "| data 3; said identified only by parsimony in 1 of 2 checked |" in line


def test_a_scored_row_keeps_the_oracles_delta_with_or_without_the_check():
    """The row's ``oracle_delta`` comes from the oracle alone, and ``by_parsimony`` from the
    identifiability report alone: a cell without the check (or without an oracle, real data)
    loses neither."""
    from ude.benchmark.methods import MethodResult
    from ude.benchmark.scenario import Scenario, build_problem
    from ude.benchmark.suite import Cell, score

    scenario = Scenario("lotka_volterra", n_times=20)
    problem = build_problem(scenario)
    oracle = {"verdict": "data prefer the twin", "delta": 3.21}
    checked = {"identifiability": {"by_parsimony": []}}
    rows = {}
    for name, info in (
        ("oracle only", {"oracle": oracle}),
        ("both", {"oracle": oracle} | checked),
        ("check only", checked),
    ):
        result = MethodResult(
            problem.truth, list(problem.truth.states), problem.true_forecast(), 1.0, info=info
        )
        rows[name] = score(Cell(scenario, "base", "ude"), problem, result)
    assert rows["oracle only"]["oracle_delta"] == 3.21 and "by_parsimony" not in rows["oracle only"]
    assert rows["both"]["oracle_delta"] == 3.21 and rows["both"]["by_parsimony"] == "none"
    assert "oracle_delta" not in rows["check only"] and rows["check only"]["by_parsimony"] == "none"
