"""rodas5p compiled (ude/model/rodas_kernels.py) against its numpy path (ude/model/rodas.py).

A right-hand side without networks (a twin, a true model) solves and differentiates in the
compiled kernels. They implement the same steps and the same adjoint (the numpy path's own
correctness, against Radau, finite differences and a torch replay, is tests/test_rodas.py), so
the two must take the same steps and agree to rounding: states and gradients within 1e-9 of
their scale, where the tolerance's own effect would be 1e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from ude import threads
from ude.model import Solver, SolverFailed
from ude.model.hybrid import HybridODE
from ude.model.rodas import Stats
from ude.model.rodas_autograd import RodasFailed, solve
from ude.spec import ModelSpec
from ude.systems import get_system

F64 = torch.float64

# A toggle with the distillation's rate laws: Hill repression K^n/(K^n + |y|^n) with a fitted
# n and Michaelis-Menten x/(K + x); two conditions with an input and a per-condition rate.
TOGGLE = {
    "states": ["x", "y"],
    "inputs": ["u"],
    "parameters": {
        "a": {"value": 3.0, "learn": True, "min": 0, "per_condition": True},
        "Kr": {"value": 0.8, "learn": True, "min": 0},
        "n": {"value": 2.5, "learn": True, "min": 0},
        "b": {"value": 2.0, "learn": True, "min": 0},
        "Km": {"value": 0.4, "learn": True, "min": 0},
        "d": {"value": 0.7, "learn": True, "min": 0},
    },
    "equations": {
        "x": "u + a*Kr**n/(Kr**n + abs(y)**n) - d*x",
        "y": "b*x/(Km + x) - d*y - 30*y*x",
    },
}


def toggle(neural: bool = False) -> HybridODE:
    extra = {"neural": [{"targets": ["y"], "inputs": ["x", "y"]}]} if neural else {}
    spec = ModelSpec.from_dict({**TOGGLE, **extra}, source="toggle.yaml")
    return HybridODE(
        spec,
        ["x", "y"],
        n_conditions=2,
        inputs=torch.tensor([[0.2], [0.5]], dtype=F64),
        initial=torch.tensor([[0.1, 1.5], [2.0, 0.3]], dtype=F64),
        solver=Solver("rodas5p"),
        state_scale=torch.ones(2, dtype=F64),
        time_scale=1.0,
        noise=torch.ones(2, dtype=F64),
    ).double()


def toggle_network() -> HybridODE:
    """The toggle with a network on ``y`` whose output matters (its last layer not small)."""
    torch.manual_seed(0)
    model = toggle(neural=True)
    with torch.no_grad():
        model.networks[0].layers[-1].weight.normal_(0, 0.5)
    return model


def goldbeter() -> HybridODE:
    """The true model with every parameter learned (so the gradient reaches them all)."""
    system = get_system("goldbeter")
    truth = system.truth
    params = {k: replace(p, learn=True) for k, p in truth.parameters.items()}
    spec = ModelSpec(**{**truth.__dict__, "parameters": params})
    n = len(spec.states)
    return HybridODE(
        spec,
        list(spec.states),
        1,
        inputs=torch.zeros(1, 0, dtype=F64),
        initial=torch.tensor([system.scenario.initial[0]], dtype=F64),
        solver=Solver("rodas5p"),
        state_scale=torch.ones(n, dtype=F64),
        time_scale=1.0,
        noise=torch.ones(n, dtype=F64),
    ).double()


def one_state(spec: dict, inputs: torch.Tensor) -> HybridODE:
    """A one-state model of ``spec`` on rodas5p, one condition per row of ``inputs``, each
    starting at 1."""
    n = inputs.shape[0]
    return HybridODE(
        ModelSpec.from_dict(spec, source="one.yaml"),
        ["x"],
        n,
        inputs=inputs.to(F64),
        initial=torch.ones(n, 1, dtype=F64),
        solver=Solver("rodas5p"),
        state_scale=torch.ones(1, dtype=F64),
        time_scale=1.0,
        noise=torch.ones(1, dtype=F64),
    ).double()


def run(model: HybridODE, times: torch.Tensor, compiled: bool, shared: bool = True, cond=None):
    """States ``(time, condition, state)``, the gradients of a weighted sum of them in every
    learned tensor (the initial states included), and the solve's work; ``shared``: one step
    size for all conditions (the numpy path's); ``cond``: the conditions solved (all)."""
    cond = torch.arange(model.initial.shape[0]) if cond is None else torch.as_tensor(cond)
    model.zero_grad()
    model._context = model.context(cond)
    stats = Stats()
    try:
        sol = solve(model, model.initial[cond], times, 1e-6, 1e-9, 5000, stats, compiled, shared)
    finally:
        model._context = None
    shape = (sol.shape[0], *model.initial.shape)  # every condition's, whichever are solved
    weights = torch.linspace(0.5, 1.5, int(np.prod(shape)), dtype=F64).reshape(shape)[:, cond]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((weights * sol).sum(), params, allow_unused=True)
    return sol.detach().numpy(), grads, stats


@pytest.mark.parametrize(
    "make, t_end",
    [(goldbeter, 100.0), (toggle, 6.0), (toggle_network, 6.0)],
    ids=["goldbeter", "hill_toggle", "hill_toggle_with_a_network"],
)
def test_compiled_solve_and_gradient_match_numpy(make, t_end):
    model = make()
    times = torch.linspace(0.0, t_end, 21, dtype=F64)
    fast, fast_grads, fast_stats = run(model, times, True)
    slow, slow_grads, slow_stats = run(model, times, False)
    # the same steps (same initial step, controller and rejections) ...
    for field in ("accepted", "rejected", "f_evals", "jac_evals"):
        assert getattr(fast_stats, field) == getattr(slow_stats, field)
    assert fast_stats.accepted > 20  # measured: Goldbeter 953 steps, the toggle 108
    # ... so states and gradients agree to rounding
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
    n_checked = 0
    for a, b in zip(fast_grads, slow_grads, strict=True):
        if b is None:
            assert a is None or not a.abs().max()
            continue
        scale = float(b.abs().max())
        assert scale > 0
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-9 * scale)
        n_checked += 1
    assert n_checked >= 3  # initial states, the learned parameters (and the weights)


def test_conditions_step_alone_each_as_if_solved_by_itself():
    # The kernels step each condition with its own step size by default: the states and
    # gradients of both conditions solved together are those of each solved alone, to
    # rounding, and within the tolerance of the shared-step solve; a condition no longer
    # takes the other's steps, so the work is less.
    model = toggle()
    times = torch.linspace(0.0, 6.0, 21, dtype=F64)
    both, both_grads, both_stats = run(model, times, True, shared=False)
    alone = [run(model, times, True, shared=False, cond=[b]) for b in range(2)]
    np.testing.assert_allclose(both, np.concatenate([a[0] for a in alone], axis=1), 1e-12)
    assert both_stats.accepted == sum(a[2].accepted for a in alone)
    for k, grad in enumerate(both_grads):
        if grad is None:
            continue
        summed = sum(a[1][k] for a in alone if a[1][k] is not None)  # rows of the other: 0
        np.testing.assert_allclose(grad.numpy(), summed.numpy(), rtol=1e-10, atol=1e-12)
    shared, shared_grads, shared_stats = run(model, times, True, shared=True)
    np.testing.assert_allclose(both, shared, rtol=1e-4, atol=1e-6)
    assert both_stats.accepted < 2 * shared_stats.accepted
    assert not np.array_equal(both, shared)  # their own steps, not the shared ones


@pytest.mark.parametrize("make", [toggle, toggle_network], ids=["twin", "with_a_network"])
def test_conditions_solved_in_threads_give_the_same_bits_as_one_after_the_other(make, monkeypatch):
    # ude.threads runs each condition's compiled solve and reverse pass in a thread of its
    # own; each reads the shared tapes and writes only its own arrays, so the states, the
    # gradients and the work are those of the conditions solved one after the other.
    times = torch.linspace(0.0, 6.0, 21, dtype=F64)
    monkeypatch.setattr(threads, "_row_pool", lambda: None)
    alone, alone_grads, alone_stats = run(make(), times, True, shared=False)
    used = []
    with ThreadPoolExecutor(2) as pool:

        def spy():
            used.append(True)
            return pool

        monkeypatch.setattr(threads, "_row_pool", spy)
        both, both_grads, both_stats = run(make(), times, True, shared=False)
    assert len(used) == 2  # the forward solve and the reverse pass
    np.testing.assert_array_equal(both, alone)
    for grad, ref in zip(both_grads, alone_grads, strict=True):
        assert (grad is None) == (ref is None)
        if grad is not None:
            np.testing.assert_array_equal(grad.numpy(), ref.numpy())
    assert (both_stats.accepted, both_stats.f_evals) == (alone_stats.accepted, alone_stats.f_evals)


def test_a_condition_that_fails_in_a_thread_fails_the_solve_with_its_own_message(monkeypatch):
    # the first condition's solution blows up at t=1, the second's decays; solved in
    # threads (both run), the solve fails on the first with the message it has in order
    spec = {"states": ["x"], "inputs": ["u"], "equations": {"x": "u*x**2"}}
    model = one_state(spec, torch.tensor([[1.0], [-1.0]], dtype=F64))
    times = torch.linspace(0.0, 2.0, 5, dtype=F64)
    messages = []
    for pool in (None, ThreadPoolExecutor(2)):
        monkeypatch.setattr(threads, "_row_pool", lambda pool=pool: pool)
        with pytest.raises(RodasFailed) as info:
            run(model, times, True, shared=False)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("step size underflow at t=1 ")


def test_the_row_pool_has_a_thread_per_usable_cpu_and_is_made_again_after_a_fork(monkeypatch):
    monkeypatch.setattr(threads, "_pool", None)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
    assert threads.map_rows(lambda b: threading.current_thread().name, 3)[0] == "MainThread"
    monkeypatch.setattr(threads, "_pool", None)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    names = threads.map_rows(lambda b: threading.current_thread().name, 4)
    assert all(name.startswith("ude-rows") for name in names)
    assert threads.map_rows(lambda b: b * b, 5) == [0, 1, 4, 9, 16]  # in order
    first = threads._row_pool()
    assert threads._row_pool() is first
    monkeypatch.setattr(threads, "_pool_pid", -1)  # as in a forked child
    assert threads._row_pool() is not first
    first.shutdown()


def test_compiled_gradient_matches_finite_differences():
    # the toggle's Hill exponent n: a parameter behind the context, reached by the kernel's
    # reverse sweeps (the stage evaluations and the Jacobian inside W)
    model = toggle()
    times = torch.linspace(0.0, 6.0, 7, dtype=F64)
    model.solver = Solver("rodas5p", rtol=1e-11, atol=1e-13)
    n = model.parameters_.learned["n"]

    def loss() -> torch.Tensor:
        sol = model.simulate(times, torch.arange(2))
        return (sol * torch.linspace(0.5, 1.5, sol.numel(), dtype=F64).reshape(sol.shape)).sum()

    (grad,) = torch.autograd.grad(loss(), [n])
    eps = 1e-6
    with torch.no_grad():
        n += eps
        up = loss().item()
        n -= 2 * eps
        down = loss().item()
        n += eps
    assert grad.item() == pytest.approx((up - down) / (2 * eps), rel=1e-5)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_division_by_zero_fails_like_the_numpy_path(compiled):
    # x' = 1/(x - 1) from x = 1: the tape divides by zero at the start. The kernels, like
    # numpy, take inf for it and fail with the usual message rather than a ZeroDivisionError.
    model = one_state({"states": ["x"], "equations": {"x": "1/(x - 1)"}}, torch.zeros(1, 0))
    model._context = model.context(torch.tensor([0]))
    times = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(Exception) as info:
        solve(model, model.initial, times, 1e-6, 1e-9, 5000, None, compiled)
    assert "past t=0 " in str(info.value) or "at t=0 " in str(info.value)
    assert not isinstance(info.value, ZeroDivisionError)
    model._context = None
    with pytest.raises(SolverFailed, match=r"past t=0 \(step size"):
        model.simulate(times, torch.tensor([0]))


def test_twins_and_network_models_solve_in_the_kernels(monkeypatch):
    # Solver("rodas5p") takes the compiled path by itself, with or without a network.
    from ude.model import rodas_kernels

    calls = []
    kernel = rodas_kernels.integrate
    monkeypatch.setattr(rodas_kernels, "integrate", lambda *args: calls.append(1) or kernel(*args))
    times = torch.linspace(0.0, 2.0, 5, dtype=F64)
    toggle().simulate(times, torch.arange(2))
    assert len(calls) == 2  # one per condition
    toggle(neural=True).simulate(times, torch.arange(2))  # a network in the right-hand side
    assert len(calls) == 4


_FIRST_CALLER = """
import numpy as np, sympy as sp
from numba import njit
from ude.spec.compile import CompiledExpressions
from ude.spec.tape_kernels import encode_tape, tape_forward, tape_reverse

@njit  # numba's default error model (Python's): raises on a division by zero
def first(code, arg, const, slots, adj):
    tape_forward(code, arg, const, slots)
    tape_reverse(code, arg, const, slots, adj)

x = sp.Symbol("x")
code, arg, const, out, _ = encode_tape(CompiledExpressions([1 / (x - 1)], ["x"]).double())
slots = np.zeros(1 + len(code))
slots[0] = 1.0
adj = np.zeros_like(slots)
adj[out[0]] = 1.0
first(code, arg, const, slots, adj)
print(slots[out[0]], adj[0])
"""


def test_the_tape_sweeps_divide_by_zero_like_numpy_whichever_kernel_compiles_them_first(tmp_path):
    # numba compiles a callee without an error model of its own with its first caller's: a
    # Python-model caller compiled first (PEtab's kernels) made every later kernel in that
    # process, and in numba's cache, raise ZeroDivisionError. A fresh cache and process.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_CALLER], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    value, grad = (float(v) for v in done.stdout.split())
    assert np.isinf(value) and not np.isfinite(grad)
