"""A twin's refit holds the learned initial values of the states its spec declares amounts
(``nonnegative``) at or above zero with ``TwinRefit(nonnegative_initial=True)`` (off by default).

Goldbeter's mitotic oscillator, the benchmark's base scenario with 30 points (5 % noise), its
true structure refitted (``vd`` and ``Kd`` in ``[1e-4, 10]`` learned) from the true initial
states: allowed below zero, the refit starts ``M`` at ``-0.005``, the pole of
``V2*M/(K2 + M)``, and fits the first data by the jump out of it; the noise levels it learns
are then off (``C``'s a third above the truth's, ``X``'s a quarter below).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ude.benchmark.scenario import Scenario, build_problem
from ude.distill import TwinRefit
from ude.distill.uncertainty import laplace
from ude.model.hybrid import build_hybrid
from ude.model.initial_scale import (
    AMOUNT_FLOOR,
    initial_parameter,
    lift_amounts,
    set_initial,
)
from ude.model.solver import Solver
from ude.spec import ModelSpec
from ude.spec.simulate import simulate_spec


def _twin(spec: ModelSpec) -> ModelSpec:
    params = dict(spec.parameters)
    params["vd"] = replace(params["vd"], learn=True)
    params["Kd"] = replace(params["Kd"], learn=True, min=1e-4, max=10.0)
    return replace(spec, parameters=params, nonnegative=list(spec.states))


@pytest.fixture(scope="module")
def goldbeter():
    problem = build_problem(Scenario(system="goldbeter", seed=0, n_times=30))
    return problem.measurements, _twin(problem.truth)


def test_refit_keeps_declared_amounts_from_the_pole_below_zero(goldbeter):
    data, twin = goldbeter
    start = np.asarray(data.truth.initial, dtype=float)
    fits = {}
    for bounded in (True, False):
        refit = TwinRefit(max_iter=400, method="rodas5p", nonnegative_initial=bounded)
        fits[bounded] = refit.fit(twin, data, initial=start)
        assert fits[bounded].ok
    free = fits[False].model.initial.detach().numpy()
    held = fits[True].model.initial.detach().numpy()
    # measured: M(t0) -0.0050 free (the pole at -K2); 0.0080 held (the truth: 0.01)
    assert free.min() == pytest.approx(-0.005, abs=2e-4)
    assert held.min() >= 0
    # measured: the noise of C, M, X 0.0385, 0.0280, 0.0212 free; 0.0329, 0.0284, 0.0263 held
    truth = simulate_spec(data.truth.spec, start, data.times, None)[0]
    truth_noise = 0.05 * np.ptp(truth, axis=0)  # 0.0286, 0.0348, 0.0283
    error = {b: np.abs(f.model.noise.detach().numpy() / truth_noise - 1) for b, f in fits.items()}
    assert error[True].max() < 0.2 < error[False].max()
    assert np.isfinite(laplace(fits[True].model, data).std()["vd"])


def test_an_amounts_start_is_lifted_to_its_floor_and_values_set_later_kept(goldbeter):
    data, twin = goldbeter
    twin = replace(twin, nonnegative=["C", "M"])  # X not declared: linear, unbounded
    model = build_hybrid(twin, data, Solver("rodas5p"), nonnegative_initial=True)
    start = torch.tensor([[0.0, -0.01, -0.02]], dtype=model.initial.dtype)
    set_initial(model, lift_amounts(model, start))
    values = model.initial.detach().numpy()[0]
    floors = AMOUNT_FLOOR * model.state_scale.numpy()
    assert values[0] == pytest.approx(floors[0]) and values[1] == pytest.approx(floors[1])
    assert values[2] == pytest.approx(-0.02)
    assert initial_parameter(model).is_leaf and initial_parameter(model).requires_grad
    # a value set afterwards (a fitted twin copied, a condition selected) is kept as it is
    set_initial(model, torch.tensor([[2e-5, 0.3, 0.1]], dtype=model.initial.dtype))
    assert model.initial.detach().numpy()[0] == pytest.approx([2e-5, 0.3, 0.1], rel=1e-6)
    plain = build_hybrid(twin, data, Solver("rodas5p"))  # training's models: as given
    assert lift_amounts(plain, start) is start
    assert initial_parameter(plain) is plain.initial


def test_a_column_major_start_leaves_the_raw_parameter_contiguous(goldbeter):
    """A start given as a column-major array (a transposed numpy array) must not make the raw
    parameter non-contiguous: ``parameters_to_vector`` views it (the Laplace approximation
    failed so on the benchmark's 2-condition enzyme cell)."""
    data, twin = goldbeter
    start = np.asfortranarray(np.tile(np.asarray(data.truth.initial, dtype=float), (2, 1)))
    data2 = build_problem(Scenario(system="goldbeter", seed=0, n_times=30, conditions=2))
    model = build_hybrid(twin, data2.measurements, Solver("rodas5p"), nonnegative_initial=True)
    values = torch.as_tensor(start).to(model.initial.dtype)
    assert not values.is_contiguous()
    set_initial(model, values)
    assert initial_parameter(model).is_contiguous()
    torch.nn.utils.parameters_to_vector(model.parameters())


def test_settling_holds_the_raw_initial_values_of_amounts(goldbeter):
    data, twin = goldbeter
    start = np.asarray(data.truth.initial, dtype=float)
    refit = TwinRefit(max_iter=100, method="rodas5p", settle_first=True, nonnegative_initial=True)
    fit = refit.fit(twin, data, initial=start)
    assert fit.ok and fit.model.initial.detach().numpy().min() >= 0
