"""The Laplace band where the data do not bound every direction: the parameters' ranges bound
it instead (ude.uq.parameter_ranges), on the parameters' own scale, and the band stays finite
with the width those ranges give (the repressilator's band had all 200 draws fail: 19
directions got e^±200 on a log scale)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import truncnorm

from tests.test_uncertainty import GRID, SIGMA, _decay_data  # x = 2 exp(-t/2), 5 % noise
from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.uncertainty import LaplaceInterval, laplace
from ude.spec import ModelSpec
from ude.uq.parameter_ranges import DECADES, entry_ranges, truncated_gaussian


def _refit(spec: dict, data: Measurements):
    result = TwinRefit(max_iter=60).fit(ModelSpec.from_dict(spec), data, noise=np.array([SIGMA]))
    assert result.ok
    return result.model


def test_a_rate_the_data_never_see_gets_the_band_its_bounds_give():
    """z' = -d z, z unobserved, d log10-scaled in [0.01, 1]: the NLL does not depend on d, so
    its Hessian is zero up to the solver's rounding (its row couples only through the shared
    adaptive steps). The raw logit's floored variance put its draws at the box's two ends;
    now its draws are its prior, the uniform over the box by its variance
    (sd ln(100)/√12 on ln d) truncated to the box, and z's band at time t is exactly
    exp(-t d) at that distribution's 97.5 and 2.5 % quantiles. Tolerance: 0.15 on ln d, about
    four standard errors of a 2.5 % quantile of 1000 draws."""
    spec = {
        "states": ["x", "z"],
        "parameters": {
            "k": {"value": 0.3, "learn": True},
            "d": {"value": 0.1, "learn": True, "min": 0.01, "max": 1.0, "scale": "log10"},
        },
        "equations": {"x": "-k*x", "z": "-d*z"},
    }
    data = _decay_data(0, initial={"z": np.array([1.0])})
    model = _refit(spec, data)
    band = LaplaceInterval(n_samples=1000).forecast(model, data, GRID)
    approx = band.laplace
    assert band.n_failed == 0
    assert approx.n_prior_bounded == 1 and approx.n_floored == 0
    i = approx.names.index("d")
    assert approx.free[i]
    lo, hi = math.log(0.01), math.log(1.0)
    sd = (hi - lo) / math.sqrt(12)
    centre = math.log(0.1)
    q_lo, q_hi = truncnorm.ppf([0.025, 0.975], (lo - centre) / sd, (hi - centre) / sd, centre, sd)
    # the draws fill the box as the prior does: the old raw-logit draws sat at its two ends
    ln_d = entry_ranges(model).natural(band.samples)[:, i]
    middle = (ln_d > lo + (hi - lo) / 4) & (ln_d < hi - (hi - lo) / 4)
    a, b = (lo - centre) / sd, (hi - centre) / sd
    inner = np.diff(truncnorm.cdf([lo + (hi - lo) / 4, hi - (hi - lo) / 4], a, b, centre, sd))
    assert np.mean(middle) == pytest.approx(inner[0], abs=0.05)  # 3 sd of 1000 draws' share
    t = GRID[1:]  # z(0) = 1 is known
    z = 1  # the state z
    ln_d_upper = np.log(-np.log(band.lower[0, 1:, z]) / t)  # the band's low end: d's high one
    ln_d_lower = np.log(-np.log(band.upper[0, 1:, z]) / t)
    np.testing.assert_allclose(ln_d_upper, q_hi, atol=0.15)
    np.testing.assert_allclose(ln_d_lower, q_lo, atol=0.15)


def test_a_product_the_data_identify_keeps_its_band_and_its_factors_their_box():
    """x' = -a b x with a, b log10-scaled in [0.01, 100]: the data give a·b, nothing along
    a/b. The raw logit's null direction got a variance of 1/(1e-8 λ_max): draws at the
    bounds. Now the null direction is bounded by the prior (one direction), every draw lies
    in the box with ln a spread over it, and the band of x is that of the one-rate model
    x' = -k x, whose half-width is 1.96 delta-method sds from its own Laplace covariance of
    (x0, k) (median ratio within 10 %: the 2.5/97.5 % quantiles of 1000 draws scatter by
    about 4 %), none failing."""
    box = {"learn": True, "min": 0.01, "max": 100.0, "scale": "log10"}
    product = {
        "states": ["x"],
        "parameters": {"a": {"value": 1.0, **box}, "b": {"value": 0.4, **box}},
        "equations": {"x": "-a*b*x"},
    }
    one = {
        "states": ["x"],
        "parameters": {"k": {"value": 0.4, "learn": True}},
        "equations": {"x": "-k*x"},
    }
    data = _decay_data(0)
    twin, reference = _refit(product, data), _refit(one, data)
    band = LaplaceInterval(n_samples=1000).forecast(twin, data, GRID)
    assert band.n_failed == 0 and band.laplace.n_prior_bounded == 1
    names = band.laplace.names
    a = twin.parameters_.specs["a"]
    ln_a = entry_ranges(twin).natural(band.samples)[:, names.index("a")]
    assert np.all((ln_a >= math.log(a.min)) & (ln_a <= math.log(a.max)))
    assert np.std(ln_a) > 1.0  # the prior's spread (ln 1e4 / √12 = 2.7 before truncation)
    ref = laplace(reference, data)
    rows = [ref.names.index("x(t0)[0]"), ref.names.index("k")]
    x0, k = ref.mean[rows]
    J = np.stack([np.exp(-k * GRID), -GRID * x0 * np.exp(-k * GRID)], axis=1)
    sd = np.sqrt(np.einsum("ti,ij,tj->t", J, ref.covariance[np.ix_(rows, rows)], J))
    width = (band.upper - band.lower)[0, 1:, 0] / (2 * 1.96 * sd[1:])
    assert 0.9 < np.median(width) < 1.1, width


def test_ranges_of_the_entries():
    """A bounded log10 parameter's natural coordinate is ln of its value, its prior the box's
    uniform by its variance; an unbounded one has no prior; the noise level a log-scale prior
    over DECADES decades."""
    spec = {
        "states": ["x"],
        "parameters": {
            "a": {"value": 1.0, "learn": True, "min": 0.01, "max": 100.0, "scale": "log10"},
            "k": {"value": 0.4, "learn": True},
        },
        "equations": {"x": "-a*k*x"},
    }
    model = _refit(spec, _decay_data(0))
    ranges = entry_ranges(model)
    names = LaplaceInterval().prepare(model, _decay_data(0)).laplace.names
    raw = np.array([float(p.detach()) for p in model.parameters() if p.requires_grad])
    i, j = names.index("a"), names.index("k")
    value = float(model.parameters_.value("a").detach())
    assert ranges.natural(raw)[i] == pytest.approx(math.log(value))
    assert ranges.prior_sd[i] == pytest.approx(math.log(1e4) / math.sqrt(12))
    assert ranges.raw(ranges.natural(raw))[i] == pytest.approx(raw[i])
    assert math.isinf(ranges.prior_sd[j]) and not ranges.box[j]
    noise = names.index("log_noise[x]")
    assert ranges.prior_sd[noise] == pytest.approx(DECADES * math.log(10) / math.sqrt(12))


def test_truncated_gaussian_matches_rejection_sampling():
    """Two entries tied by the data (their sum's sd 0.01, their difference's 2.66), mean near a
    wall: the sampler's spread and quantiles match exact rejection sampling (within 5 % and
    0.1: 4000 draws)."""
    rng = np.random.default_rng(0)
    precision = np.eye(2) / 2.66**2 + 1e4 * np.outer([1, 1], [1, 1])
    mean, lower, upper = np.array([-3.5, 3.0]), np.full(2, -4.6), np.full(2, 4.6)
    x = truncated_gaussian(mean, precision, lower, upper, 4000, rng)
    cov = np.linalg.inv(precision)
    exact = rng.multivariate_normal(mean, cov, size=200_000)
    exact = exact[np.all((exact >= lower) & (exact <= upper), axis=1)]
    assert np.all((x >= lower) & (x <= upper))
    # one draw (a structure's share of a mixture's draws can be one)
    assert truncated_gaussian(mean, precision, lower, upper, 1, rng).shape == (1, 2)
    assert np.std(x[:, 0]) == pytest.approx(np.std(exact[:, 0]), rel=0.05)
    np.testing.assert_allclose(
        np.percentile(x[:, 0], [2.5, 50, 97.5]),
        np.percentile(exact[:, 0], [2.5, 50, 97.5]),
        atol=0.1,
    )


def test_the_summary_says_how_many_directions_the_ranges_bound():
    """distill.json's forecast_interval counts the directions bounded by the parameters'
    ranges rather than the data; the summary line says so (none: nothing said)."""
    from ude.distill.cli import summary

    band = {"level": 0.95, "n_samples": 200, "n_failed": 0, "bounded_share": 1.0}
    metrics = {"discovered": {"x": "-0.9*x*y"}, "timings": {"total_seconds": 1.0}, "failures": []}
    line = summary(metrics | {"forecast_interval": band | {"n_prior_bounded": 19}})
    assert "95% band: 19 parameter directions bounded by the parameters' ranges" in line
    assert "ranges" not in summary(metrics | {"forecast_interval": band | {"n_prior_bounded": 0}})


def _hill_tail() -> tuple[ModelSpec, Measurements]:
    """x' = c K^6 / (K^6 + z^6) - x/2, z' = -z/20 from z = 3: over the data z stays above 1.1,
    four times K = 0.3, where the term is c K^6 / z^6 (3 % noise)."""
    from scipy.integrate import solve_ivp

    times = np.linspace(0, 20, 41)
    c, K = 20 / 0.3**6, 0.3

    def rhs(t, y):
        return [c * K**6 / (K**6 + y[1] ** 6) - 0.5 * y[0], -0.05 * y[1]]

    sol = solve_ivp(rhs, (0, 20), [0.0, 3.0], t_eval=times, rtol=1e-10, atol=1e-12).y.T
    scale = np.abs(sol).max(axis=0)
    values = sol + 0.03 * scale * np.random.default_rng(0).standard_normal(sol.shape)
    data = Measurements(
        times=times, values=values[None, :, None, :], observables=["x", "z"], conditions=["c0"]
    )
    spec = ModelSpec.from_dict(
        {
            "states": ["x", "z"],
            "parameters": {
                "c": {"value": c, "learn": True},
                "K": {"value": K, "learn": True, "min": 0.1, "max": 30.0},
                "n": {"value": 6.0, "learn": True, "min": 1.0, "max": 15.0},
            },
            "equations": {"x": "c*K**n/(K**n + z**n) - 0.5*x", "z": "-0.05*z"},
        }
    )
    return spec, data


def test_a_hill_term_seen_only_in_its_tail_is_drawn_along_its_ridge():
    """The data give c K^n and n, not c and K apart (Goodwin's twin: K at the foot of its box,
    c = 3e9). On linear coordinates that ridge, c ∝ K^-n, is a curve no Gaussian follows: its
    draws had ln K within 0.04 of the fit while the data allow decades. Now K (a lin box of
    2.5 decades) is drawn on ln K, c (which multiplies it) on ln c with its sign, n on its own
    scale: ln K spreads over its box, ln c + n ln K stays within the data's 0.5 of the fit,
    every c is positive, and no draw fails over the data's window."""
    spec, data = _hill_tail()
    result = TwinRefit(max_iter=200).fit(spec, data, noise=np.array([1.2, 0.09]))
    assert result.ok
    model = result.model
    ranges = entry_ranges(model)
    band = LaplaceInterval(n_samples=400).forecast(model, data, data.times)
    names = band.laplace.names
    i, j, k = (names.index(s) for s in ("c", "K", "n"))
    assert ranges.log_box[j] and ranges.sign[i] == 1 and not ranges.log_box[k]
    assert ranges.sign[k] == 0 and ranges.sign[names.index("x(t0)[0]")] == 0
    assert band.n_failed == 0
    natural = ranges.natural(band.samples)
    c = band.samples[:, i]
    ln_K, n = natural[:, j], natural[:, k]
    assert np.all(c > 0)
    fitted = ranges.natural(band.laplace.mean)
    identified = np.log(c) + n * ln_K - (fitted[i] + fitted[k] * fitted[j])
    assert np.std(ln_K) > 1.0
    assert np.std(identified) < 0.5


def test_log_coordinates_differentiate_as_the_chain_rule_says():
    """slope and bend of a log box and a signed log against central differences of natural."""
    ranges = entry_ranges(TwinRefit(max_iter=1).fit(*_hill_tail()).model)
    raw = np.linspace(-1.5, 1.5, len(ranges.box))
    raw[ranges.sign != 0] = 3.0 * ranges.sign[ranges.sign != 0]  # on the sign's side
    h = 1e-4
    up, down, mid = ranges.natural(raw + h), ranges.natural(raw - h), ranges.natural(raw)
    first = (up - down) / (2 * h)
    second = (up - 2 * mid + down) / h**2
    np.testing.assert_allclose(ranges.slope(raw), first, rtol=1e-5)
    np.testing.assert_allclose(ranges.bend(raw) * ranges.slope(raw), second, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ranges.raw(mid), raw, rtol=1e-9)
