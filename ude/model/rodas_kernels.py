"""Rodas5P (:mod:`ude.model.rodas`) compiled with numba, for a right-hand side without
networks: the whole solve and the exact reverse pass of its accepted steps in machine code.

A twin's (or a true model's) right-hand side costs a few dozen floating-point operations; in
numpy each operation of a step is a call of about a microsecond, so the calls, not the
arithmetic, dominate a solve. Here the right-hand side and its Jacobian are the spec's
compiled tapes (:class:`~ude.spec.derivatives.CompiledDerivatives`, interpreted by
:func:`ude.spec.tape_kernels.tape_forward`), each condition's ``W = I/(h gamma) - J`` is factored
by partial-pivoting LU, and the step-size control is that of :func:`ude.model.rodas.integrate`
step for step (same initial step, controller and clipping to the output times), so both paths
take the same steps up to rounding.

The reverse pass is :func:`ude.model.rodas.adjoint`'s recursion with two differences of form,
not of value: ``J(Y)^T w`` at a stage point is the reverse sweep of the right-hand side's tape
(which gives the context's cotangent ``w . df/dctx`` in the same sweep), and the derivative of
the Jacobian inside ``W`` (``d/dy`` and ``d/dctx`` of ``sum_i w_i . J(y) U_i``) is the reverse
sweep of the Jacobian's tape. The context's gradient therefore needs no torch pass.

Shapes: ``B`` conditions, ``n`` states, ``c`` context entries (inputs then parameter values),
``T`` output times, ``N`` accepted steps, ``S`` = 8 stages.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit

from ude.model import network_kernels
from ude.model.network_kernels import add_jacobian, add_jacobian_vjp, add_value, add_vjp, scratch
from ude.model.rodas import (
    _A,
    _C,
    _M,
    ERROR_ORDER,
    GAMMA,
    MAX_FACTOR,
    MIN_FACTOR,
    MIN_RELATIVE_STEP,
    SAFETY,
    STAGES,
    StepFailure,
)
from ude.spec.derivatives import CompiledDerivatives
from ude.spec.tape_kernels import refresh_cache
from ude.spec.tape_kernels import tape_forward_inlined as tape_forward
from ude.spec.tape_kernels import tape_reverse_inlined as tape_reverse
from ude.threads import map_rows

refresh_cache(__file__, network_kernels.__file__)

OK, TOO_MANY_STEPS, UNDERFLOW = 0, 1, 2
_ROOT = 1.0 / ERROR_ORDER
_EPS = float(np.finfo(float).eps)


@lru_cache(maxsize=64)
def tapes(derivatives: CompiledDerivatives) -> tuple:
    """``(f_tape, jac_tape, jac_rows, jac_cols, net)``: the right-hand side's and the
    Jacobian's tapes as the kernels read them (:meth:`CompiledDerivatives.encoded`: encoded
    once per compiled right-hand side, shared with its numpy evaluations), and no networks
    (a hybrid model's solve puts its own :class:`~ude.model.network_kernels.NetCode` arrays
    last)."""
    return (
        derivatives.encoded("value"),
        derivatives.encoded("jac"),
        derivatives.jac_rows.astype(np.int64),
        derivatives.jac_cols.astype(np.int64),
        network_kernels.EMPTY,
    )


# -- evaluations -----------------------------------------------------------------------------
# Per step, what numba adds around the arithmetic cost more than the arithmetic. An array
# handed to a function, bound to a name or viewed (``y[b]``) gets an atomic reference count
# each way, and a call of a tape's sweep is a call. So: the step and its stages run in
# :func:`_step`, compiled without reference counting (it allocates nothing); the tapes' arrays
# are taken out of their tuples once a solve; the batch's rows are indexed (``y[b, i]``), not
# viewed, but where a network adds its part (its kernels take rows); and the sweeps are inlined
# (:data:`~ude.spec.tape_kernels.tape_forward_inlined`). The same arithmetic in the same order:
# the same values to the bit, 1.5-2.5x faster (``bench/twin_solve_cost.py``).
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _load(y, ctx, slots):
    n = y.shape[0]
    for i in range(n):
        slots[i] = y[i]
    for i in range(ctx.shape[0]):
        slots[n + i] = ctx[i]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _load_row(y, ctx, b, slots):
    """``slots`` from row ``b`` of ``y (B, n)`` and of ``ctx (B, c)``."""
    n = y.shape[1]
    for i in range(n):
        slots[i] = y[b, i]
    for i in range(ctx.shape[1]):
        slots[n + i] = ctx[b, i]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _outputs(out, out_c, slots, f):
    for k in range(f.shape[0]):
        f[k] = slots[out[k]] if out[k] >= 0 else out_c[k]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rhs(y, ctx, tape, slots, net, net_buf, f):
    """``f (n,)`` at ``y (n,)`` and ``ctx (c,)``: the tape's terms and the networks'."""
    code, arg, const, out, out_c = tape
    _load(y, ctx, slots)
    tape_forward(code, arg, const, slots)
    _outputs(out, out_c, slots, f)
    if net[0].shape[0]:  # a twin has none: a call with nothing to add costs 300 ns
        add_value(y, ctx, net, net_buf, f)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rhs_row(y, ctx, b, code, arg, const, out, out_c, slots, f):
    """Row ``b`` of ``f (B, n)`` at row ``b`` of ``y (B, n)`` and ``ctx (B, c)``: the tape's
    terms (the networks' are the caller's)."""
    _load_row(y, ctx, b, slots)
    tape_forward(code, arg, const, slots)
    for k in range(f.shape[1]):
        f[b, k] = slots[out[k]] if out[k] >= 0 else out_c[k]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _jacobian_row(y, ctx, b, code, arg, const, out, out_c, rows, cols, slots, jac):
    """The dense ``df/dy`` at row ``b`` into ``jac[b] (n, n)``, from the tape of its nonzero
    entries (the networks' part is the caller's)."""
    _load_row(y, ctx, b, slots)
    tape_forward(code, arg, const, slots)
    n = jac.shape[1]
    for i in range(n):
        for j in range(n):
            jac[b, i, j] = 0.0
    for e in range(rows.shape[0]):
        jac[b, rows[e], cols[e]] = slots[out[e]] if out[e] >= 0 else out_c[e]


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _value_and_jacobian(y, ctx, f_tape, jac_tape, rows, cols, f_slots, j_slots, net, net_buf, f,
                        jac):  # fmt: skip
    """``f (B, n)`` and ``jac (B, n, n)`` at ``y (B, n)`` and ``ctx (B, c)``: the tapes'
    terms and the networks' (without reference counts, as :func:`_step`)."""
    fcode, farg, fconst, fout, fout_c = f_tape
    jcode, jarg, jconst, jout, jout_c = jac_tape
    for b in range(y.shape[0]):
        _rhs_row(y, ctx, b, fcode, farg, fconst, fout, fout_c, f_slots, f)
        _jacobian_row(y, ctx, b, jcode, jarg, jconst, jout, jout_c, rows, cols, j_slots, jac)
        if net[0].shape[0]:
            add_value(y[b], ctx[b], net, net_buf, f[b])
            add_jacobian(y[b], ctx[b], net, net_buf, jac[b])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _reverse_loaded(code, arg, const, out, slots, adj, cotangent):
    """The reverse sweep of a tape (``code``, ``arg``, ``const``, ``out``) at the inputs in
    ``slots``: ``adj`` every slot's cotangent for the outputs' ``cotangent``."""
    tape_forward(code, arg, const, slots)
    adj[:] = 0.0
    for k in range(out.shape[0]):
        if out[k] >= 0:
            adj[out[k]] += cotangent[k]
    tape_reverse(code, arg, const, slots, adj)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _reverse(y, ctx, tape, slots, adj, cotangent, gy, gctx):
    """One reverse sweep of ``tape`` at ``(y, ctx)``: ``gy = cotangent . d out/dy``
    (overwritten) and ``cotangent . d out/dctx`` added to ``gctx``."""
    code, arg, const, out, _ = tape
    _load(y, ctx, slots)
    _reverse_loaded(code, arg, const, out, slots, adj, cotangent)
    n = y.shape[0]
    for i in range(n):
        gy[i] = adj[i]
    for i in range(ctx.shape[0]):
        gctx[i] += adj[n + i]


# -- linear algebra (LU with partial pivoting; n is small) ------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _lu(a, b, piv):
    """Factor ``a[b] (n, n)`` in place (``P a = L U``, ``piv[b, k]`` the row swapped with
    ``k``); False where it is singular or not finite."""
    n = a.shape[1]
    for k in range(n):
        p = k
        big = abs(a[b, k, k])
        for i in range(k + 1, n):
            if abs(a[b, i, k]) > big:
                big = abs(a[b, i, k])
                p = i
        piv[b, k] = p
        if not (big > 0.0 and big < math.inf):
            return False
        if p != k:
            for j in range(n):
                tmp = a[b, k, j]
                a[b, k, j] = a[b, p, j]
                a[b, p, j] = tmp
        inv = 1.0 / a[b, k, k]
        for i in range(k + 1, n):
            a[b, i, k] *= inv
            m = a[b, i, k]
            if m != 0.0:
                for j in range(k + 1, n):
                    a[b, i, j] -= m * a[b, k, j]
    return True


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _solve(lu, piv, b, rhs, x, s):
    """``x[s, b] = W^-1 rhs`` from :func:`_lu`'s factors of ``W = lu[b]``."""
    n = rhs.shape[0]
    for i in range(n):
        x[s, b, i] = rhs[i]
    for k in range(n):
        p = piv[b, k]
        if p != k:
            tmp = x[s, b, k]
            x[s, b, k] = x[s, b, p]
            x[s, b, p] = tmp
    for i in range(n):
        v = x[s, b, i]
        for j in range(i):
            v -= lu[b, i, j] * x[s, b, j]
        x[s, b, i] = v
    for i in range(n - 1, -1, -1):
        v = x[s, b, i]
        for j in range(i + 1, n):
            v -= lu[b, i, j] * x[s, b, j]
        x[s, b, i] = v / lu[b, i, i]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _solve_transposed(lu, piv, b, rhs, x, s):
    """``x[s] = W^-T rhs`` from :func:`_lu`'s factors of ``W = lu[b]`` (``W^T = U^T L^T
    P``)."""
    n = rhs.shape[0]
    for i in range(n):
        v = rhs[i]
        for j in range(i):
            v -= lu[b, j, i] * x[s, j]
        x[s, i] = v / lu[b, i, i]
    for i in range(n - 1, -1, -1):
        v = x[s, i]
        for j in range(i + 1, n):
            v -= lu[b, j, i] * x[s, j]
        x[s, i] = v
    for k in range(n - 1, -1, -1):
        p = piv[b, k]
        if p != k:
            tmp = x[s, k]
            x[s, k] = x[s, p]
            x[s, p] = tmp


# -- step-size control (as ude.model.rodas) ---------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _rms(x, y, rtol, atol):
    """Largest over the batch of the RMS of ``x / (atol + rtol |y|)``; NaN propagates."""
    worst = 0.0
    for b in range(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            r = x[b, i] / (atol + rtol * abs(y[b, i]))
            s += r * r
        v = math.sqrt(s / x.shape[1])
        if not v <= worst:  # NaN wins, as numpy's max
            worst = v
    return worst


@njit(cache=True, nogil=True, error_model="numpy")
def _error_norm(u, y, y_new, rtol, atol):
    """The step's error estimate, the last stage ``u[S - 1] (B, n)``, as a worst-condition
    RMS of the tolerance-scaled entries."""
    worst = 0.0
    for b in range(y.shape[0]):
        s = 0.0
        for i in range(y.shape[1]):
            r = u[STAGES - 1, b, i] / (atol + rtol * max(abs(y[b, i]), abs(y_new[b, i])))
            s += r * r
        if not s <= worst:
            worst = s
    v = math.sqrt(worst / y.shape[1])
    return v if math.isfinite(v) else math.inf


@njit(cache=True, nogil=True, error_model="numpy")
def _factor(err, h, last_h, last_err, rejected):
    """:func:`ude.model.rodas._factor` (``last_h`` <= 0: no previous accepted step)."""
    if not math.isfinite(err):
        return MIN_FACTOR
    err = max(err, 1e-10)
    factor = SAFETY * err ** (-_ROOT)
    if last_h > 0.0 and err <= 1.0:
        factor = min(factor, factor * (h / last_h) * (last_err / err) ** _ROOT)
    if rejected:
        factor = min(factor, 1.0)
    return min(max(factor, MIN_FACTOR), MAX_FACTOR)


@njit(cache=True, nogil=True, error_model="numpy")
def _grow(a, cap):
    b = np.empty((cap,) + a.shape[1:], dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


# -- the solve ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _scratch(n_batch, n):
    """A solve's working arrays: ``y_new``, ``f0 (B, n)``, ``jac``, ``w (B, n, n)``, ``piv
    (B, n)``, the stages ``u (S, B, n)``, and ``point``, ``value``, ``rhs (n,)``."""
    return (
        np.empty((n_batch, n)),
        np.empty((n_batch, n)),
        np.empty((n_batch, n, n)),
        np.empty((n_batch, n, n)),
        np.empty((n_batch, n), dtype=np.int64),
        np.empty((STAGES, n_batch, n)),
        np.empty(n),
        np.empty(n),
        np.empty(n),
    )


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _step(y, f0, jac, ctx, hs, f_tape, f_slots, net, net_buf, w, piv, u, y_new, point, value,
          rhs):  # fmt: skip
    """One Rodas5P step of signed size ``hs`` from ``y (B, n)``, where ``f0`` and ``jac`` are
    ``f`` and its Jacobian: each condition's factored ``W`` (``w``, ``piv``), the stages ``u``
    and the new states ``y_new``; ``point``, ``value``, ``rhs (n,)``: scratch.

    Compiled without numba's reference counting (``_nrt=False``, numba's flag for code that
    allocates nothing): counting the references to the arrays it is handed cost more than its
    arithmetic (perf: about half of a Goldbeter solve)."""
    n_batch, n = y.shape
    fcode, farg, fconst, fout, fout_c = f_tape
    networks = net[0].shape[0] > 0
    diag = 1.0 / (hs * GAMMA)
    for b in range(n_batch):
        for i in range(n):
            for j in range(n):
                w[b, i, j] = -jac[b, i, j]
            w[b, i, i] += diag
        regular = _lu(w, b, piv)
        for i in range(ctx.shape[1]):  # the tape writes only past the inputs
            f_slots[n + i] = ctx[b, i]
        for s in range(STAGES):
            if not regular:
                for i in range(n):
                    u[s, b, i] = math.nan
                continue
            if s == 0:
                for i in range(n):
                    rhs[i] = f0[b, i]
            else:
                for i in range(n):
                    acc = y[b, i]
                    for j in range(s):
                        acc += _A[s, j] * u[j, b, i]
                    point[i] = acc
                    f_slots[i] = acc
                tape_forward(fcode, farg, fconst, f_slots)
                _outputs(fout, fout_c, f_slots, value)
                if networks:
                    add_value(point, ctx[b], net, net_buf, value)
                for i in range(n):
                    acc = value[i]
                    for j in range(s):
                        acc += (_C[s, j] / hs) * u[j, b, i]
                    rhs[i] = acc
            _solve(w, piv, b, rhs, u, s)
        for i in range(n):
            acc = y[b, i]
            for j in range(STAGES):
                acc += _M[j] * u[j, b, i]
            y_new[b, i] = acc


@njit(cache=True, nogil=True, error_model="numpy")
def integrate(y0, times, ctx, f_tape, jac_tape, rows, cols, net, rtol, atol, max_steps, record):
    """Rodas5P from ``y0 (B, n)`` over ``times (T,)`` (strictly monotone), each condition
    with its context ``ctx (B, c)``, one step size for all.

    Returns ``(states (T, B, n), t (N,), h (N,), y (N, B, n), stages (N, S, B, n),
    lu (N, B, n, n), piv (N, B, n), output_step (T,), status, t_reached, h_last, counts)``:
    the accepted steps (empty unless ``record``) for :func:`adjoint`; ``status`` OK,
    TOO_MANY_STEPS or UNDERFLOW; ``counts`` accepted and rejected steps, ``f`` and Jacobian
    evaluations.
    """
    n_batch, n = y0.shape
    n_t = times.shape[0]
    n_sym = n + ctx.shape[1]
    out = np.empty((n_t, n_batch, n))
    out[0] = y0
    output_step = np.zeros(n_t, dtype=np.int64)
    counts = np.zeros(4, dtype=np.int64)
    cap = 64 if record else 1
    rec_t = np.empty(cap)
    rec_h = np.empty(cap)
    rec_y = np.empty((cap, n_batch, n))
    rec_u = np.empty((cap, STAGES, n_batch, n))
    rec_lu = np.empty((cap, n_batch, n, n))
    rec_piv = np.empty((cap, n_batch, n), dtype=np.int64)
    t = times[0]
    if n_t < 2:
        return (out, rec_t[:0], rec_h[:0], rec_y[:0], rec_u[:0], rec_lu[:0], rec_piv[:0],
                output_step, OK, t, 0.0, counts)  # fmt: skip
    f_slots = np.empty(n_sym + f_tape[0].shape[0])
    j_slots = np.empty(n_sym + jac_tape[0].shape[0])
    net_buf = scratch(net)
    span = abs(times[n_t - 1] - times[0])
    direction = 1.0 if times[n_t - 1] > times[0] else -1.0
    y = y0.copy()
    y_new, f0, jac, w, piv, u, point, value, rhs = _scratch(n_batch, n)
    _value_and_jacobian(
        y, ctx, f_tape, jac_tape, rows, cols, f_slots, j_slots, net, net_buf, f0, jac
    )
    counts[2] += 1
    counts[3] += 1
    # the first step (Hairer, Norsett & Wanner, Solving ODEs I, II.4), as rodas.initial_step
    d0 = _rms(y, y, rtol, atol)
    d1 = _rms(f0, y, rtol, atol)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5 or not math.isfinite(d1)) else 0.01 * d0 / d1
    h0 = min(h0, span)
    for b in range(n_batch):
        for i in range(n):
            point[i] = y[b, i] + h0 * direction * f0[b, i]
        _rhs(point, ctx[b], f_tape, f_slots, net, net_buf, value)  # once a solve
        for i in range(n):
            y_new[b, i] = value[i] - f0[b, i]
    counts[2] += 1
    d2 = _rms(y_new, y, rtol, atol) / h0
    largest = d2 if d2 > d1 else d1
    if not math.isfinite(largest):
        h = h0 * 1e-3
    else:
        h1 = max(1e-6, h0 * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** _ROOT
        h = min(100 * h0, h1, span)
    last_h = -1.0
    last_err = 1.0
    rejected = False
    n_acc = 0
    n_rej = 0
    for k in range(1, n_t):
        t_out = times[k]
        while direction * (t_out - t) > 0.0:
            if h < max(MIN_RELATIVE_STEP * span, 4.0 * _EPS * abs(t)):
                counts[0] = n_acc
                counts[1] = n_rej
                return (out, rec_t[:n_acc], rec_h[:n_acc], rec_y[:n_acc], rec_u[:n_acc],
                        rec_lu[:n_acc], rec_piv[:n_acc], output_step, UNDERFLOW, t, h,
                        counts)  # fmt: skip
            if n_acc + n_rej >= max_steps:
                counts[0] = n_acc
                counts[1] = n_rej
                return (out, rec_t[:n_acc], rec_h[:n_acc], rec_y[:n_acc], rec_u[:n_acc],
                        rec_lu[:n_acc], rec_piv[:n_acc], output_step, TOO_MANY_STEPS, t, h,
                        counts)  # fmt: skip
            remaining = abs(t_out - t)
            clipped = remaining <= 1.1 * h
            h_step = remaining if clipped else h
            hs = direction * h_step
            _step(
                y,
                f0,
                jac,
                ctx,
                hs,
                f_tape,
                f_slots,
                net,
                net_buf,
                w,
                piv,
                u,
                y_new,
                point,
                value,
                rhs,
            )
            counts[2] += STAGES - 1
            err = _error_norm(u, y, y_new, rtol, atol)
            if err <= 1.0:
                if record:
                    if n_acc == cap:
                        cap *= 2
                        rec_t = _grow(rec_t, cap)
                        rec_h = _grow(rec_h, cap)
                        rec_y = _grow(rec_y, cap)
                        rec_u = _grow(rec_u, cap)
                        rec_lu = _grow(rec_lu, cap)
                        rec_piv = _grow(rec_piv, cap)
                    rec_t[n_acc] = t
                    rec_h[n_acc] = hs
                    rec_y[n_acc] = y
                    rec_u[n_acc] = u
                    rec_lu[n_acc] = w
                    rec_piv[n_acc] = piv
                n_acc += 1
                t = t_out if clipped else t + hs
                y[:] = y_new
                factor = _factor(err, h_step, last_h, last_err, rejected)
                h = max(h, h_step * factor) if clipped else h_step * factor
                last_h = h_step
                last_err = max(err, 1e-4)
                rejected = False
                _value_and_jacobian(
                    y, ctx, f_tape, jac_tape, rows, cols, f_slots, j_slots, net, net_buf, f0, jac
                )
                counts[2] += 1
                counts[3] += 1
            else:
                n_rej += 1
                h = h_step * _factor(err, h_step, -1.0, 1.0, True)
                rejected = True
        out[k] = y
        output_step[k] = n_acc
    counts[0] = n_acc
    counts[1] = n_rej
    return (out, rec_t[:n_acc], rec_h[:n_acc], rec_y[:n_acc], rec_u[:n_acc], rec_lu[:n_acc],
            rec_piv[:n_acc], output_step, OK, t, h, counts)  # fmt: skip


@njit(cache=True, nogil=True, error_model="numpy")
def replay(y0, times, ctx, f_tape, jac_tape, rows, cols, net, steps, output_step):
    """The steps of a recorded solve (``steps (N,)``: :func:`integrate`'s signed ``h``;
    ``output_step (T,)``: steps before each output) taken again from ``y0 (B, n)`` with the
    context ``ctx (B, c)``, without step-size control: the same discrete map of the inputs,
    smooth in them (what differences of gradients need). Returns :func:`integrate`'s tuple,
    the steps recorded; ``status`` OK."""
    n_batch, n = y0.shape
    n_t = times.shape[0]
    n_steps = steps.shape[0]
    n_sym = n + ctx.shape[1]
    out = np.empty((n_t, n_batch, n))
    counts = np.zeros(4, dtype=np.int64)
    rec_t = np.empty(n_steps)
    rec_y = np.empty((n_steps, n_batch, n))
    rec_u = np.empty((n_steps, STAGES, n_batch, n))
    rec_lu = np.empty((n_steps, n_batch, n, n))
    rec_piv = np.empty((n_steps, n_batch, n), dtype=np.int64)
    f_slots = np.empty(n_sym + f_tape[0].shape[0])
    j_slots = np.empty(n_sym + jac_tape[0].shape[0])
    net_buf = scratch(net)
    y = y0.copy()
    y_new, f0, jac, _, piv, u, point, value, rhs = _scratch(n_batch, n)
    t = times[0]
    k = 0
    for step in range(n_steps + 1):
        while k < n_t and output_step[k] == step:
            out[k] = y
            k += 1
        if step == n_steps:
            break
        _value_and_jacobian(
            y, ctx, f_tape, jac_tape, rows, cols, f_slots, j_slots, net, net_buf, f0, jac
        )
        hs = steps[step]
        _step(y, f0, jac, ctx, hs, f_tape, f_slots, net, net_buf, rec_lu[step], piv, u, y_new,
              point, value, rhs)  # fmt: skip
        rec_t[step] = t
        rec_y[step] = y
        rec_u[step] = u
        rec_piv[step] = piv
        t += hs
        y[:] = y_new
    counts[0] = n_steps
    counts[2] = n_steps * STAGES
    counts[3] = n_steps
    return (out, rec_t, steps.copy(), rec_y, rec_u, rec_lu, rec_piv, output_step.copy(), OK,
            times[n_t - 1], steps[n_steps - 1] if n_steps else 0.0, counts)  # fmt: skip


# -- the reverse pass ------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def adjoint(grad_out, rec_h, rec_y, rec_u, rec_lu, rec_piv, output_step, ctx, f_tape, jac_tape,
            rows, cols, net):  # fmt: skip
    """The exact reverse pass of :func:`integrate`'s accepted steps (autonomous ``f``).

    ``grad_out (T, B, n)``: the outputs' cotangents. Returns the cotangents of ``y0 (B, n)``
    of ``ctx (B, c)`` and of the networks' folded weights (summed over the conditions).
    """
    n_t, n_batch, n = grad_out.shape
    c = ctx.shape[1]
    n_steps = rec_h.shape[0]
    n_sym = n + c
    f_slots = np.empty(n_sym + f_tape[0].shape[0])
    f_adj = np.empty(f_slots.shape[0])
    j_slots = np.empty(n_sym + jac_tape[0].shape[0])
    j_adj = np.empty(j_slots.shape[0])
    net_buf = scratch(net)
    networks = net[0].shape[0] > 0  # a twin has none: no calls into the network kernels
    gw = np.zeros(net[3].shape[0])
    lam = np.zeros((n_batch, n))
    gctx = np.zeros((n_batch, c))
    omega = np.empty((STAGES, n))
    nu = np.empty((STAGES, n))
    mu = np.empty(n)
    acc = np.empty(n)
    point = np.empty(n)
    g = np.empty(n)
    pairs = np.empty(rows.shape[0])
    cot = np.empty(n)
    fcode, farg, fconst, fout, _ = f_tape
    jcode, jarg, jconst, jout, _ = jac_tape
    last = n_t - 1
    for step in range(n_steps - 1, -1, -1):
        # outputs reached by this step (output_step[k] steps precede output k)
        while last >= 0 and output_step[last] == step + 1:
            for b in range(n_batch):
                for i in range(n):
                    lam[b, i] += grad_out[last, b, i]
            last -= 1
        h = rec_h[step]
        y = rec_y[step]
        u = rec_u[step]
        lu = rec_lu[step]
        piv = rec_piv[step]
        for b in range(n_batch):
            for i in range(n):
                acc[i] = lam[b, i]
            for i in range(c):  # the tape writes only past the inputs
                f_slots[n + i] = ctx[b, i]
            for s in range(STAGES - 1, -1, -1):
                for i in range(n):
                    v = _M[s] * lam[b, i]
                    for j in range(s + 1, STAGES):
                        v += (_C[j, s] / h) * omega[j, i] + _A[j, s] * nu[j, i]
                    mu[i] = v
                _solve_transposed(lu, piv, b, mu, omega, s)
                for i in range(n):
                    v = y[b, i]
                    for j in range(s):
                        v += _A[s, j] * u[j, b, i]
                    point[i] = v
                    f_slots[i] = v
                    cot[i] = omega[s, i]
                _reverse_loaded(fcode, farg, fconst, fout, f_slots, f_adj, cot)
                for i in range(n):
                    nu[s, i] = f_adj[i]
                for i in range(c):
                    gctx[b, i] += f_adj[n + i]
                if networks:
                    add_vjp(point, ctx[b], net, net_buf, omega[s], nu[s], gctx[b], gw)
                for i in range(n):
                    acc[i] += nu[s, i]
            # the Jacobian inside W: d/dy and d/dctx of sum_s omega_s . J(y) U_s
            for e in range(rows.shape[0]):
                v = 0.0
                for s in range(STAGES):
                    v += omega[s, rows[e]] * u[s, b, cols[e]]
                pairs[e] = v
            _load_row(y, ctx, b, j_slots)
            _reverse_loaded(jcode, jarg, jconst, jout, j_slots, j_adj, pairs)
            for i in range(n):
                g[i] = j_adj[i]
            for i in range(c):
                gctx[b, i] += j_adj[n + i]
            if networks:
                add_jacobian_vjp(y[b], ctx[b], net, net_buf, omega, u[:, b], g, gctx[b], gw)
            for i in range(n):
                lam[b, i] = acc[i] + g[i]
    while last >= 0:
        for b in range(n_batch):
            for i in range(n):
                lam[b, i] += grad_out[last, b, i]
        last -= 1
    return lam, gctx, gw


def integrate_each(y0, times, ctx, f_tape, jac_tape, rows, cols, net, rtol, atol, max_steps,
                   record):  # fmt: skip
    """:func:`integrate` of each condition alone, each with its own step size (and its own
    ``max_steps``), in threads (:func:`ude.threads.map_rows`: the same numbers as one after
    the other). Returns the per-condition results in order, up to the first that failed.

    A shared step is the smallest any condition needs at that time, so every condition takes
    the union of all their steps; conditions whose fast phases fall at different times (an
    oscillator at several doses) pay for each other's. Yeast glycolysis' true model over the
    benchmark's 8 conditions, forward + gradient: 7,928 condition-steps shared against 3,162
    alone, 0.059 against 0.025 s of CPU (``python bench/stiff.py --quick``, its last lines).
    Each condition still meets the tolerance."""
    tapes = (f_tape, jac_tape, rows, cols, net)
    return integrate_rows(y0, times, ctx, [tapes] * y0.shape[0], rtol, atol, max_steps, record)


def integrate_rows(y0, times, ctx, row_tapes, rtol, atol, max_steps, record):
    """:func:`integrate_each` with each row's own ``(f_tape, jac_tape, rows, cols, net)``
    (an ensemble's members: the same known part, each member's networks)."""

    def solve(b):
        return integrate(
            np.ascontiguousarray(y0[b : b + 1]), times, np.ascontiguousarray(ctx[b : b + 1]),
            *row_tapes[b], rtol, atol, max_steps, record,
        )  # fmt: skip

    results = map_rows(solve, y0.shape[0])
    failed = [b for b, result in enumerate(results) if result[8] != OK]
    return results[: failed[0] + 1] if failed else results


def adjoint_each(grad_out, records, ctx, f_tape, jac_tape, rows, cols, net):
    """:func:`adjoint` of :func:`integrate_each`'s solves: ``records``, each condition's
    ``(h, y, stages, lu, piv, output_step)``. Returns the cotangents of ``y0 (B, n)``, of
    ``ctx (B, c)`` and of the networks' folded weights."""
    tapes = (f_tape, jac_tape, rows, cols, net)
    lam, gctx, gws = adjoint_rows(grad_out, records, ctx, [tapes] * len(records))
    return lam, gctx, np.sum(gws, axis=0) if gws else np.zeros(net[3].shape[0])


def adjoint_rows(grad_out, records, ctx, row_tapes):
    """:func:`adjoint` of :func:`integrate_rows`' solves: the cotangents of ``y0 (B, n)`` and
    of ``ctx (B, c)``, and each row's folded weights' cotangent (a list)."""

    def reverse(b):
        return adjoint(
            np.ascontiguousarray(grad_out[:, b : b + 1]), *records[b],
            np.ascontiguousarray(ctx[b : b + 1]), *row_tapes[b],
        )  # fmt: skip

    lams, gctxs, gws = zip(*map_rows(reverse, len(records)), strict=True)
    return np.concatenate(lams), np.concatenate(gctxs), list(gws)


def raise_failure(status: int, t: float, h: float, max_steps: int) -> None:
    """:class:`~ude.model.rodas.StepFailure` for a status other than OK, with the reasons
    :func:`ude.model.rodas.integrate` gives."""
    if status == UNDERFLOW:
        raise StepFailure("step size underflow", t, h)
    if status == TOO_MANY_STEPS:
        raise StepFailure(f"{max_steps} steps were not enough", t, h)
