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


def test_a_scenarios_known_initial_states_reach_the_data_by_default():
    """The enzyme's assay sets E and C: the data carry their initial values unless the caller
    says otherwise, and the noisy values are the same draw either way."""
    assert get_system("enzyme").scenario.known_initial == ["E", "C"]
    given = simulate_measurements("enzyme")
    assert sorted(given.initial) == ["C", "E"]
    assert given.initial["E"].tolist() == [1.0, 1.0, 1.0]
    hidden = simulate_measurements("enzyme", known_initial=[])
    assert hidden.initial == {}
    assert (given.values == hidden.values).all()
    assert simulate_measurements("lotka_volterra").initial == {}


def test_a_known_initial_state_the_system_lacks_is_an_error(tmp_path, monkeypatch):
    import ude.systems as systems
    from ude.errors import UdeError

    text = (systems._HERE / "enzyme.yaml").read_text()
    (tmp_path / "enzyme.yaml").write_text(
        text.replace("known_initial: [E, C]", "known_initial: [Q]")
    )
    monkeypatch.setattr(systems, "_HERE", tmp_path)
    systems.get_system.cache_clear()
    try:
        with pytest.raises(
            UdeError, match=r"enzyme.yaml: scenario.known_initial: Q is not a state .*S, E, C, P"
        ):
            systems.get_system("enzyme")
    finally:
        systems.get_system.cache_clear()
