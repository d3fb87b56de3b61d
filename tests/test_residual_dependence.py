"""Residuals that are not independent hold fewer independent entries than the Laplace
approximation's Hessian counts (ude.distill.residual_dependence): serially correlated
residuals and replicates that miss together shrink the data's precision; independent ones
leave it as it was."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.test_uncertainty import SIGMA, TIMES, _decay_data
from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.residual_dependence import dependence, residual_dependence
from ude.distill.uncertainty import laplace, prior_hessian
from ude.spec import ModelSpec


def _ar1(rho: float, shape: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """Unit-variance AR(1) along axis 1 of ``(condition, time, replicate, observable)``."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(shape)
    x = np.empty(shape)
    x[:, 0] = e[:, 0]
    for t in range(1, shape[1]):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * e[:, t]
    return x


def test_independent_residuals_keep_every_entry():
    """White noise over 3 conditions x 30 times x 2 observables, 200 draws: the factor is 1 in
    at least 95 % of them (each correction tests its estimate at about 2.3 %) and never
    below 0.6."""
    factors = [dependence(_ar1(0.0, (3, 30, 1, 2), seed)).factor for seed in range(200)]
    assert np.mean(np.equal(factors, 1.0)) >= 0.95
    assert min(factors) > 0.6


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_serially_correlated_residuals_count_as_the_ar1_effective_sample(rho):
    """AR(1) residuals with correlation rho over 8 x 200 times: the estimate is rho within
    0.05 and the factor (1 - rho) / (1 + rho) within 20 %."""
    found = dependence(_ar1(rho, (8, 200, 1, 1), seed=0))
    assert found.serial == pytest.approx(rho, abs=0.05)
    assert found.factor == pytest.approx((1 - rho) / (1 + rho), rel=0.2)


def test_replicates_that_miss_together_count_as_one_mean():
    """4 replicates sharing a part with intra-class correlation 0.5 (white in time): the
    replicate means' mean square is 1 + 3 * 0.5 = 2.5 times the entries', so the share is
    0.4 within 10 %; independent replicates keep 1."""
    rng = np.random.default_rng(2)
    shared = rng.standard_normal((2, 200, 1, 3))
    own = rng.standard_normal((2, 200, 4, 3))
    together = np.sqrt(0.5) * shared + np.sqrt(0.5) * own
    assert dependence(together).replicate_share == pytest.approx(0.4, rel=0.1)
    assert dependence(together).serial_used == 0.0
    assert dependence(own).replicate_share == 1.0


def test_unmeasured_entries_are_skipped_and_short_series_estimate_nothing():
    """NaN entries drop out (a series' measured times stay consecutive); three times give two
    pairs: no serial correction however correlated they look."""
    x = _ar1(0.8, (2, 60, 1, 1), seed=3)
    holes = x.copy()
    holes[:, ::7] = np.nan
    assert dependence(holes).serial == pytest.approx(dependence(x).serial, abs=0.1)
    short = np.ones((1, 3, 1, 1))
    assert dependence(short).factor == 1.0


def _misfit_data() -> Measurements:
    """x = 2 exp(-t/2) + 0.3 sin(t) with 5 % noise: a decay fits it with residuals that run
    in one direction for a stretch."""
    rng = np.random.default_rng(0)
    values = 2 * np.exp(-0.5 * TIMES) + 0.3 * np.sin(TIMES) + SIGMA * rng.standard_normal(41)
    return Measurements(
        times=TIMES, values=values[None, :, None, None], observables=["x"], conditions=["c0"]
    )


def _decay():
    return ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"k": {"value": 0.5, "learn": True}},
            "equations": {"x": "-k*x"},
        }
    )


def test_a_misfitting_twin_gets_a_wider_laplace_and_a_fitting_one_keeps_its_own():
    """The decay refitted to data with an oscillation it cannot follow: its residuals'
    correlation is found (over 0.5), and its Laplace sd of k is the independent one over
    sqrt(factor) (within 5 %: the ranges' weak prior is not scaled). Refitted to its own
    decay's data, nothing changes."""
    data = _misfit_data()
    model = TwinRefit(max_iter=60).fit(_decay(), data, noise=np.array([SIGMA])).model
    found = residual_dependence(model, data)
    assert found.serial > 0.5 and found.factor < 0.35
    approx = laplace(model, data)
    assert approx.dependence == found
    i = approx.names.index("k")
    H = approx.hessian
    free = approx.free
    independent = np.linalg.inv(H[np.ix_(free, free)])
    j = int(np.flatnonzero(free).tolist().index(i))
    assert np.sqrt(approx.covariance[i, i]) == pytest.approx(
        np.sqrt(independent[j, j] / found.factor), rel=0.05
    )
    clean = _decay_data(seed=0)
    fitted = TwinRefit(max_iter=60).fit(_decay(), clean, noise=np.array([SIGMA])).model
    assert laplace(fitted, clean).dependence.factor == 1.0


def test_the_priors_hessian_is_not_scaled():
    """A Gaussian prior of sd 0.1 on the initial state: :func:`prior_hessian` gives its
    precision 100 on that entry and nothing else, which the Laplace keeps whole."""
    data = _misfit_data()
    model = TwinRefit(max_iter=60).fit(_decay(), data, noise=np.array([SIGMA])).model
    model.set_initial_prior(np.array([[2.0]]), np.array([[0.1]]))
    names = laplace(model, data).names
    _, H = prior_hessian(model)
    i = names.index("x(t0)[0]")
    expected = np.zeros_like(H)
    expected[i, i] = 100.0
    np.testing.assert_allclose(H, expected, atol=1e-9)


def test_the_band_records_the_share_and_the_summary_says_when_it_applied():
    """distill.json's forecast_interval keeps the residuals' dependence of the misfitting
    decay (its effective share under 0.35); the summary line says the band counts that share
    of the entries, and says nothing where the share is 1."""
    from ude.distill.cli import summary
    from ude.distill.report import forecast_band
    from ude.distill.uncertainty import LaplaceInterval

    data = _misfit_data()
    model = TwinRefit(max_iter=60).fit(_decay(), data, noise=np.array([SIGMA])).model
    result = SimpleNamespace(model=model)  # what forecast_band reads of a distillation
    _, info = forecast_band(LaplaceInterval(n_samples=50), result, data, TIMES, ["x"], None)
    share = info["residual_dependence"]["effective_share"]
    assert share < 0.35
    metrics = {"discovered": {"x": "-0.5*x"}, "timings": {"total_seconds": 1.0}, "failures": []}
    line = summary(metrics | {"forecast_interval": info | {"coverage_of_truth": 1.0}})
    assert f"the band counts {share:.0%} of the entries as independent" in line
    info["residual_dependence"]["effective_share"] = 1.0
    line = summary(metrics | {"forecast_interval": info | {"coverage_of_truth": 1.0}})
    assert "independent" not in line
