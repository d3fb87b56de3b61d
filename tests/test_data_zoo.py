"""The zoo entries that exercise conditions and latent species are consistent."""

from __future__ import annotations

import pytest
import sympy as sp

from ude import get_system, simulate_measurements


@pytest.mark.parametrize("name", ["seir", "enzyme", "dose_response"])
def test_known_plus_missing_is_the_truth(name):
    system = get_system(name)
    truth, known = system.truth, system.known
    for state, rhs in zip(truth.states, truth.known_rhs(), strict=True):
        rebuilt = known.equations.get(state, 0) + system.missing.get(state, 0)
        assert sp.simplify(rhs - rebuilt) == 0, state
    assert set(system.missing) == set(known.neural_targets)
    latent = [s for s in truth.states if s not in system.scenario.observed]
    assert latent  # each of these has a state the data never show


def test_enzyme_conserves_total_enzyme_and_seir_two_conditions():
    m = simulate_measurements("enzyme", noise=0.0, known_initial=["E", "C"])
    from ude import simulate_spec

    x = simulate_spec(m.truth.spec, m.truth.initial, m.times)
    e, c = m.truth.spec.states.index("E"), m.truth.spec.states.index("C")
    assert abs(x[..., e] + x[..., c] - 1.0).max() < 1e-6
    assert m.initial["C"].tolist() == [0.0, 0.0, 0.0]
    seir = simulate_measurements("seir")
    assert seir.n_conditions == 2 and seir.observables == ["S", "I", "R"]
