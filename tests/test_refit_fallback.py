"""TwinRefit's fallback: a fixed-step refit whose solve fails at the start is redone with the
stiff solver, rodas5p, on a twin with the distillation's rate laws (Hill repression with a
fitted exponent, Michaelis-Menten).

The twin: x is repressed by y, y is made from x at a saturating rate and decays fast. With
rate 100, rk4 on the data's grid (step 0.5) is unstable and overflows; with rate 20 it grows a
hundredfold per step and stays finite (a loss of 1e193, which the refit used to accept as a
fit). Condition c0 starts at y = 0, where the Hill term's Jacobian used to be 0/0 and rodas5p
could not take a step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ude.data.measurements import Measurements
from ude.distill import TwinRefit
from ude.distill.refit import _batch
from ude.fit import make_module
from ude.model import Solver, SolverFailed
from ude.spec import ModelSpec, simulate_spec

TRUE = {"a": 2.0, "K": 0.5, "n": 3.0, "V": 150.0, "Km": 0.3, "d": 0.5, "k": 100.0}
START = {**TRUE, "K": 0.8, "n": 2.0, "Km": 0.6, "V": 100.0}
LEARN = ("K", "n", "Km", "V")
NOISE = 0.02  # relative


def toggle(values: dict, learn=()) -> ModelSpec:
    params = {
        k: ({"value": v, "learn": True, "min": 0} if k in learn else v) for k, v in values.items()
    }
    return ModelSpec.from_dict(
        {
            "states": ["x", "y"],
            "parameters": params,
            "equations": {"x": "a*K**n/(K**n + abs(y)**n) - d*x", "y": "V*x/(Km + x) - k*y"},
        },
        source="toggle.yaml",
    )


FINITE = {**TRUE, "V": 30.0, "k": 20.0}  # rk4's blow-up stays finite


def measurements(truth: dict) -> Measurements:
    times = np.linspace(0.0, 20.0, 41)
    initial = np.array([[0.2, 0.0], [1.5, 0.5]])
    values = simulate_spec(toggle(truth), initial, times)
    noisy = values * (1 + NOISE * np.random.default_rng(0).standard_normal(values.shape))
    m = Measurements(times, noisy[:, :, None, :], ["x", "y"], ["c0", "c1"])
    m.initial = {"x": initial[:, 0], "y": initial[:, 1]}
    return m


@pytest.fixture(scope="module")
def data() -> Measurements:
    return measurements(TRUE)


@pytest.mark.parametrize("truth", [TRUE, FINITE], ids=["overflow", "finite_blow_up"])
def test_a_fixed_step_refit_that_fails_at_the_start_is_redone_with_rodas5p(truth):
    data = measurements(truth)
    start = {**truth, "K": 0.8, "n": 2.0, "Km": 0.6, "V": truth["V"] * 2 / 3}
    result = TwinRefit(method="rk4").fit(toggle(start, LEARN), data)
    assert result.ok
    assert result.model.solver.method == "rodas5p"
    # the fit reaches the noise floor: nmse ~ NOISE^2 (measured 3.4e-4 both)
    assert result.nmse < 2.5 * NOISE**2
    # and the truth within what 2 % noise allows (measured: at most 14 %, Km)
    for name in LEARN:
        assert result.values[name] == pytest.approx(truth[name], rel=0.2)


def test_without_the_fallback_rk4_does_not_fit(data):
    # what the fallback is for: rk4 alone leaves the region where the model solves
    failed = TwinRefit(method="rk4", fallback=None).fit(toggle(START, LEARN), data)
    assert not failed.ok


@pytest.mark.slow
def test_rodas5p_fallback_finds_the_optimum_rosenbrock23_found(data):
    # The same refit with the former fallback (about 15 times slower): the same optimum up to
    # the two solvers' discretisation at rtol 1e-4 (measured: 0.07 % at most, n).
    new = TwinRefit(method="rk4").fit(toggle(START, LEARN), data)
    old = TwinRefit(method="rk4", fallback="rosenbrock23").fit(toggle(START, LEARN), data)
    assert old.ok and old.model.solver.method == "rosenbrock23"
    assert new.nmse == pytest.approx(old.nmse, rel=1e-3)
    for name in LEARN:
        assert new.values[name] == pytest.approx(old.values[name], rel=0.01)


def test_a_twin_fitted_with_rodas5p_keeps_its_own_solver_and_dopri5s_optimum():
    # The final refit fits with the compiled rodas5p and hands the twin dopri5 (its
    # twin.json's solver, the bands' draws'): the optimum is dopri5's up to the two solvers'
    # discretisation at rtol 1e-6, and the twin's fit under its own solver is the one reported.
    slow = {**TRUE, "V": 3.0, "k": 2.0}  # not stiff: dopri5 refits it in seconds
    data = measurements(slow)
    start = toggle({**slow, "K": 0.8, "n": 2.0, "Km": 0.6, "V": 2.0}, LEARN)
    fast = TwinRefit(method="rodas5p", twin_method="dopri5").fit(start, data)
    plain = TwinRefit(method="dopri5").fit(start, data)
    assert fast.ok and plain.ok
    assert fast.model.solver.method == "dopri5"
    assert fast.nmse == pytest.approx(plain.nmse, rel=1e-4)
    for name in LEARN:
        assert fast.values[name] == pytest.approx(plain.values[name], rel=1e-3)
    module = make_module(fast.model, data, loss="nll")
    with torch.no_grad():
        own = float(module.losses(_batch(data))["mse"])
    assert own == pytest.approx(fast.nmse, rel=1e-5)


def test_a_twin_its_fit_leaves_stiff_keeps_the_solver_it_was_fitted_with():
    # y relaxes a million times faster than x: dopri5 cannot cross the first interval in its
    # 5000 steps, so the twin keeps rodas5p rather than a solver that fails on it
    stiff = {**TRUE, "V": 1.5e8, "k": 1e6}
    data = measurements(stiff)
    start = toggle({**stiff, "K": 0.8, "n": 2.0, "Km": 0.6, "V": 1e8}, LEARN)
    result = TwinRefit(method="rodas5p", twin_method="dopri5").fit(start, data)
    assert result.ok
    assert result.model.solver.method == "rodas5p"
    with pytest.raises(SolverFailed):
        result.model.solver = Solver("dopri5", 1e-6, 1e-8, max_steps=5000)
        make_module(result.model, data, loss="nll").losses(_batch(data))
