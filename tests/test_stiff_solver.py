"""The stiff solver (rosenbrock23): accuracy, efficiency on stiff kinetics, gradients, failure.

The stiff problem is Robertson's chemical kinetics (rates 0.04, 3e7, 1e4): eigenvalues down to
about -1e4 while the solution changes on a time scale of 1, the textbook stiff test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from ude.errors import UdeError
from ude.model import Solver, SolverFailed

RATES = (0.04, 3e7, 1e4)
T_END = 1.0


class Robertson(nn.Module):
    """Robertson's kinetics with learnable rates, batched ``(batch, 3)``; counts its calls."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.rates = nn.Parameter(torch.tensor(RATES, dtype=dtype))
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a, b, c = y.unbind(-1)
        k1, k2, k3 = self.rates
        r1, r2, r3 = k1 * a, k2 * b * b, k3 * b * c
        return torch.stack([-r1 + r3, r1 - r2 - r3, r2], dim=-1)


def _times(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.linspace(0.0, T_END, 11, dtype=dtype)


def _y0(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """Radau at rtol 1e-10: ``(time, state)``."""
    rhs = Robertson()

    def f(_t, y):
        with torch.no_grad():
            return rhs(None, torch.from_numpy(y)[None])[0].numpy()

    t = _times().numpy()
    sol = solve_ivp(f, (0, T_END), _y0()[0].numpy(), "Radau", t_eval=t, rtol=1e-10, atol=1e-14)
    return sol.y.T


def _solve(rhs: nn.Module, rtol: float, atol: float, dtype=torch.float64) -> torch.Tensor:
    return Solver("rosenbrock23", rtol=rtol, atol=atol)(rhs, _y0(dtype), _times(dtype))


@pytest.mark.parametrize("rtol", [1e-4, 1e-6])
def test_matches_radau_within_tolerance(reference, rtol):
    # On this dissipative problem the global error stays of the order of the local tolerance
    # (measured: at most 1.2 times); 10 times leaves room for other platforms.
    atol = 1e-10
    with torch.no_grad():
        sol = _solve(Robertson(), rtol, atol)[:, 0].numpy()
    assert np.all(np.abs(sol - reference) <= 10 * (atol + rtol * np.abs(reference)))


def test_float32(reference):
    rhs = Robertson(torch.float32)
    with torch.no_grad():
        sol = _solve(rhs, 1e-4, 1e-7, torch.float32)[:, 0]
    assert sol.dtype == torch.float32
    assert np.all(np.abs(sol.numpy() - reference) <= 10 * (1e-7 + 1e-4 * np.abs(reference)))


def test_far_fewer_calls_than_dopri5():
    # dopri5's step is held at its stability limit (~3/1e4); the L-stable method follows the
    # solution (measured: 94 calls against about 5000).
    stiff, explicit = Robertson(), Robertson()
    with torch.no_grad():
        _solve(stiff, 1e-5, 1e-8)
        Solver("dopri5", rtol=1e-5, atol=1e-8)(explicit, _y0(), _times())
    assert stiff.calls < explicit.calls / 5


def test_gradient_matches_finite_difference():
    # d(sum of B over the outputs)/d k1. The solver's gradient and the finite difference of
    # its solution both carry an error of the order of rtol (the Jacobian in W is detached,
    # the steps differ between the perturbed solves): measured 4e-5 relative at rtol 1e-6.
    rtol, atol = 1e-6, 1e-12

    def loss(rhs: Robertson) -> torch.Tensor:
        return _solve(rhs, rtol, atol)[:, 0, 1].sum()

    rhs = Robertson()
    (grad,) = torch.autograd.grad(loss(rhs), rhs.rates)

    def perturbed(delta: float) -> float:
        moved = Robertson()
        with torch.no_grad():
            moved.rates[0] += delta
            return loss(moved).item()

    step = 1e-4 * RATES[0]
    fd = (perturbed(step) - perturbed(-step)) / (2 * step)
    assert grad[0].item() == pytest.approx(fd, rel=1e-3)


def test_gradient_reaches_initial_state():
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    sol = Solver("rosenbrock23")(Robertson(), y0, _times())
    (grad,) = torch.autograd.grad(sol[-1, 0, 2], y0)
    # C at the end grows with the initial A (it is made from A): a positive, finite slope.
    assert torch.isfinite(grad).all() and grad[0, 0] > 0


def test_batch_equals_separate_solves():
    # One step size is shared by the batch, so rows differ from single solves by the error
    # each step sequence leaves: a few times the tolerance.
    rtol, atol = 1e-6, 1e-10
    y0 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1e-5, 0.5]], dtype=torch.float64)
    solver = Solver("rosenbrock23", rtol=rtol, atol=atol)
    with torch.no_grad():
        batch = solver(Robertson(), y0, _times())
        single = torch.cat([solver(Robertson(), y0[i : i + 1], _times()) for i in range(2)], 1)
    assert torch.all((batch - single).abs() <= 10 * (atol + rtol * single.abs()))


def test_decreasing_times():
    # dy/dt = -y solved from t=1 back to t=0 grows by e. Local errors of about rtol add up
    # over the ~180 steps (measured 1.3e-6 relative, as solving forward from 0 to 1).
    t = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    y0 = torch.ones(1, 1, dtype=torch.float64)
    sol = Solver("rosenbrock23", rtol=1e-8, atol=1e-10)(lambda t, y: -y, y0, t)
    assert sol[-1, 0, 0].item() == pytest.approx(np.e, rel=1e-5)


def test_blow_up_raises():
    # dy/dt = y^2 from 1 leaves every bound at t = 1.
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y0 = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(SolverFailed, match="underflow|steps were not enough"):
        Solver("rosenbrock23")(lambda t, y: y * y, y0, t)


def test_step_limit_raises():
    with pytest.raises(SolverFailed, match="5 steps were not enough"):
        Solver("rosenbrock23", max_steps=5)(Robertson(), _y0(), _times())


def test_unknown_method_lists_rosenbrock23():
    with pytest.raises(UdeError, match="rosenbrock23"):
        Solver(method="nope")


def test_adjoint_is_refused():
    with pytest.raises(UdeError, match="adjoint=false"):
        Solver(method="rosenbrock23", adjoint=True)


def test_a_hybrid_model_trains_through_it():
    from ude import simulate_measurements
    from ude.fit import fit

    m = simulate_measurements("lotka_volterra", noise=0.05, n_times=21)
    result = fit("lotka_volterra", m, solver=Solver("rosenbrock23"), max_epochs=3, fit_cycles=1)
    assert result.metrics["stop_reason"] is None and result.metrics["epochs"] == 3
    assert np.isfinite(result.metrics["train_nmse"])
