"""A hybrid model's networks as arrays, evaluated and differentiated in numba: the network
half of the compiled Rodas5P solve (:mod:`ude.model.rodas_kernels`).

A network (:class:`~ude.model.networks.MLP`, or a :class:`~ude.model.networks.FluxNetwork`
over one) is a chain of affine layers with an activation between them. Its input scale folds
into the first layer and its output scale (and a flux network's stoichiometry) into the last,
so here a network is layers only (nonnegative fluxes: a softplus layer, then the
stoichiometry as a layer of its own, :func:`encode`). All networks of a model share
one encoding (:func:`encode`), four arrays the kernels read:

- ``nets (K, 4)``: per network its first layer, its number of layers, where its indices start
  in ``io``, and where its input units start;
- ``layers (L, 7)``: rows, columns, weight offset, bias offset, activation (``NONE`` on the
  last), the offset of the layer's units and of the units it reads;
- ``io``: per network its input indices (into ``[y, inputs]``), then its target states;
- ``weights``: every layer's weights (row-major) and biases, flat.

Per row the kernels add a network's value to ``f``, its input Jacobian to ``df/dy``, a
cotangent's vector-Jacobian product (inputs and weights), and the derivative of ``c . (J v)``
(inputs and weights): what a Rosenbrock step and its exact adjoint need. The weights'
cotangents are in the folded layout; :func:`torch_param_grads` maps them onto the torch
parameters.

The layers' loops read contiguous slices with reassociation allowed (``fastmath``), so numba
vectorises them: a 32-wide, 2-layer tanh network's value takes about 1.2 us per row, its
Jacobian in 3 states 2.1 us, a vector-Jacobian product 1.9 us, the second-order sweep 5 us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

NONE, TANH, RELU, SILU, SOFTPLUS, GELU, RBF, FLUX = -1, 0, 1, 2, 3, 4, 5, 6
_KINDS = {"tanh": TANH, "relu": RELU, "silu": SILU, "softplus": SOFTPLUS, "gelu": GELU, "rbf": RBF}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
# the layers' dot products and updates vectorise only when their sums may be reassociated
_FAST = {"reassoc", "contract"}

# the kernels' view of no networks (a twin): one compiled version serves both
EMPTY = (
    np.zeros((0, 4), dtype=np.int64),
    np.zeros((0, 7), dtype=np.int64),
    np.zeros(0, dtype=np.int64),
    np.zeros(0),
)


@dataclass
class NetCode:
    """The encoded networks of one solve, and how their folded weights map back to torch."""

    arrays: tuple
    # per network, per layer: (weight, bias) torch parameters, the folded weight's column
    # divisor (first layer: the input scale) and row map (last layer: stoichiometry x output
    # scale), and the layer's weight/bias offsets in ``weights``
    layers: list[tuple]

    def unfold(self, grad: np.ndarray) -> dict[int, np.ndarray]:
        """The torch parameters' gradients (by ``id``) from the folded weights' ``grad``."""
        out: dict[int, np.ndarray] = {}
        for weight, bias, divisor, row_map, w_off, b_off in self.layers:
            rows = weight.shape[0] if row_map is None else row_map.shape[0]
            cols = weight.shape[1]
            g_w = grad[w_off : w_off + rows * cols].reshape(rows, cols)
            g_b = grad[b_off : b_off + rows]
            if row_map is not None:
                g_w, g_b = row_map.T @ g_w, row_map.T @ g_b
            if divisor is not None:
                g_w = g_w / divisor
            out[id(weight)] = g_w
            out[id(bias)] = g_b
        return out


def encode(networks: list) -> NetCode:
    """``networks``: :class:`~ude.model.numeric_rhs.NumpyNetwork` with their input indices
    (states then inputs) and target states, as :class:`~ude.model.numeric_rhs.NumericRHS`
    holds them.

    A flux network with nonnegative fluxes keeps its stoichiometry apart: its last layer
    gives the fluxes' ``m`` (output scale folded in) through :data:`FLUX`, ``s softplus(m /
    s)`` where marked (``s`` the output scale, the marks and scales stored after the layer's
    bias), and a last layer without bias (not a torch parameter) is the stoichiometry."""
    nets, layers, io, weights, maps = [], [], [], [], []
    offset = units = 0
    for net, idx_in, idx_out in networks:
        positive = net.positive is not None
        mats = [net._w_in, *net.weights[1:]]
        biases = list(net.biases)
        if net.stoich is None or positive:
            row_map = np.diag(net.out_scale)
        else:
            row_map = net.stoich * net.out_scale
        mats[-1], biases[-1] = row_map @ net.weights[-1], row_map @ net.biases[-1]
        kinds = [_KINDS[k] for k in net.kinds] + [FLUX if positive else NONE]
        extras = [np.zeros(0)] * len(mats)
        if positive:
            extras[-1] = np.concatenate([net.positive.astype(float), net.out_scale])
            mats.append(net.stoich)
            biases.append(np.zeros(net.stoich.shape[0]))
            kinds.append(NONE)
            extras.append(np.zeros(0))
        nets.append([len(layers), len(mats), len(io), units])
        io.extend(idx_in)
        io.extend(idx_out)
        src = units
        units += len(idx_in)
        last = len(net.torch_params) - 1  # the MLP's last layer (a stoichiometry may follow)
        for i, (w, b, kind, extra) in enumerate(zip(mats, biases, kinds, extras, strict=True)):
            layers.append([w.shape[0], w.shape[1], offset, offset + w.size, kind, units, src])
            if i <= last:
                weight, bias = net.torch_params[i]
                divisor = net.in_scale[None, :] if i == 0 else None
                maps.append((weight, bias, divisor, row_map if i == last else None,
                             offset, offset + w.size))  # fmt: skip
            weights.extend((w.ravel(), b, extra))
            offset += w.size + b.size + extra.size
            src = units
            units += w.shape[0]
    arrays = (
        np.array(nets, dtype=np.int64).reshape(-1, 4),
        np.array(layers, dtype=np.int64).reshape(-1, 7),
        np.array(io, dtype=np.int64),
        np.concatenate(weights) if weights else np.zeros(0),
    )
    return NetCode(arrays, maps)


def torch_param_grads(code: NetCode, grad: np.ndarray, params: list, needed) -> list:
    """Gradients of ``params`` (torch tensors, in order) from the folded ``grad``."""
    by_id = code.unfold(grad)
    out = []
    for p, need in zip(params, needed, strict=True):
        if not need:
            out.append(None)
            continue
        g = by_id.get(id(p))
        out.append(
            torch.zeros_like(p)
            if g is None
            else torch.as_tensor(g, dtype=p.dtype, device=p.device).reshape(p.shape)
        )
    return out


# -- the kernels (one row; ``buf``: :func:`scratch`'s units) ---------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _act(kind, z):
    """``sigma(z)``, ``sigma'(z)``, ``sigma''(z)`` as torch defines them."""
    if kind == TANH:
        a = math.tanh(z)
        d1 = 1.0 - a * a
        return a, d1, -2.0 * a * d1
    if kind == RELU:
        return (z, 1.0, 0.0) if z > 0.0 else (0.0, 0.0, 0.0)
    if kind == SILU:
        s = 0.5 * (1.0 + math.tanh(0.5 * z))
        ds = s * (1.0 - s)
        return z * s, s + z * ds, ds * (2.0 + z * (1.0 - 2.0 * s))
    if kind == SOFTPLUS:
        if z > 20.0:
            return z, 1.0, 0.0
        s = 0.5 * (1.0 + math.tanh(0.5 * z))
        return math.log1p(math.exp(z)), s, s * (1.0 - s)
    if kind == GELU:
        cdf = 0.5 * (1.0 + math.erf(z * _INV_SQRT2))
        pdf = _INV_SQRT2PI * math.exp(-0.5 * z * z)
        return z * cdf, cdf + z * pdf, (2.0 - z * z) * pdf
    e = math.exp(-z * z)  # rbf
    return e, -2.0 * z * e, (4.0 * z * z - 2.0) * e


@njit(cache=True, nogil=True, error_model="numpy")
def _flux(m, s):
    """``s softplus(m / s)`` (torch's softplus: linear past 20) and its first and second
    derivatives in ``m``: a nonnegative flux at its scale ``s``."""
    a, d1, d2 = _act(SOFTPLUS, m / s)
    return s * a, d1, d2 / s


@njit(cache=True, nogil=True, error_model="numpy")
def scratch(net):
    """A row's working units: values, first and second activation derivatives, tangents
    (after and before the activation), and the reverse sweep's two cotangents."""
    layers = net[1]
    size = 0
    for layer in range(layers.shape[0]):
        size = max(size, layers[layer, 5] + layers[layer, 0])
    return (np.empty(size), np.empty(size), np.empty(size), np.empty(size), np.empty(size),
            np.empty(size), np.empty(size))  # fmt: skip


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _dot(w, x):
    z = 0.0
    for j in range(x.shape[0]):
        z += w[j] * x[j]
    return z


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _forward(y, ctx, net, k, buf):
    """Network ``k``'s units at ``(y, ctx)`` (its inputs read from ``[y, ctx]``)."""
    nets, layers, io, weights = net
    a, d1, d2 = buf[0], buf[1], buf[2]
    first, n_layers, io_off, u_in = nets[k, 0], nets[k, 1], nets[k, 2], nets[k, 3]
    n = y.shape[0]
    for j in range(layers[first, 1]):
        idx = io[io_off + j]
        a[u_in + j] = y[idx] if idx < n else ctx[idx - n]
    for layer in range(first, first + n_layers):
        rows, cols, w_off, b_off, kind, u_off, src = layers[layer]
        x = a[src : src + cols]
        for i in range(rows):
            z = _dot(weights[w_off + i * cols : w_off + (i + 1) * cols], x) + weights[b_off + i]
            if kind == NONE:
                a[u_off + i] = z
            elif kind == FLUX:
                marked, s = weights[b_off + rows + i], weights[b_off + 2 * rows + i]
                a[u_off + i], d1[u_off + i], d2[u_off + i] = (
                    _flux(z, s) if marked else (z, 1.0, 0.0)
                )
            else:
                a[u_off + i], d1[u_off + i], d2[u_off + i] = _act(kind, z)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _tangent(net, k, buf):
    """Network ``k``'s tangents along the direction in its input units (after
    :func:`_forward`): ``ta`` after each activation, ``tz`` before."""
    layers, weights = net[1], net[3]
    d1, ta, tz = buf[1], buf[3], buf[4]
    first, n_layers = net[0][k, 0], net[0][k, 1]
    for layer in range(first, first + n_layers):
        rows, cols, w_off, _, kind, u_off, src = layers[layer]
        x = ta[src : src + cols]
        for i in range(rows):
            z = _dot(weights[w_off + i * cols : w_off + (i + 1) * cols], x)
            tz[u_off + i] = z
            ta[u_off + i] = z if kind == NONE else d1[u_off + i] * z


@njit(cache=True, nogil=True, error_model="numpy")
def _shape(net, k):
    """Network ``k``'s inputs, outputs, where its targets start in ``io``, its last layer."""
    nets, layers = net[0], net[1]
    first, n_layers, io_off = nets[k, 0], nets[k, 1], nets[k, 2]
    last = first + n_layers - 1
    n_in = layers[first, 1]
    return n_in, layers[last, 0], io_off + n_in, last


@njit(cache=True, nogil=True, error_model="numpy")
def add_value(y, ctx, net, buf, f):
    """``f += networks(y, ctx)`` on their target states."""
    io, layers = net[2], net[1]
    for k in range(net[0].shape[0]):
        _forward(y, ctx, net, k, buf)
        _, n_out, t_off, last = _shape(net, k)
        u_off = layers[last, 5]
        for i in range(n_out):
            f[io[t_off + i]] += buf[0][u_off + i]


@njit(cache=True, nogil=True, error_model="numpy")
def add_jacobian(y, ctx, net, buf, jac):
    """``jac += d networks / dy`` (one tangent sweep per state input)."""
    nets, layers, io = net[0], net[1], net[2]
    ta = buf[3]
    n = y.shape[0]
    for k in range(nets.shape[0]):
        _forward(y, ctx, net, k, buf)
        n_in, n_out, t_off, last = _shape(net, k)
        io_off, u_in, u_out = nets[k, 2], nets[k, 3], layers[last, 5]
        for j in range(n_in):
            col = io[io_off + j]
            if col >= n:
                continue
            for m in range(n_in):
                ta[u_in + m] = 1.0 if m == j else 0.0
            _tangent(net, k, buf)
            for i in range(n_out):
                jac[io[t_off + i], col] += ta[u_out + i]


@njit(cache=True, nogil=True, error_model="numpy")
def _inputs_out(net, k, n, cot, gy, gctx):
    """A network's input cotangents ``cot`` (its input units) added to ``gy``/``gctx``."""
    io, u_in, io_off = net[2], net[0][k, 3], net[0][k, 2]
    for j in range(net[1][net[0][k, 0], 1]):
        idx = io[io_off + j]
        if idx < n:
            gy[idx] += cot[u_in + j]
        else:
            gctx[idx - n] += cot[u_in + j]


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def add_vjp(y, ctx, net, buf, cot, gy, gctx, gw):
    """``cot . d networks`` at ``(y, ctx)`` for the cotangent ``cot (n,)`` of ``f``: added to
    ``gy (n,)``, ``gctx (c,)`` and the weights' ``gw``."""
    layers, io, weights = net[1], net[2], net[3]
    a, d1, g = buf[0], buf[1], buf[5]
    for k in range(net[0].shape[0]):
        _forward(y, ctx, net, k, buf)
        _, n_out, t_off, last = _shape(net, k)
        u_out = layers[last, 5]
        for i in range(n_out):
            g[u_out + i] = cot[io[t_off + i]]
        for layer in range(last, net[0][k, 0] - 1, -1):
            rows, cols, w_off, b_off, kind, u_off, src = layers[layer]
            g_in, x = g[src : src + cols], a[src : src + cols]
            g_in[:] = 0.0
            for i in range(rows):
                gz = g[u_off + i] if kind == NONE else g[u_off + i] * d1[u_off + i]
                if gz == 0.0:
                    continue
                gw[b_off + i] += gz
                w = weights[w_off + i * cols : w_off + (i + 1) * cols]
                g_w = gw[w_off + i * cols : w_off + (i + 1) * cols]
                for j in range(cols):
                    g_w[j] += gz * x[j]
                    g_in[j] += w[j] * gz
        _inputs_out(net, k, y.shape[0], g, gy, gctx)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def add_jacobian_vjp(y, ctx, net, buf, omega, u, gy, gctx, gw):
    """The derivative of ``sum_s omega_s . (J_net(y) u_s)`` (``omega``, ``u (S, n)``: a
    Rosenbrock step's stage cotangents and stages) in ``y``, ``ctx`` and the weights, added
    to ``gy``, ``gctx`` and ``gw``: per output ``o`` of a network, the second-order sweep of
    ``e_o . (J v_o)`` with ``v_o = sum_s omega_s[o] u_s``."""
    layers, io, weights = net[1], net[2], net[3]
    a, d1, d2, ta, tz, g, dg = buf
    n = y.shape[0]
    for k in range(net[0].shape[0]):
        _forward(y, ctx, net, k, buf)
        n_in, n_out, t_off, last = _shape(net, k)
        io_off, u_in, u_out = net[0][k, 2], net[0][k, 3], layers[last, 5]
        for o in range(n_out):
            target = io[t_off + o]
            moves = False
            for j in range(n_in):
                col = io[io_off + j]
                v = 0.0
                if col < n:
                    for s in range(omega.shape[0]):
                        v += omega[s, target] * u[s, col]
                ta[u_in + j] = v
                moves = moves or v != 0.0
            if not moves:
                continue
            _tangent(net, k, buf)
            for i in range(n_out):
                g[u_out + i] = 1.0 if i == o else 0.0
                dg[u_out + i] = 0.0
            for layer in range(last, net[0][k, 0] - 1, -1):
                rows, cols, w_off, b_off, kind, u_off, src = layers[layer]
                g_in, dg_in = g[src : src + cols], dg[src : src + cols]
                x, x_dot = a[src : src + cols], ta[src : src + cols]
                g_in[:] = 0.0
                dg_in[:] = 0.0
                for i in range(rows):
                    if kind == NONE:
                        gz, dgz = g[u_off + i], dg[u_off + i]
                    else:
                        gz = d1[u_off + i] * g[u_off + i]
                        dgz = (
                            d2[u_off + i] * tz[u_off + i] * g[u_off + i]
                            + d1[u_off + i] * dg[u_off + i]
                        )
                    gw[b_off + i] += dgz
                    w = weights[w_off + i * cols : w_off + (i + 1) * cols]
                    g_w = gw[w_off + i * cols : w_off + (i + 1) * cols]
                    for j in range(cols):
                        g_w[j] += gz * x_dot[j] + dgz * x[j]
                        g_in[j] += w[j] * gz
                        dg_in[j] += w[j] * dgz
            _inputs_out(net, k, n, dg, gy, gctx)
