"""Rodas5P in numpy: an adaptive, L-stable Rosenbrock method and the exact adjoint of its steps.

The method (Steinebach 2023, "Construction of Rosenbrock-Wanner method Rodas5P and numerical
benchmarks within the Julia Differential Equations package", BIT Numer. Math. 63:27) is of
order 5 with an embedded order-4 solution, 8 stages, one Jacobian and one factorisation per
step, stiffly accurate and L-stable. In the transformed form of Hairer & Wanner (Solving ODEs
II, IV.7), a step of size ``h`` from ``y`` with ``J = df/dy(y)`` and ``W = I/(h gamma) - J``::

    W U_i = f(y + sum_j<i A_ij U_j) + sum_j<i (C_ij / h) U_j      (i = 1..8)
    y_new = y + sum_j<8 A_8j U_j + U_8,     error estimate U_8.

On the zoo's stiff systems (Goldbeter, yeast glycolysis) it needs about 3.5 times fewer steps
than ode23s (``rosenbrock23``) at the same tolerance, and is more accurate.

Its gradient is the exact derivative of the accepted steps (discretize-then-optimize): the
backward pass (:func:`adjoint`) runs the steps' adjoint recursion in numpy, including the
Jacobian's own derivative (the second derivatives of ``f``), which a Rosenbrock method needs
for a consistent gradient; it returns the cotangents of every stage's ``f`` evaluation, so
the parameters' gradient is one batched vector-Jacobian product (done by the caller in torch).

Rows of the batch are independent conditions sharing one step size (the step is the largest
that keeps every condition within the tolerance), so a step is one batched evaluation and one
batched factorisation whatever the number of conditions.

By default the same steps run compiled instead (:mod:`ude.model.rodas_kernels`, about 40
times faster on Goldbeter's true model, 4 to 6 times on its hybrid's training loss): this
module is the path of ``compiled=False``, and the reference the kernels are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# -- the tableau (Steinebach 2023, Table 3; the transformed coefficients) -----------------------
GAMMA = 0.21193756319429014
STAGES = 8
_A = np.zeros((STAGES, STAGES))
_C = np.zeros((STAGES, STAGES))
_A[1, :1] = [3.0]
_A[2, :2] = [2.849394379747939, 0.45842242204463923]
_A[3, :3] = [-6.954028509809101, 2.489845061869568, -10.358996098473584]
_A[4, :4] = [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641]
_A[5, :5] = [
    -7.502846399306121,
    2.561846144803919,
    -11.627539656261098,
    -0.18268767659942256,
    0.030198172008377946,
]
_A[6, :5] = _A[5, :5]
_A[6, 5] = 1.0
_A[7, :6] = _A[6, :6]
_A[7, 6] = 1.0
_C[1, :1] = [-14.155112264123755]
_C[2, :2] = [-17.97296035885952, -2.859693295451294]
_C[3, :3] = [147.12150275711716, -1.41221402718213, 71.68940251302358]
_C[4, :4] = [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306]
_C[5, :5] = [
    24.854864614690072,
    -3.0009227002832186,
    47.4931110020768,
    5.5814197821558125,
    -0.6610691825249471,
]
_C[6, :6] = [
    30.91273214028599,
    -3.1208243349937974,
    77.79954646070892,
    34.28646028294783,
    -19.097331116725623,
    -28.087943162872662,
]
_C[7, :7] = [
    37.80277123390563,
    -3.2571969029072276,
    112.26918849496327,
    66.9347231244047,
    -40.06618937091002,
    -54.66780262877968,
    -9.48861652309627,
]
# y_new = y + sum_j M_j U_j: the last stage's point plus its own increment (stiffly accurate)
_M = np.concatenate([_A[7, :7], [1.0]])
# stage times c_i (fractions of h) and the coefficients of h df/dt (non-autonomous f only)
_STAGE_TIME = np.array(
    [0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1, 1, 1]
)
_D = np.array(
    [
        0.21193756319429014,
        -0.42387512638858027,
        -0.3384627126235924,
        1.8046452872882734,
        2.325825639765069,
        0.0,
        0.0,
        0.0,
    ]
)
ERROR_ORDER = 5  # the estimate U_8 is O(h^5): step factors use its 5th root
SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 6.0
MIN_RELATIVE_STEP = 1e-12  # a step below this fraction of the span is an underflow


class StepFailure(RuntimeError):
    """The step size underflowed or the step budget ran out.

    ``t``: the time reached; ``h``: the step size last tried; ``reason``: why.
    """

    def __init__(self, reason: str, t: float, h: float):
        super().__init__(f"{reason} at t={t:.6g} (step size {h:.3g})")
        self.reason, self.t, self.h = reason, t, h


Func = Callable[[float, np.ndarray], np.ndarray]


@dataclass
class Trajectory:
    """The accepted steps of a solve, as the adjoint needs them.

    ``t (N,)`` where each step starts, ``h (N,)`` signed step sizes, ``y (N, B, n)`` the
    state each step starts from,
    ``stages (N, S, B, n)`` the increments ``U``, ``w_inv (N, B, n, n)`` the inverse of each
    step's ``W`` (None from the compiled kernels, which keep its LU factors instead),
    ``output_step (T,)`` how many steps precede each output time.
    """

    t: np.ndarray
    h: np.ndarray
    y: np.ndarray
    stages: np.ndarray
    w_inv: np.ndarray | None
    output_step: np.ndarray

    def stage_points(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Where each stage evaluates ``f``: ``(N, S, B, n)`` for steps ``start:stop``."""
        y = self.y[start:stop]
        u = self.stages[start:stop]
        return y[:, None] + np.einsum("ij,njbk->nibk", _A, u)


@dataclass
class Stats:
    """Work done by one solve: steps accepted and rejected, evaluations of ``f`` and of the
    Jacobian."""

    accepted: int = 0
    rejected: int = 0
    f_evals: int = 0
    jac_evals: int = 0
    history: list = field(default_factory=list)


def error_norm(
    err: np.ndarray, y: np.ndarray, y_new: np.ndarray, rtol: float, atol: float
) -> float:
    """Largest over the batch of the RMS over states of ``err / (atol + rtol max(|y|,
    |y_new|))`` (below 1: the step is accepted); inf where anything is not finite."""
    scale = atol + rtol * np.maximum(np.abs(y), np.abs(y_new))
    ratio = err / scale
    value = math.sqrt(float((ratio * ratio).sum(axis=-1).max()) / err.shape[-1])
    return value if math.isfinite(value) else math.inf


def initial_step(
    f: Callable[[np.ndarray], np.ndarray],
    y0: np.ndarray,
    f0: np.ndarray,
    rtol: float,
    atol: float,
    span: float,
) -> float:
    """First step by the heuristic of Hairer, Norsett & Wanner (Solving ODEs I, II.4): the
    explicit Euler change and the change of ``f`` stay below the tolerance; one evaluation."""
    scale = atol + rtol * np.abs(y0)

    def rms(x: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            return float(np.sqrt(np.mean((x / scale) ** 2, axis=-1)).max())

    d0, d1 = rms(y0), rms(f0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 or not math.isfinite(d1) else 0.01 * d0 / d1
    h0 = min(h0, span)
    d2 = rms(f(y0 + h0 * f0) - f0) / h0
    largest = max(d1, d2)
    if not math.isfinite(largest):
        return h0 * 1e-3
    h1 = max(1e-6, h0 * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** (1.0 / ERROR_ORDER)
    return min(100 * h0, h1, span)


def integrate(
    f: Func,
    value_and_jacobian: Callable[[float, np.ndarray], tuple[np.ndarray, np.ndarray]],
    y0: np.ndarray,
    times: np.ndarray,
    rtol: float,
    atol: float,
    max_steps: int,
    record: bool = False,
    time_derivative: Callable[[float, np.ndarray], np.ndarray | None] | None = None,
    stats: Stats | None = None,
) -> tuple[np.ndarray, Trajectory | None]:
    """Solution ``(T, B, n)`` of ``dy/dt = f(t, y)`` at ``times (T,)`` (strictly monotone)
    from ``y0 (B, n)``, and the accepted steps when ``record``.

    ``f(t, y)`` and ``value_and_jacobian(t, y) -> (f, df/dy (B, n, n))`` take ``y (B, n)``;
    ``time_derivative(t, y)`` gives ``df/dt (B, n)`` of a non-autonomous ``f`` (None or
    omitted: autonomous). Steps are clipped to land on every output time. Raises
    :class:`StepFailure` after ``max_steps`` attempted steps or when the step underflows.
    """
    with np.errstate(all="ignore"):  # inf/NaN reject a step; no warnings
        return _integrate(
            f,
            value_and_jacobian,
            y0,
            times,
            rtol,
            atol,
            max_steps,
            record,
            time_derivative,
            stats if stats is not None else Stats(),
        )


def _integrate(
    f, value_and_jacobian, y0, times, rtol, atol, max_steps, record, time_derivative, stats
):
    n_batch, n = y0.shape
    times = np.asarray(times, dtype=float)
    outputs = np.empty((len(times), n_batch, n))
    outputs[0] = y0
    rec_t: list[float] = []
    rec_h: list[float] = []
    rec_y: list[np.ndarray] = []
    rec_u: list[np.ndarray] = []
    rec_w: list[np.ndarray] = []
    output_step = np.zeros(len(times), dtype=np.intp)
    if len(times) < 2:
        return outputs, _trajectory(
            rec_t, rec_h, rec_y, rec_u, rec_w, output_step, n_batch, n
        ) if record else None
    span = abs(times[-1] - times[0])
    direction = 1.0 if times[-1] > times[0] else -1.0
    eye = np.eye(n)
    t, y = float(times[0]), y0
    f0, jac = value_and_jacobian(t, y)
    stats.f_evals += 1
    stats.jac_evals += 1
    dfdt = time_derivative(t, y) if time_derivative else None
    h = initial_step(lambda x: direction * f(t, x), y, direction * f0, rtol, atol, span)
    stats.f_evals += 1
    tiny = 4 * np.finfo(float).eps
    stages = np.empty((STAGES, n_batch, n))
    last_h = last_err = None  # the previous accepted step, for the predictive controller
    accepted = rejected_count = 0  # this solve's (``stats`` may add up several solves)
    rejected = False
    for k in range(1, len(times)):
        t_out = float(times[k])
        while direction * (t_out - t) > 0:
            if h < max(MIN_RELATIVE_STEP * span, tiny * abs(t)):
                raise StepFailure("step size underflow", t, h)
            if accepted + rejected_count >= max_steps:
                raise StepFailure(f"{max_steps} steps were not enough", t, h)
            remaining = abs(t_out - t)
            clipped = remaining <= 1.1 * h  # also stretches to avoid a sliver of a last step
            h_step = remaining if clipped else h
            hs = direction * h_step
            w_inv = _inverse(eye / (hs * GAMMA) - jac)
            y_new = _step(f, y, f0, hs, w_inv, stages, t, dfdt)
            stats.f_evals += STAGES - 1
            err = error_norm(stages[-1], y, y_new, rtol, atol)
            if err <= 1.0:
                stats.accepted += 1
                accepted += 1
                if record:
                    rec_t.append(t)
                    rec_h.append(hs)
                    rec_y.append(y)
                    rec_u.append(stages.copy())
                    rec_w.append(w_inv)
                t = t_out if clipped else t + hs
                y = y_new
                factor = _factor(err, h_step, last_h, last_err, rejected)
                h = max(h, h_step * factor) if clipped else h_step * factor
                last_h, last_err, rejected = h_step, max(err, 1e-4), False
                f0, jac = value_and_jacobian(t, y)
                stats.f_evals += 1
                stats.jac_evals += 1
                if time_derivative:
                    dfdt = time_derivative(t, y)
            else:
                stats.rejected += 1
                rejected_count += 1
                h = h_step * _factor(err, h_step, None, None, True)
                rejected = True
        outputs[k] = y
        output_step[k] = accepted
    traj = (
        _trajectory(rec_t, rec_h, rec_y, rec_u, rec_w, output_step, n_batch, n) if record else None
    )
    return outputs, traj


def _trajectory(rec_t, rec_h, rec_y, rec_u, rec_w, output_step, n_batch: int, n: int) -> Trajectory:
    if not rec_h:
        return Trajectory(
            np.zeros(0),
            np.zeros(0),
            np.zeros((0, n_batch, n)),
            np.zeros((0, STAGES, n_batch, n)),
            np.zeros((0, n_batch, n, n)),
            output_step,
        )
    return Trajectory(
        np.array(rec_t),
        np.array(rec_h),
        np.stack(rec_y),
        np.stack(rec_u),
        np.stack(rec_w),
        output_step,
    )


def _inverse(w: np.ndarray) -> np.ndarray:
    """``W^-1`` per row; NaN for a singular (or non-finite) ``W``, which rejects the step."""
    try:
        return np.linalg.inv(w)
    except np.linalg.LinAlgError:
        out = np.full(w.shape, np.nan)
        for b in range(w.shape[0]):
            try:
                out[b] = np.linalg.inv(w[b])
            except np.linalg.LinAlgError:
                pass
        return out


def _combine(coef: np.ndarray, stages: np.ndarray) -> np.ndarray:
    """``sum_j coef[j] stages[j]`` for stages ``(j, B, n)``: one matrix product (tensordot's
    bookkeeping costs more than the arithmetic at these sizes)."""
    return (coef @ stages.reshape(len(coef), -1)).reshape(stages.shape[1:])


def _step(
    f: Func,
    y: np.ndarray,
    f0: np.ndarray,
    h: float,
    w_inv: np.ndarray,
    stages: np.ndarray,
    t: float,
    dfdt: np.ndarray | None,
) -> np.ndarray:
    """One Rodas5P step of signed size ``h``: fills ``stages (S, B, n)``, returns ``y_new``."""
    for i in range(STAGES):
        if i == 0:
            rhs = f0
        else:
            point = y + _combine(_A[i, :i], stages[:i])
            rhs = f(t + _STAGE_TIME[i] * h, point)
            rhs = rhs + _combine(_C[i, :i] / h, stages[:i])
        if dfdt is not None and _D[i]:
            rhs = rhs + (_D[i] * h) * dfdt
        stages[i] = (w_inv @ rhs[..., None])[..., 0]
    return y + _combine(_M, stages)


def _factor(
    err: float, h: float, last_h: float | None, last_err: float | None, rejected: bool
) -> float:
    """Step factor from the error norm: the elementary controller, tempered by Gustafsson's
    predictive one after an accepted step (fewer rejections where the error grows), never
    growing right after a rejection."""
    if not math.isfinite(err):
        return MIN_FACTOR
    err = max(err, 1e-10)
    factor = SAFETY * err ** (-1.0 / ERROR_ORDER)
    if last_h is not None and err <= 1.0:
        factor = min(factor, factor * (h / last_h) * (last_err / err) ** (1.0 / ERROR_ORDER))
    if rejected:
        factor = min(factor, 1.0)
    return min(max(factor, MIN_FACTOR), MAX_FACTOR)


def adjoint(
    traj: Trajectory,
    grad_outputs: np.ndarray,
    jacobian: Callable[[np.ndarray], np.ndarray],
    hessian_values: Callable[[np.ndarray], np.ndarray],
    directional_hessian: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact reverse pass of the accepted steps of an autonomous solve.

    ``grad_outputs (T, B, n)``: the cotangents of the outputs. Returns the cotangent of
    ``y0 (B, n)`` and ``omega (N, S, B, n)``, the cotangent of each stage's right-hand side
    ``f(Y_ni) + ...`` (before the solve with ``W``): the parameters' gradient is
    ``sum_ni omega_ni . df/dp(Y_ni) + sum_ni omega_ni . (dJ/dp(y_n) U_ni)``.

    The derivatives of ``f`` are supplied for any leading shape ``(..., B, n)``:
    ``jacobian`` at the stage points, ``hessian_values`` (whatever
    ``directional_hessian(y_n, values_n, omega_n, U_n)`` needs) at the steps' starts, and
    ``directional_hessian -> sum_i d/dy [omega_i . (df/dy(y_n) U_i)] (B, n)``, the
    derivative of the Jacobian inside each step's ``W``. Steps are processed in blocks of
    ``block`` to bound the memory of the stage Jacobians.
    """
    n_steps = len(traj.h)
    n_batch, n = grad_outputs.shape[1:]
    inject = np.zeros((n_steps + 1, n_batch, n))
    np.add.at(inject, traj.output_step, grad_outputs)
    omega = np.empty((n_steps, STAGES, n_batch, n))
    lam = np.zeros((n_batch, n))
    w_inv_t = np.swapaxes(traj.w_inv, -1, -2)
    c_col = [_C[i + 1 :, i] for i in range(STAGES)]
    a_col = [_A[i + 1 :, i] for i in range(STAGES)]
    for stop in range(n_steps, 0, -block):
        start = max(0, stop - block)
        jac_t = np.swapaxes(jacobian(traj.stage_points(start, stop)), -1, -2)
        second = hessian_values(traj.y[start:stop])
        for step in range(stop - 1, start - 1, -1):
            j = step - start
            lam = lam + inject[step + 1]
            h = traj.h[step]
            w = omega[step]
            nu = np.empty((STAGES, n_batch, n))
            acc = lam.copy()
            for i in range(STAGES - 1, -1, -1):
                mu = _M[i] * lam
                if i < STAGES - 1:
                    mu = mu + _combine(c_col[i] / h, w[i + 1 :]) + _combine(a_col[i], nu[i + 1 :])
                w[i] = (w_inv_t[step] @ mu[..., None])[..., 0]
                nu[i] = (jac_t[j, i] @ w[i][..., None])[..., 0]
                acc += nu[i]
            acc += directional_hessian(traj.y[step], second[j], w, traj.stages[step])
            lam = acc
    return lam + inject[0], omega
