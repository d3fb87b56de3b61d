"""Benchmark metrics on hand-made cases, scenarios, the methods' interface, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sympy as sp

from ude.benchmark.methods import ESINDy, SINDy, WeakSINDy
from ude.benchmark.metrics import (
    aligned,
    coefficient_error,
    exact_recovery,
    expression_terms,
    forecast_nmse,
    interval_coverage,
    support_f1,
    term_matrix,
)
from ude.benchmark.report import COLUMNS, read_csv, write_report
from ude.benchmark.scenario import Scenario, build_problem, corrupt, observed_states
from ude.benchmark.suite import expand, processor, read_results, run_suite
from ude.errors import UdeError
from ude.spec.model_spec import ModelSpec
from ude.systems import get_system

LV = get_system("lotka_volterra").truth
TRUE = term_matrix(LV)


def lv_like(x: str, y: str) -> ModelSpec:
    return ModelSpec.from_dict({"states": ["x", "y"], "equations": {"x": x, "y": y}})


def test_truth_terms_of_lotka_volterra():
    assert TRUE == {("x", "x"): 1.3, ("x", "x*y"): -0.9, ("y", "y"): -1.8, ("y", "x*y"): 0.8}


def test_f1_exact_superset_disjoint():
    exact = term_matrix(lv_like("1.2*x - 0.95*x*y", "0.7*x*y - 1.9*y"))
    superset = term_matrix(lv_like("1.3*x - 0.9*x*y + 0.1*y", "0.8*x*y - 1.8*y + 0.2*x**2"))
    disjoint = term_matrix(lv_like("0.5*y", "0.3*x**2"))
    assert support_f1(exact, TRUE) == 1.0 and exact_recovery(exact, TRUE)
    # 4 true of 6 found: precision 2/3, recall 1, F1 = 0.8
    assert support_f1(superset, TRUE) == pytest.approx(0.8)
    assert not exact_recovery(superset, TRUE)
    assert support_f1(disjoint, TRUE) == 0.0 and not exact_recovery(disjoint, TRUE)


def test_coefficient_error_on_true_terms():
    assert coefficient_error(TRUE, TRUE) == 0.0
    half = {k: v / 2 for k, v in TRUE.items()}
    assert coefficient_error(half, TRUE) == pytest.approx(0.5)
    # a missed term counts as a zero coefficient: error 1 for the empty model
    assert coefficient_error({}, TRUE) == pytest.approx(1.0)


def test_rational_terms_match_whatever_their_constant():
    a = expression_terms(sp.sympify("0.07*x**2/(0.04 + x**2)"))
    b = expression_terms(sp.sympify("0.05*x**2/(0.25 + x**2)"))
    assert set(a) == set(b) and a != b
    # exponents are kept: a Hill term of another order is another term
    assert set(expression_terms(sp.sympify("x**4/(1 + x**4)"))) != set(a)


def test_fitted_hill_exponent_matches_the_truth_within_ten_percent():
    true = {("x", k): c for k, c in expression_terms(sp.sympify("5/(1 + z**10)")).items()}
    near = expression_terms(sp.sympify("3e9*0.114**9.31/(0.114**9.31 + z**9.31)"))
    far = expression_terms(sp.sympify("2/(1 + z**8.5)"))
    assert list(near) == ["1/(K_ + z**9.31)"]  # kept as fitted, not rounded to 9
    found = aligned({("x", b): c for b, c in near.items()} | {("x", "x**2"): -3e-4}, true)
    assert support_f1(found, true) == pytest.approx(2 / 3)  # the Hill term right, x² spurious
    assert ("x", "x**2") in found
    # 15 % off is another term; an integer exponent must match exactly
    assert support_f1(aligned({("x", b): c for b, c in far.items()}, true), true) == 0.0
    sq = {("x", "x**2/(K_ + x**2)"): 0.07}
    assert aligned({("x", "x**2.1/(K_ + x**2.1)"): 0.07}, sq) == sq
    assert not set(aligned({("x", "x**3/(K_ + x**3)"): 0.07}, sq)) & set(sq)


def test_nmse_and_coverage():
    truth = np.sin(np.linspace(0, 6, 50))[:, None] * [1.0, 2.0]
    assert forecast_nmse(truth.copy(), truth) == 0.0
    assert forecast_nmse(None, truth) == math.inf
    assert forecast_nmse(np.full_like(truth, np.nan), truth) == math.inf
    # predicting the mean gives NMSE 1
    assert forecast_nmse(np.broadcast_to(truth.mean(0), truth.shape), truth) == pytest.approx(1)
    assert interval_coverage(truth - 0.1, truth + 0.1, truth) == 1.0
    assert interval_coverage(truth + 0.1, truth + 0.2, truth) == 0.0


def test_scenarios_hide_corrupt_and_validate():
    seir = get_system("seir")
    assert observed_states(seir, 0.0) == ["S", "I", "R"]  # E is latent by default
    assert observed_states(seir, 0.5) == ["S", "I"]
    lv = get_system("lotka_volterra")
    assert observed_states(lv, 0.99) == ["x"]  # one species stays observed
    spec, note = corrupt(lv.known, "constant")
    assert spec.parameters["alpha"].value == pytest.approx(1.95) and "alpha" in note
    spec, note = corrupt(lv.known, "form")
    assert str(spec.equations["x"]) == "alpha*x/(x + 1)"
    problem = build_problem(Scenario("lotka_volterra", conditions=3, replicates=2, n_times=15))
    assert problem.measurements.values.shape == (3, 15, 2, 2)
    # the enzyme's assay sets E and C in every condition, the extra ones scaled like the rest
    enzyme = build_problem(Scenario("enzyme", conditions=4)).measurements
    assert enzyme.initial["C"].tolist() == [0.0] * 4
    assert enzyme.initial["E"].tolist() == enzyme.truth.initial[:, 1].tolist()
    with pytest.raises(UdeError, match="noise"):
        Scenario("lotka_volterra", noise=1.5).validate()
    with pytest.raises(UdeError, match="axis"):
        expand(["lotka_volterra"], ["sindy"], {"colour": [1]})


@pytest.mark.parametrize("method", [SINDy(), WeakSINDy(), ESINDy(n_models=5)])
def test_sparse_baselines_find_lotka_volterra_without_noise(method):
    problem = build_problem(
        Scenario("lotka_volterra", noise=0.0, n_times=60, library="mass_action")
    )
    result = method.fit(problem)
    found = term_matrix(result.spec)
    assert support_f1(found, TRUE) == 1.0, found
    # noise-free data: coefficients within a few % (finite differences / quadrature error)
    assert coefficient_error(found, TRUE) < 0.05
    assert forecast_nmse(result.forecast, problem.true_forecast()) < 0.01
    if isinstance(method, ESINDy):
        assert result.lower is not None and result.lower.shape == result.forecast.shape


def test_suite_resumes_and_reports(tmp_path):
    axes = {"noise": [0.1], "replicates": [2]}
    cells = expand(["lotka_volterra"], ["sindy", "weak_sindy"], axes, {"n_times": 20})
    methods = {"sindy": SINDy(), "weak_sindy": WeakSINDy()}
    rows = run_suite(cells, methods, tmp_path, log=lambda *_: None)
    assert len(rows) == 6
    again = run_suite(cells, methods, tmp_path, log=lambda *_: None)
    assert again == []  # every cell already done
    saved = read_results(tmp_path)
    assert {r["id"] for r in saved} == {c.id for c in cells}
    json.dumps(saved[0])  # rows are plain JSON
    version = saved[0]["code_version"]  # the code each row was made with
    assert len(version["commit"]) == 40 and isinstance(version["dirty"], bool)
    # and the processor (the last digits of a result can hang on it)
    assert saved[0]["machine"] == processor() and processor().rsplit(", ", 1)[1]
    # each cell's CPU time beside its wall time (a shared machine inflates the wall time)
    assert all(r["cpu_seconds"] > 0 and r["seconds"] > 0 for r in saved)
    report = write_report(saved, tmp_path)
    text = report.read_text()
    assert "| sindy |" in text and "noise=0.1" in text and "CPU time (median s)" in text
    # no ude cells: the comparison with ude says why it is empty
    assert "No comparison: this suite has no `ude` cells (its methods: sindy, weak_sindy)" in text
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "plots" / "curves.png").is_file()
    table = (tmp_path / "results.csv").read_text()
    assert f",{version['commit'][:10]}" in table  # the table keeps each row's commit
    assert f"Processors: {processor()}: 6 cells." in text
    # the same rows in another order (rows gathered from several runs' files): the same report
    again = write_report(saved[::-1], tmp_path / "reversed").read_text()
    assert again == text and text.index("### noise") < text.index("### replicates")
    # a results.csv read back (include=...) gives the same table and the same report
    back = read_csv(tmp_path / "results.csv")
    assert set(back[0]) <= {*COLUMNS, "code_version"} and all("error" not in r for r in back)
    assert write_report(back, tmp_path / "back").read_text() == text
    assert (tmp_path / "back" / "results.csv").read_text() == table


def test_an_included_results_csv_comes_back_as_rows_and_a_missing_one_is_a_user_error(tmp_path):
    from omegaconf import OmegaConf

    from ude.benchmark.runner import included_rows

    cells = expand(["lotka_volterra"], ["sindy"], {"noise": [0.1]}, {"n_times": 20})
    rows = run_suite(cells, {"sindy": SINDy()}, tmp_path / "old", log=lambda *_: None)
    write_report(rows, tmp_path / "old")
    cfg = OmegaConf.create({"include": [str(tmp_path / "old" / "results.csv")]})
    joined = included_rows(cfg)
    assert {r["id"] for r in joined} == {c.id for c in cells}
    assert {r["value"] for r in joined} == {None, 0.1}  # the base cell's value is None
    with pytest.raises(UdeError, match="missing.csv: include: no such file"):
        included_rows(OmegaConf.create({"include": str(tmp_path / "missing.csv")}))


def test_ude_in_the_benchmark_runs_what_train_py_runs():
    """No second copy of the numbers: the benchmark's ude (and node) take training,
    distillation and band from the config `python train.py` composes; only the scenario's
    seed and solver are set, and the library axis sets distill.library."""
    from ude.benchmark.libraries import distill_library
    from ude.benchmark.methods import composed_config
    from ude.runs import train_config

    problem = build_problem(Scenario("goodwin", seed=3))
    mine = composed_config(problem, [])
    user = train_config(["seed=3", f"solver={problem.solver}"])
    for key in ("optim", "model", "solver", "distill"):
        assert mine[key] == user[key], key
    assert mine.trainer.max_epochs == user.trainer.max_epochs
    assert mine.callbacks.early_stopping == user.callbacks.early_stopping
    assert distill_library("default") is None  # the base scenario: as a user gets it
    assert distill_library("mass_action") == ["constant", "mass_action"]


def test_neural_methods_interface(tmp_path, monkeypatch):
    """The two neural methods run a short fit end to end and return the interface's shapes:
    on noisy Lotka-Volterra a 30-epoch UDE distils a twin that forecasts, with a band of
    draws that mostly solve; the neural ODE forecasts too. Neither writes a file where the
    benchmark runs."""
    monkeypatch.chdir(tmp_path)
    from ude.benchmark.methods import UDE, NeuralODE
    from ude.benchmark.scenario import Scenario, build_problem

    problem = build_problem(Scenario("lotka_volterra", n_times=20))
    short = [
        "trainer.max_epochs=30",
        "optim.warm_start_steps=300",
        "distill.distiller.selector.max_candidates=2",
        "distill.distiller.selector.max_refits=3",
        "distill.forecast_interval.n_samples=50",
        "distill.uq.bootstrap.n_resamples=8",  # its 40 resamples' selections: 16 s of the test
    ]
    shape = (len(problem.forecast_times), 2)
    ude = UDE(overrides=short).fit(problem)
    assert ude.info["epochs"] == 30  # the overrides reach train.py's config
    # a crash of the distillation is reported in info; here it would be a bug
    assert ude.spec is not None, ude.info.get("distill_error")
    assert ude.seconds > 0 and ude.forecast_states == ["x", "y"]
    timings = ude.info["distill_timings"]  # where the distillation's time went, per stage
    assert 0 < timings["selection_seconds"] < timings["total_seconds"] <= ude.seconds
    work = ude.info["selection"]  # what the selection's time bought: refits and iterations
    assert 1 <= sum(work["scored"].values()) and work["iterations"] >= 1, work
    # the screen's path and the trained model's misfit behind that choice (residuals over noise)
    assert ude.info["screened_on"] in {"model", "data"} and ude.info["screen_misfit"] > 0
    assert ude.forecast is not None and ude.forecast.shape == shape
    assert "interval_error" not in ude.info, ude.info["interval_error"]
    band = ude.info["interval"]
    assert band["n_samples"] == 50 and band["n_failed"] <= 25, band
    assert 0 < band["residual_dependence"]["effective_share"] <= 1  # what its Laplace counted
    assert band["noise_blocks"]["applied"] is False  # one condition: no blocks to compare
    assert ude.lower.shape == ude.upper.shape == shape and np.all(ude.lower <= ude.upper)
    node = NeuralODE(overrides=["trainer.max_epochs=10", "optim.warm_start_steps=50"]).fit(problem)
    assert node.spec is None and node.forecast_states == ["x", "y"]
    assert node.forecast is not None and node.forecast.shape == shape
    assert math.isfinite(node.seconds)
    assert list(tmp_path.iterdir()) == []  # no checkpoints/ (or anything) left behind


def test_one_simulator_guards_the_forecasts_of_candidate_models():
    """The benchmark forecasts with ude's simulator (simulate_spec): a model that blows up
    in finite time, or needs too many solver calls, is a failed forecast (None)."""
    from ude.benchmark.methods import integrate

    problem = build_problem(Scenario("lotka_volterra", n_times=20))
    x0 = problem.forecast_initial
    assert integrate(LV, problem, x0).shape == (len(problem.forecast_times), 2)
    blow_up = lv_like("x**2", "-y")  # x' = x^2: x(t) = x0 / (1 - x0 t) leaves in finite time
    assert integrate(blow_up, problem, x0) is None
    assert integrate(LV, problem, x0, max_calls=10) is None


def test_a_distillation_without_a_twin_scores_as_a_failure_not_as_a_missing_cell():
    """A ude cell whose distillation found no twin must count: F1 0 and no forecast of its
    own (the trained hybrid's is scored under its own name), or the means would leave it out."""
    from ude.benchmark.methods import MethodResult
    from ude.benchmark.suite import Cell, score

    scenario = Scenario("lotka_volterra", n_times=20)
    problem = build_problem(scenario)
    result = MethodResult(
        None,
        ["x", "y"],
        None,
        1.0,
        info={"distill_error": "NoSolvableTwin: none of the 3 candidate twins ..."},
        other_forecasts={"hybrid": problem.true_forecast()},
    )
    row = score(Cell(scenario, "base", "ude"), problem, result)
    assert row["f1"] == row["f1_unknown"] == 0.0 and row["exact"] is False
    assert row["coef_error"] == 1.0 and row["forecast_nmse"] == math.inf
    assert row["forecast_nmse_hybrid"] == 0.0
