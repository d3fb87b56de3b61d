"""The warm start's latent paths (:class:`ude.train.warm_start.LatentPaths`) compiled: Heun's
method along the smoothed grid and the exact reverse pass of its steps, in numba.

In torch each step of the path is a dozen small operations over the pieces, and the backward
pass replays them as many more: on Goldbeter's half-unobserved cell (cyclin measured, its two
active fractions latent) 95 % of the warm start, 0.125 s per Adam step against 0.0012 s with
every state measured. Here a step costs its arithmetic: the latent states' known terms are
the spec's tape (:func:`ude.spec.tape_kernels.tape_forward`), the networks the same arrays the
compiled Rodas5P solve reads (:mod:`ude.model.network_kernels`), and the reverse pass is the
discrete adjoint of the steps taken, so the gradients are those of the torch path to
rounding.

One step from ``z`` (the latent columns; the measured ones held at the data ``y_k``)::

    a = f(y_k, z),  q = z + h a,  b = f(y_{k+1}, q),  z' = z + h/2 (a + b)

and back, for the cotangent ``l'`` of ``z'`` (``J`` the Jacobian of ``f`` in its latent
columns, the context's and weights' cotangents gathered in the same sweeps)::

    l_b = h/2 l',  l_q = J(q)^T l_b,  l_a = h/2 l' + h l_q,  l = l' + l_q + J(z)^T l_a

Shapes: ``P`` pieces of ``N`` grid points each, ``n`` states, ``c`` context entries (inputs
then parameter values).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ude.model import network_kernels, rodas_kernels
from ude.model.network_kernels import NetCode, add_vjp, scratch
from ude.model.rodas_kernels import _reverse, _rhs
from ude.spec.tape_kernels import refresh_cache

refresh_cache(__file__, rodas_kernels.__file__, network_kernels.__file__)


@njit(cache=True, nogil=True, error_model="numpy")
def _stage(state, held, z, h, slope, latent):
    """``state`` = the measured states ``held`` with the latent columns ``z + h slope``."""
    state[:] = held
    for i in latent:
        state[i] = z[i] + h * slope[i]


@njit(cache=True, nogil=True, error_model="numpy")
def heun_forward(held, ctx, z0, h, latent, tape, net, path):
    """The states along each piece ``path (P, N, n)``: the measured columns of ``held (P, N,
    n)``, the latent ones (``latent``, their indices) by Heun's method from ``z0 (P, n)``
    with steps ``h (P,)``; ``ctx (P, N, c)``."""
    n_pieces, n_points, n = held.shape
    slots = np.empty(n + ctx.shape[2] + tape[0].shape[0])
    net_buf = scratch(net)
    a, b = np.empty(n), np.empty(n)
    zero = np.zeros(n)
    for p in range(n_pieces):
        _stage(path[p, 0], held[p, 0], z0[p], 0.0, zero, latent)
        for k in range(n_points - 1):
            _rhs(path[p, k], ctx[p, k], tape, slots, net, net_buf, a)
            _stage(path[p, k + 1], held[p, k + 1], path[p, k], h[p], a, latent)
            _rhs(path[p, k + 1], ctx[p, k + 1], tape, slots, net, net_buf, b)
            for i in latent:
                path[p, k + 1, i] = path[p, k, i] + 0.5 * h[p] * (a[i] + b[i])


@njit(cache=True, nogil=True, error_model="numpy")
def heun_adjoint(path, held, ctx, h, latent, tape, net, grad_path, grad_z0, grad_ctx, grad_w):
    """The reverse pass of :func:`heun_forward` for the cotangent ``grad_path (P, N, n)`` of
    its latent columns: ``grad_z0 (P, n)`` and ``grad_ctx (P, N, c)`` written, the networks'
    folded weights' cotangent added to ``grad_w``."""
    n_pieces, n_points, n = path.shape
    slots = np.empty(n + ctx.shape[2] + tape[0].shape[0])
    adj = np.empty_like(slots)
    net_buf = scratch(net)
    networks = net[0].shape[0] > 0
    a, q, cot, g_q, g_z, lam = (
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
    )
    grad_z0[:] = 0.0
    grad_ctx[:] = 0.0
    for p in range(n_pieces):
        hp = h[p]
        lam[:] = 0.0
        for i in latent:
            lam[i] = grad_path[p, n_points - 1, i]
        for k in range(n_points - 2, -1, -1):
            z = path[p, k]
            _rhs(z, ctx[p, k], tape, slots, net, net_buf, a)
            _stage(q, held[p, k + 1], z, hp, a, latent)
            cot[:] = 0.0
            for i in latent:
                cot[i] = 0.5 * hp * lam[i]
            _reverse(q, ctx[p, k + 1], tape, slots, adj, cot, g_q, grad_ctx[p, k + 1])
            if networks:
                add_vjp(q, ctx[p, k + 1], net, net_buf, cot, g_q, grad_ctx[p, k + 1], grad_w)
            for i in latent:
                cot[i] = 0.5 * hp * lam[i] + hp * g_q[i]
            _reverse(z, ctx[p, k], tape, slots, adj, cot, g_z, grad_ctx[p, k])
            if networks:
                add_vjp(z, ctx[p, k], net, net_buf, cot, g_z, grad_ctx[p, k], grad_w)
            for i in latent:
                lam[i] += g_q[i] + g_z[i] + grad_path[p, k, i]
        for i in latent:
            grad_z0[p, i] = lam[i]


class LatentProblem:
    """What one evaluation of the paths carries to its backward pass: the latent states'
    tape (the spec's known terms of the latent states, zero in the measured rows), the
    networks' arrays (:data:`~ude.model.network_kernels.EMPTY` where no network targets a
    latent state) and the measured data ``held (P, N, n)``, steps ``h (P,)``."""

    def __init__(self, tape: tuple, net: NetCode | None, held, h, latent: np.ndarray):
        self.tape, self.net = tape, net
        self.arrays = network_kernels.EMPTY if net is None else net.arrays
        self.held = np.ascontiguousarray(held, dtype=float)
        self.h = np.ascontiguousarray(h, dtype=float)
        self.latent = np.ascontiguousarray(latent, dtype=np.int64)
        # the forward pass's context and states along the pieces, for the reverse pass
        self.context: np.ndarray | None = None
        self.path: np.ndarray | None = None


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float64).numpy())


class CompiledHeun(torch.autograd.Function):
    """``path (P, N, latent)`` from ``z0 (P, latent)`` and ``context (P, N, c)`` (the networks'
    ``params`` after them), differentiable once in all of them."""

    @staticmethod
    def forward(ctx, problem: LatentProblem, z0, context, *params):
        n = problem.held.shape[2]
        start = np.zeros((z0.shape[0], n))
        start[:, problem.latent] = _numpy(z0)
        problem.context = _numpy(context)
        path = np.empty_like(problem.held)
        heun_forward(
            problem.held, problem.context, start, problem.h, problem.latent, problem.tape,
            problem.arrays, path,
        )  # fmt: skip
        problem.path = path
        ctx.problem = problem
        ctx.save_for_backward(context, *params)
        out = path[:, :, problem.latent]
        return torch.as_tensor(out, dtype=z0.dtype, device=z0.device)

    @staticmethod
    def backward(ctx, grad_out):
        problem: LatentProblem = ctx.problem
        context, *params = ctx.saved_tensors
        grad_path = np.zeros_like(problem.path)
        grad_path[:, :, problem.latent] = _numpy(grad_out)
        grad_z0 = np.empty((grad_path.shape[0], grad_path.shape[2]))
        grad_ctx = np.empty_like(problem.context)
        grad_w = np.zeros_like(problem.arrays[3])
        heun_adjoint(
            problem.path, problem.held, problem.context, problem.h, problem.latent,
            problem.tape, problem.arrays, grad_path, grad_z0, grad_ctx, grad_w,
        )  # fmt: skip
        as_t = lambda a, like: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
        needed = ctx.needs_input_grad
        grads = [None] * len(params)
        if problem.net is not None:
            grads = network_kernels.torch_param_grads(problem.net, grad_w, params, needed[3:])
        return (
            None,
            as_t(grad_z0[:, problem.latent], grad_out) if needed[1] else None,
            as_t(grad_ctx, context) if needed[2] else None,
            *grads,
        )
