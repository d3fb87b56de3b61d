"""Rewrites of a refitted twin with a term fewer (ude.distill.rewrites), and the selection
taking them."""

import numpy as np

from ude.distill import Candidate, RefitResult, TrajectorySelector
from ude.distill.library import slot_library
from ude.distill.rewrites import complements
from ude.distill.selection import Scored
from ude.spec.library_key import DEFAULT_FAMILIES


def _terms():
    lib = slot_library(DEFAULT_FAMILIES, ["z"])
    lib.fit(["z"])
    return lib.terms_


def _index(terms, kind=None, name=None):
    if name is not None:
        return next(j for j, t in enumerate(terms) if t.name == name)
    return next(j for j, t in enumerate(terms) if t.law is not None and t.law.kind == kind)


def _scored(coef, constants):
    cand = Candidate({"x": coef}, "test", constants={"x": constants})
    return Scored(cand, RefitResult(None, {}, 1e-3, 60, True, 0), 0.0, 2)


def _value(terms, coef, constants, z):
    out = np.zeros_like(z)
    for j in np.flatnonzero(coef):
        out += coef[j] * terms[j].evaluate({"z": z}, constants.get(j))
    return out


def test_a_constant_minus_an_activation_is_rewritten_as_the_repression():
    """Goodwin's replicates=2 twin, ``c0 + c*act(z)`` with ``c0 = -c + 0.01`` and ``|c|`` near
    1e10: its complement is ``-c*rep(z)`` at the same K and n, one term instead of two, equal
    to it along z within the 0.01 the constant kept (1e-12 of the terms' size)."""
    terms = _terms()
    one, act = _index(terms, name="1"), _index(terms, "activation")
    rep = _index(terms, "repression")
    coef = np.zeros(len(terms))
    coef[one], coef[act] = 1e10 + 0.01, -1e10
    constants = {act: {"K": 0.12, "n": 9.4}}
    (cand,) = complements(_scored(coef, constants), {"x": terms})
    assert np.flatnonzero(cand.coef["x"]).tolist() == [rep]
    assert cand.coef["x"][rep] == 1e10
    assert cand.constants["x"][rep] == {"K": 0.12, "n": 9.4}
    z = np.linspace(0.05, 0.3, 50)
    before = _value(terms, coef, constants, z)
    after = _value(terms, cand.coef["x"], cand.constants["x"], z)
    np.testing.assert_allclose(after, before, atol=0.011)


def test_a_constant_and_a_saturation_become_a_repression_with_n_one():
    """``c0 + c*z/(K + z)`` with ``c0 = -c``: ``-c*K/(K + z)``, a Hill repression with n = 1 at
    the same K, exactly; a saturation without the constant has no simpler form."""
    terms = _terms()
    one, sat = _index(terms, name="1"), _index(terms, "saturation")
    rep = _index(terms, "repression")
    coef = np.zeros(len(terms))
    coef[one], coef[sat] = 2.0, -2.0
    constants = {sat: {"K": 0.5}}
    (cand,) = complements(_scored(coef, constants), {"x": terms})
    assert np.flatnonzero(cand.coef["x"]).tolist() == [rep]
    assert cand.constants["x"][rep] == {"K": 0.5, "n": 1.0}
    z = np.linspace(0.0, 3.0, 50)
    np.testing.assert_allclose(
        _value(terms, cand.coef["x"], cand.constants["x"], z),
        _value(terms, coef, constants, z),
        rtol=1e-12,
    )
    coef[one] = 0.0
    assert complements(_scored(coef, constants), {"x": terms}) == []


def test_the_selection_takes_the_complement_even_past_its_refit_budget():
    """The path offers only ``1 + act(z)`` (and sparser rivals that fit worse); the refit of
    ``rep(z)`` fits as well with a term fewer. Proposed as a rewrite, it is chosen, also when
    the refit budget is spent on the path's candidates (the final pass refits it)."""
    terms = _terms()
    one, act = _index(terms, name="1"), _index(terms, "activation")
    rep = _index(terms, "repression")

    def cand(support, screen):
        coef = np.zeros(len(terms))
        coef[list(support)] = 1.0
        return Candidate({"x": coef}, "test", info={"screen": screen})

    def refit(c):
        support = tuple(np.flatnonzero(c.coef["x"]))
        nmse = 1e-3 if support in {(one, act), (rep,)} else 5e-3
        return RefitResult(None, {}, nmse, 60, True, 0), c.n_terms

    def rewrite(best):
        return complements(best, {"x": terms})

    path = [cand([one, act], 0.0), cand([act], 5.0), cand([one], 6.0)]
    for budget in (None, 3):
        selector = TrajectorySelector(grow=False, max_refits=budget, max_initial_terms=None)
        chosen, scored = selector.select(path, refit, rewrite=rewrite)
        assert np.flatnonzero(chosen.candidate.coef["x"]).tolist() == [rep], budget
        assert any(s.step == "complement" for s in scored)
