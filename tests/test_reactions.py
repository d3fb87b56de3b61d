"""Reaction networks in the spec: stoichiometry, mass action, neural fluxes, moieties."""

from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch

from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.solver import Solver
from ude.spec import ModelSpec, load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "enzyme_kinetics"
S, E, C, P, A, B, X = sp.symbols("S E C P A B X")
kf, kr, kcat = sp.symbols("k_f k_r k_cat")


def spec(reactions, states=("A", "B"), parameters=None, **extra):
    raw = {"states": list(states), "parameters": parameters or {"k": 1.0}, "reactions": reactions}
    return ModelSpec.from_dict({**raw, **extra}, source="test.yaml")


def test_enzyme_reactions_give_the_textbook_right_hand_side():
    enzyme = load_spec(EXAMPLES / "enzyme.yaml")
    binding, catalysis = kf * E * S - kr * C, kcat * C
    expected = [-binding, -binding + catalysis, binding - catalysis, catalysis]
    assert [sp.expand(a - b) for a, b in zip(enzyme.known_rhs(), expected, strict=True)] == [0] * 4
    assert enzyme.stoichiometry() == sp.Matrix([[-1, 0], [-1, 1], [1, -1], [0, 1]])
    assert enzyme.initial == {"S": 10.0, "E": 1.0, "C": 0.0, "P": 0.0}


def test_conservation_laws_of_the_enzyme_are_total_enzyme_and_total_substrate():
    laws = load_spec(EXAMPLES / "enzyme.yaml").conservation_laws()
    assert sorted(laws, key=len) == [{"E": 1, "C": 1}, {"S": 1, "C": 1, "P": 1}]
    # The weights annihilate the right-hand side exactly.
    enzyme = load_spec(EXAMPLES / "enzyme.yaml")
    rhs = dict(zip(enzyme.states, enzyme.known_rhs(), strict=True))
    for law in laws:
        assert sp.expand(sum(c * rhs[s] for s, c in law.items())) == 0


def test_a_state_with_other_terms_breaks_its_moiety():
    base = ["A <-> B; k*A, k*B"]
    assert spec(base).conservation_laws() == [{"A": 1, "B": 1}]
    assert spec(base, equations={"B": "-k*B"}).conservation_laws() == []


def test_mass_action_without_a_rate_uses_the_named_constants():
    s = spec(["2 A -> B"], parameters={"k_r1": 0.5})
    assert s.known_rhs() == [-2 * sp.Symbol("k_r1") * A**2, sp.Symbol("k_r1") * A**2]
    s = spec(["conv: A <-> 3B"], parameters={"k_conv_f": 1.0, "k_conv_r": 2.0})
    fwd, rev = sp.Symbol("k_conv_f") * A, sp.Symbol("k_conv_r") * B**3
    assert sp.expand(s.known_rhs()[1] - 3 * (fwd - rev)) == 0


def test_sources_sinks_and_rate_laws():
    s = spec(
        ["0 -> A; k", "A -> ; mm(A, K)", "B -> 0; hill(B, K, 2)", "A -> B; k*A"],
        parameters={"k": 1.0, "K": 0.5},
    )
    k, K = sp.symbols("k K")
    assert sp.simplify(s.known_rhs()[0] - (k - A / (K + A) - k * A)) == 0
    assert sp.simplify(s.known_rhs()[1] - (-(B**2) / (K**2 + B**2) + k * A)) == 0


def test_catalysts_and_boundary_species():
    # E on both sides is a catalyst (no net change); u is an input held constant.
    s = spec(["E + A -> E + B; k*E*A", "u -> A; k*u"], states=["A", "B", "E"], inputs=["u"])
    k, u = sp.symbols("k u")
    assert s.known_rhs() == [-k * E * A + k * u, k * E * A, 0]


@pytest.mark.parametrize(
    "reaction, message",
    [
        ("A + B", "no arrow"),
        ("A <-> B; k*A", "two rates"),
        ("A -> B; k*A, k*B", "expected one rate"),
        ("A -> Z; k", "unknown species 'Z'"),
        ("A -> B", "'k_r1' is not a declared parameter"),
        ("A -> B -> A; k", "more than one arrow"),
        ("A -> B; k; k", "more than one ';'"),
        ("A -> A; k", "changes no state"),
        ("A -> B; __import__('os')", "is not allowed"),
        ("A -> B; neural, k", "'neural' must be the only rate"),
        ("2.5.1 A -> B; k", "not a species"),
        (3, "expected a reaction string"),
    ],
)
def test_bad_reactions_are_refused_with_the_place(reaction, message):
    with pytest.raises(UdeError, match="reactions\\[0\\]") as err:
        spec([reaction])
    assert message in str(err.value)
    assert "test.yaml" in str(err.value)


def test_reaction_names_are_unique():
    with pytest.raises(UdeError, match="used twice"):
        spec(["a: A -> B; k*A", "a: B -> A; k*B"])


def test_spec_with_reactions_round_trips_through_its_dict():
    enzyme = load_spec(EXAMPLES / "enzyme_known.yaml")
    again = ModelSpec.from_dict(enzyme.to_dict(), source="again")
    assert again.known_rhs() == enzyme.known_rhs()
    assert again.neural == enzyme.neural
    assert again.parameters == enzyme.parameters


def test_neural_reaction_learns_one_flux_applied_through_the_stoichiometry():
    known = load_spec(EXAMPLES / "enzyme_known.yaml")
    (slot,) = known.neural
    assert slot.reactions == ("catalysis",)
    assert slot.targets == ("E", "C", "P")
    assert slot.stoichiometry == ((1.0,), (-1.0,), (1.0,))
    model = HybridODE(
        known,
        ["S", "P"],
        n_conditions=2,
        inputs=torch.zeros(2, 0),
        initial=torch.tensor([[10.0, 1.0, 0.0, 0.0], [5.0, 1.0, 0.0, 0.0]]),
        solver=Solver(),
        state_scale=torch.tensor([10.0, 1.0, 1.0, 10.0]),
        time_scale=50.0,
        noise=torch.tensor([0.1, 0.1]),
    )
    assert model.networks[0].mlp.layers[-1].out_features == 1
    y = torch.rand(6, 4) * 5
    ctx = model.context(torch.tensor([0, 1, 0, 1, 0, 1]))
    nn_terms = model.neural_terms(y, ctx)
    flux = nn_terms[:, 3]
    assert torch.allclose(nn_terms[:, 1], flux) and torch.allclose(nn_terms[:, 2], -flux)
    assert torch.all(nn_terms[:, 0] == 0)
    # Whatever the network learns, total enzyme E + C is conserved by the hybrid model.
    rhs = model.known_terms(y, ctx) + nn_terms
    assert torch.allclose(rhs[:, 1] + rhs[:, 2], torch.zeros(6), atol=1e-6)


def test_spec_initial_values_start_latent_states():
    from ude.data.measurements import Measurements
    from ude.model.hybrid import build_hybrid

    known = load_spec(EXAMPLES / "enzyme_known.yaml")
    times = np.linspace(0, 10, 5)
    data = Measurements(
        times=times, values=np.ones((1, 5, 1, 2)), observables=["S", "P"], conditions=["c0"]
    )
    model = build_hybrid(known, data, Solver())
    assert model.initial[0, 1].item() == pytest.approx(1.0)  # E from the spec's initial
    assert model.initial[0, 2].item() == pytest.approx(0.0)  # C too, not latent_initial


def test_hybrid_solution_keeps_the_moieties_of_a_neural_reaction_network():
    from ude.data.measurements import Measurements
    from ude.model.hybrid import build_hybrid

    torch.manual_seed(0)
    known = load_spec(EXAMPLES / "enzyme_known.yaml")
    times = np.linspace(0, 20, 11)
    data = Measurements(
        times=times, values=np.ones((2, 11, 1, 2)), observables=["S", "P"], conditions=["a", "b"]
    )
    torch.set_default_dtype(torch.float64)
    try:
        model = build_hybrid(known, data, Solver(rtol=1e-9, atol=1e-11))
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for p in model.networks.parameters():  # an arbitrary, far-from-zero network
            p.normal_(0.0, 1.0)
        states = model.simulate(torch.tensor(times), torch.tensor([0, 1]))
    s, e, c, p = states.unbind(-1)
    assert (c - c[:, :1]).abs().max() > 1e-3  # the dynamics are not trivial
    for total in (e + c, s + c + p):  # the laws of known.conservation_laws()
        assert torch.allclose(total, total[:, :1].expand_as(total), atol=1e-7)
