"""Inclusion probabilities describe the twin that was chosen: they come from resampling the
data the selection chose it on, with the selection's own rule."""

from __future__ import annotations

import numpy as np
import pytest

from ude import simulate_measurements
from ude.distill import BootstrapInclusion, Candidate, PolynomialLibrary, TwinRefit
from ude.distill.bootstrap import squared_residuals
from ude.distill.refit import RefitResult
from ude.distill.selection import NoSolvableTwin, Scored, TrajectorySelector
from ude.distill.selection import information_criterion as ic
from ude.spec import ModelSpec

TERMS = {"x": PolynomialLibrary(2).fit(["x", "y"]).terms_}  # x, y, x**2, x*y, y**2


def scored(support: list[int], nmse: float, ok: bool = True) -> Scored:
    coef = np.zeros(5)
    coef[support] = 1.0
    refit = RefitResult(None, {}, nmse if ok else np.inf, 100, ok, 0)
    crit = ic(nmse, 100, len(support)) if ok else np.inf
    return Scored(Candidate({"x": coef}, "path"), refit, crit, len(support))


def residuals(nmse: float, seed: int) -> np.ndarray:
    """100 squared residuals with mean ``nmse``."""
    r = np.random.default_rng(seed).chisquare(1, 100)
    return nmse * r / r.mean()


def test_the_chosen_twins_terms_are_in_the_table_with_the_resamples_choice():
    """A twin with x*y that fits 5x better than a rival with y**2: every resample chooses it,
    whatever a sparse regression on network samples would keep; a third candidate whose refit
    failed is never chosen."""
    selector = TrajectorySelector()
    path = [scored([3], 0.01), scored([4], 0.05), scored([4, 0], 0.001, ok=False)]
    res = [residuals(0.01, 0), residuals(0.05, 1), None]
    chosen = selector.choose(path, [s.criterion for s in path])
    assert chosen is path[0]
    table = BootstrapInclusion(n_models=50).inclusion(
        path, res, selector.choose, "bic", chosen, TERMS
    )
    assert table == {"x": {"x*y": 1.0}}


def test_near_ties_share_the_probability_and_the_twin_is_listed_even_when_rarely_chosen():
    selector = TrajectorySelector(tolerance=0.0)
    path = [scored([3], 0.0100), scored([4], 0.0101)]
    res = [residuals(0.0100, 0), residuals(0.0101, 1)]
    chosen = path[0]
    table = BootstrapInclusion(n_models=200).inclusion(
        path, res, selector.choose, "bic", chosen, TERMS
    )
    p = table["x"]
    assert set(p) == {"x*y", "y**2"} and p["x*y"] + p["y**2"] == pytest.approx(1.0)
    assert 0.1 < p["x*y"] < 0.9  # resamples split between the two near-equal fits


def test_the_selection_never_chooses_an_unsolvable_twin():
    selector = TrajectorySelector()
    sparse_failed = scored([3], 0.0, ok=False)
    dense = scored([0, 3, 4], 0.02)
    assert selector.choose([sparse_failed, dense], [-np.inf, dense.criterion]) is dense
    with pytest.raises(NoSolvableTwin, match="none of the 1 candidate twins"):
        selector.choose([sparse_failed], [sparse_failed.criterion])


def test_resampled_residuals_reproduce_the_refits_own_score():
    """With every entry drawn once the bootstrap's score is the selection's: the residuals
    are those the refit measured its NMSE on."""
    m = simulate_measurements("lotka_volterra", noise=0.05, seed=3)
    twin = ModelSpec.from_dict(
        {
            "states": ["x", "y"],
            "parameters": {"b": {"value": 0.8, "learn": True}, "g": {"value": 0.7, "learn": True}},
            "equations": {"x": "1.3*x - b*x*y", "y": "g*x*y - 1.8*y"},
        }
    )
    refit = TwinRefit(max_iter=40, method="rk4").fit(twin, m)
    s = Scored(Candidate({}, "true"), refit, ic(refit.nmse, refit.n_points, 2), 2)
    r = squared_residuals(s, m)
    assert len(r) == refit.n_points == 62
    assert np.mean(r) == pytest.approx(refit.nmse, rel=1e-9)


def test_a_free_term_is_named_at_the_twins_constants_where_the_twin_has_it():
    """Goodwin's base cell: the screen fitted the Hill repression at n = 13.1, the twin's
    refit at n = 9.4; the inclusion table named it at 13.1, a term the twin does not have (and
    the benchmark scored its inclusion as a false term's). Now a term of the twin is named at
    the twin's constants, any other at the screen's."""
    from ude.distill.distiller import _shown_constants
    from ude.distill.library import HillLibrary

    fitted = {"x": {0: {"K": 0.07, "n": 13.1}, 1: {"K": 0.5, "n": 2.0}}}
    final = {"x": {0: {"K": 0.11, "n": 9.4}}}
    term = next(t for t in HillLibrary(variables=["z"]).fit(["z"]).terms_ if "K**n/" in t.name)
    named = term.numeric(_shown_constants(fitted, final, "x", 0))
    assert "**9.4 " in str(named) and "13.1" not in str(named)
    assert _shown_constants(fitted, final, "x", 1) == {"K": 0.5, "n": 2.0}
    assert _shown_constants(fitted, final, "y", 0) == {}
