"""Noise that differs between conditions (ude.distill.noise_blocks): the Laplace
approximation takes the sandwich's precision where the conditions' series scatter unevenly
about the refit, and keeps the Hessian's where they scatter alike."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_residual_dependence import _decay
from tests.test_uncertainty import TIMES
from ude.data import Measurements
from ude.distill import TwinRefit
from ude.distill.noise_blocks import noise_blocks, sandwich_precision
from ude.distill.residual_dependence import standardised_residuals
from ude.distill.uncertainty import laplace

K = 0.5
STARTS = np.array([2.0, 0.5, 0.5, 0.5])
"""Four conditions of a decay: the first carries most of the information on k."""


def _uneven_data(noise: np.ndarray, seed: int = 0) -> Measurements:
    rng = np.random.default_rng(seed)
    clean = STARTS[:, None] * np.exp(-K * TIMES)[None, :]
    values = clean + noise[:, None] * rng.standard_normal(clean.shape)
    return Measurements(
        times=TIMES,
        values=values[:, :, None, None],
        observables=["x"],
        conditions=[f"c{i}" for i in range(len(STARTS))],
    )


def test_even_noise_leaves_the_hessian_in_at_least_95_percent_of_draws():
    """White noise with one level over 8 conditions x 30 times x 3 observables, 200 draws:
    the ratios' dispersion stays within chance (the correction does not apply) in at least
    95 % of them."""
    applies = [
        noise_blocks(np.random.default_rng(s).standard_normal((8, 30, 1, 3))).applies
        for s in range(200)
    ]
    assert np.mean(applies) <= 0.05


def test_uneven_noise_is_found_block_by_block():
    """One condition of four scattering three times as much: its ratio is near 9 / 3 = 3
    over the pooled mean square (9 + 1 + 1 + 1) / 4, the others near 1/3, and it applies.
    One condition alone is a single block per observable: ratios 1, nothing applies."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal((4, 1000, 1, 2))
    r[0] *= 3.0
    found = noise_blocks(r)
    assert found.applies
    np.testing.assert_allclose(found.ratios[0], 3.0, rtol=0.15)
    np.testing.assert_allclose(found.ratios[1:], 1 / 3, rtol=0.15)
    alone = noise_blocks(r[:1])
    assert not alone.applies and np.all(alone.ratios == 1.0) and alone.df == 0


def test_short_blocks_count_as_ratio_one():
    """A condition measured at three times has no ratio of its own (1); the other two are
    compared between themselves."""
    r = np.random.default_rng(2).standard_normal((3, 40, 1, 1))
    r[2, 3:] = np.nan
    found = noise_blocks(r)
    assert found.ratios[2, 0] == 1.0 and found.df == 1


def test_the_sandwich_precision_is_h_b_inverse_h():
    """For B = sum_b s_b H_b and H = sum_b H_b (random positive definite blocks), the
    precision is H B^-1 H; with every s_b equal to c it is H / c."""
    rng = np.random.default_rng(3)
    parts = [(lambda a: a @ a.T)(rng.standard_normal((4, 6))) for _ in range(3)]
    s = np.array([0.2, 1.0, 3.0])
    H = sum(parts)
    B = sum(si * p for si, p in zip(s, parts, strict=True))
    expected = H @ np.linalg.solve(B, H)
    np.testing.assert_allclose(sandwich_precision(H, B, (0.2, 3.0)), expected, rtol=1e-8)
    np.testing.assert_allclose(sandwich_precision(H, 2.0 * H, (2.0, 2.0)), H / 2.0, rtol=1e-8)


def _gauss_newton_sandwich_sd(model, data, ratios) -> float:
    """The sandwich standard deviation of k by hand: J_b of x0_b exp(-k t) in (k, x0_0..3),
    H = sum J_b'J_b, B = sum s_b J_b'J_b (the common noise level cancels)."""
    k = float(model.parameters_.typical()["k"])
    x0 = model.initial.detach().numpy()[:, 0]
    H, B = np.zeros((5, 5)), np.zeros((5, 5))
    for b in range(len(x0)):
        J = np.zeros((len(TIMES), 5))
        J[:, 0] = -TIMES * x0[b] * np.exp(-k * TIMES)
        J[:, 1 + b] = np.exp(-k * TIMES)
        H += J.T @ J
        B += ratios[b, 0] * J.T @ J
    sigma2 = float(model.noise[0].detach()) ** 2
    cov = sigma2 * np.linalg.solve(H, B) @ np.linalg.inv(H)
    return float(np.sqrt(cov[0, 0]))


def _three_sds(noise: np.ndarray) -> tuple[float, float, float]:
    """The decay refitted to four conditions with these noise levels (the ratios scatter
    beyond chance): the Laplace sd of k, the plain Hessian's and the sandwich's by hand."""
    data = _uneven_data(noise)
    model = TwinRefit(max_iter=200).fit(_decay(), data).model
    approx = laplace(model, data)
    assert approx.noise_blocks.applies
    ratios = noise_blocks(standardised_residuals(model, data)).ratios
    i = approx.names.index("k")
    plain = np.sqrt(np.linalg.inv(approx.hessian[np.ix_(approx.free, approx.free)])[i, i])
    return approx.std()["k"], plain, _gauss_newton_sandwich_sd(model, data, ratios)


def test_the_laplace_of_a_decay_with_uneven_noise_is_the_sandwich():
    """The informative condition ten times as noisy as the others: the Laplace sd of k is the
    Gauss-Newton sandwich's by hand (within 5 %) and over 1.5 times the plain Hessian's; with
    the same noise in every condition the correction does not apply."""
    sd, plain, by_hand = _three_sds(np.array([0.2, 0.02, 0.02, 0.02]))
    assert sd == pytest.approx(by_hand, rel=0.05)
    assert sd > 1.5 * plain
    even = _uneven_data(np.full(4, 0.05), seed=4)
    fitted = TwinRefit(max_iter=200).fit(_decay(), even).model
    assert not laplace(fitted, even).noise_blocks.applies


def test_the_sandwich_never_narrows_the_laplace():
    """The informative condition the quietest (the others ten times as noisy): the sandwich
    alone would make k more precise than the Hessian says; the Laplace keeps the Hessian's sd
    (within 2 %: the ranges' weak prior), though the ratios scatter beyond chance."""
    sd, plain, by_hand = _three_sds(np.array([0.02, 0.2, 0.2, 0.2]))
    assert by_hand < 0.8 * plain
    assert sd == pytest.approx(plain, rel=0.02)


def test_the_band_records_the_blocks_and_the_summary_says_when_they_applied():
    """distill.json's forecast_interval keeps the blocks' record; the summary line names the
    sandwich where it applied and says nothing of it where it did not."""
    from types import SimpleNamespace

    from ude.distill.cli import summary
    from ude.distill.report import forecast_band
    from ude.distill.uncertainty import LaplaceInterval

    data = _uneven_data(np.array([0.2, 0.02, 0.02, 0.02]))
    model = TwinRefit(max_iter=200).fit(_decay(), data).model
    result = SimpleNamespace(model=model)
    _, info = forecast_band(LaplaceInterval(n_samples=50), result, data, TIMES, ["x"], None)
    blocks = info["noise_blocks"]
    assert blocks["applied"] is True and blocks["max_ratio"] > 3 > 0.3 > blocks["min_ratio"]
    metrics = {"discovered": {"x": "-0.5*x"}, "timings": {"total_seconds": 1.0}, "failures": []}
    line = summary(metrics | {"forecast_interval": info | {"coverage_of_truth": 1.0}})
    assert "noise differs between conditions" in line and "sandwich" in line
    info["noise_blocks"]["applied"] = False
    line = summary(metrics | {"forecast_interval": info | {"coverage_of_truth": 1.0}})
    assert "sandwich" not in line
