"""Bayesian sparse regression of the distilled terms (ude/uq): a known answer, convergence
reported and warned about, the settings that turn it off or make it cheaper."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from ude.conf import CONF_DIR
from ude.distill.cli import make_regression, summary
from ude.distill.integral import IntegralProblem
from ude.errors import UdeError
from ude.uq import HorseshoeRegression, bayesian_terms, uq_warnings


def _problem(noise: float = 0.05, seed: int = 0) -> tuple[IntegralProblem, np.ndarray]:
    """Two conditions with their own intercepts, eight candidate columns: powers of time
    (correlated with each other) and sines; the truth uses the first power and one sine."""
    rng = np.random.default_rng(seed)
    n = 40
    t = np.linspace(0, 4, n)
    cond = np.repeat([0, 1], n // 2)
    powers = [t**k * (1 + 0.3 * cond) for k in range(1, 5)]
    sines = [np.sin(k * t) for k in range(1, 5)]
    F = np.stack(powers + sines, axis=1)
    w = np.zeros(8)
    w[0], w[5] = 1.5, -0.8
    y = 0.7 * cond + F @ w + noise * rng.standard_normal(n)
    terms = [f"t{k}" for k in range(8)]
    return IntegralProblem(F=F, y=y, condition=cond, terms=terms, from_data=True), w


def test_horseshoe_includes_the_true_terms_and_covers_their_coefficients():
    """At 5 % noise on 40 points (signal ~ 1.5 over time 4) the true terms explain most of
    the spread: their inclusion is certain and their 95 % intervals hold the true values,
    while sines the data do not need stay out (the powers correlated with t are less sure,
    as they should be). Two chains report R-hat and ESS."""
    problem, w = _problem()
    post = HorseshoeRegression(num_samples=80, warmup=80, chains=2, seed=0).fit(problem, "x")
    incl, ci = post.inclusion(), post.intervals()
    assert incl["t0"] >= 0.95 and incl["t5"] >= 0.95, incl
    assert incl["t6"] <= 0.1 and incl["t7"] <= 0.1, incl
    for j in (0, 5):
        lo, hi = ci[f"t{j}"]
        assert lo <= w[j] <= hi, (j, lo, hi)
    assert set(post.rhat) == {*problem.terms, "sigma", "tau"}
    # 160 draws: the coefficients and sigma mix (the global scale tau, slower, is apart)
    assert post.max_rhat < 1.1 and post.min_ess > 20, (post.rhat, post.ess)
    assert post.draws.shape == (2, 80, 8)


def test_the_sampler_leaves_torch_random_state_alone():
    import torch

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    problem, _ = _problem()
    HorseshoeRegression(num_samples=10, warmup=10, chains=1).fit(problem)
    assert torch.equal(torch.rand(3), expected)


def test_section_and_warnings():
    """distill.json's uq section holds every term, and an unconverged chain is a warning the
    summary line shows."""
    problem, _ = _problem()
    section, _ = bayesian_terms({"x": problem}, HorseshoeRegression(10, 10, chains=2))
    entry = section["targets"]["x"]
    assert set(entry["terms"]) == set(problem.terms)
    assert {"max_rhat", "min_ess", "divergences"} <= set(entry)
    bad = {"targets": {"x": {**entry, "max_rhat": 1.2, "min_ess": 500.0}}}
    (line,) = uq_warnings(bad)
    assert "R-hat 1.200 > 1.01" in line
    good = {"targets": {"x": {**entry, "max_rhat": 1.001, "min_ess": 500.0}}}
    assert uq_warnings(good) == []
    metrics = {"discovered": {"x": "x"}, "timings": {"total_seconds": 1.0}, "uq": bad}
    metrics["uq"]["warnings"] = uq_warnings(bad)
    assert "UQ WARNING: x's horseshoe posterior did not converge" in summary(metrics)


def test_distill_uq_none_and_fast():
    """``distill.uq=none`` turns it off, ``fast`` is the cheaper preset, anything else names
    the choices; building it does not import pyro."""
    node = OmegaConf.create(
        {"seed": 4, "distill": OmegaConf.load(CONF_DIR / "distill" / "default.yaml")}
    )
    assert make_regression(node.distill) is None  # off by default (enabled: false)
    node.distill.uq.enabled = True
    default = make_regression(node.distill)
    assert default.seed == 4 and default.chains >= 2
    node.distill.uq = "fast"
    fast = make_regression(node.distill)
    assert fast.num_samples * fast.warmup < default.num_samples * default.warmup
    assert fast.seed == 4
    node.distill.uq = "none"
    assert make_regression(node.distill) is None
    node.distill.uq = None
    assert make_regression(node.distill) is None
    node.distill.uq = "fastest"
    with pytest.raises(UdeError, match="none, fast"):
        make_regression(node.distill)
    code = (
        "import sys; from omegaconf import OmegaConf; from ude.distill.cli import make_regression;"
        f"d = OmegaConf.load('{CONF_DIR}/distill/default.yaml');"
        "n = OmegaConf.create({'seed': 0, 'distill': d});"
        "make_regression(n.distill); print('pyro' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
