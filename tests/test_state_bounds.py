"""A spec's ``bounds``: the range a state's values lie in. A state the data do not measure
starts at the middle of its range, and its learned initial values stay inside it, in training,
in the warm start's latent paths and in a twin's refits (all built by ``build_hybrid``).

Goldbeter's active fractions M and X with cyclin alone measured, started at ``latent_initial``
(1.0), were learned past the pole of ``(1 - M)/(K1 + 1 - M)`` at ``M = 1.005``.
"""

from __future__ import annotations

import pytest
import torch

from ude import Solver, build_hybrid, simulate_measurements
from ude.errors import UdeError
from ude.model.initial_scale import set_initial
from ude.spec import ModelSpec
from ude.spec.cli import _check
from ude.systems import get_system
from ude.train.warm_start import LatentPaths, smooth_states
from ude.twin.symbolic import twin_from_dict, twin_to_dict

SPEC = {
    "states": ["x", "m"],
    "parameters": {"k": 1.0},
    "equations": {"x": "-k*x", "m": "k*x*(1 - m)"},
    "initial": {"m": 0.2},
    "bounds": {"m": [0, 1]},
}


def test_bounds_are_read_and_written_back():
    spec = ModelSpec.from_dict(SPEC)
    assert spec.bounds == {"m": (0.0, 1.0)}
    again = ModelSpec.from_dict(spec.to_dict())
    assert again.bounds == spec.bounds
    assert ModelSpec.from_dict({**SPEC, "bounds": None}).bounds == {}


def test_a_twin_file_keeps_the_ranges():
    """twin.json carries its spec's ranges, so a personal twin fitted from it (a new patient
    with the same latent fractions) holds them too."""
    spec = ModelSpec.from_dict(SPEC)
    raw = twin_to_dict(spec, ["x"], spec)
    assert raw["bounds"] == {"m": [0.0, 1.0]}
    assert twin_from_dict(raw).bounds == {"m": (0.0, 1.0)}
    assert "bounds" not in twin_to_dict(ModelSpec.from_dict({**SPEC, "bounds": None}), [], spec)
    with pytest.raises(UdeError, match="bounds.q"):
        twin_from_dict({**raw, "bounds": {"q": [0, 1]}})


def test_spec_check_lists_the_ranges():
    text = _check("goldbeter")
    assert "amounts (never below zero): C, M, X" in text
    assert text.splitlines()[-1] == "ranges: M in [0, 1], X in [0, 1]"


@pytest.mark.parametrize(
    ("bounds", "said"),
    [
        ({"q": [0, 1]}, "'q' is not a state"),
        ({"m": [1, 0]}, "is not a range"),
        ({"m": 0.5}, "expected [lower, upper]"),
        ({"m": [0, "one"]}, "expected a finite number"),
    ],
)
def test_a_wrong_range_is_named_with_its_state(bounds, said):
    with pytest.raises(UdeError) as err:
        ModelSpec.from_dict({**SPEC, "bounds": bounds}, source="spec.yaml")
    assert said in str(err.value)
    assert "spec.yaml" in str(err.value) and "bounds" in str(err.value)


def _goldbeter(observed: list[str]):
    data = simulate_measurements("goldbeter", noise=0.0, n_times=21, observed=observed)
    return data, build_hybrid(get_system("goldbeter").known, data, Solver("rodas5p"))


def test_an_unmeasured_state_starts_in_the_middle_of_its_range_and_stays_inside():
    data, model = _goldbeter(["C"])
    initial = model.initial.detach()
    assert initial[0, 1:].tolist() == [0.5, 0.5]  # M and X: not latent_initial's 1.0
    assert initial[0, 0] == pytest.approx(data.values[0, 0, 0, 0])
    set_initial(model, torch.tensor([[0.1, 1.3, -0.2]]))  # a start outside: its nearest end
    m, x = model.initial.detach()[0, 1:].tolist()
    assert 0.999 < m <= 1.0 and 0 <= x < 1e-3
    set_initial(model, torch.tensor([[0.1, 0.99, 0.01]]))
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    for _ in range(20):  # steps that push M up and X down as far as they can
        opt.zero_grad()
        (model.initial[0, 2] - model.initial[0, 1]).backward()
        opt.step()
    m, x = model.initial.detach()[0, 1:].tolist()
    assert 0.99 < m <= 1.0 and 0 <= x < 0.01


def test_a_measured_state_is_placed_by_its_data_and_not_held():
    """The data anchor a measured state's start; its range does not reparametrize it."""
    data, model = _goldbeter(["C", "M"])
    assert float(model.initial.detach()[0, 1]) == pytest.approx(data.values[0, 0, 0, 1])
    assert float(model.initial.detach()[0, 2]) == 0.5  # X, unmeasured
    set_initial(model, torch.tensor([[0.1, 1.3, 0.5]]))
    assert float(model.initial.detach()[0, 1]) == pytest.approx(1.3)


def test_the_warm_start_s_latent_starts_are_moved_back_into_their_range():
    data, model = _goldbeter(["C"])
    paths = LatentPaths(model, smooth_states(data, ["C", "M", "X"]))
    with torch.no_grad():
        paths.start[:, 0] = 7.0  # a measured column: not the latent path's, left alone
        paths.start[:, 1] = 1.5
        paths.start[:, 2] = -0.3
    paths.project()  # 1 % of the range inside its ends, where the logistic can move them
    assert paths.start[0].tolist() == pytest.approx([7.0, 0.99, 0.01])
