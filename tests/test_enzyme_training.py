"""The enzyme prior as a reaction list and as SBML trains the same hybrid model."""

from pathlib import Path

import numpy as np
import pytest

import ude
from ude.data.measurements import Measurements
from ude.spec import load_spec, simulate_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "enzyme_kinetics"


def enzyme_data(seed: int = 0) -> Measurements:
    """S and P of the enzyme network from two initial substrate levels, 2 % noise."""
    truth = load_spec(EXAMPLES / "enzyme.yaml")
    times = np.linspace(0.0, 40.0, 21)
    initial = np.array([[10.0, 1.0, 0.0, 0.0], [5.0, 1.0, 0.0, 0.0]])
    states = simulate_spec(truth, initial, times)[..., [0, 3]]
    rng = np.random.default_rng(seed)
    values = states * (1 + 0.02 * rng.standard_normal(states.shape))
    return Measurements(
        times=times,
        values=values[:, :, None, :],
        observables=["S", "P"],
        conditions=["S0=10", "S0=5"],
        initial={"E": np.array([1.0, 1.0]), "C": np.array([0.0, 0.0])},
    )


def test_reaction_list_and_sbml_priors_train_identically():
    data = enzyme_data()
    runs = [
        ude.fit(EXAMPLES / name, data, max_epochs=3, seed=0, lr=0.01)
        for name in ("enzyme_known.yaml", "enzyme_known_sbml.yaml")
    ]
    a, b = (r.metrics for r in runs)
    assert a["parameters"] == b["parameters"]
    assert a["train_nmse"] == b["train_nmse"]
    # Training moved the learned rate constants (the comparison is not of two idle runs).
    assert a["parameters"]["k_f"] != 0.5


@pytest.mark.slow  # about a minute and a half on 2 busy cores
def test_reaction_list_and_sbml_priors_distil_the_same():
    from ude.distill import Distiller, TrajectorySampler, TrajectorySelector, TwinRefit

    data = enzyme_data()
    twins = []
    for name in ("enzyme_known.yaml", "enzyme_known_sbml.yaml"):
        model = ude.fit(EXAMPLES / name, data, max_epochs=3, seed=0, lr=0.01).model
        distiller = Distiller(
            sampler=TrajectorySampler(n_times=40, seed=0),
            selector=TrajectorySelector(max_candidates=2, prune=False, grow=False),
            score_refit=TwinRefit(max_iter=20, method="rk4"),
            refit=TwinRefit(max_iter=20),
            bootstrap=None,
        )
        twins.append(distiller.fit(model, data).twin)
    a, b = twins
    assert a.discovered and a.states == b.states
    for s in a.states:
        assert str(a.discovered.get(s)) == str(b.discovered.get(s))
