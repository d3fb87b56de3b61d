"""A HybridODE's right-hand side frozen for one solve, in numpy, with exact derivatives.

A stiff solve evaluates ``f`` and ``df/dy`` thousands of times with the same parameters.
Here the known part is the spec's compiled tape and its symbolic Jacobian, evaluated over all
rows in one compiled pass (:mod:`ude.spec.derivatives`), and each network is its weights
copied once to float64 numpy, with its Jacobian and second directional derivatives written
out layer by layer (no autograd): an evaluation is a few numpy calls. The parameters'
gradients are not taken here; the solver's adjoint hands them to torch in one batched call.

This is the reference path (``compiled=False``). By default the solve, networks included,
runs in the compiled kernels (:mod:`ude.model.rodas_kernels`,
:mod:`ude.model.network_kernels`): a step there costs its arithmetic, here about a
microsecond per numpy call.

Shapes: ``P`` rows (a batch of conditions, or all stage points of a solve), ``n`` states,
``c`` context entries (the condition's inputs then parameter values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf
from torch import nn

from ude.model.networks import MLP, RBF, FluxNetwork
from ude.spec.derivatives import CompiledDerivatives, compiled_derivatives

_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_INV_SQRT2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _as_slice(index: list[int]) -> slice | list[int]:
    if index and index == list(range(index[0], index[-1] + 1)):
        return slice(index[0], index[-1] + 1)
    return index


class UnsupportedNetwork(TypeError):
    """A network this module cannot write out in numpy (the solver then uses autograd)."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _activation(module: nn.Module) -> str:
    kinds = {
        nn.Tanh: "tanh",
        nn.ReLU: "relu",
        nn.SiLU: "silu",
        nn.GELU: "gelu",
        nn.Softplus: "softplus",
        RBF: "rbf",
    }
    kind = kinds.get(type(module))
    if kind is None:
        raise UnsupportedNetwork(f"activation {type(module).__name__}")
    if kind == "gelu" and module.approximate != "none":
        raise UnsupportedNetwork("tanh-approximated GELU")
    if kind == "softplus" and (module.beta != 1.0 or module.threshold != 20.0):
        raise UnsupportedNetwork("softplus with beta != 1 or threshold != 20")
    return kind


def _value(kind: str, z: np.ndarray) -> np.ndarray:
    """``sigma(z)`` alone (the right-hand side's own evaluations need no derivative)."""
    if kind == "tanh":
        return np.tanh(z)
    if kind == "relu":
        return np.maximum(z, 0.0)
    return _act(kind, z, 1)[0]


def _act(kind: str, z: np.ndarray, order: int) -> tuple[np.ndarray, ...]:
    """``sigma(z)`` and its derivatives up to ``order`` (1 or 2), as torch defines them."""
    if kind == "tanh":
        a = np.tanh(z)
        d1 = 1.0 - a * a
        return (a, d1) if order == 1 else (a, d1, -2.0 * a * d1)
    if kind == "relu":
        d1 = (z > 0).astype(z.dtype)
        return (z * d1, d1) if order == 1 else (z * d1, d1, np.zeros_like(z))
    if kind == "silu":
        s = _sigmoid(z)
        ds = s * (1.0 - s)
        d1 = s + z * ds
        return (z * s, d1) if order == 1 else (z * s, d1, ds * (2.0 + z * (1.0 - 2.0 * s)))
    if kind == "softplus":
        linear = z > 20.0
        a = np.where(linear, z, np.log1p(np.exp(np.minimum(z, 20.0))))
        s = np.where(linear, 1.0, _sigmoid(z))
        d2 = np.where(linear, 0.0, s * (1.0 - s))
        return (a, s) if order == 1 else (a, s, d2)
    if kind == "gelu":
        cdf = 0.5 * (1.0 + erf(z * _INV_SQRT2))
        pdf = _INV_SQRT2PI * np.exp(-0.5 * z * z)
        d1 = cdf + z * pdf
        return (z * cdf, d1) if order == 1 else (z * cdf, d1, (2.0 - z * z) * pdf)
    # rbf: exp(-z^2)
    e = np.exp(-z * z)
    d1 = -2.0 * z * e
    return (e, d1) if order == 1 else (e, d1, (4.0 * z * z - 2.0) * e)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


class NumpyNetwork:
    """A frozen :class:`~ude.model.networks.MLP` (or a flux network over one):
    ``(P, n_in) -> (P, n_out)`` with its input Jacobian and second directional derivatives.
    ``params``: each linear layer's ``(weight, bias)`` in place of the module's own (an
    ensemble member's, from the stacked tensors)."""

    def __init__(
        self, net: nn.Module, params: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ):
        stoich = None
        positive = None
        if isinstance(net, FluxNetwork):
            stoich = _numpy(net.stoichiometry)
            if net.nonnegative is not None and bool(net.nonnegative.any()):
                positive = net.nonnegative.cpu().numpy()
            net = net.mlp
        if type(net) is not MLP:
            raise UnsupportedNetwork(type(net).__name__)
        layers = list(net.layers)
        linear = layers[0::2]
        acts = layers[1::2]
        if not all(type(m) is nn.Linear for m in linear) or len(linear) != len(acts) + 1:
            raise UnsupportedNetwork("layers other than Linear/activation pairs")
        self.kinds = [_activation(a) for a in acts]
        self.torch_params = params or [(m.weight, m.bias) for m in linear]
        self.weights = [_numpy(w) for w, _ in self.torch_params]
        self.biases = [_numpy(b) for _, b in self.torch_params]
        self.in_scale = _numpy(net.in_scale)
        self.out_scale = _numpy(net.out_scale)
        self.stoich = stoich
        self.positive = positive  # fluxes through s softplus(m / s) (FluxNetwork)
        # The first layer sees x / in_scale: fold the scale into its weights.
        self._w_in = self.weights[0] / self.in_scale

    def _hidden(self, x: np.ndarray, order: int) -> list[tuple[np.ndarray, ...]]:
        """Per hidden layer ``(a, sigma'(z)[, sigma''(z)])``."""
        out = []
        a = x
        for i, kind in enumerate(self.kinds):
            w = self._w_in if i == 0 else self.weights[i]
            z = a @ w.T + self.biases[i]
            vals = _act(kind, z, order)
            out.append(vals)
            a = vals[0]
        return out

    def _linear_output(self, a: np.ndarray) -> np.ndarray:
        return (a @ self.weights[-1].T + self.biases[-1]) * self.out_scale

    def _positive(self, m: np.ndarray, order: int) -> tuple[np.ndarray, ...]:
        """Nonnegative fluxes ``s softplus(m / s)`` and their first (and second) derivatives
        in ``m`` where marked; ``m``, 1 (and 0) elsewhere."""
        s = self.out_scale
        z = m / s
        sig = _sigmoid(z)
        value = np.where(self.positive, s * np.logaddexp(0.0, z), m)
        d1 = np.where(self.positive, sig, 1.0)
        if order == 1:
            return value, d1
        return value, d1, np.where(self.positive, sig * (1.0 - sig) / s, 0.0)

    def _output(self, a: np.ndarray) -> np.ndarray:
        out = self._linear_output(a)
        if self.positive is not None:
            out = self._positive(out, 1)[0]
        return out if self.stoich is None else out @ self.stoich.T

    def __call__(self, x: np.ndarray) -> np.ndarray:
        a = x
        for i, kind in enumerate(self.kinds):
            w = self._w_in if i == 0 else self.weights[i]
            a = _value(kind, a @ w.T + self.biases[i])
        return self._output(a)

    def value_and_jacobian(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outputs ``(P, n_out)`` and their Jacobian ``(P, n_out, n_in)`` in the inputs."""
        hidden = self._hidden(x, 1)
        g = hidden[0][1][..., :, None] * self._w_in
        for i in range(1, len(hidden)):
            g = hidden[i][1][..., :, None] * (self.weights[i] @ g)
        jac = self.out_scale[:, None] * (self.weights[-1] @ g)
        if self.positive is not None:
            jac = self._positive(self._linear_output(hidden[-1][0]), 1)[1][..., :, None] * jac
        if self.stoich is not None:
            jac = self.stoich @ jac
        return self._output(hidden[-1][0]), jac

    def directional_hessian(self, x: np.ndarray, omega: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``d/dx [omega . (J(x) u)]`` ``(P, n_in)`` for cotangents ``omega (P, n_out)`` and
        directions ``u (P, n_in)``: a reverse pass differentiated along ``u`` (R-operator)."""
        hidden = self._hidden(x, 2)
        # tangents of the pre-activations along u
        z_dot = []
        a_dot = u
        for i, (_, d1, _) in enumerate(hidden):
            w = self._w_in if i == 0 else self.weights[i]
            zd = a_dot @ w.T
            z_dot.append(zd)
            a_dot = d1 * zd
        g_out = omega if self.stoich is None else omega @ self.stoich
        extra = None
        if self.positive is not None:
            # flux = phi(m): omega . phi'(m) (J_m u) differentiated is the same with
            # omega phi'(m), plus J_m^T [omega phi''(m) (J_m u)]
            _, d1, d2 = self._positive(self._linear_output(hidden[-1][0]), 2)
            m_dot = (a_dot @ self.weights[-1].T) * self.out_scale
            extra = g_out * d2 * m_dot
            g_out = g_out * d1
        g_a = (g_out * self.out_scale) @ self.weights[-1]
        dg_a = np.zeros_like(g_a)
        for i in range(len(hidden) - 1, -1, -1):
            _, d1, d2 = hidden[i]
            dg_z = d2 * z_dot[i] * g_a + d1 * dg_a
            w = self._w_in if i == 0 else self.weights[i]
            if i:
                g_a = (d1 * g_a) @ w
            dg_a = dg_z @ w
        if extra is not None:
            dg_a = dg_a + self._input_vjp(hidden, extra)
        return dg_a

    def _input_vjp(self, hidden: list[tuple[np.ndarray, ...]], v: np.ndarray) -> np.ndarray:
        """``v . dm/dx`` ``(P, n_in)`` for cotangents ``v (P, n_out)`` of the MLP's output."""
        g_a = (v * self.out_scale) @ self.weights[-1]
        for i in range(len(hidden) - 1, -1, -1):
            w = self._w_in if i == 0 else self.weights[i]
            g_a = (hidden[i][1] * g_a) @ w
        return g_a


def numpy_networks(model: nn.Module) -> list[tuple[NumpyNetwork, list[int], list[int]]]:
    """A :class:`~ude.model.hybrid.HybridODE`'s networks frozen, with the feature indices
    each reads (states then inputs) and the states it writes; raises
    :class:`UnsupportedNetwork` for a network other than ude's own MLPs."""
    return [
        (NumpyNetwork(net), list(idx_in), list(idx_out))
        for net, idx_in, idx_out in zip(
            model.networks, model._slot_inputs, model._slot_targets, strict=True
        )
    ]


@dataclass
class NumericSystem:
    """What the stiff solver's fast path needs from a model for one solve: the frozen
    ``rhs``, the tensors the gradient flows to (the conditions' ``context (B, c)`` and the
    networks' ``params``), and the model's right-hand side in torch,
    ``torch_rhs(y (P, n), context (P, c)) -> (P, n)``, for the parameters' gradient."""

    rhs: NumericRHS
    context: torch.Tensor
    params: list[torch.Tensor]
    torch_rhs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    members: Members | None = None


@dataclass
class Members:
    """An ensemble's networks for the compiled solver (the ``rhs`` beside it holds the known
    part alone): each member's networks (``networks``, as :class:`NumericRHS` holds them),
    the rows (member-major) each member solves, and per member the stacked parameters with
    that member's slices the networks were read from (``(stacked, slice)`` pairs)."""

    networks: list[list[tuple[NumpyNetwork, list[int], list[int]]]]
    rows_per_member: int
    slices: list[list[tuple[torch.Tensor, torch.Tensor]]]


class NumericRHS:
    """``f(y) = known(y, ctx) + networks(y, inputs)`` of a HybridODE for one solve, its
    parameters and contexts frozen to float64 numpy.

    Args:
        derivatives: the compiled known part (:func:`~ude.spec.derivatives.compiled_derivatives`).
        networks: the frozen networks with the feature indices they read (states then inputs)
            and the states they write.
        context: ``(B, c)`` per condition of the solve.
        n_inputs: how many leading context entries are inputs (networks may read them).
    """

    def __init__(
        self,
        derivatives: CompiledDerivatives,
        networks: list[tuple[NumpyNetwork, list[int], list[int]]],
        context: np.ndarray,
        n_inputs: int,
    ):
        self.derivatives = derivatives
        self.n = derivatives.n_states
        self.networks = networks
        self.context = context
        self.n_inputs = n_inputs
        # which network inputs are states (the rest are inputs, constant along a solve)
        # per network: the states among its inputs, and their positions in its input
        self._state_inputs = [
            (
                np.array([i for i in idx if i < self.n], dtype=np.intp),
                [j for j, i in enumerate(idx) if i < self.n],
            )
            for _, idx, _ in networks
        ]
        self._target_rows = [np.array(out, dtype=np.intp)[:, None] for _, _, out in networks]
        # where each network's outputs are added: a slice when the targets are contiguous
        # (fancy-index assignment costs several times a slice's at these sizes)
        self._targets = [_as_slice(out) for _, _, out in networks]

    @classmethod
    def from_model(
        cls, model: nn.Module, context: torch.Tensor, networks: list | None = None
    ) -> NumericRHS:
        """The frozen right-hand side of a :class:`~ude.model.hybrid.HybridODE` with the
        context ``(B, c)`` of a solve's conditions; raises :class:`UnsupportedNetwork` for a
        network other than ude's own MLPs. ``networks``: in place of the model's own (an
        ensemble's template: none, its members' go apart)."""
        spec = model.spec
        derivatives = compiled_derivatives(spec.known_rhs(), spec.symbols, len(spec.states))
        if networks is None:
            networks = numpy_networks(model)
        return cls(derivatives, networks, _numpy(context), len(spec.inputs))

    # -- evaluations ---------------------------------------------------------------------------
    # ``context`` None: the solve's own (rows = its conditions, frozen with it).
    def _context(self, context: np.ndarray | None) -> np.ndarray:
        return self.context if context is None else context

    def _features(self, y: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        if not self.n_inputs:
            return y
        ctx = (self.context if context is None else context)[..., : self.n_inputs]
        ctx = np.broadcast_to(ctx, (*y.shape[:-1], self.n_inputs))
        return np.concatenate([y, ctx], axis=-1)

    def __call__(self, y: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """``f (P, n)`` at ``y (P, n)`` with ``context (P, c)``."""
        f = self.derivatives.f(y, self._context(context))
        if self.networks:
            feats = self._features(y, context)
            for (net, idx_in, _), target in zip(self.networks, self._targets, strict=True):
                f[..., target] += net(feats[..., idx_in])
        return f

    def value_and_jacobian(
        self, y: np.ndarray, context: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``f (P, n)`` and ``df/dy (P, n, n)``."""
        f, jac = self.derivatives.f_jac(y, self._context(context))
        if self.networks:
            feats = self._features(y, context)
            for (net, idx_in, idx_out), (cols, pos), rows in zip(
                self.networks, self._state_inputs, self._target_rows, strict=True
            ):
                value, dnet = net.value_and_jacobian(feats[..., idx_in])
                f[..., idx_out] += value
                jac[..., rows, cols] += dnet[..., pos]
        return f, jac

    def jacobian(self, y: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """``df/dy (P, n, n)``."""
        if self.networks:
            return self.value_and_jacobian(y, context)[1]
        return self.derivatives.jacobian(y, self._context(context))

    def hessian_values(self, y: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """The known part's second derivatives at ``y (P, n)``, for :meth:`directional_hessian`."""
        return self.derivatives.hessian_values(y, self._context(context))

    def directional_hessian(
        self,
        y: np.ndarray,
        known_hessian: np.ndarray,
        omega: np.ndarray,
        u: np.ndarray,
        context: np.ndarray | None = None,
    ) -> np.ndarray:
        """``sum_i d/dy [omega_i . (df/dy(y) u_i)]`` ``(P, n)`` for cotangents and directions
        ``(S, P, n)`` (the stages of a step); ``known_hessian`` from :meth:`hessian_values`."""
        pairs = np.einsum("spk,spl->pkl", omega, u)
        out = self.derivatives.contract_hessian(known_hessian, pairs)
        if self.networks:
            feats = self._features(y, context)
            s = omega.shape[0]
            for (net, idx_in, idx_out), (cols, pos) in zip(
                self.networks, self._state_inputs, strict=True
            ):
                x = np.broadcast_to(feats[..., idx_in], (s, *feats.shape[:-1], len(idx_in)))
                u_in = np.zeros(x.shape)
                u_in[..., pos] = u[..., cols]
                hv = net.directional_hessian(x, omega[..., idx_out], u_in)
                out[..., cols] += hv[..., pos].sum(axis=0)
        return out
