"""The Twin: each condition with its own fitted values, simulation with doses and a band,
personalisation of a new subject under the population, twin.json, SBML, and the commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from ude.data import read_measurements, write_conditions, write_wide
from ude.data.doses import Dose, write_doses
from ude.data.measurements import Measurements
from ude.distill import TwinRefit
from ude.distill.uncertainty import laplace
from ude.errors import UdeError
from ude.fit import predict
from ude.spec import ModelSpec, simulate_spec
from ude.twin import Twin
from ude.twin.symbolic import numeric_twin
from ude.twin.twin import TwinCondition

ROOT = Path(__file__).resolve().parents[1]
MEDIAN, SPREAD = 0.5, 0.4
SPEC = {
    "name": "decay",
    "states": ["A", "B"],
    "parameters": {
        "k": {"value": 0.3, "learn": True, "per_condition": True, "population": "lognormal"},
        "m": {"value": 0.1, "learn": True, "min": 0},
    },
    "observables": {"total": "A + B"},
    "equations": {"A": "-k*A", "B": "k*A - m*B"},
}
TIMES = np.linspace(0, 6, 13)


def truth(k: np.ndarray, times=TIMES, doses=None) -> np.ndarray:
    spec = ModelSpec.from_dict({**SPEC, "parameters": {"k": 0.5, "m": 0.2}})
    n = len(k)
    params = np.stack([k, np.full(n, 0.2)], axis=1)
    return simulate_spec(spec, np.tile([10.0, 0.0], (n, 1)), times, doses=doses, parameters=params)


@pytest.fixture(scope="module")
def fitted():
    """Ten conditions of A -> B, k lognormal (the normal quantiles times SPREAD), A measured
    with 1 % noise, A(0) = 10 and B(0) = 0 known; refitted with k under its population.
    Returns the Twin (as a distillation makes it), the refit and the true k."""
    n = 10
    rng = np.random.default_rng(1)
    k = MEDIAN * np.exp(rng.permutation(norm.ppf((np.arange(n) + 0.5) / n)) * SPREAD)
    states = truth(k)
    values = states[:, :, None, :1] + 0.1 * rng.standard_normal((n, len(TIMES), 1, 1))
    m = Measurements(TIMES, values, ["A"], [f"c{i}" for i in range(n)])
    m.initial = {"A": np.full(n, 10.0), "B": np.zeros(n)}
    spec = ModelSpec.from_dict(SPEC)
    result = TwinRefit(max_iter=200).fit(spec, m)
    twin_spec = numeric_twin(spec, result.values, False, result.individual, result.population)
    cov = laplace(result.model, m).covariance
    twin = Twin.from_distillation(twin_spec, result.model, spec, m, cov)
    return twin, result, k, m


def test_each_condition_is_simulated_with_its_own_values(fitted):
    """The twin's forecast of every condition is the fitted model's (same values, same
    initial states) to the solvers' tolerance, through Twin.simulate and through simulate_spec
    (the report's forecast); with the population's median instead it is 5-40 % off."""
    twin, result, k, m = fitted
    times = np.linspace(0, 12, 25)
    states, _ = predict(result.model, times)
    scale = np.abs(states).max()
    reference = simulate_spec(twin.spec, result.model.initial.detach().numpy(), times)
    np.testing.assert_allclose(reference, states, atol=1e-5 * scale)
    for c, name in enumerate(twin.condition_names):
        table = twin.simulate(times, condition=name, band=False)
        np.testing.assert_allclose(table[["A", "B"]].to_numpy(), states[c], atol=1e-5 * scale)
    typical = twin.simulate(times, initial={"A": 10.0, "B": 0.0}, band=False)
    off = np.abs(typical["A"].to_numpy()[None] - states[..., 0]).max(axis=1) / 10
    assert np.median(off) > 0.05


def test_twin_json_round_trips_with_populations_and_conditions(fitted, tmp_path):
    twin, result, k, _ = fitted
    raw = json.loads(json.dumps(twin.to_dict()))
    assert raw["population"]["k"]["median"] == pytest.approx(result.population["k"]["median"])
    assert raw["individual"] == {"k": pytest.approx(result.population["k"]["median"])}
    assert "k" in raw["equations"]["A"]  # the individual parameter stays a symbol
    assert raw["conditions"]["c3"]["parameters"]["k"] == pytest.approx(result.individual["k"][3])
    assert raw["parameters"]["m"] == pytest.approx(result.values["m"])
    twin.save(tmp_path)
    again = Twin.load(tmp_path)
    times = np.linspace(0, 8, 9)
    for name in ("c0", "c7"):
        a, b = twin.simulate(times, condition=name), again.simulate(times, condition=name)
        np.testing.assert_allclose(a.drop(columns=[]).to_numpy(), b.to_numpy(), rtol=1e-9)
    text = again.equations()
    assert "## Individual parameters" in text and "| c7 |" in text
    assert (tmp_path / "sbml" / "c7.xml").is_file() and (tmp_path / "twin.sbml").is_file()


def test_the_band_of_a_condition_is_narrower_than_the_population_band(fitted):
    twin, *_ = fitted
    times = np.linspace(0, 12, 25)
    own = twin.simulate(times, condition="c2")
    typical = twin.simulate(times, initial={"A": 10.0, "B": 0.0})
    assert own.attrs["band"] == "parameter uncertainty" and own.attrs["n_failed"] == 0
    assert typical.attrs["band"].startswith("between-subject")
    for t in (own, typical):
        assert (t["A_lower"] <= t["A"] + 1e-9).all() and (t["A"] <= t["A_upper"] + 1e-9).all()
    width = lambda t: float((t["B_upper"] - t["B_lower"]).mean())  # noqa: E731
    assert width(own) < width(typical) / 3


def test_doses_change_the_simulation_where_they_are_given(fitted):
    twin, *_ = fitted
    times = np.linspace(0, 10, 21)
    plain = twin.simulate(times, condition="c1", band=False)
    dosed = twin.simulate(
        times, condition="c1", doses=[Dose(4.0, "A", 5.0), Dose(6.0, "A", 2.0, 1.0)], band=False
    )
    before = times <= 4.0  # a sample at the dose's time is before it
    np.testing.assert_allclose(dosed["A"][before], plain["A"][before])
    assert (dosed["A"][~before] > plain["A"][~before]).all()
    k = twin.values("c1")["k"]
    after = plain["A"].to_numpy()[times == 5.0] + 5 * np.exp(-k)
    assert dosed["A"][times == 5.0].item() == pytest.approx(after.item(), rel=1e-5)
    with pytest.raises(UdeError, match="'X' is not a state"):
        twin.simulate(times, doses=[Dose(1.0, "X", 1.0)], initial={"A": 1, "B": 0})


def test_personalise_a_new_subject_from_three_early_samples(fitted, tmp_path):
    """A new subject one spread above the median: from A at 1, 2 and 3 h, its k is found
    within 5 % (noise 1 %), the typical value being 50 % off; the band holds its true
    trajectory; shared values and the population are the twin's."""
    twin, *_ = fitted
    k_new = MEDIAN * np.exp(SPREAD)
    early = np.array([1.0, 2.0, 3.0])
    values = truth(np.array([k_new]), np.concatenate([[0], early]))[:, 1:, None, :1]
    m = Measurements(early, values + 0.1 * np.array([0.3, -0.5, 0.2])[None, :, None, None],
                     ["A"], ["new"])  # fmt: skip
    m.initial = {"A": np.array([10.0]), "B": np.array([0.0])}
    personal = twin.personalise(m)
    assert personal.condition_names == ["new"]
    assert personal.values("new")["k"] == pytest.approx(k_new, rel=0.05)
    assert personal.population() == twin.population()
    assert personal.values()["m"] == pytest.approx(twin.values()["m"])
    assert personal.fit["iterations"] > 0 and np.isfinite(personal.fit["nmse"])
    times = np.linspace(0, 12, 25)
    table = personal.simulate(times)  # its only condition
    true = truth(np.array([k_new]), times)[0]
    inside = (true[:, 0] >= table["A_lower"] - 1e-6) & (true[:, 0] <= table["A_upper"] + 1e-6)
    assert inside.mean() > 0.9
    personal.save(tmp_path / "me")
    assert Twin.load(tmp_path / "me").values("new")["k"] == pytest.approx(
        personal.values("new")["k"]
    )


def test_each_condition_s_sbml_simulates_like_the_twin(fitted, tmp_path):
    """sbml/<condition>.xml carries that condition's own k, initial states and doses (as
    events): libroadrunner's simulation matches Twin.simulate."""
    roadrunner = pytest.importorskip("roadrunner")
    twin, *_ = fitted
    doses = (Dose(2.0, "A", 4.0), Dose(5.0, "A", 3.0, duration=2.0))
    dosed = Twin(
        twin.spec,
        [TwinCondition(c.name, c.initial, c.inputs, doses, c.band) for c in twin.conditions],
        twin.observed,
        twin.noise,
    )
    dosed.write_sbml(tmp_path)
    rr = roadrunner.RoadRunner(str(tmp_path / "sbml" / "c4.xml"))
    result = rr.simulate(0, 10, 41)
    times = np.asarray(result[:, 0])
    table = dosed.simulate(times, condition="c4", band=False)
    away = ~np.isin(np.round(times, 6), [2.0])  # roadrunner reports the state after a dose
    for s in ("A", "B"):  # amounts in a unit compartment: the concentration is the amount
        column = list(rr.timeCourseSelections).index(f"[{s}]")
        np.testing.assert_allclose(result[away, column], table[s][away], rtol=1e-3, atol=1e-3)


def _commands_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_the_commands_personalise_and_simulate(fitted, tmp_path):
    from ude.twin.cli import personalise_main, simulate_main

    twin, *_ = fitted
    twin.save(tmp_path / "run")
    new = Measurements(np.array([0.0, 1.0, 2.0]), np.array([10.0, 6.0, 3.7])[None, :, None, None],
                       ["A"], ["me"])  # fmt: skip
    new.initial = {"A": np.array([10.0]), "B": np.array([0.0])}
    data = write_wide(new, tmp_path / "me.csv")
    cond = write_conditions(new, tmp_path / "me_conditions.csv")
    write_doses({"me": (Dose(8.0, "A", 5.0),)}, tmp_path / "me_doses.csv")
    personal = personalise_main(
        [
            str(tmp_path / "run"),
            f"data.path={data}",
            f"data.conditions={cond}",
            f"data.doses={tmp_path / 'me_doses.csv'}",
            "t_end=20",
        ]  # fmt: skip
    )
    out = tmp_path / "run" / "personal" / "me"
    for f in ("twin.json", "fit.json", "individual.csv", "forecast.csv", "forecast.png"):
        assert (out / f).is_file(), f
    forecast = __import__("pandas").read_csv(out / "forecast.csv")
    assert forecast["time"].iloc[-1] == 20 and {"A_lower", "total_upper"} <= set(forecast)
    assert personal.conditions[0].doses == (Dose(8.0, "A", 5.0),)
    table = simulate_main([str(out), "initial.A=5", "doses=none", "t_end=10", "--name", "what_if"])
    assert (out / "simulate" / "what_if" / "simulation.csv").is_file()
    assert (out / "simulate" / "what_if" / "simulation.png").is_file()
    assert table["A"].iloc[0] == 5.0 and table.attrs["doses"] == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["{run}", "data.path={missing}"], "file not found"),
        (["{run}"], "no data.path"),
        (["{run}", "data.pth=x.csv"], "unknown setting 'data.pth'"),
        (["{nowhere}", "data.path=x.csv"], "twin file not found"),
    ],
)
def test_personalise_errors_are_one_line(fitted, tmp_path, args, expected):
    from ude.errors import one_line
    from ude.twin.cli import personalise_main

    fitted[0].save(tmp_path / "run")
    values = {"run": tmp_path / "run", "missing": tmp_path / "no.csv", "nowhere": tmp_path / "x"}
    with pytest.raises(UdeError) as err:
        personalise_main([a.format(**values) for a in args])
    assert expected in one_line(err.value)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["initial.Q=1"], "'Q' is not a state"),
        (["t_end=abc"], "t_end: expected a number"),
    ],
)
def test_simulate_errors_are_one_line(fitted, tmp_path, args, expected):
    from ude.errors import one_line
    from ude.twin.cli import simulate_main

    fitted[0].save(tmp_path / "run")
    with pytest.raises(UdeError) as err:
        simulate_main([str(tmp_path / "run"), *args])
    assert expected in one_line(err.value)


def test_simulate_errors_exit_2_from_the_command_line(fitted, tmp_path):
    """The command itself (one start-up: the other errors are checked in-process above)."""
    fitted[0].save(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "ude.simulate", str(tmp_path / "run"), "condition=nobody"],
        cwd=ROOT, env=_commands_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and "'nobody' is not a condition of the twin" in last[0]
    assert "Traceback" not in proc.stderr
    help_ = subprocess.run(
        [sys.executable, "-m", "ude.personalise", "--help"],
        cwd=ROOT, env=_commands_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert help_.returncode == 0 and "usage: python -m ude.personalise" in help_.stdout


def test_a_dosing_plan_is_read_for_the_simulated_condition(fitted, tmp_path):
    twin, *_ = fitted
    plan = tmp_path / "plan.csv"
    plan.write_text("time,state,amount\n1,A,2\n")
    table = twin.simulate(np.linspace(0, 10, 11), condition="c0", doses=str(plan), band=False)
    assert table.attrs["doses"] == [{"time": 1.0, "state": "A", "amount": 2.0, "duration": 0.0}]
    plan.write_text("time,state,amount\n1,A,2\n30,A,2\n")  # past the simulation's end
    with pytest.raises(UdeError, match="line 3, column 'time'.*after the horizon"):
        twin.simulate(np.linspace(0, 10, 11), condition="c0", doses=plan)


def test_read_measurements_starts_the_grid_at_the_first_dose(tmp_path):
    """Samples from 1 h on, the first dose at 0: the grid starts at 0, where the initial
    (pre-dose) states apply, and the dose is not lost."""
    data = tmp_path / "d.csv"
    data.write_text("condition,time,A\nx,1,6\nx,2,4\n")
    doses = tmp_path / "doses.csv"
    doses.write_text("condition,time,state,amount\nx,0,A,10\n")
    spec = tmp_path / "m.yaml"
    spec.write_text(
        json.dumps({"states": ["A"], "parameters": {"k": 0.5}, "equations": {"A": "-k*A"}})
    )
    m = read_measurements(data, spec, doses=doses)
    assert m.times.tolist() == [0.0, 1.0, 2.0] and np.isnan(m.values[0, 0]).all()


def test_draws_that_blow_up_make_the_band_unbounded_not_narrower(tmp_path):
    """x' = a x² blows up at t = 1/a (x(0) = 1): with a lognormal across subjects (median
    0.05, spread 1) a share P(a > 1/t) of the typical subject's draws has blown up by t, above
    the 5 % a 95 % band leaves out from t = 1/(0.05 e^1.645) = 3.9 on. The band is bounded
    before, unbounded from then on (it used to drop the blown-up draws and stay finite), and
    the plot shades it without stretching the axis to infinity."""
    from dataclasses import replace

    from ude.twin.plots import plot_simulation

    spec = ModelSpec.from_dict(
        {
            "name": "blow_up",
            "states": ["x"],
            "parameters": {
                "a": {
                    "value": 0.05,
                    "learn": True,
                    "per_condition": True,
                    "population": "lognormal",
                }
            },
            "equations": {"x": "a*x**2"},
        }
    )
    spec.parameters["a"] = replace(spec.parameters["a"], spread=1.0)
    table = Twin(spec).simulate(np.linspace(0, 10, 21), initial={"x": 1.0}, n_draws=400, seed=0)
    first = table.attrs["unbounded_from"]
    assert first is not None and 3.0 <= first <= 5.0
    before, after = table[table["time"] < first], table[table["time"] >= first]
    assert np.isfinite(before[["x_lower", "x_upper"]].to_numpy()).all()
    assert np.isinf(after["x_upper"]).all() and np.isinf(after["x_lower"]).all()
    assert np.allclose(table["x"], 1 / (1 - 0.05 * table["time"]))  # the median subject
    plot_simulation(table, tmp_path / "band.png", ["x"])
    assert (tmp_path / "band.png").stat().st_size > 0


def test_a_condition_s_band_keeps_each_parameter_within_its_bounds():
    """x' = -a x with a in [0.01, 1], its Gaussian on log a centred at 0.5 with sd 1.5: the
    untruncated draws reach a = 9.5 (x(1) = 7e-5); within the bounds x(1) >= e^-1. The draws
    are the Gaussian truncated to the box (about 1.5 sd above the mean: a third of the
    untruncated mass lies past it), and a twin without bounds draws as before."""
    from ude.twin.band import Gaussian

    def twin(bounds: dict) -> Twin:
        spec = ModelSpec.from_dict(
            {
                "name": "decay",
                "states": ["x"],
                "parameters": {"a": {"value": 0.5, "learn": True, **bounds}},
                "equations": {"x": "-a*x"},
            }
        )
        band = Gaussian(["a"], [True], np.array([np.log(0.5)]), np.array([[1.5**2]]))
        return Twin(spec, [TwinCondition("c0", {"x": 1.0}, band=band)])

    times = np.array([0.0, 1.0])
    bounded = twin({"min": 0.01, "max": 1.0}).simulate(times, condition="c0", n_draws=400)
    assert bounded["x_lower"].iloc[1] >= np.exp(-1.0) - 1e-6
    assert bounded["x_upper"].iloc[1] <= np.exp(-0.01) + 1e-6
    draws = twin({}).conditions[0].band.sample(2000, np.random.default_rng(1), set(), {})
    inside = twin({})._draws(0, set(), 2000, 1)[1]
    np.testing.assert_array_equal(draws["a"], inside["a"])  # no bounds: the plain Gaussian
    assert draws["a"].max() > 3.0
    boxed = (
        twin({})
        .conditions[0]
        .band.sample(2000, np.random.default_rng(1), set(), {"a": (0.01, 1.0)})["a"]
    )
    assert 0.01 <= boxed.min() and boxed.max() <= 1.0
    # the truncated log-normal's median: P(a < m | a <= 1) = 1/2
    p_inside = norm.cdf(np.log(2.0) / 1.5)
    m = 0.5 * np.exp(1.5 * norm.ppf(0.5 * p_inside))
    assert abs(np.median(boxed) / m - 1) < 0.1
