"""Personalisation's priors: a new subject's initial states under the population of those the
twin fitted, in the MAP and in its band (ude.twin.personalise, HybridODE.prior_nll)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from ude.data.doses import read_doses
from ude.data.measurements import Measurements
from ude.data.tables import read_measurements
from ude.model.hybrid import build_hybrid
from ude.model.solver import Solver
from ude.spec import ModelSpec
from ude.twin import Twin
from ude.twin.band import Gaussian
from ude.twin.personalise import initial_population
from ude.twin.twin import TwinCondition

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "virtual_population"
TRUTH = json.loads((DATA / "truth.json").read_text())
EARLY_END = 4.0  # the last of new_patient.csv's three samples (h)
R0_SPREAD = 0.05  # the training patients' initial responses: 5 plus this times a normal


def test_the_initial_states_prior_is_their_gaussian_nll():
    """Each learned initial state with a finite sd adds its Gaussian NLL; known ones and
    infinite sds add nothing; a subset of the conditions keeps its rows of the prior."""
    spec = ModelSpec.from_dict(
        {"states": ["A", "B"], "parameters": {"k": 0.3}, "equations": {"A": "-k*A", "B": "k*A"}}
    )
    times = np.linspace(0, 2, 5)
    m = Measurements(times, np.ones((3, 5, 1, 1)), ["A"], ["a", "b", "c"])
    m.initial = {"B": np.array([0.0, np.nan, np.nan])}  # known for a only
    model = build_hybrid(spec, m, Solver("dopri5"))
    with torch.no_grad():
        model.initial.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.5], [3.0, -1.0]]))
    none = float(model.prior_nll().detach())
    mean = torch.tensor([[1.5, 9.0], [1.5, 0.0], [1.5, 0.0]])
    sd = torch.tensor([[0.5, 1.0], [0.5, 2.0], [math.inf, 2.0]])
    model.set_initial_prior(mean, sd)
    expected = sum(
        norm.logpdf(x, mu, s)
        for x, mu, s in [(1.0, 1.5, 0.5), (2.0, 1.5, 0.5), (0.5, 0.0, 2.0), (-1.0, 0.0, 2.0)]
    )  # B of a is known, A of c has no prior
    assert float(model.prior_nll().detach()) - none == pytest.approx(-expected, rel=1e-6)
    two = model.select_conditions([2, 1])
    expected = norm.logpdf(-1.0, 0.0, 2.0) + norm.logpdf(2.0, 1.5, 0.5) + norm.logpdf(0.5, 0, 2)
    assert float(two.prior_nll().detach()) - none == pytest.approx(-expected, rel=1e-6)


def _band(variance: float) -> Gaussian:
    return Gaussian(["k", "R(0)"], [True, False], np.zeros(2), np.diag([0.01, variance]))


def test_the_initial_states_population_is_net_of_each_fit_s_error():
    """The spread of fitted initial states less the mean of their fits' variances, plus the
    mean's own variance: 4.9, 5.0, 5.1, 5.2 have a variance of 1/60 and their mean one of
    1/240; with fits of variance 0.01 a new subject's is 1/150 + 1/240, with 0.02 (more than
    the values' spread) only the mean's 1/240; values all alike: held (0); one condition:
    none (infinite)."""
    spec = ModelSpec.from_dict(
        {"states": ["A", "R"], "parameters": {"k": 0.3}, "equations": {"A": "-k*A", "R": "-R"}}
    )
    values = [4.9, 5.0, 5.1, 5.2]

    def twin(variance: float | None, n: int = 4) -> Twin:
        conditions = [
            TwinCondition(
                f"c{i}", {"A": 0.0, "R": v}, band=None if variance is None else _band(variance)
            )
            for i, v in enumerate(values[:n])
        ]
        return Twin(spec, conditions)

    mean, sd = initial_population(twin(0.01))["R"]
    assert mean == pytest.approx(5.05) and sd == pytest.approx(math.sqrt(1 / 150 + 1 / 240))
    assert initial_population(twin(None))["R"][1] == pytest.approx(math.sqrt(1 / 60 + 1 / 240))
    assert initial_population(twin(0.02))["R"][1] == pytest.approx(math.sqrt(1 / 240))
    assert initial_population(twin(0.01))["A"] == (0.0, 0.0)
    assert initial_population(twin(0.01, n=1))["R"] == (4.9, math.inf)


def _virtual_population_twin() -> Twin:
    """The virtual population's generating model as a twin (bench/personal.py's oracle), its
    30 patients' initial responses 5 + R0_SPREAD times a normal quantile (as a twin's fits
    scatter around the true baseline of 5)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from personal import truth_twin

    names = sorted(TRUTH["patients"])
    doses = read_doses(DATA / "doses.csv", ["A", "R"], dict.fromkeys(names, 48.0))
    z = np.random.default_rng(0).permutation(norm.ppf((np.arange(len(names)) + 0.5) / len(names)))
    return truth_twin(
        [
            TwinCondition(p, {"A": 0.0, "R": 5.0 + R0_SPREAD * z[i]}, {}, doses[p])
            for i, p in enumerate(names)
        ]
    )


def _forecast_nmse(personal: Twin, times: np.ndarray, observed: dict[str, np.ndarray]) -> float:
    """bench/personal.py's NMSE: each observable's MSE over its measurements' variance,
    averaged."""
    table = personal.simulate(np.union1d([0.0], times), band=False).set_index("time").loc[times]
    return float(np.mean([np.mean((table[o] - y) ** 2) / np.var(y) for o, y in observed.items()]))


def test_three_early_samples_forecast_within_twice_the_whole_series(tmp_path):
    """The held-out patient's first samples come 1, 2 and 4 h after the start: a free initial
    response traded against the effect (R(0) 4.88, Emax 0.54 against 5 and 0.59) and its
    forecast of the later samples was 3.9 times worse than that of the whole series. Under the
    population of initial states (sd R0_SPREAD) the issue's target, within 2x, holds on the
    true model, and the band's R(0) is no wider than that population. The command's
    individual.csv has numbers (the negative effect's bounds were written as np.float64(...))."""
    from ude.twin.cli import personalise_main

    twin = _virtual_population_twin()
    options = dict(
        conditions=DATA / "new_patient_conditions.csv", doses=DATA / "new_patient_doses.csv"
    )
    twin.save(tmp_path / "run")
    few = personalise_main(
        [str(tmp_path / "run"), f"data.path={DATA / 'new_patient.csv'}"]
        + [f"data.{k}={v}" for k, v in options.items()]
    )
    table = pd.read_csv(tmp_path / "run" / "personal" / "new_patient" / "individual.csv")
    row = table.set_index("parameter").loc["E"]
    assert row["lower_95"] < row["value"] < row["upper_95"] < 0
    whole = twin.personalise(DATA / "new_patient_full.csv", **options)
    m = read_measurements(DATA / "new_patient_full.csv", twin.spec, **options)
    later = m.times > EARLY_END
    observed = {o: m.values[0, later, 0, j] for j, o in enumerate(m.observables)}
    ratio = _forecast_nmse(few, m.times[later], observed) / _forecast_nmse(
        whole, m.times[later], observed
    )
    assert ratio < 2.0
    band = few.conditions[0].band
    k = band.entries.index("R(0)")
    assert math.sqrt(band.covariance[k, k]) <= R0_SPREAD * 1.05
    r0 = few.conditions[0].initial["R"]
    assert abs(r0 - 5.0) < 2 * R0_SPREAD


def test_the_bench_compares_emax_only_for_a_twin_with_one_effect_term():
    """bench/personal.py reads Emax off a twin whose effect is one term c*A/(A + K) with c
    individual; a twin whose effect is a sum of saturations has no one Emax (it used to
    report the first term's as if it were the whole effect)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from personal import effect_parameter

    class Equations:
        individual = ["kel", "c_R_2", "c_R_4"]

        def __init__(self, r: str):
            self.r = r

        def to_dict(self) -> dict:
            return {"equations": {"R": self.r}}

    name, k, factor = effect_parameter(Equations("1.0 - 0.2*R + c_R_2*A/(A + 17.4)"))
    assert name == "c_R_2" and k == pytest.approx(17.4) and factor == pytest.approx(1.0)
    two = Equations("1.0 - 0.2*R + c_R_2*A/(A + 17.4) + c_R_4*A/(A + 105.5)")
    name, k, factor = effect_parameter(two)
    assert name is None and math.isnan(k) and math.isnan(factor)
