"""The predictive band along a ridge the data do not bound (ude.uq.ridge): the enzyme's
binding ``-kf E S`` beside an unbinding ``kr C`` that fits as well from ``kr = 0`` out to
rapid equilibrium."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from ude.distill.refit import TwinRefit
from ude.uq.mixture import PredictiveBand
from ude.uq.ridge import chi2_margin, ridge_profiles, widen


def named_ridge(enzyme_refits) -> SimpleNamespace:
    """A distillation's parts as :func:`ridge_profiles` reads them: the twin ``E*S``, the
    selection's refit of ``C + E*S``, and the run's finding that ``E*S`` is identified only
    by parsimony beside ``C``."""
    alone, _, _ = enzyme_refits.fits["E*S"]
    both, _, owner = enzyme_refits.fits["C + E*S"]
    chosen = SimpleNamespace(
        candidate=SimpleNamespace(coef={"binding": np.array([0.0, 1.0])}, info={}), refit=alone
    )
    larger = SimpleNamespace(
        candidate=SimpleNamespace(coef={"binding": np.array([1.0, 1.0])}, info={"owner": owner}),
        refit=both,
    )
    names = {id(chosen): {"binding": "E*S"}, id(larger): {"binding": "C + E*S"}}
    found = [{"target": "binding", "term": "C", "structure": {"binding": "C + E*S"}}]
    return SimpleNamespace(
        chosen=chosen,
        path=[chosen, larger],
        model=alone.model,
        describe=lambda s: names[id(s)],
        identifiability={"by_parsimony": found},
    )


def twin_band(enzyme_refits) -> tuple[PredictiveBand, np.ndarray]:
    """A band that is the twin's own forecast from a fresh assay (no complex yet), with no
    width, and the true forecast beside it, both ``(1, time, state)``."""
    problem = enzyme_refits.problem
    alone, _, _ = enzyme_refits.fits["E*S"]
    idx = [problem.truth.states.index(s) for s in alone.model.spec.states]
    initial = problem.forecast_initial[idx][None]
    with torch.no_grad():
        forecast = alone.model.simulate(
            torch.as_tensor(problem.forecast_times), torch.tensor([0]), torch.as_tensor(initial)
        ).numpy()
    n_times = len(problem.forecast_times)
    band = PredictiveBand(
        times=problem.forecast_times,
        lower=forecast.copy(),
        median=forecast.copy(),
        upper=forecast.copy(),
        state_lower=forecast.copy(),
        state_upper=forecast.copy(),
        level=0.95,
        n_samples=1,
        n_failed=0,
        noise=np.zeros(len(idx)),
        escaped=np.zeros((1, n_times)),
    )
    truth = problem.true_forecast()[:, idx][None]
    return band, truth


def test_the_unbinding_coefficient_is_profiled_from_the_twin_out_to_rapid_equilibrium(
    enzyme_refits,
):
    """Held at 0 (the twin) and at half decades on either side, the others refitted: every
    value from 0 to -10^4 (unbinding up to rapid equilibrium) fits within the 95 % margin,
    the positive side (a complex that makes itself) stops at its first value beyond it."""
    result = named_ridge(enzyme_refits)
    data = enzyme_refits.problem.measurements
    (profile,) = ridge_profiles(result, data, TwinRefit(max_iter=100, criterion_tol=0.1))
    margin = chi2_margin(0.95)
    assert abs(margin - 3.841) < 1e-3
    assert profile.parameter == "c_binding_0" and profile.term == "C"
    assert profile.values == sorted(profile.values) and 0.0 in profile.values
    record = profile.as_dict(margin)
    assert record["kept_from"] <= -1000.0 and record["kept_to"] >= 0.0, record
    assert profile.fits[profile.values.index(0.0)] <= 2.0  # the twin is on the ridge
    assert profile.values[-1] > 0 and profile.fits[-1] > margin, record  # the side stopped


def test_the_band_is_widened_to_hold_the_forecasts_along_the_ridge(enzyme_refits):
    """From a fresh assay (no complex yet) the truth binds faster than the twin: a band that
    is the twin's forecast alone holds almost none of the true S and P; widened along the
    profile (the binding's speed the data do not fix) it holds at least 90 % of them."""
    problem = enzyme_refits.problem
    result = named_ridge(enzyme_refits)
    profiles = ridge_profiles(
        result, problem.measurements, TwinRefit(max_iter=100, criterion_tol=0.1)
    )
    band, truth = twin_band(enzyme_refits)
    measured = [0, 3]  # S and P

    def held() -> float:
        inside = (truth >= band.state_lower) & (truth <= band.state_upper)
        return float(inside[..., measured].mean())

    assert held() < 0.1
    states = list(result.model.spec.states)
    initial = problem.forecast_initial[[problem.truth.states.index(s) for s in states]][None]
    (record,) = widen(band, profiles, problem.forecast_times, initial, [0])
    assert record["forecasts_failed"] == 0 and record["term"] == "C"
    assert held() >= 0.9
    assert (band.lower <= band.state_lower).all() and (band.upper >= band.state_upper).all()


def test_nothing_is_profiled_where_nothing_was_named(enzyme_refits):
    """No term identified only by parsimony (or a named structure the path does not hold):
    no profile, and the band is left as it was."""
    result = named_ridge(enzyme_refits)
    data = enzyme_refits.problem.measurements
    refit = TwinRefit(max_iter=100, criterion_tol=0.1)
    result.identifiability = {"by_parsimony": [], "targets": {}}
    assert ridge_profiles(result, data, refit) == []
    result.identifiability = None
    assert ridge_profiles(result, data, refit) == []
    result.identifiability = {"by_parsimony": [{"term": "C", "structure": {"binding": "?"}}]}
    assert ridge_profiles(result, data, refit) == []
    band, _ = twin_band(enzyme_refits)
    before = band.state_upper.copy()
    assert widen(band, [], band.times, None, None) == []
    assert np.array_equal(band.state_upper, before)


def test_the_coefficients_intervals_hold_their_values_along_the_ridge(enzyme_refits):
    """The twin's ``E*S`` interval from its Laplace approximation alone misses the true
    ``kf = 1`` and the mixture has no ``C`` term; along the profile ``E*S`` runs from about
    the twin's value up, and ``C`` from 0 down past ``-kr = -1``: both hold the truth, and
    the profile's record says its unbinding side did not end within the grid."""
    import sympy as sp

    from ude.distill.library import Term
    from ude.uq.intervals import averaged_intervals, averaged_markdown

    problem = enzyme_refits.problem
    alone, _, owner = enzyme_refits.fits["E*S"]
    result = named_ridge(enzyme_refits)
    result.chosen.candidate.info = {"owner": owner}
    for s in result.path:
        s.candidate.constants = {}
    result.terms = {"binding": [Term(sp.Symbol("C")), Term(sp.Symbol("E") * sp.Symbol("S"))]}
    result.refit = alone
    profiles = ridge_profiles(
        result, problem.measurements, TwinRefit(max_iter=100, criterion_tol=0.1)
    )

    def intervals(profile: bool) -> dict:
        mixture = SimpleNamespace(
            components=lambda r: ([(result.chosen, 1.0, alone.model, "twin")], "evidence"),
            level=0.95,
            profile=profile,
            ridges=lambda r, m: profiles,
        )
        return averaged_intervals(result, problem.measurements, mixture)[0]["binding"]

    plain = intervals(False)
    p_lo, p_hi = plain["E*S"]["interval"]
    assert set(plain) == {"E*S"} and not p_lo <= 1.0 <= p_hi
    wide = intervals(True)
    lo, hi = wide["E*S"]["interval"]
    assert lo <= p_lo and hi >= p_hi and lo <= 1.0 <= hi
    assert wide["C"]["weight"] == 0.0 and wide["C"]["interval"][0] <= -1.0 <= 0.0
    assert wide["C"]["interval"][1] >= 0.0
    record = profiles[0].as_dict(chi2_margin(0.95))
    assert record["open_below"] is True and record["open_above"] is False
    assert json.loads(json.dumps(record)) == record  # distill.json's types
    md = averaged_markdown({"binding": wide})
    assert "| binding | C | 0.00 | 0 | [-1e+04, 0.3162] * |" in md and "along the profile" in md


def test_the_summary_says_the_band_follows_the_profile():
    """The summary line names the term, its coefficient's range within the margin and the
    side that ran past the profile's last value."""
    from ude.distill.cli import profile_sentence

    record = {
        "target": "binding",
        "term": "C",
        "parameter": "c_binding_3",
        "margin": 3.841,
        "kept_from": -10000.0,
        "kept_to": 0.316,
        "open_below": True,
        "open_above": False,
    }
    assert profile_sentence(record, 0.95) == (
        "95% band and intervals widened along the binding C term's profile: its coefficient "
        "(c_binding_3) fits within 3.84 of the best from below -1e+04 to 0.316"
    )
    record |= {"kept_from": None}
    assert profile_sentence(record, 0.95) == "the C term's profile kept no value"
