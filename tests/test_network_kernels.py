"""The networks' kernels (ude/model/network_kernels.py) against torch's autograd: value,
input Jacobian, a cotangent's vector-Jacobian product and the second-order sweep a Rosenbrock
adjoint needs, in the states, the inputs and every weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ude.model import network_kernels as nk
from ude.model.networks import MLP, FluxNetwork
from ude.model.numeric_rhs import NumpyNetwork

F64 = torch.float64
N_STATES, N_CTX = 4, 3  # the context's first entry is an input a network reads


def networks(activation: str):
    """An MLP with input and output scales on states 0, 2 and the input, writing states 1
    and 3, and a flux network (two reactions, the first nonnegative) on states 1, 3 writing 0
    and 2."""
    torch.manual_seed(0)
    scales = dict(in_scale=torch.tensor([1.5, 2.0, 0.7]), out_scale=torch.tensor([0.3, 2.0]))
    mlp = MLP(3, 2, hidden=5, depth=2, activation=activation, **scales).double()
    with torch.no_grad():
        mlp.layers[-1].weight.mul_(10.0)
    stoich = torch.tensor([[1.0, -1.0], [0.0, 1.0]], dtype=F64)
    inner = MLP(2, 2, hidden=4, depth=1, activation=activation, out_scale=torch.tensor([0.5, 1.5]))
    flux = FluxNetwork(inner.double(), stoich, torch.tensor([True, False]))
    with torch.no_grad():
        inner.layers[-1].weight.mul_(10.0)
    return mlp, flux


def rhs(mlp, flux, y: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    feats = torch.cat([y, ctx[:1]])
    out = torch.zeros(N_STATES, dtype=F64)
    out = out.index_add(0, torch.tensor([1, 3]), mlp(feats[[0, 2, 4]][None])[0])
    return out.index_add(0, torch.tensor([0, 2]), flux(feats[[1, 3]][None])[0])


@pytest.mark.parametrize("activation", ["tanh", "silu", "softplus", "gelu", "rbf", "relu"])
def test_the_kernels_equal_autograd(activation):
    mlp, flux = networks(activation)
    code = nk.encode([(NumpyNetwork(mlp), [0, 2, 4], [1, 3]), (NumpyNetwork(flux), [1, 3], [0, 2])])
    net, buf = code.arrays, nk.scratch(code.arrays)
    params = [*mlp.parameters(), *flux.parameters()]
    y, ctx = np.array([0.3, -0.5, 1.2, 0.8]), np.array([0.4, 1.0, 2.0])
    y_t = torch.tensor(y, requires_grad=True)
    ctx_t = torch.tensor(ctx, requires_grad=True)

    def close(got, want):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-13)

    f = np.zeros(N_STATES)
    nk.add_value(y, ctx, net, buf, f)
    close(f, rhs(mlp, flux, y_t, ctx_t))
    jac = np.zeros((N_STATES, N_STATES))
    nk.add_jacobian(y, ctx, net, buf, jac)
    close(jac, torch.autograd.functional.jacobian(lambda q: rhs(mlp, flux, q, ctx_t), y_t))

    def check(total, g_y, g_ctx, g_w):
        want = torch.autograd.grad(total, [y_t, ctx_t, *params], allow_unused=True)
        close(g_y, want[0])
        close(g_ctx, want[1] if want[1] is not None else torch.zeros(N_CTX))
        got = nk.torch_param_grads(code, g_w, params, [True] * len(params))
        assert all(g.shape == p.shape for g, p in zip(got, params, strict=True))
        for g, w in zip(got, want[2:], strict=True):
            close(g.numpy(), w if w is not None else torch.zeros_like(g))

    cot = np.array([0.2, -1.0, 0.5, 0.7])
    g_y, g_ctx, g_w = np.zeros(N_STATES), np.zeros(N_CTX), np.zeros(net[3].size)
    nk.add_vjp(y, ctx, net, buf, cot, g_y, g_ctx, g_w)
    check((rhs(mlp, flux, y_t, ctx_t) * torch.tensor(cot)).sum(), g_y, g_ctx, g_w)

    rng = np.random.default_rng(1)
    omega, u = rng.normal(size=(3, N_STATES)), rng.normal(size=(3, N_STATES))
    g_y, g_ctx, g_w = np.zeros(N_STATES), np.zeros(N_CTX), np.zeros(net[3].size)
    nk.add_jacobian_vjp(y, ctx, net, buf, omega, u, g_y, g_ctx, g_w)
    jac_t = torch.autograd.functional.jacobian(
        lambda q: rhs(mlp, flux, q, ctx_t), y_t, create_graph=True
    )
    total = sum(torch.tensor(omega[s]) @ jac_t @ torch.tensor(u[s]) for s in range(3))
    check(total, g_y, g_ctx, g_w)


def test_a_nonnegative_flux_is_in_its_softplus_range():
    # the marked flux s softplus(m / s) stays above zero where m is far below (the network
    # above has both signs of m over these rows)
    mlp, flux = networks("tanh")
    code = nk.encode([(NumpyNetwork(flux), [1, 3], [0, 2])])
    buf, rng = nk.scratch(code.arrays), np.random.default_rng(0)
    with torch.no_grad():
        for y in rng.normal(scale=3.0, size=(20, N_STATES)):
            f = np.zeros(N_STATES)
            nk.add_value(y, np.zeros(N_CTX), code.arrays, buf, f)
            fluxes = flux.fluxes(torch.tensor(y[[1, 3]])[None])[0].numpy()
            assert fluxes[0] > 0
            np.testing.assert_allclose(f[[0, 2]], flux.stoichiometry.numpy() @ fluxes, rtol=1e-12)
