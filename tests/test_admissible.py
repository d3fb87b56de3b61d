"""Twins that would drive a concentration below zero are refused (ude.distill.admissible)."""

import math

import numpy as np
import pytest
import torch

from ude.data.synthetic import simulate_measurements
from ude.distill.admissible import admitted, amounts, reaction_species, zero_faces
from ude.distill.refit import RefitResult
from ude.distill.sampling import Samples
from ude.model.hybrid import build_hybrid
from ude.model.solver import Solver
from ude.spec.model_spec import ModelSpec
from ude.spec.simulate import simulate_spec

LV = {"alpha": 1.3, "beta": 0.9, "gamma": 0.8, "delta": 1.8}


def lotka_volterra(prey: str, drain: str = "") -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "states": ["x", "y"],
            "parameters": {**LV, "c": 0.08},
            "equations": {"x": prey, "y": f"gamma*x*y - delta*y{drain}"},
        }
    )


@pytest.fixture(scope="module")
def data():
    return simulate_measurements("lotka_volterra", noise=0.0, seed=0)


def model_of(spec: ModelSpec, data):
    torch.set_default_dtype(torch.float64)
    try:
        return build_hybrid(spec, data, Solver("rodas5p"))
    finally:
        torch.set_default_dtype(torch.float32)


def samples_of(spec: ModelSpec, data) -> Samples:
    """The true trajectory's points, as the distillation samples them."""
    times = np.asarray(data.times, dtype=float)
    start = np.nan_to_num(data.values[:, 0, 0, :])
    X = simulate_spec(spec, start, times).reshape(-1, 2)
    n = len(X)
    return Samples(
        X=X,
        Y=np.zeros_like(X),
        names=["x", "y"],
        states=["x", "y"],
        condition=np.repeat(np.arange(data.n_conditions), len(times)),
        on_trajectory=np.ones(n, dtype=bool),
        times=np.tile(times, data.n_conditions),
    )


def test_a_term_that_takes_a_checked_species_away_when_there_is_none_is_refused(data):
    truth = lotka_volterra("alpha*x - beta*x*y")
    faces = zero_faces(model_of(truth, data), samples_of(truth, data), np.array([True, True]))
    assert sorted(faces.points) == [0, 1]
    assert faces.breach(model_of(truth, data)) is None
    rival = model_of(lotka_volterra("alpha*x - c*y**2"), data)
    why = faces.breach(rival)
    assert why is not None and why.startswith("dx/dt = -") and why.endswith("at x = 0")


def test_a_refused_refit_fails_with_its_reason_and_an_admitted_one_is_unchanged(data):
    truth = lotka_volterra("alpha*x - beta*x*y")
    faces = zero_faces(model_of(truth, data), samples_of(truth, data), np.array([True, True]))
    rival = RefitResult(model_of(lotka_volterra("alpha*x - c*y**2"), data), {}, 0.01, 62, True, 5)
    refused = admitted(rival, faces)
    assert not refused.ok and math.isinf(refused.nmse) and "at x = 0" in refused.refused
    fine = RefitResult(model_of(truth, data), {}, 0.01, 62, True, 5)
    assert admitted(fine, faces) is fine
    assert admitted(rival, None) is rival  # distill.distiller.nonnegative=false


def test_a_state_the_known_terms_already_drive_negative_is_not_checked(data):
    # the user's own model drains y at a constant rate: y's face is theirs, x's is still checked
    known = lotka_volterra("alpha*x - beta*x*y", drain=" - 0.5")
    faces = zero_faces(model_of(known, data), samples_of(known, data), np.array([True, True]))
    assert sorted(faces.points) == [0]
    assert faces.breach(model_of(lotka_volterra("alpha*x - c*y**2", " - 0.5"), data)) is not None


def test_states_that_are_not_concentrations_are_not_checked(data):
    truth = lotka_volterra("alpha*x - beta*x*y")
    faces = zero_faces(model_of(truth, data), samples_of(truth, data), np.array([False, True]))
    assert faces.breach(model_of(lotka_volterra("alpha*x - c*y**2"), data)) is None


def test_only_the_species_of_neural_reactions_are_checked():
    spec = ModelSpec.from_dict(
        {
            "states": ["S", "E", "C", "P", "R"],
            "parameters": {"kcat": 1.0, "k": 0.1},
            "reactions": [
                "binding: E + S <-> C; neural",
                "catalysis: C -> E + P; kcat*C",
                "decay: R -> ; k*R",
            ],
        }
    )
    assert reaction_species(spec, spec.states).tolist() == [True, True, True, False, False]
    state_targets = lotka_volterra("alpha*x - beta*x*y")  # networks on states: none checked
    assert not reaction_species(state_targets, ["x", "y"]).any()


def test_states_the_spec_declares_nonnegative_are_checked_too(data):
    """A network on a state's equation (no reaction): checked only where the spec says the
    state is an amount; the check then refuses a rival that drains x where there is none."""
    raw = {
        "states": ["x", "y"],
        "parameters": {**LV, "c": 0.08},
        "equations": {"x": "alpha*x - beta*x*y", "y": "gamma*x*y - delta*y"},
    }
    declared = ModelSpec.from_dict({**raw, "nonnegative": ["x"]})
    assert declared.nonnegative == ["x"]
    assert ModelSpec.from_dict(declared.to_dict()).nonnegative == ["x"]  # twin.json round trip
    assert amounts(declared, ["x", "y"]).tolist() == [True, False]
    assert not amounts(ModelSpec.from_dict(raw), ["x", "y"]).any()
    checked = amounts(declared, ["x", "y"])
    faces = zero_faces(
        model_of(declared, data), samples_of(declared, data), np.array([True, True]), checked
    )
    assert sorted(faces.points) == [0]
    why = faces.breach(model_of(lotka_volterra("alpha*x - c*y**2"), data))
    assert why is not None and why.endswith("at x = 0")


def test_a_nonnegative_entry_that_is_not_a_state_is_a_one_line_error():
    from ude.errors import UdeError

    raw = {"states": ["x"], "equations": {"x": "-x"}, "nonnegative": ["x", "z"]}
    with pytest.raises(UdeError, match=r"nonnegative\[1\].*'z' is not a state.*states: x"):
        ModelSpec.from_dict(raw, source="model.yaml")


def test_a_concentration_that_is_not_checked_is_still_clipped_at_zero(data):
    """y dips below zero along a noisy fit and is not checked (no neural reaction makes it);
    x's face sees it clipped at zero, so a term that makes x from y is not refused for y's
    dip (SEIR's true incidence beta*I*S was, for I's)."""
    truth = lotka_volterra("alpha*x - beta*x*y")
    samples = samples_of(truth, data)
    samples.X[np.argsort(samples.X[:, 1])[:5], 1] = -1.0
    producer = model_of(lotka_volterra("alpha*x - beta*x*y + c*y"), data)
    both, only_x = np.array([True, True]), np.array([True, False])
    faces = zero_faces(model_of(truth, data), samples, both, only_x)
    assert sorted(faces.points) == [0]
    assert faces.breach(producer) is None
    # y not a concentration: its dip stands, and the term that makes x from it is refused
    unclipped = zero_faces(model_of(truth, data), samples, only_x)
    assert unclipped.breach(producer) is not None
