"""Compiled kernels (numba) of a PEtab problem's solve: the right-hand side, its
vector-Jacobian product, Dormand-Prince 5(4) and the exact adjoint of its accepted steps.

A likelihood evaluation of a small model solves a few hundred steps of a right-hand side that
costs a few dozen floating-point operations: in torch or numpy every operation is a call of
about a microsecond, so the calls, not the arithmetic, are the cost. Here the whole solve runs
in machine code, and so does its gradient (discretize-then-optimize: the reverse pass of the
accepted steps, step sizes held fixed, as a torch backward through them would compute).

The right-hand side is data, not code: two expression tapes (from
:class:`~ude.spec.compile.CompiledExpressions`: opcodes and slot numbers, interpreted by
:mod:`ude.spec.tape_kernels`)
and networks as chains of dense layers and elementwise activations. Nothing is generated as
source text. With ``c`` context entries per experiment and networks' inputs and outputs::

    x   = tape_in(y, ctx, t)              the networks' input elements
    out = networks(x)                     each a chain over its slice of x
    f   = tape_f(y, ctx, t, out)          the right-hand side (n,)

Arrays are float64; shapes: ``n`` states, ``T`` output times, ``N`` accepted steps.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ude.spec.tape_kernels import refresh_cache, tape_forward, tape_reverse

refresh_cache(__file__)

# -- layer kinds: 0 dense; the rest elementwise activations -------------------------------------
DENSE, A_TANH, A_RELU, A_SIGMOID, A_SOFTPLUS, A_SILU, A_GELU, A_ELU, A_IDENTITY = range(9)

# Dormand & Prince (1980), RK5(4)7M: stages' coefficients, the 5th-order weights (= the last
# row, first same as last) and the error weights (5th minus 4th order).
_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_A = np.zeros((7, 7))
_A[1, 0] = 1 / 5
_A[2, :2] = [3 / 40, 9 / 40]
_A[3, :3] = [44 / 45, -56 / 15, 32 / 9]
_A[4, :4] = [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729]
_A[5, :5] = [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]
_A[6, :6] = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
_B = _A[6].copy()
_E = np.array(
    [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]
)  # b - b_hat
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
OK, TOO_MANY_STEPS, UNDERFLOW = 0, 1, 2


# -- networks ------------------------------------------------------------------------------------
@njit(cache=True)
def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0.0 else math.exp(z) / (1.0 + math.exp(z))


@njit(cache=True)
def _act(kind, z):
    if kind == A_TANH:
        return math.tanh(z)
    if kind == A_RELU:
        return z if z > 0.0 else 0.0
    if kind == A_SIGMOID:
        return _sigmoid(z)
    if kind == A_SOFTPLUS:
        return z if z > 20.0 else math.log1p(math.exp(z))
    if kind == A_SILU:
        return z * _sigmoid(z)
    if kind == A_GELU:
        return 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0)))
    if kind == A_ELU:
        return z if z > 0.0 else math.expm1(z)
    return z


@njit(cache=True)
def _act_grad(kind, z, a):
    """``d act / dz`` at ``z`` (``a`` = act(z))."""
    if kind == A_TANH:
        return 1.0 - a * a
    if kind == A_RELU:
        return 1.0 if z > 0.0 else 0.0
    if kind == A_SIGMOID:
        return a * (1.0 - a)
    if kind == A_SOFTPLUS:
        return 1.0 if z > 20.0 else _sigmoid(z)
    if kind == A_SILU:
        s = _sigmoid(z)
        return s + z * s * (1.0 - s)
    if kind == A_GELU:
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) + z * math.exp(-0.5 * z * z) / math.sqrt(
            2.0 * math.pi
        )
    if kind == A_ELU:
        return 1.0 if z > 0.0 else a + 1.0
    return 1.0


@njit(cache=True)
def net_forward(layers, first, last, params, buf):
    """Layers ``first:last`` (rows ``kind, n_in, n_out, w_off, b_off``) on ``buf[:n_in]``;
    each layer writes its output after its input. Returns where the output starts."""
    at = 0
    for l_ in range(first, last):
        kind = layers[l_, 0]
        n_in = layers[l_, 1]
        n_out = layers[l_, 2]
        out = at + n_in
        if kind == DENSE:
            w_off = layers[l_, 3]
            b_off = layers[l_, 4]
            for i in range(n_out):
                s = params[b_off + i] if b_off >= 0 else 0.0
                row = w_off + i * n_in
                for j in range(n_in):
                    s += params[row + j] * buf[at + j]
                buf[out + i] = s
        else:
            for i in range(n_in):
                buf[out + i] = _act(kind, buf[at + i])
        at = out
    return at


@njit(cache=True)
def net_reverse(layers, first, last, params, buf, g, tmp, gparams):
    """Reverse of :func:`net_forward` (``buf`` as it left it): ``g`` holds the output's
    cotangent on entry and the input's on return (``g`` and the scratch ``tmp`` sized for
    the widest layer); the parameters' cotangents are added to ``gparams``."""
    at = 0
    for l_ in range(first, last):
        at += layers[l_, 1]
    for l_ in range(last - 1, first - 1, -1):
        kind = layers[l_, 0]
        n_in = layers[l_, 1]
        n_out = layers[l_, 2]
        out = at
        at -= n_in
        if kind == DENSE:
            w_off = layers[l_, 3]
            b_off = layers[l_, 4]
            for j in range(n_in):
                tmp[j] = 0.0
            for i in range(n_out):
                gi = g[i]
                if b_off >= 0:
                    gparams[b_off + i] += gi
                row = w_off + i * n_in
                for j in range(n_in):
                    gparams[row + j] += gi * buf[at + j]
                    tmp[j] += gi * params[row + j]
            for j in range(n_in):
                g[j] = tmp[j]
        else:
            for i in range(n_in):
                g[i] *= _act_grad(kind, buf[at + i], buf[out + i])


# -- the right-hand side -------------------------------------------------------------------------
@njit(cache=True)
def rhs(y, t, ctx, P, W, f):
    """``f (n,)`` at ``y (n,)``, time ``t``, context ``ctx (c,)``; ``P`` the system (see
    :class:`ude.petab.fast.CompiledSystem`), ``W`` its work arrays."""
    (icode, iarg, iconst, iout, iout_c, fcode, farg, fconst, fout, fout_c, layers, nets, params) = P
    s_in, s_f, buf = W[0], W[1], W[2]
    n = y.shape[0]
    c = ctx.shape[0]
    for i in range(n):
        s_in[i] = y[i]
        s_f[i] = y[i]
    for i in range(c):
        s_in[n + i] = ctx[i]
        s_f[n + i] = ctx[i]
    s_in[n + c] = t
    s_f[n + c] = t
    base = n + c + 1
    if nets.shape[0]:
        tape_forward(icode, iarg, iconst, s_in)
        for k in range(nets.shape[0]):
            first, last, x_off, o_off = nets[k, 0], nets[k, 1], nets[k, 2], nets[k, 3]
            n_x = layers[first, 1]
            for j in range(n_x):
                o = iout[x_off + j]
                buf[j] = s_in[o] if o >= 0 else iout_c[x_off + j]
            at = net_forward(layers, first, last, params, buf)
            for j in range(layers[last - 1, 2]):
                s_f[base + o_off + j] = buf[at + j]
    tape_forward(fcode, farg, fconst, s_f)
    for i in range(n):
        o = fout[i]
        f[i] = s_f[o] if o >= 0 else fout_c[i]


@njit(cache=True)
def rhs_vjp(y, t, ctx, P, W, xi, gy, gctx, gparams):
    """``gy = xi . df/dy`` (overwritten); ``xi . df/dctx`` and ``xi . df/dparams`` added to
    ``gctx (c,)`` and ``gparams``."""
    (icode, iarg, iconst, iout, iout_c, fcode, farg, fconst, fout, fout_c, layers, nets, params) = P
    s_in, s_f, buf, a_in, a_f, f, g, tmp = W
    n = y.shape[0]
    c = ctx.shape[0]
    rhs(y, t, ctx, P, W, f)
    for i in range(a_f.shape[0]):
        a_f[i] = 0.0
    for i in range(n):
        if fout[i] >= 0:
            a_f[fout[i]] += xi[i]
    tape_reverse(fcode, farg, fconst, s_f, a_f)
    for i in range(n):
        gy[i] = a_f[i]
    for i in range(c):
        gctx[i] += a_f[n + i]
    if not nets.shape[0]:
        return
    base = n + c + 1
    for i in range(a_in.shape[0]):
        a_in[i] = 0.0
    for k in range(nets.shape[0]):
        first, last, x_off, o_off = nets[k, 0], nets[k, 1], nets[k, 2], nets[k, 3]
        n_x = layers[first, 1]
        for j in range(n_x):  # the forward pass again, this network's activations in buf
            o = iout[x_off + j]
            buf[j] = s_in[o] if o >= 0 else iout_c[x_off + j]
        net_forward(layers, first, last, params, buf)
        for j in range(layers[last - 1, 2]):
            g[j] = a_f[base + o_off + j]
        net_reverse(layers, first, last, params, buf, g, tmp, gparams)
        for j in range(n_x):
            o = iout[x_off + j]
            if o >= 0:
                a_in[o] += g[j]
    tape_reverse(icode, iarg, iconst, s_in, a_in)
    for i in range(n):
        gy[i] += a_in[i]
    for i in range(c):
        gctx[i] += a_in[n + i]


# -- Dormand-Prince 5(4) -------------------------------------------------------------------------
@njit(cache=True)
def _norm(err, y, y_new, rtol, atol):
    s = 0.0
    for i in range(err.shape[0]):
        scale = atol + rtol * max(abs(y[i]), abs(y_new[i]))
        r = err[i] / scale
        s += r * r
    v = math.sqrt(s / err.shape[0])
    return v if math.isfinite(v) else math.inf


@njit(cache=True)
def dopri5(y0, times, ctx, P, W, rtol, atol, max_steps):
    """Solve from ``y0 (n,)`` to ``times (T,)`` (increasing, ``times[0]`` the start).

    Returns ``(states (T, n), t (N,), h (N,), y (N, n), k (N, 6, n), output_step (T,),
    status, t_reached, h_last)``: the accepted steps (start, size, state, stages) for
    :func:`dopri5_adjoint`; ``status`` OK, TOO_MANY_STEPS or UNDERFLOW. Steps are clipped to
    land on every output time.
    """
    n = y0.shape[0]
    n_t = times.shape[0]
    out = np.empty((n_t, n))
    out[0] = y0
    output_step = np.zeros(n_t, dtype=np.int64)
    cap = 64
    rec_t = np.empty(cap)
    rec_h = np.empty(cap)
    rec_y = np.empty((cap, n))
    rec_k = np.empty((cap, 6, n))
    k = np.empty((7, n))
    y = y0.copy()
    point = np.empty(n)
    y_new = np.empty(n)
    err = np.empty(n)
    t = times[0]
    n_acc = 0
    attempts = 0
    if n_t < 2:
        return out, rec_t[:0], rec_h[:0], rec_y[:0], rec_k[:0], output_step, OK, t, 0.0
    span = times[n_t - 1] - times[0]
    rhs(y, t, ctx, P, W, k[0])
    # initial step (Hairer, Norsett & Wanner, Solving ODEs I, II.4)
    d0 = 0.0
    d1 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d0 += (y[i] / sc) ** 2
        d1 += (k[0, i] / sc) ** 2
    d0 = math.sqrt(d0 / n)
    d1 = math.sqrt(d1 / n)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, span)
    for i in range(n):
        point[i] = y[i] + h0 * k[0, i]
    rhs(point, t + h0, ctx, P, W, k[1])
    d2 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d2 += ((k[1, i] - k[0, i]) / sc) ** 2
    d2 = math.sqrt(d2 / n) / h0
    big = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if big <= 1e-15 else (0.01 / big) ** 0.2
    h = min(100 * h0, h1, span)
    if not math.isfinite(h):
        h = h0 * 1e-3
    rejected = False
    for idx in range(1, n_t):
        t_out = times[idx]
        while t_out - t > 0.0:
            if h < max(1e-12 * span, 4.0 * 2.220446049250313e-16 * abs(t)):
                return (
                    out,
                    rec_t[:n_acc],
                    rec_h[:n_acc],
                    rec_y[:n_acc],
                    rec_k[:n_acc],
                    (output_step),
                    UNDERFLOW,
                    t,
                    h,
                )
            if attempts >= max_steps:
                return (
                    out,
                    rec_t[:n_acc],
                    rec_h[:n_acc],
                    rec_y[:n_acc],
                    rec_k[:n_acc],
                    (output_step),
                    TOO_MANY_STEPS,
                    t,
                    h,
                )
            attempts += 1
            remaining = t_out - t
            clipped = remaining <= 1.1 * h
            hs = remaining if clipped else h
            for s in range(1, 7):
                for i in range(n):
                    acc = 0.0
                    for j in range(s):
                        acc += _A[s, j] * k[j, i]
                    point[i] = y[i] + hs * acc
                rhs(point, t + _C[s] * hs, ctx, P, W, k[s])
            for i in range(n):
                y_new[i] = point[i]  # stage 7 is at the 5th-order solution
                acc = 0.0
                for j in range(7):
                    acc += _E[j] * k[j, i]
                err[i] = hs * acc
            e = _norm(err, y, y_new, rtol, atol)
            if e <= 1.0:
                if n_acc == cap:
                    cap *= 2
                    rec_t = _grow1(rec_t, cap)
                    rec_h = _grow1(rec_h, cap)
                    rec_y = _grow2(rec_y, cap)
                    rec_k = _grow3(rec_k, cap)
                rec_t[n_acc] = t
                rec_h[n_acc] = hs
                rec_y[n_acc] = y
                rec_k[n_acc] = k[:6]
                n_acc += 1
                t = t_out if clipped else t + hs
                y[:] = y_new
                k[0] = k[6]
                factor = MAX_FACTOR if e == 0.0 else min(MAX_FACTOR, SAFETY * e**-0.2)
                if rejected:
                    factor = min(factor, 1.0)
                factor = max(factor, MIN_FACTOR)
                h = max(h, hs * factor) if clipped else hs * factor
                rejected = False
            else:
                factor = MIN_FACTOR if not math.isfinite(e) else SAFETY * e**-0.2
                h = hs * min(1.0, max(MIN_FACTOR, factor))
                rejected = True
        out[idx] = y
        output_step[idx] = n_acc
    return (
        out,
        rec_t[:n_acc],
        rec_h[:n_acc],
        rec_y[:n_acc],
        rec_k[:n_acc],
        output_step,
        OK,
        t,
        h,
    )


@njit(cache=True)
def _grow1(a, cap):
    b = np.empty(cap)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _grow2(a, cap):
    b = np.empty((cap, a.shape[1]))
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _grow3(a, cap):
    b = np.empty((cap, a.shape[1], a.shape[2]))
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def dopri5_adjoint(grad_out, rec_t, rec_h, rec_y, rec_k, output_step, ctx, P, W, gctx, gparams):
    """The exact reverse pass of :func:`dopri5`'s accepted steps: ``grad_out (T, n)`` the
    outputs' cotangents; returns the cotangent of ``y0``; adds the context's and the
    parameters' to ``gctx`` and ``gparams``."""
    n = grad_out.shape[1]
    n_steps = rec_h.shape[0]
    lam = np.zeros(n)
    xi = np.empty((6, n))
    mu = np.empty((6, n))
    point = np.empty(n)
    g = np.empty(n)
    # outputs injected after the step that reaches them (output_step[k] steps precede k)
    last = output_step.shape[0] - 1
    for step in range(n_steps - 1, -1, -1):
        while last >= 0 and output_step[last] == step + 1:
            for i in range(n):
                lam[i] += grad_out[last, i]
            last -= 1
        h = rec_h[step]
        t = rec_t[step]
        y = rec_y[step]
        kk = rec_k[step]
        for s in range(5, -1, -1):
            for i in range(n):
                acc = _B[s] * lam[i]
                for j in range(s + 1, 6):
                    acc += _A[j, s] * mu[j, i]
                xi[s, i] = h * acc
            for i in range(n):
                acc = 0.0
                for j in range(s):
                    acc += _A[s, j] * kk[j, i]
                point[i] = y[i] + h * acc
            rhs_vjp(point, t + _C[s] * h, ctx, P, W, xi[s], g, gctx, gparams)
            for i in range(n):
                mu[s, i] = g[i]
        for s in range(6):
            for i in range(n):
                lam[i] += mu[s, i]
    while last >= 0:
        for i in range(n):
            lam[i] += grad_out[last, i]
        last -= 1
    return lam
