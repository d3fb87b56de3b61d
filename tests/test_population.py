"""Population parameters: a per-condition parameter under a learned lognormal (or normal)
population, its random effects penalised by it (MAP, as in nonlinear mixed-effects models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import norm

from ude.data.measurements import Measurements
from ude.distill import TwinRefit
from ude.errors import UdeError
from ude.model.parameters import MIN_SPREAD, SpecParameters
from ude.spec import ModelSpec, simulate_spec


def spec(parameters: dict) -> ModelSpec:
    return ModelSpec.from_dict(
        {"states": ["A"], "parameters": parameters, "equations": {"A": "-k*A"}}, source="p.yaml"
    )


POP = {"k": {"value": 0.5, "learn": True, "per_condition": True, "population": "lognormal"}}


def test_a_population_parameter_reads_and_writes():
    p = spec({"k": {**POP["k"], "spread": 0.2, "min": 0}}).parameters["k"]
    assert (p.population, p.spread, p.per_condition) == ("lognormal", 0.2, True)
    again = ModelSpec.from_dict(spec({"k": {**POP["k"], "spread": 0.2}}).to_dict())
    assert again.parameters["k"] == spec({"k": {**POP["k"], "spread": 0.2}}).parameters["k"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"value": 0.5, "learn": True, "population": "lognormal"}, "per_condition: true"),
        ({**POP["k"], "population": "gamma"}, "unknown population 'gamma'"),
        ({**POP["k"], "max": 2}, "bounds do not apply"),
        ({**POP["k"], "min": 0.1}, "bounds do not apply"),
        ({**POP["k"], "value": -0.5}, "median of a lognormal population must be positive"),
        ({**POP["k"], "spread": 0}, "positive spread"),
        ({"value": 0.5, "learn": True, "spread": 0.2}, "a spread needs a population"),
        (
            {**POP["k"], "prior": {"dist": "normal", "mean": 1, "sd": 1}},
            "distribution is its prior",
        ),
    ],
)
def test_bad_population_parameters_are_refused(entry, message):
    with pytest.raises(UdeError, match="parameters.k") as err:
        spec({"k": entry})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_values_are_the_median_times_exp_of_the_random_effects():
    params = SpecParameters(spec({"k": {**POP["k"], "spread": 0.4}}).parameters, 3)
    eta = torch.tensor([-0.3, 0.0, 0.5], dtype=params.learned["k"].dtype)
    with torch.no_grad():
        params.learned["k"].copy_(eta)
    np.testing.assert_allclose(params.values()["k"], 0.5 * np.exp(eta.numpy()), rtol=1e-6)
    out = params(torch.tensor([2, 0]))[:, 0]
    np.testing.assert_allclose(out.detach().numpy(), 0.5 * np.exp([0.5, -0.3]), rtol=1e-6)
    pop = params.population()["k"]
    assert pop["median"] == pytest.approx(0.5) and pop["spread"] == pytest.approx(0.4)
    assert params.typical()["k"] == pytest.approx(0.5)
    # the population term: the random effects' normal density, the spread's log counted
    # over N - 1 conditions (the median is estimated from the same values)
    expected = -stats.norm(0, 0.4).logpdf(eta.numpy()).sum() - math.log(0.4)
    assert params.prior_nll().item() == pytest.approx(expected, rel=1e-6)
    # a normal population: mean + eta
    normal = {"k": {**POP["k"], "population": "normal", "spread": 0.1}}
    params = SpecParameters(spec(normal).parameters, 2)
    with torch.no_grad():
        params.learned["k"].copy_(torch.tensor([0.1, -0.2]))
    np.testing.assert_allclose(params.values()["k"], [0.6, 0.3], rtol=1e-6)


def test_fitted_values_start_a_model_and_subsets_keep_theirs():
    p = spec(POP).parameters["k"]
    from dataclasses import replace

    params = SpecParameters({"k": replace(p, values=(0.4, 0.5, 0.8))}, 3)
    np.testing.assert_allclose(params.values()["k"], [0.4, 0.5, 0.8], rtol=1e-6)
    params.select(torch.tensor([2, 0]))
    np.testing.assert_allclose(params.values()["k"], [0.8, 0.4], rtol=1e-6)
    fixed = SpecParameters({"k": replace(p, learn=False, values=(1.0, 2.0))}, 2)
    assert fixed.values()["k"] == [1.0, 2.0] and not list(fixed.learned)
    with pytest.raises(ValueError, match="2 per-condition values for 3"):
        SpecParameters({"k": replace(p, values=(1.0, 2.0))}, 3)


def population_data(n: int = 12, spread: float = 0.4, noise: float = 0.01, seed: int = 0):
    """``n`` conditions of dA/dt = -k A from A(0) = 10, k lognormal (median 0.5): the random
    effects are the normal quantiles (their sample sd is ``spread`` up to 1 %), shuffled."""
    rng = np.random.default_rng(seed)
    eta = rng.permutation(norm.ppf((np.arange(n) + 0.5) / n)) * spread
    k = 0.5 * np.exp(eta)
    truth = spec({"k": 0.5})
    times = np.linspace(0, 6, 13)
    states = simulate_spec(truth, np.full((n, 1), 10.0), times, parameters=k[:, None])
    values = states[:, :, None, :] + noise * 10 * rng.standard_normal(states[:, :, None, :].shape)
    m = Measurements(times, values, ["A"], [f"c{i}" for i in range(n)])
    m.initial = {"A": np.full(n, 10.0)}
    return m, k


def test_the_refit_recovers_the_population_median_and_spread():
    """Twelve conditions, noise 1 % of the first value: at the MAP the median is the geometric
    mean of the fitted values and the spread their sample standard deviation on the log scale
    (n - 1: the REML-like count), to the optimiser's tolerance. Each k is then pinned by its own
    series to about 2 % (13 points, the late ones at 5 % of the first), so median and spread
    recover the true values' within 3 % and 5 %."""
    m, k = population_data()
    refit = TwinRefit(max_iter=200, method="rodas5p").fit(spec(POP), m)
    pop, fitted = refit.population["k"], np.log(refit.individual["k"])
    assert pop["median"] == pytest.approx(np.exp(np.mean(fitted)), rel=1e-4)
    assert pop["spread"] == pytest.approx(np.std(fitted, ddof=1), rel=1e-3)
    assert pop["median"] == pytest.approx(np.exp(np.mean(np.log(k))), rel=0.03)
    assert pop["spread"] == pytest.approx(np.std(np.log(k), ddof=1), rel=0.05)
    np.testing.assert_allclose(refit.individual["k"], k, rtol=0.05)
    assert refit.values["k"] == pytest.approx(pop["median"])  # the typical value


def test_the_population_shrinks_poorly_measured_conditions_towards_the_median():
    """A condition measured only at its first two times (k barely identified) is pulled to
    the population median: its estimate sits between its own least-squares value and the
    median, much nearer the median than a condition measured throughout."""
    m, k = population_data(noise=0.05)
    m.values[0, 2:] = np.nan
    pop = TwinRefit(max_iter=200, method="rodas5p").fit(spec(POP), m)
    alone = TwinRefit(max_iter=200, method="rodas5p").fit(
        spec({"k": {"value": 0.5, "learn": True, "per_condition": True, "min": 0}}), m
    )
    median = pop.population["k"]["median"]
    shrunk, free = pop.individual["k"][0], alone.individual["k"][0]
    assert abs(np.log(shrunk / median)) < abs(np.log(free / median))
    # a well-measured condition keeps its own value with or without the population
    assert pop.individual["k"][5] == pytest.approx(alone.individual["k"][5], rel=0.02)


def test_a_population_that_does_not_vary_leaves_the_others_at_their_map():
    """Two individual parameters, k varying between conditions and m the same in all (m
    barely matters: its term is small): m's spread goes to its floor (MIN_SPREAD; the joint
    density grows without bound as it shrinks), and k's population is still the MAP given
    its values, the geometric mean and log-scale sd. Before the refit alternated the
    populations' exact MAP with L-BFGS, k's spread came out at 2.5 (its values' sd: 0.39)."""
    m, k = population_data(noise=0.01)
    pop = {"learn": True, "per_condition": True, "population": "lognormal"}
    two = ModelSpec.from_dict(
        {
            "states": ["A"],
            "parameters": {"k": {"value": 0.3, **pop}, "m": {"value": 0.05, **pop}},
            "equations": {"A": "-k*A - m*A/(1 + A)"},
        }
    )
    refit = TwinRefit(max_iter=200, method="rodas5p").fit(two, m)
    fitted = np.log(refit.individual["k"])
    assert refit.population["k"]["median"] == pytest.approx(np.exp(fitted.mean()), rel=1e-3)
    assert refit.population["k"]["spread"] == pytest.approx(np.std(fitted, ddof=1), rel=1e-2)
    assert refit.population["k"]["spread"] == pytest.approx(np.std(np.log(k), ddof=1), rel=0.05)
    assert refit.population["m"]["spread"] == pytest.approx(MIN_SPREAD)
