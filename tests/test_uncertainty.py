"""Forecast bands of a refitted twin by the Laplace approximation (ude.distill.uncertainty)."""

from __future__ import annotations

import numpy as np
import pytest

from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.uncertainty import LaplaceInterval, laplace, regularised_inverse
from ude.model.solver import SolverFailed
from ude.spec import ModelSpec

K, X0, SIGMA = 0.5, 2.0, 0.05
DECAY = ModelSpec.from_dict(
    {
        "states": ["x"],
        "parameters": {"k": {"value": K, "learn": True}},
        "equations": {"x": "-k*x"},
    }
)
TIMES = np.linspace(0, 4, 41)
GRID = np.linspace(0, 8, 41)  # the data's window and as far again


def _decay_data(seed: int, initial: dict | None = None) -> Measurements:
    rng = np.random.default_rng(seed)
    values = X0 * np.exp(-K * TIMES) + SIGMA * rng.standard_normal(len(TIMES))
    return Measurements(
        times=TIMES,
        values=values[None, :, None, None],
        observables=["x"],
        conditions=["c0"],
        initial=initial or {},
    )


def _refit(spec: ModelSpec, data: Measurements, noise: float):
    result = TwinRefit(max_iter=60).fit(spec, data, noise=np.array([noise]))
    assert result.ok
    return result.model


def _gauss_newton(model, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Large-sample covariance of (k, x0) for x = x0 exp(-k t) with Gaussian noise,
    sigma^2 (J'J)^-1 at the fitted values, and the Jacobian J on ``times``."""
    k = float(model.parameters_.learned["k"].detach())
    x0 = float(model.initial[0, 0].detach())
    sigma = float(model.noise[0].detach())

    def jac(t):
        e = np.exp(-k * t)
        return np.stack([-t * x0 * e, e], axis=1)

    J = jac(TIMES)
    return sigma**2 * np.linalg.inv(J.T @ J), jac(times)


def test_laplace_sd_matches_the_large_sample_formula():
    """For x' = -k x the Laplace sd of k and x0 equals sigma^2 (J'J)^-1 up to the residual
    curvature terms (O(sigma / sqrt(n)) relative: under 3 % here), and that of log sigma is
    1/sqrt(2n). A Hessian of the mean NLL instead of the sum would be off by sqrt(41)."""
    data = _decay_data(seed=0)
    model = _refit(DECAY, data, SIGMA)
    sd = laplace(model, data).std()
    cov, _ = _gauss_newton(model, TIMES)
    assert sd["k"] == pytest.approx(np.sqrt(cov[0, 0]), rel=0.03)
    assert sd["x(t0)[0]"] == pytest.approx(np.sqrt(cov[1, 1]), rel=0.03)
    assert sd["log_noise[x]"] == pytest.approx(1 / np.sqrt(2 * len(TIMES)), rel=0.03)


@pytest.mark.slow  # refits over several seeds
def test_band_width_and_coverage_of_the_true_trajectory_over_seeds():
    """Over 20 noise seeds: the band's half-width is 1.96 delta-method sds (within 12 %: the
    2.5/97.5 % quantiles of 200 draws scatter by about 8 %), and the band holds the true
    trajectory at 0.95 of the points on average (>= 0.8: 20 seeds whose coverages are near 0
    or 1 give a standard error of about 0.06; the MLE's sigma is also a little small)."""
    coverage, width = [], []
    for seed in range(20):
        data = _decay_data(seed)
        model = _refit(DECAY, data, SIGMA)
        band = LaplaceInterval(n_samples=200, seed=seed).forecast(model, data, GRID)
        assert band.n_failed == 0 and band.lower.shape == (1, len(GRID), 1)
        coverage.append(band.coverage(X0 * np.exp(-K * GRID)[None, :, None]))
        cov, J = _gauss_newton(model, GRID)
        sd = np.sqrt(np.einsum("ti,ij,tj->t", J, cov, J))
        width.append(np.median((band.upper - band.lower)[0, :, 0] / 2 / (1.96 * sd)))
    assert 0.88 < np.median(width) < 1.12, width
    assert 0.8 <= np.mean(coverage), coverage


def test_known_initial_state_stays_fixed():
    """An initial value the data give gets no gradient: it is held, so the band has zero width
    at t=0 and the covariance has no row for it."""
    data = _decay_data(seed=1, initial={"x": np.array([X0])})
    model = _refit(DECAY, data, SIGMA)
    band = LaplaceInterval(n_samples=50).forecast(model, data, GRID)
    names = band.laplace.names
    assert not band.laplace.free[names.index("x(t0)[0]")]
    assert band.lower[0, 0, 0] == band.upper[0, 0, 0] == X0
    assert band.upper[0, -1, 0] > band.lower[0, -1, 0]


def test_diverging_draws_are_counted_outside_the_band_not_dropped():
    """x' = c x^2 fitted to flat data: draws with c x0 t > 1 blow up before t = 20
    (x = x0 / (1 - c x0 t)); exactly those fail, and they stay in the band as draws outside
    it: the band is finite until more than 5 % of the draws have escaped and unbounded from
    then on; where some but fewer have, it is wider than the survivors' own 95 % band."""
    spec = ModelSpec.from_dict(
        {
            "states": ["x"],
            "parameters": {"c": {"value": 0.0, "learn": True}},
            "equations": {"x": "c*x**2"},
        }
    )
    times = np.linspace(0, 1, 21)
    rng = np.random.default_rng(0)
    data = Measurements(
        times=times,
        values=(1 + 0.1 * rng.standard_normal(len(times)))[None, :, None, None],
        observables=["x"],
        conditions=["c0"],
    )
    model = _refit(spec, data, 0.1)
    t_end = 20.0
    band = LaplaceInterval(n_samples=200).forecast(model, data, np.linspace(0, t_end, 101))
    names = band.laplace.names
    c, x0 = band.samples[:, names.index("c")], band.samples[:, names.index("x(t0)[0]")]
    blows_up = c * x0 * t_end > 1
    assert 0 < band.n_failed < 100
    np.testing.assert_array_equal(band.failed, blows_up)
    escaped = band.escaped[0]  # (time,)
    assert escaped[0] == 0 and escaped[-1] == pytest.approx(band.n_failed / 200)
    past = escaped > 0.05 + 1e-9  # (exactly 5 % escaped still leaves a finite band)
    assert np.all(np.isfinite(band.upper[0, ~past])) and np.all(np.isinf(band.upper[0, past]))
    assert np.isinf(band.upper[0, -1])
    assert band.unbounded_from()[0] == band.times[np.argmax(past)]
    assert band.usable  # bounded at the start


def test_draws_are_solved_one_by_one_when_the_batch_fails(monkeypatch):
    """A stiff draw can exhaust the batched solve's step budget: then each draw is solved
    alone, which gives the same band."""
    data = _decay_data(seed=2)
    model = _refit(DECAY, data, SIGMA)
    interval = LaplaceInterval(n_samples=20)
    batched = interval.forecast(model, data, GRID)
    solve, calls = model.solver, []

    class FirstCallFails:
        def __call__(self, func, y0, t):
            calls.append(len(y0))
            if len(y0) == 20:  # the batch of all draws (the Hessian's solve has one row)
                raise SolverFailed("too many steps")
            return solve(func, y0, t)

    monkeypatch.setattr(model, "solver", FirstCallFails())
    alone = interval.forecast(model, data, GRID)
    # the first forecast's Laplace approximation is reused (same model, data and values):
    # no Hessian solve, the batch of all draws, then each draw alone
    assert calls == [20] + [1] * 20
    np.testing.assert_allclose(alone.lower, batched.lower, rtol=1e-5)
    np.testing.assert_allclose(alone.upper, batched.upper, rtol=1e-5)

    class AllFail:
        def __call__(self, func, y0, t):
            calls.append(len(y0))
            raise SolverFailed("too many steps")

    calls.clear()
    monkeypatch.setattr(model, "solver", AllFail())
    dead = interval.forecast(model, data, GRID)
    assert calls == [20] + [1] * 11  # gives up once more than half the draws failed
    assert dead.n_failed == 20


def test_non_positive_definite_hessian_is_floored():
    """A negative and a zero eigenvalue are raised to the floor (relative to the largest): the
    covariance is positive definite, the well-determined direction keeps 1/eigenvalue."""
    H = np.diag([4.0, -1.0, 0.0])
    cov, n_floored = regularised_inverse(H, eigen_floor=1e-6)
    assert n_floored == 2
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    np.testing.assert_allclose(np.diag(cov), [0.25, 1 / 4e-6, 1 / 4e-6])
