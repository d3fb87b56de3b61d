"""Bayesian sparse regression of the distilled terms (ude/uq): a known answer, chains that
converge, the convergence diagnostics themselves, the NUTS reference, convergence reported and
warned about, the settings that turn it off or make it cheaper."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from ude.conf import CONF_DIR
from ude.distill.cli import make_mixture, make_regression, summary
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
    as they should be). A short run (a tenth of the default sweeps)."""
    problem, w = _problem()
    post = HorseshoeRegression(num_samples=200, warmup=200, thin=5, seed=0).fit(problem, "x")
    incl, ci = post.inclusion(), post.intervals()
    assert incl["t0"] >= 0.95 and incl["t5"] >= 0.95, incl
    assert incl["t6"] <= 0.1 and incl["t7"] <= 0.1, incl
    for j in (0, 5):
        lo, hi = ci[f"t{j}"]
        assert lo <= w[j] <= hi, (j, lo, hi)
    assert set(post.rhat) == set(post.ess) == set(post.tail_ess) == {*problem.terms, "sigma", "tau"}
    assert post.draws.shape == (4, 200, 8) and post.divergences == 0


def test_a_free_rate_law_is_named_with_the_constants_of_its_column():
    """The screen fits a Hill term's K and n; the posterior names the term at them, as the
    twin's terms are named (the benchmark matches a Hill n within 10 % of the truth's)."""
    from ude.distill.library import HillLibrary

    problem, _ = _problem()
    (repression,) = [t for t in HillLibrary(activation=False)._terms(["z"])]
    problem.laws = {3: repression}
    problem.constants = {3: {"K": 1.2, "n": 9.6}}
    post = HorseshoeRegression(num_samples=20, warmup=20, thin=1, seed=0).fit(problem, "x")
    assert "z**9.6" in post.terms[3] and "5.75" in post.terms[3], post.terms  # 1.2**9.6
    assert "Abs" not in post.terms[3] and "K" not in post.terms[3]
    assert post.terms[:3] == problem.terms[:3] and set(post.inclusion()) == set(post.terms)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_default_chains_converge(seed):
    """With the default settings (4 chains of 1000 draws, every tenth of 10 000 sweeps) the
    chains agree: rank-normalised R-hat at most 1.01 for every coefficient, sigma and the
    global scale tau (the slowest in any horseshoe), and at least 400 effective draws, bulk
    and tail (Vehtari et al. 2021's thresholds for reporting 95 % intervals)."""
    problem, _ = _problem(seed=seed)
    post = HorseshoeRegression(seed=seed).fit(problem, "x")
    assert max(post.rhat.values()) <= 1.01, post.rhat
    assert post.min_ess >= 400 and post.ess["tau"] >= 400, (post.ess, post.tail_ess)
    assert post.n_draws == 4000


def test_diagnostics_on_known_chains():
    """Independent normal draws: R-hat near 1 and about as many effective draws as draws; an
    AR(1) chain with phi = 0.8: (1 - phi) / (1 + phi) = 1/9 of them; chains stuck at different
    places, or one with twice the spread of the others: R-hat far above 1.01."""
    from ude.uq.diagnostics import bulk_ess, rhat, tail_ess

    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 2000))
    assert rhat(iid) < 1.005
    assert 0.85 * iid.size < bulk_ess(iid) < 1.15 * iid.size
    assert 0.7 * iid.size < tail_ess(iid) < 1.3 * iid.size
    ar = np.zeros((4, 20000))
    for t in range(1, ar.shape[1]):
        ar[:, t] = 0.8 * ar[:, t - 1] + rng.standard_normal(4)
    assert 0.8 < bulk_ess(ar) / (ar.size / 9) < 1.2, bulk_ess(ar)
    shifted = iid + np.array([0.0, 0.0, 0.0, 0.5])[:, None]
    assert rhat(shifted) > 1.02
    wide = iid * np.array([1.0, 1.0, 1.0, 2.0])[:, None]  # same centre: only the tail R-hat sees it
    assert rhat(wide) > 1.02
    pinned = np.zeros((4, 100))
    assert rhat(pinned) == 1.0 and bulk_ess(pinned) == 400


@pytest.mark.slow
def test_gibbs_agrees_with_nuts_on_the_published_prior():
    """The Gibbs sampler's prior differs from Piironen & Vehtari's in the local scales' tail
    only (ude/uq/gibbs.py): on the known problem NUTS (pyro) on the published prior gives the
    same inclusion probabilities, within what 200 NUTS draws resolve (0.1 on a probability of
    about 0.2), and the same intervals of the true terms to within a tenth of their width."""
    problem, _ = _problem()
    gibbs = HorseshoeRegression(seed=0).fit(problem, "x")
    nuts = HorseshoeRegression(
        num_samples=100, warmup=100, chains=2, sampler="nuts", max_tree_depth=5, seed=0
    ).fit(problem, "x")
    assert nuts.sampler == "nuts" and nuts.draws.shape == (2, 100, 8)
    for t, p in gibbs.inclusion().items():
        assert abs(p - nuts.inclusion()[t]) <= 0.1, (t, p, nuts.inclusion()[t])
    for t in ("t0", "t5"):
        (lo, hi), (nlo, nhi) = gibbs.intervals()[t], nuts.intervals()[t]
        assert abs(lo - nlo) < 0.1 * (hi - lo) + 0.02 and abs(hi - nhi) < 0.1 * (hi - lo) + 0.02


def test_bad_settings_name_the_fix():
    with pytest.raises(UdeError, match="gibbs, nuts"):
        HorseshoeRegression(sampler="hmc")
    with pytest.raises(UdeError, match="thin"):
        HorseshoeRegression(thin=0)


@pytest.mark.parametrize("sampler", ["gibbs", "nuts"])
def test_the_samplers_leave_global_random_state_alone(sampler):
    import torch

    torch.manual_seed(5)
    np.random.seed(5)
    expected, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(5)
    np.random.seed(5)
    problem, _ = _problem()
    HorseshoeRegression(num_samples=10, warmup=10, chains=1, sampler=sampler).fit(problem)
    assert torch.equal(torch.rand(3), expected)
    assert np.array_equal(np.random.rand(3), expected_np)


def test_the_same_seed_gives_the_same_draws():
    problem, _ = _problem()
    a, b = (HorseshoeRegression(50, 50, seed=3).fit(problem).draws for _ in range(2))
    assert np.array_equal(a, b)


def test_section_and_warnings():
    """distill.json's uq section holds every term, and an unconverged chain is a warning the
    summary line shows."""
    problem, _ = _problem()
    section, _ = bayesian_terms({"x": problem}, HorseshoeRegression(10, 10, chains=2))
    assert section["method"].startswith("horseshoe with a Gaussian slab")
    entry = section["targets"]["x"]
    assert set(entry["terms"]) == set(problem.terms)
    assert {"max_rhat", "min_ess", "divergences", "sampler"} <= set(entry)
    assert {"inclusion", "interval", "rhat", "ess", "tail_ess"} <= set(entry["terms"]["t0"])
    bad = {"targets": {"x": {**entry, "max_rhat": 1.2, "min_ess": 500.0}}}
    (line,) = uq_warnings(bad)
    assert "R-hat 1.200 > 1.01" in line
    good = {"targets": {"x": {**entry, "max_rhat": 1.001, "min_ess": 500.0}}}
    assert uq_warnings(good) == []
    metrics = {"discovered": {"x": "x"}, "timings": {"total_seconds": 1.0}, "uq": bad}
    metrics["uq"]["warnings"] = uq_warnings(bad)
    assert "UQ WARNING: x's horseshoe posterior did not converge" in summary(metrics)
    metrics["predictive_band"] = {
        "level": 0.95,
        "structures": [{}, {}],
        "coverage_of_truth": 0.97,
        "unbounded_from": [7.89],
        "warnings": ["the 95% predictive band is unbounded from t=7.89: ..."],
    }
    line = summary(metrics)
    assert "covers 97% of the truth up to t=7.89 (unbounded past it)" in line
    assert "UQ WARNING: the 95% predictive band is unbounded from t=7.89" in line


def test_distill_uq_none_and_fast():
    """On by default; ``enabled: false`` or ``distill.uq=none`` turns it off, ``fast`` is the
    cheaper preset, anything else names the choices; building it and sampling with the
    default (Gibbs) sampler do not import pyro."""
    node = OmegaConf.create(
        {"seed": 4, "distill": OmegaConf.load(CONF_DIR / "distill" / "default.yaml")}
    )
    default = make_regression(node.distill)  # the default node: on
    node.distill.uq.enabled = False
    assert make_regression(node.distill) is None
    node.distill.uq.enabled = True
    assert make_regression(node.distill).seed == default.seed
    assert default.seed == 4 and default.chains >= 2 and default.sampler == "gibbs"
    band = make_mixture(node.distill)
    node.distill.uq = "fast"
    fast = make_regression(node.distill)
    # the horseshoe stays converged (it costs under a second); the band's draws are fewer
    assert fast.chains >= 2 and fast.seed == 4
    assert make_mixture(node.distill).n_samples < band.n_samples
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
        "n.distill.uq.enabled = True; r = make_regression(n.distill);"
        "import numpy as np; from ude.distill.integral import IntegralProblem;"
        "F = np.random.default_rng(0).standard_normal((20, 3));"
        "c = np.zeros(20, int); r.num_samples = r.warmup = 10;"
        "r.fit(IntegralProblem(F=F, y=F[:, 0], condition=c, terms=['a', 'b', 'c'],"
        " from_data=True)); print('pyro' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_term_and_nothing_to_explain():
    """One library term carrying the signal: included, its interval around the true 2 (noise
    0.1 on 20 points: a standard error near 0.02); a target the condition intercepts explain
    exactly: no term included and a zero coefficient, not a fit to rounding noise."""
    rng = np.random.default_rng(0)
    F = rng.standard_normal((20, 1))
    cond = np.repeat([0, 1], 10)
    regression = HorseshoeRegression(num_samples=200, warmup=200, thin=2)
    signal = 2.0 * F[:, 0] + 0.1 * rng.standard_normal(20)
    post = regression.fit(IntegralProblem(F, signal, cond, ["a"], True))
    lo, hi = post.intervals()["a"]
    assert post.inclusion()["a"] == 1.0 and lo < 2.0 < hi and hi - lo < 0.2
    flat = np.where(cond == 0, 1.0, 2.0)
    post = regression.fit(IntegralProblem(F, flat, cond, ["a"], True))
    assert post.inclusion()["a"] == 0.0 and np.abs(post.intervals()["a"]).max() < 1e-12
