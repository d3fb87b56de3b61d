"""The default library of rate laws, the spec's `library:` key, variable projection of the
constants, and the extended BIC with its evidence weights and ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from ude.distill import RefitResult, TrajectorySelector
from ude.distill.integral import IntegralProblem, integral_operator
from ude.distill.library import HILL_N_BOUNDS, slot_library
from ude.distill.selection import (
    Scored,
    evidence_weights,
    information_criterion,
    log_supports,
    ties,
)
from ude.distill.sparse import Candidate
from ude.errors import UdeError
from ude.spec import ModelSpec
from ude.spec.library_key import DEFAULT_FAMILIES, parse_library

SPEC = {
    "states": ["x", "y"],
    "equations": {"x": "-x"},
    "neural": {"targets": ["y"], "inputs": ["x", "y"]},
}


def test_default_library_of_a_slot_holds_the_rate_laws_a_biologist_searches():
    lib = slot_library(DEFAULT_FAMILIES, ["x", "y"]).fit(["x", "y"])
    names = lib.get_feature_names()
    assert names[:6] == ["1", "x", "y", "x**2", "x*y", "y**2"]  # constant and mass action
    for term in ("x/(K + x)", "x*y/(K + x)", "y/(K + y)", "x*y/(K + y)"):
        assert term in names  # saturation, and an enzyme times the saturation
    for term in ("x**n/(K**n + x**n)", "K**n/(K**n + x**n)", "y**n/(K**n + y**n)"):
        assert term in names  # Hill activation and repression
    free = {t.name: t.law.free for t in lib.terms_ if t.law is not None}
    assert free["x/(K + x)"] == ("K",) and free["K**n/(K**n + x**n)"] == ("K", "n")
    # free terms evaluate at any constants: the repression is 1/2 at x = K, for any n
    rep = next(t for t in lib.terms_ if t.name == "K**n/(K**n + x**n)")
    x = np.array([0.0, 0.5, 2.0, -0.1])
    cols = {"x": x, "y": np.ones(4)}
    values = rep.evaluate(cols, {"K": 0.5, "n": 12.0})
    np.testing.assert_allclose(values[:3], [1.0, 0.5, 1 / (1 + 4**12)])
    assert values[3] == pytest.approx(1 / (1 + 0.2**12))  # a dip below zero: |x|, defined
    # a state named K does not collide with the constant's symbol
    named = slot_library(["michaelis_menten"], ["K"]).fit(["K"])
    assert named.get_feature_names() == ["K/(K + K_c)"]


def test_library_key_adds_removes_and_checks_names():
    names = ["x", "y"]
    assert parse_library(None, names) is None
    only = parse_library(["mass_action", "x/(1 + y)"], names)
    assert only.apply(DEFAULT_FAMILIES) == ["mass_action", "x/(1 + y)"]
    changed = parse_library({"add": ["x/(1 + y)"], "remove": ["hill"]}, names)
    assert changed.apply(DEFAULT_FAMILIES) == [
        "constant",
        "mass_action",
        "michaelis_menten",
        "x/(1 + y)",
    ]
    with pytest.raises(UdeError, match=r"library\[1\]: unknown family 'hil'.*families: "):
        parse_library(["mass_action", "hil"], names, source="m.yaml")
    with pytest.raises(UdeError, match=r"library.add\[0\]: unknown name 'z' in 'x\*z'"):
        parse_library({"add": ["x*z"]}, names, source="m.yaml")
    with pytest.raises(UdeError, match="unknown key 'drop'"):
        parse_library({"drop": ["hill"]}, names)
    with pytest.raises(UdeError, match="the library is empty"):
        parse_library({"remove": list(DEFAULT_FAMILIES)}, names)


def test_spec_library_key_round_trips_and_errors_name_the_file():
    spec = ModelSpec.from_dict({**SPEC, "library": {"remove": ["hill"]}}, source="m.yaml")
    assert spec.library.apply(DEFAULT_FAMILIES) == ["constant", "mass_action", "michaelis_menten"]
    again = ModelSpec.from_dict(spec.to_dict())
    assert again.library == spec.library
    with pytest.raises(UdeError, match=r"m.yaml: library\[0\]: unknown family 'hil'"):
        ModelSpec.from_dict({**SPEC, "library": ["hil"]}, source="m.yaml")
    with pytest.raises(UdeError, match=r"m.yaml: library\[0\]: unknown name 'q'"):
        ModelSpec.from_dict({**SPEC, "library": ["q*x"]}, source="m.yaml")
    # a declared name the network does not see can never be part of its term
    seen_x = {**SPEC, "neural": {"targets": ["y"], "inputs": ["x"]}}
    with pytest.raises(UdeError, match="custom term 'y\\*x' uses x, y, which no network sees"):
        ModelSpec.from_dict({**seen_x, "library": ["y*x"]}, source="m.yaml")


def _hill_problem(K: float, n: float, noise: float, seed: int = 0) -> IntegralProblem:
    """The integral problem of ``y(t) = a_c + ∫ 2/(1 + (p/K)^n)`` along ``p(t)`` sweeping
    0.05..3 (two conditions), sampled at 31 times with ``noise`` times the signal's RMS."""
    grid = np.linspace(0, 10, 200)
    times = np.linspace(0, 10, 31)
    M = integral_operator(grid, times)
    p = np.concatenate([0.05 + 0.3 * grid, 3.0 * np.exp(-0.3 * grid)])
    lib = slot_library(DEFAULT_FAMILIES, ["p"]).fit(["p"])
    W = np.zeros((62, 400))
    W[:31, :200], W[31:, 200:] = M, M
    truth = 2.0 / (1.0 + (p / K) ** n)
    rng = np.random.default_rng(seed)
    y = W @ truth + np.repeat([0.3, -0.2], 31)
    y = y + noise * np.sqrt(np.mean(y**2)) * rng.standard_normal(62)
    X = {"p": p}
    return IntegralProblem(
        F=W @ lib.transform(p[:, None]),
        y=y,
        condition=np.repeat([0, 1], 31),
        terms=lib.get_feature_names(),
        from_data=True,
        W=W,
        X=X,
        laws={j: t for j, t in enumerate(lib.terms_) if t.law is not None},
    ).fit_constants()


def test_variable_projection_fits_hill_constants_off_any_grid():
    """A Hill repression with K = 0.7, n = 6.5 (no grid holds them): fitted alone, the
    repression's K and n are within 1 % on noise-free data; with 2 % noise within 10 % (the
    issue's target for the twin), and the repression alone ranks first of all supports."""
    from ude.distill import IntegralPath

    for noise, tol in ((0.0, 0.01), (0.02, 0.10)):
        p = _hill_problem(0.7, 6.5, noise)
        j = p.terms.index("K**n/(K**n + p**n)")
        assert p.constants[j]["K"] == pytest.approx(0.7, rel=tol)
        assert p.constants[j]["n"] == pytest.approx(6.5, rel=tol)
    best = IntegralPath().ranked(p)[0]
    assert [p.terms[i] for i in best[1]] == ["K**n/(K**n + p**n)"]
    assert best[2][j] == pytest.approx(2.0, rel=0.1)
    assert HILL_N_BOUNDS[0] <= p.constants[j]["n"] <= HILL_N_BOUNDS[1]


def test_constant_bounds_ignore_a_variable_decayed_to_underflow():
    """A species that decays to the smallest float along the trajectory (the repressilator's
    GFP mRNA, half-life 0.0004 min) once made log K's search range start at log(0) and the
    distillation crash: values below 1e-12 of the largest count as zero, so K's range starts at the
    smallest of the others over K_RANGE, and the starts are finite."""
    from ude.distill.library import RateLaw
    from ude.distill.projection import K_RANGE, _bounds, _starts, constant_bounds

    x = np.concatenate([np.geomspace(100.0, 1e-300, 50), [5e-324, 0.0]])
    law = RateLaw(kind="repression", variable="p")
    lo, hi = constant_bounds(law, x)["K"]
    assert lo == pytest.approx(x[x > 100.0 * 1e-12].min() / K_RANGE)
    assert hi == pytest.approx(100.0 * K_RANGE)
    assert all(math.isfinite(v) for b in _bounds(law, x) for v in b)
    assert all(math.isfinite(v) for s in _starts(law, x) for v in s)


def test_extended_bic_pays_for_the_size_of_the_search():
    """EBIC = BIC + 2 log C(p, k): one more term from a library of 14 costs log n (BIC) plus
    2 log(13/2) more; equal-size rivals pay the same."""
    n, rss = 60, 0.01
    bic = information_criterion(rss, n, 3, "bic")
    assert information_criterion(rss, n, 3, "ebic", log_supports(14, 2)) == pytest.approx(
        bic + 2 * math.log(91)
    )
    assert log_supports(14, 1) == pytest.approx(math.log(14)) and log_supports(5, 0) == 0.0
    with pytest.raises(UdeError, match="ebic, bic, aicc"):
        information_criterion(rss, n, 3, "hqc")


def _scored(support: list[int], crit: float) -> Scored:
    coef = np.zeros(5)
    coef[support] = 1.0
    return Scored(Candidate({"x": coef}, "test"), RefitResult(None, {}, 0.1, 60, True, 0), crit, 1)


def test_evidence_weights_and_ties():
    chosen, rival, nested, far, failed = (
        _scored([1], -100.0),
        _scored([2], -99.0),
        _scored([1, 3], -100.5),
        _scored([4], -90.0),
        _scored([0], math.inf),
    )
    path = [chosen, rival, nested, far, failed]
    w = evidence_weights(path)
    assert w.sum() == pytest.approx(1.0) and w[4] == 0.0
    assert w[0] / w[1] == pytest.approx(math.exp(0.5))  # exp(-Δ/2)
    # a rival within 2 units is a tie; the chosen one with a useless extra term is not
    assert ties(chosen, path) == [rival]
    assert ties(chosen, path, margin=0.5) == []


def test_selector_uses_the_library_sizes_for_ebic():
    """Two terms that each halve nothing but the noise: with a library of 40 terms EBIC
    keeps the one-term model that BIC (and EBIC without sizes) would extend."""
    nmse = {(1,): 1.0e-3, (1, 2): 0.85e-3}

    def refit(c):
        key = tuple(np.flatnonzero(c.coef["x"]))
        return RefitResult(None, {}, nmse.get(key, 1.0), 60, True, 0), c.n_terms

    cands = [
        Candidate({"x": np.eye(40)[1]}, "t"),
        Candidate({"x": np.eye(40)[1] + np.eye(40)[2]}, "t"),
    ]
    sel = TrajectorySelector(max_candidates=2, grow=False, prune=False, tolerance=0.0)
    bic_choice, _ = sel.select(cands, refit)
    assert np.flatnonzero(bic_choice.candidate.coef["x"]).tolist() == [1, 2]
    ebic_choice, _ = sel.select(cands, refit, sizes={"x": 40})
    assert np.flatnonzero(ebic_choice.candidate.coef["x"]).tolist() == [1]


def test_twin_spec_learns_free_constants_within_their_range():
    from ude.twin.symbolic import twin_spec

    known = ModelSpec.from_dict(SPEC)
    lib = slot_library(["hill"], ["x", "y"]).fit(["x", "y"])
    j = lib.get_feature_names().index("K**n/(K**n + x**n)")
    coef = np.zeros(len(lib.terms_))
    coef[j] = 2.0
    twin, owner = twin_spec(
        known,
        {"y": lib.terms_},
        {"y": coef},
        constants={"y": {j: {"K": 0.8, "n": 20.0}}},
        bounds={"y": {j: {"K": (0.01, 5.0)}}},
    )
    K, n = (twin.parameters[f"{c}_y_{j}"] for c in ("K", "n"))
    assert (K.value, K.min, K.max, K.learn) == (0.8, 0.01, 5.0, True)
    assert (n.value, n.min, n.max) == (HILL_N_BOUNDS[1], *HILL_N_BOUNDS)  # clipped into range
    assert {o.constant for o in owner.values()} == {None, "K", "n"}
    x = sp.Symbol("x")
    expr = twin.discovered["y"].xreplace(
        {sp.Symbol(k): p.value for k, p in twin.parameters.items()}
    )
    assert float(expr.subs(x, 0.8)) == pytest.approx(1.0)  # half of 2 at x = K


# -- end to end with the network replaced by the true term ---------------------------------------
def _user_model(system, noise: float, fn, known_initial: bool = True):
    """Data of a bench user system and a HybridODE of its spec whose network is ``fn``."""
    import sys
    from pathlib import Path

    import torch

    from ude.model import Solver, build_hybrid

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from user_systems import SYSTEMS, simulate

    s = SYSTEMS[system]
    m = simulate(s, noise, seed=0)
    if not known_initial:
        m.initial = {}
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(ModelSpec.from_dict(s.spec), m, Solver())
    finally:
        torch.set_default_dtype(torch.float32)

    class Known(torch.nn.Module):
        def forward(self, z):
            return fn(z)

    if model.networks[0].__class__.__name__ == "FluxNetwork":
        model.networks[0].mlp = Known()
    else:
        model.networks[0] = Known()
    with torch.no_grad():
        model.initial.copy_(torch.as_tensor(s.initial, dtype=torch.float64))
    return s, m, model


@pytest.mark.slow
def test_hill_repression_is_distilled_with_its_constants():
    """The bench's Hill repression (n = 4, K = 1) at 2 % noise, the network equal to the true
    term: the default library and selection give exactly the repression, K and n within
    10 % (the issue's target) after the ODE refit, and the data identify them."""
    import torch

    from ude.distill import Distiller

    s, m, model = _user_model("hill_repression", 0.02, lambda z: 1.0 / (1.0 + z[..., 1:2] ** 4))
    result = Distiller().fit(model, m)
    params = {k: p.value for k, p in result.twin.parameters.items()}
    found = [k for k in params if k.startswith(("K_m", "n_m"))]
    assert len(result.twin.discovered["m"].atoms(sp.Pow)) >= 1 and len(found) == 2, params
    K = next(v for k, v in params.items() if k.startswith("K_m"))
    n = next(v for k, v in params.items() if k.startswith("n_m"))
    assert K == pytest.approx(1.0, rel=0.10) and n == pytest.approx(4.0, rel=0.10)
    assert result.chosen.candidate.n_terms == 1
    assert result.identifiability["targets"]["m"]["identified"]
    del torch


@pytest.mark.slow
def test_a_latent_pool_of_unknown_size_is_reported_as_not_identified_while_it_is_not_depleted():
    """Infection S -> I at rate beta*S*I with S never measured. Observed early, before the
    pool is depleted (8 time units of the outbreak), S stays near S(0): with S(0) unknown only
    beta*S(0) is seen, and the run must say that the data do not identify the rate constant;
    with S(0) known (the conditions table) it is identified. Over the whole outbreak (40 time
    units) the depletion tells beta from S(0), and the check must not cry wolf: identified,
    with beta near its true 0.5."""
    import dataclasses
    import sys
    from pathlib import Path

    from ude.distill import Distiller, TrajectorySelector

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import user_systems

    def flux(z):  # inputs S, I
        return 0.5 * z[..., 0:1] * z[..., 1:2]

    quick = TrajectorySelector(max_candidates=3, grow=False, rescreen=False)
    whole = user_systems.SYSTEMS["latent_infection"]
    assert whole.t_end == 40.0
    cases = ((8.0, True, True), (8.0, False, False), (40.0, False, True))
    try:
        for t_end, known, identified in cases:
            user_systems.SYSTEMS["latent_infection"] = dataclasses.replace(whole, t_end=t_end)
            _, m, model = _user_model("latent_infection", 0.02, flux, known_initial=known)
            distiller = Distiller(library=["mass_action"], selector=quick, bootstrap=None)
            result = distiller.fit(model, m)
            found = result.twin.discovered["I"]
            assert str(found.free_symbols) and "I*S" in str(found), found
            check = result.identifiability["targets"]["infection"]
            assert check["identified"] is identified, (t_end, known, check)
            if identified:
                beta = next(iter(check["parameters"].values()))["value"]
                assert beta == pytest.approx(0.5, rel=0.02), (t_end, known, check)
    finally:
        user_systems.SYSTEMS["latent_infection"] = whole


def test_a_switch_steeper_than_the_screen_can_resolve_stays_in_the_screen():
    """A repression steeper than the bound of n (a true n = 20, data from seed 0): fitted
    alone, n goes to its bound. The term used to be dropped as degenerate there, which lost
    Goodwin's z**10 wherever the trained trajectory's small errors in z made the switch look
    steeper than it is; now it stays, and ranks first."""
    from ude.distill import IntegralPath

    p = _hill_problem(1.0, 20.0, 0.02)
    j = p.terms.index("K**n/(K**n + p**n)")
    assert p.constants[j]["n"] >= 0.98 * HILL_N_BOUNDS[1]
    assert j not in p.degenerate
    assert [p.terms[i] for i in IntegralPath().ranked(p)[0][1]] == ["K**n/(K**n + p**n)"]


def test_a_refit_that_leaves_n_on_its_bound_is_restarted_below_it():
    """steep_restarts: a refit ending with the Hill n on its upper bound gets one start per
    switch-like and steep n of the screen (4, 10), with K as refitted and the coefficient
    solved on the screen at those constants; a refit with n inside its range gets none."""
    from ude.distill.distiller import steep_restarts
    from ude.distill.sparse import Candidate
    from ude.twin.symbolic import Owner

    p = _hill_problem(1.0, 10.0, 0.0)
    j = p.terms.index("K**n/(K**n + p**n)")
    coef = np.zeros(p.n_terms)
    coef[j] = 1.0
    cand = Candidate({"x": coef}, "test", constants={"x": {j: {"K": 0.9, "n": 15.0}}})
    owner = {
        "c": Owner("x", j, 1.0),
        "K": Owner("x", j, 1.0, "K"),
        "n": Owner("x", j, 1.0, "n"),
    }
    starts = steep_restarts(
        cand,
        RefitResult(None, {"c": 1.0, "K": 1.0, "n": 15.0}, 0.1, 62, True, 0),
        owner,
        {"x": p},
        {"x": p.bounds()},
    )
    assert [s[1]["x"][j] for s in starts] == [{"K": 1.0, "n": 4.0}, {"K": 1.0, "n": 10.0}]
    # at n = 10 the coefficient is the true 2 (noise-free data), only the term's own
    assert np.flatnonzero(starts[1][0]["x"]).tolist() == [j]
    assert starts[1][0]["x"][j] == pytest.approx(2.0, rel=0.05)
    inside = RefitResult(None, {"c": 1.0, "K": 1.0, "n": 9.0}, 0.1, 62, True, 0)
    assert steep_restarts(cand, inside, owner, {"x": p}, {"x": p.bounds()}) == []


def test_a_proposal_far_from_the_trained_models_coefficients_gets_their_start_too():
    """network_start: a candidate whose start (a proposal along a refitted twin) differs from
    the coefficients the trained model's integral-matching problem gives its support by more
    than OTHER_START gets those as a second start; one within it gets none."""
    from ude.distill.distiller import OTHER_START, network_start
    from ude.distill.sparse import Candidate

    p = _hill_problem(1.0, 10.0, 0.0)
    j = p.terms.index("K**n/(K**n + p**n)")
    constants = {"x": {j: {"K": 1.0, "n": 10.0}}}
    far = np.zeros(p.n_terms)
    far[j] = 4.0  # twice the truth's 2
    start = network_start(Candidate({"x": far}, "integral", constants=constants), {"x": p})
    assert np.flatnonzero(start["x"]).tolist() == [j]
    assert start["x"][j] == pytest.approx(2.0, rel=0.05)
    near = np.zeros(p.n_terms)
    near[j] = 2.0 * (1 + OTHER_START / 2)
    assert network_start(Candidate({"x": near}, "integral", constants=constants), {"x": p}) is None
