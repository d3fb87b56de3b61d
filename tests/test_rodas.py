"""rodas5p: the numpy right-hand side and its derivatives, accuracy, the exact adjoint, failure.

A HybridODE takes the fast path (numpy forward, adjoint of the accepted steps, one batched
torch pass for the parameters); any other function the generic one (autograd Jacobian, a
replay of the accepted steps for the gradient). Both are checked against each other, against
finite differences and against scipy's Radau.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from scipy.integrate import solve_ivp

from ude.model import Solver, SolverFailed
from ude.model.hybrid import HybridODE
from ude.model.numeric_rhs import NumericRHS
from ude.model.rodas import Stats
from ude.model.rodas_autograd import solve
from ude.spec import ModelSpec
from ude.spec.compile import CompiledExpressions
from ude.spec.derivatives import compiled_derivatives
from ude.systems import get_system

F64 = torch.float64

# Two conditions, an input, a learned per-condition parameter, a plain network slot and a
# neural reaction (a flux network): every part of a HybridODE's right-hand side.
SPEC = {
    "states": ["S", "P", "E"],
    "inputs": ["u"],
    "parameters": {
        "k": {"value": 2.0, "learn": True, "min": 0, "per_condition": True},
        "K": {"value": 0.05, "learn": True, "min": 0},
        "d": 0.3,
    },
    "equations": {"S": "u - k*mm(S, K)*E", "E": "-d*E + 0.1*exp(-P)"},
    "reactions": ["S -> P; neural"],
    "neural": [{"targets": ["E"], "inputs": ["S", "P", "E", "u"]}],
}


def hybrid(activation: str = "tanh", rtol: float = 1e-6, nonnegative: bool = False) -> HybridODE:
    spec = ModelSpec.from_dict(SPEC, source="test.yaml")
    torch.manual_seed(0)
    model = HybridODE(
        spec,
        ["S", "P"],
        n_conditions=2,
        inputs=torch.tensor([[0.5], [1.0]], dtype=F64),
        initial=torch.tensor([[1.0, 0.0, 0.5], [2.0, 0.1, 0.3]], dtype=F64),
        solver=Solver("rodas5p", rtol=rtol, atol=1e-10),
        state_scale=torch.ones(3, dtype=F64),
        time_scale=5.0,
        noise=torch.full((2,), 0.1, dtype=F64),
        hidden=8,
        activation=activation,
        nonnegative_fluxes=nonnegative,
    ).double()
    with torch.no_grad():  # networks that matter (they start near zero)
        for net in model.networks:
            mlp = net.mlp if hasattr(net, "mlp") else net
            mlp.layers[-1].weight.normal_(0, 0.3)
    return model


def torch_rhs(model: HybridODE, y: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    return model.known_terms(y, ctx) + model.neural_terms(y, ctx)


def test_compiled_expressions_evaluate_the_same_in_numpy():
    x, y, a = sp.symbols("x y a")
    exprs = [a * x - x * y, x**2 / (a**2 + x**2) + sp.exp(-y), sp.Integer(3), x**-2.5, 2**x]
    f = CompiledExpressions(exprs, ["x", "y", "a"]).double()
    values = np.random.default_rng(0).uniform(0.1, 2.0, (7, 3))
    want = f(torch.from_numpy(values)).numpy()
    np.testing.assert_allclose(f.numpy(values), want, rtol=1e-14)


def test_compiled_jacobian_and_second_derivatives_match_autograd():
    spec = get_system("yeast_glycolysis").truth
    n = len(spec.states)
    d = compiled_derivatives(spec.known_rhs(), spec.symbols, n)
    rng = np.random.default_rng(1)
    params = [p.value for p in spec.parameters.values()]
    values = np.array([[*rng.uniform(0.1, 1.5, n), *params] for _ in range(4)])
    v = torch.from_numpy(values).requires_grad_(True)
    f_t = CompiledExpressions(spec.known_rhs(), spec.symbols).double()
    jac_t = torch.func.vmap(torch.func.jacrev(lambda r: f_t(r[None])[0]))(v)[..., :n]
    f, jac = d.f_jac(values[:, :n], values[:, n:])
    np.testing.assert_allclose(f, f_t(v).detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(jac, jac_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    omega = rng.normal(size=(4, n, n))
    got = d.contract_hessian(d.hessian_values(values[:, :n], values[:, n:]), omega)
    inner = (d.jacobian_torch(v) * torch.from_numpy(omega)).sum()
    (want,) = torch.autograd.grad(inner, v)
    np.testing.assert_allclose(got, want[:, :n].numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "activation, nonnegative",
    [(a, False) for a in ("tanh", "gelu", "silu", "softplus", "relu", "rbf")] + [("tanh", True)],
)
def test_numeric_rhs_matches_the_model_with_its_derivatives(activation, nonnegative):
    model = hybrid(activation, nonnegative=nonnegative)
    if nonnegative:  # the reaction's flux is negative somewhere below: softplus matters
        net = next(n for n in model.networks if hasattr(n, "nonnegative"))
        assert net.nonnegative.all()
        with torch.no_grad():
            net.mlp.layers[-1].bias.fill_(-0.3)
    ctx = model.context(torch.arange(2)).detach()
    rhs = NumericRHS.from_model(model, ctx)
    y = torch.tensor([[0.7, 0.2, 0.4], [1.5, 0.3, 0.2]], dtype=F64)
    f, jac = rhs.value_and_jacobian(y.numpy())
    np.testing.assert_allclose(f, torch_rhs(model, y, ctx).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(rhs(y.numpy()), f, rtol=1e-14)
    want = torch.func.vmap(torch.func.jacrev(lambda r, c: torch_rhs(model, r[None], c[None])[0]))(
        y, ctx
    )
    np.testing.assert_allclose(jac, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    # sum_i d/dy [omega_i . (J(y) u_i)] for three (omega, u) pairs
    rng = np.random.default_rng(2)
    omega, u = rng.normal(size=(2, 3, 2, 3))
    got = rhs.directional_hessian(y.numpy(), rhs.hessian_values(y.numpy()), omega, u)
    y_ = y.clone().requires_grad_(True)
    total = 0.0
    for s in range(3):
        _, jvp = torch.func.jvp(
            lambda r: torch_rhs(model, r, ctx), (y_,), (torch.from_numpy(u[s]),)
        )
        total = total + (jvp * torch.from_numpy(omega[s])).sum()
    (want_h,) = torch.autograd.grad(total, y_)
    np.testing.assert_allclose(got, want_h.numpy(), rtol=1e-9, atol=1e-12)


def radau(spec: ModelSpec, y0: np.ndarray, times: np.ndarray) -> np.ndarray:
    d = compiled_derivatives(spec.known_rhs(), spec.symbols, len(spec.states))
    params = np.array([p.value for p in spec.parameters.values()])

    sol = solve_ivp(
        lambda _t, y: d.f(y, params),
        (times[0], times[-1]),
        y0,
        "Radau",
        t_eval=times,
        rtol=1e-11,
        atol=1e-13,
        jac=lambda _t, y: d.f_jac(y, params)[1],
    )
    return sol.y.T


def twin_model(name: str, rtol: float) -> HybridODE:
    """The true model of a zoo system as a HybridODE without networks (a 'twin')."""
    spec = get_system(name).truth
    n = len(spec.states)
    return HybridODE(
        spec,
        list(spec.states),
        1,
        inputs=torch.zeros(1, 0, dtype=F64),
        initial=torch.tensor([get_system(name).scenario.initial[0]], dtype=F64),
        solver=Solver("rodas5p", rtol=rtol, atol=1e-10),
        state_scale=torch.ones(n, dtype=F64),
        time_scale=1.0,
        noise=torch.ones(n, dtype=F64),
    ).double()


@pytest.mark.parametrize("rtol", [1e-5, 1e-6])
def test_goldbeter_matches_radau_and_beats_rosenbrock23_at_the_same_tolerance(rtol):
    # Over one oscillation (t in [0, 30]) the global error stays within a few tolerances
    # (measured: 0.13 rtol at 1e-5, 0.35 rtol at 1e-6); rosenbrock23 (order 2) is measured
    # 190 and 160 times less accurate at the same tolerances.
    times = np.linspace(0.0, 30.0, 16)
    model = twin_model("goldbeter", rtol)
    ref = radau(model.spec, model.initial[0].detach().numpy(), times)
    t = torch.from_numpy(times)
    with torch.no_grad():
        got = model.simulate(t, torch.tensor([0]))[0].numpy()
        model.solver = Solver("rosenbrock23", rtol=rtol, atol=1e-10)
        old = model.simulate(t, torch.tensor([0]))[0].numpy()
    err = np.abs(got - ref) / (1e-10 + np.abs(ref))
    assert err.max() < 10 * rtol
    assert err.max() < np.max(np.abs(old - ref) / (1e-10 + np.abs(ref))) / 5


def losses(model: HybridODE, times: torch.Tensor) -> torch.Tensor:
    states = model.simulate(times, torch.arange(2))
    weights = torch.linspace(0.5, 1.5, states.numel(), dtype=F64).reshape(states.shape)
    return (weights * states).sum()


def test_fast_gradient_is_the_exact_derivative_of_the_steps():
    # The compiled adjoint (each condition on its own steps) and a replay of the same
    # accepted steps through torch autograd (a different computation of the same discrete
    # derivative) agree to rounding.
    from ude.model import rodas_autograd

    model = hybrid()
    times = torch.linspace(0.0, 4.0, 9, dtype=F64)
    params = [p for p in model.parameters() if p.requires_grad]
    fast = torch.autograd.grad(losses(model, times), params, allow_unused=True)
    context = model.context(torch.arange(2))
    steps, rows = [], []
    for b in range(2):  # each condition's own steps, replayed with a graph
        system = model.numeric_rhs(context[b : b + 1])
        problem = rodas_autograd._Problem(model.rhs, system.rhs, times, 1e-6, 1e-10, 5000, None)
        problem.compile()
        assert problem.tapes is not None  # the network runs in the kernels
        problem.integrate(model.initial[b : b + 1].detach().numpy(), record=True)
        steps.append(len(problem.trajectory.h))
        rows.append(
            rodas_autograd._replay(
                lambda _t, y, c=system.context: model.rhs(y, c),
                model.initial[b : b + 1],
                problem.trajectory,
            )
        )
    states = torch.cat(rows, dim=1).transpose(0, 1)
    weights = torch.linspace(0.5, 1.5, states.numel(), dtype=F64).reshape(states.shape)
    slow = torch.autograd.grad((weights * states).sum(), params, allow_unused=True)
    assert min(steps) >= 8  # measured 18 and 10 accepted steps
    for a, b in zip(fast, slow, strict=True):
        if b is None:
            assert a is None or not a.abs().max()
            continue
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-9 * b.abs().max())


def test_fast_gradient_matches_finite_differences_of_an_accurate_solve():
    model = hybrid(rtol=1e-8)
    times = torch.linspace(0.0, 4.0, 9, dtype=F64)
    k = model.parameters_.learned["k"]
    weight = model.networks[0].layers[0].weight
    grads = torch.autograd.grad(losses(model, times), [k, weight, model.initial])
    model.solver = Solver("rodas5p", rtol=1e-11, atol=1e-13)

    def central(p: torch.Tensor, idx: int, eps: float = 1e-6) -> float:
        with torch.no_grad():
            old = p.view(-1)[idx].item()
            p.view(-1)[idx] = old + eps
            up = losses(model, times).item()
            p.view(-1)[idx] = old - eps
            down = losses(model, times).item()
            p.view(-1)[idx] = old
        return (up - down) / (2 * eps)

    # solver error ~1e-8 relative against a 1e-6 step: a few 1e-5 relative at most
    for g, p in zip(grads, [k, weight, model.initial], strict=True):
        for idx in (0, p.numel() - 1):
            assert g.view(-1)[idx].item() == pytest.approx(central(p, idx), rel=1e-4, abs=1e-7)


def test_second_derivatives_through_a_solve():
    # create_graph replays the steps: a Hessian entry matches the difference of gradients.
    model = twin_model("goldbeter", 1e-6)
    times = torch.linspace(0.0, 4.0, 5, dtype=F64)
    y0 = model.initial

    def grad_of(init: torch.Tensor, create: bool) -> torch.Tensor:
        out = model.simulate(times, torch.tensor([0]), y0=init)
        (g,) = torch.autograd.grad(out[..., 1].sum(), init, create_graph=create)
        return g

    init = y0.detach().clone().requires_grad_(True)
    g = grad_of(init, True)
    (h_row,) = torch.autograd.grad(g[0, 0], init)
    eps = 1e-6
    up, down = y0.detach().clone(), y0.detach().clone()
    up[0, 0] += eps
    down[0, 0] -= eps
    fd = grad_of(up.requires_grad_(True), False) - grad_of(down.requires_grad_(True), False)
    assert h_row[0].numpy() == pytest.approx((fd[0] / (2 * eps)).numpy(), rel=1e-3, abs=1e-6)


class Robertson(torch.nn.Module):
    """Robertson's stiff kinetics with learnable rates (the generic path: not a HybridODE)."""

    def __init__(self):
        super().__init__()
        self.rates = torch.nn.Parameter(torch.tensor([0.04, 3e7, 1e4], dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b, c = y.unbind(-1)
        k1, k2, k3 = self.rates
        r1, r2, r3 = k1 * a, k2 * b * b, k3 * b * c
        return torch.stack([-r1 + r3, r1 - r2 - r3, r2], dim=-1)


def test_generic_path_accuracy_and_gradient():
    times = torch.linspace(0.0, 1.0, 11, dtype=F64)
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    rhs = Robertson()
    stats = Stats()
    with torch.no_grad():
        sol = solve(rhs, y0, times, 1e-7, 1e-12, 5000, stats)[:, 0].numpy()
    ref = solve_ivp(
        lambda _t, y: rhs(None, torch.from_numpy(y)[None])[0].detach().numpy(),
        (0, 1),
        [1.0, 0.0, 0.0],
        "Radau",
        t_eval=times.numpy(),
        rtol=1e-11,
        atol=1e-14,
    ).y.T
    assert np.all(np.abs(sol - ref) <= 10 * (1e-12 + 1e-7 * np.abs(ref)))
    assert stats.accepted < 100  # an explicit method needs thousands (|eigenvalue| ~ 1e4)

    def loss(r: Robertson) -> torch.Tensor:
        return solve(r, y0, times, 1e-8, 1e-14, 5000)[:, 0, 1].sum()

    (grad,) = torch.autograd.grad(loss(rhs), rhs.rates)
    moved = [Robertson(), Robertson()]
    with torch.no_grad():
        moved[0].rates[0] += 4e-6
        moved[1].rates[0] -= 4e-6
        fd = (loss(moved[0]) - loss(moved[1])).item() / 8e-6
    assert grad[0].item() == pytest.approx(fd, rel=1e-4)


def test_decreasing_times_and_time_dependence():
    # dy/dt = -y + cos(t) from t=2 back to 0: exact y = (sin t + cos t)/2 + c e^-t.
    times = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
    c = 1.0 - (np.sin(2.0) + np.cos(2.0)) / 2
    y0 = torch.full((1, 1), (np.sin(2.0) + np.cos(2.0)) / 2 + c * np.exp(-2.0), dtype=F64)
    sol = solve(lambda t, y: -y + torch.cos(t), y0, times, 1e-9, 1e-12, 5000)
    assert sol[-1, 0, 0].item() == pytest.approx(0.5 + c, rel=1e-7)


def _square(initial: list[float]) -> HybridODE:
    """x' = x^2 from each of ``initial`` (one condition each): from x0 it leaves at 1/x0."""
    spec = ModelSpec.from_dict({"states": ["x"], "equations": {"x": "x**2"}}, source="b.yaml")
    n = len(initial)
    return HybridODE(
        spec,
        ["x"],
        n,
        inputs=torch.zeros(n, 0, dtype=F64),
        initial=torch.tensor([[x] for x in initial], dtype=F64),
        solver=Solver("rodas5p"),
        state_scale=torch.ones(1, dtype=F64),
        time_scale=1.0,
        noise=torch.ones(1, dtype=F64),
    ).double()


@pytest.mark.parametrize("fast", [True, False])
def test_blow_up_names_the_time_and_step(fast):
    # x' = x^2 from 1 leaves every bound at t = 1.
    model = _square([1.0])
    times = torch.tensor([0.0, 2.0], dtype=F64)
    with pytest.raises(SolverFailed, match=r"past t=(0\.99|1)\S* \(step size"):
        if fast:
            model.simulate(times, torch.tensor([0]))
        else:
            Solver("rodas5p")(lambda t, y: y * y, torch.ones(1, 1, dtype=F64), times)


def test_a_condition_that_blows_up_names_its_own_time_when_each_steps_alone():
    # x' = x^2 from 0.25 and from 1 over [0, 2]: the first stays finite (it would leave at
    # t = 4), the second leaves at t = 1; stepped alone, the error names the second's time.
    model = _square([0.25, 1.0])
    times = torch.tensor([0.0, 1.5], dtype=F64)
    first = model.simulate(times, torch.tensor([0]))
    assert first[0, -1, 0].item() == pytest.approx(0.25 / (1 - 0.25 * 1.5), rel=1e-5)
    with pytest.raises(SolverFailed, match=r"past t=(0\.99|1)\S* \(step size"):
        model.simulate(times, torch.tensor([0, 1]))


def test_a_hill_term_of_abs_x_compiles_its_derivatives():
    """The distillation's Hill terms raise |x|: sympy differentiates |x| of a complex symbol
    into re() and im(), which did not compile, and a rodas5p refit of a distilled repression
    crashed. The Jacobian of K^n/(K^n + |x|^n) is -n K^n |x|^(n-1) sign(x) / (K^n + |x|^n)^2:
    0 at x = 0 for n > 1 (a repressor that starts at zero; sqrt(x^2)^n gave 0/0 there), with
    n a number or a fitted parameter (the Hill library's)."""
    from ude.spec.derivatives import CompiledDerivatives

    x, K, n_sym = sp.symbols("x K n")
    xs, k = np.array([0.3, -0.3, 2.0, 0.0]), 0.7
    for n in (1.5, 2.0, 3.0):
        expected = -n * k**n * np.abs(xs) ** (n - 1) * np.sign(xs) / (k**n + np.abs(xs) ** n) ** 2
        c = CompiledDerivatives([K**n / (K**n + sp.Abs(x) ** n)], ["x", "K"], 1)
        jac = c.jacobian(xs[:, None], np.array([k]))[:, 0, 0]
        np.testing.assert_allclose(jac, expected, rtol=1e-12)
        c = CompiledDerivatives([K**n_sym / (K**n_sym + sp.Abs(x) ** n_sym)], ["x", "K", "n"], 1)
        jac = c.jacobian(xs[:, None], np.array([k, n]))[:, 0, 0]
        np.testing.assert_allclose(jac, expected, rtol=1e-12)


def test_compiled_evaluation_broadcasts_each_conditions_context_over_its_rows():
    """Stage points ``(S, B, n)`` share their condition's context ``(B, c)``; a context per
    row and one for all rows give the same values as the torch tape row by row."""
    spec = get_system("goodwin").truth
    n = len(spec.states)
    d = compiled_derivatives(spec.known_rhs(), spec.symbols, n)
    f_t = CompiledExpressions(spec.known_rhs(), spec.symbols).double()
    rng = np.random.default_rng(3)
    params = np.array([p.value for p in spec.parameters.values()])
    ctx = params * rng.uniform(0.5, 1.5, (4, len(params)))  # 4 conditions
    y = rng.uniform(0.1, 2.0, (3, 4, n))  # 3 stages of the 4 conditions
    full = np.concatenate([y, np.broadcast_to(ctx, (3, 4, len(params)))], axis=-1)
    want = f_t(torch.from_numpy(full)).numpy()
    np.testing.assert_allclose(d.f(y, ctx), want, rtol=1e-13)
    np.testing.assert_allclose(d.f(y, full[..., n:]), want, rtol=1e-13)
    one = np.concatenate([y[:, 0], np.broadcast_to(params, (3, len(params)))], axis=-1)
    np.testing.assert_allclose(d.f(y[:, 0], params), f_t(torch.from_numpy(one)).numpy(), rtol=1e-13)


@pytest.mark.parametrize("nonnegative", [False, True], ids=["fluxes", "nonnegative_fluxes"])
def test_a_flux_network_solves_in_the_kernels_as_in_numpy(nonnegative):
    # a flux network (nonnegative: softplus fluxes, then the stoichiometry as a layer of its
    # own) on one shared step size: the compiled and numpy paths take the same steps
    model = hybrid(nonnegative=nonnegative)
    times = torch.linspace(0.0, 4.0, 9, dtype=F64)
    params = [p for p in model.parameters() if p.requires_grad]
    runs = []
    for compiled in (True, False):
        model._context = model.context(torch.arange(2))
        try:
            sol = solve(model, model.initial, times, 1e-6, 1e-10, 5000, None, compiled, True)
        finally:
            model._context = None
        weights = torch.linspace(0.5, 1.5, sol.numel(), dtype=F64).reshape(sol.shape)
        runs.append((sol, torch.autograd.grad((weights * sol).sum(), params, allow_unused=True)))
    (fast, fast_grads), (slow, slow_grads) = runs
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
    checked = 0
    for a, b in zip(fast_grads, slow_grads, strict=True):
        if b is None:
            continue
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-9 * b.abs().max())
        checked += 1
    assert checked >= 4  # the initial states, a rate and the network's layers
