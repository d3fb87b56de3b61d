"""Rosenbrock23: an adaptive, L-stable, linearly implicit solver for stiff kinetics.

The method is the modified Rosenbrock (W-) formula of MATLAB's ``ode23s`` (Shampine & Reichelt
1997, "The MATLAB ODE suite", SIAM J. Sci. Comput. 18:1-22): one step from ``(t, y)`` with
``W = I - h d J``, ``d = 1/(2 + sqrt(2))``, ``J ~ df/dy`` and ``T ~ df/dt`` at ``(t, y)``::

    F0 = f(t, y)                           k1 = W^-1 (F0 + h d T)
    F1 = f(t + h/2, y + h/2 k1)            k2 = W^-1 (F1 - k1) + k1
    y1 = y + h k2                          F2 = f(t + h, y1)
    k3 = W^-1 (F2 - e32 (k2 - F1) - 2 (k1 - F0) + h d T),   e32 = 6 + sqrt(2)
    error ~ h/6 (k1 - 2 k2 + k3)

``y1`` is second order and L-stable; the error estimate is third order. ``F2`` is the next
step's ``F0``, so a step costs two evaluations of ``f`` plus one Jacobian.

Jacobian treatment: ``J`` and ``T`` are computed by autograd at each accepted point but
*detached* from the graph (they enter only ``W``). The second-order formula is a W-method: it
keeps its order for any approximation of ``J`` (with ``J = 0`` it is the explicit midpoint
rule), so the solution stays consistent, and backpropagation (plain autograd through the
steps, discretize-then-optimize) differentiates the ``f`` evaluations only. That is a
second-order discretization of the sensitivity equations, and it avoids second derivatives
(``create_graph``) that would multiply the cost of the backward pass by the state dimension.

Rows of the batch are independent conditions: ``f``'s row ``b`` depends on ``y``'s row ``b``
only. One step size is shared by the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

D = 1.0 / (2.0 + math.sqrt(2.0))
E32 = 6.0 + math.sqrt(2.0)
SAFETY = 0.9  # the controller aims a little below the tolerance to avoid rejections
MIN_FACTOR = 0.2  # largest shrink of the step per attempt
MAX_FACTOR = 5.0  # largest growth of the step per accepted step
ERROR_EXPONENT = 1.0 / 3.0  # the local error estimate is O(h^3)
MIN_RELATIVE_STEP = 1e-12  # a step below this fraction of the span is an underflow


class StiffSolverFailed(RuntimeError):
    """Step-size underflow or too many steps: the dynamics blew up or are too hard.
    ``t``: the time reached, ``h``: the step size last tried, ``reason``: which."""

    def __init__(self, reason: str, t: float, h: float):
        super().__init__(f"{reason} at t={t:.6g} (step size {h:.3g})")
        self.reason, self.t, self.h = reason, t, h


def jacobian(
    func: Func, t: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``df/dy (batch, state, state)`` per row and ``df/dt (batch, state)``, detached.

    ``df/dt`` is None when ``f`` does not use ``t`` (an autonomous system, as every spec is),
    which saves the forward-mode pass. The Jacobian takes one forward and one batched
    backward pass: cotangent ``e_i`` on every row at once gives row ``i`` of each row's
    Jacobian, because rows do not interact.
    """
    n_batch, n = y.shape
    with torch.enable_grad():
        y_ = y.detach().requires_grad_(True)
        t_ = t.detach().requires_grad_(True)
        out = func(t_, y_)
        if not out.requires_grad:  # f is constant: a zero Jacobian
            return y.new_zeros(n_batch, n, n), None
        basis = torch.eye(n, dtype=y.dtype, device=y.device)[:, None, :].expand(n, n_batch, n)
        dfdy, dfdt = torch.autograd.grad(
            out, (y_, t_), basis, is_grads_batched=True, allow_unused=True
        )
    jac = dfdy.transpose(0, 1) if dfdy is not None else y.new_zeros(n_batch, n, n)
    if dfdt is None:
        return jac, None
    return jac, _time_derivative(func, t, y)


def _time_derivative(func: Func, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``df/dt (batch, state)`` at ``(t, y)`` by one forward-mode pass, detached."""
    with torch.no_grad():
        _, dfdt = torch.func.jvp(
            lambda s: func(s, y.detach()), (t.detach(),), (torch.ones_like(t),)
        )
    return dfdt


def error_norm(
    err: torch.Tensor, y: torch.Tensor, y_new: torch.Tensor, rtol: float, atol: float
) -> torch.Tensor:
    """Largest over the batch of the RMS over states of ``err / (atol + rtol max(|y|, |y_new|))``
    (a 0-d tensor; below 1 the step is accepted)."""
    scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
    return (err / scale).pow(2).mean(dim=-1).sqrt().max()


def _rms_max(x: torch.Tensor, scale: torch.Tensor) -> float:
    return float((x / scale).pow(2).mean(dim=-1).sqrt().max())


def initial_step(
    func: Func,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    rtol: float,
    atol: float,
    span: float,
) -> float:
    """First step size by the heuristic of Hairer, Norsett & Wanner (Solving ODEs I, II.4):
    a step that keeps the explicit Euler change and the change of ``f`` below the
    tolerance; one extra evaluation of ``f``."""
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0, d1 = _rms_max(y0, scale), _rms_max(f0, scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        t1 = torch.as_tensor(t0 + h0, dtype=y0.dtype, device=y0.device)
        f1 = func(t1, y0 + h0 * f0)
        d2 = _rms_max(f1 - f0, scale) / h0
    largest = max(d1, d2)
    if not math.isfinite(largest):
        return h0 * 1e-3
    h1 = max(1e-6, h0 * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** ERROR_EXPONENT
    return min(100 * h0, h1, span)


def rosenbrock_step(
    func: Func,
    t: float,
    h: float,
    y: torch.Tensor,
    f0: torch.Tensor,
    jac: torch.Tensor,
    dfdt: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ode23s step of size ``h`` from ``(t, y (batch, state))`` with ``f0 = f(t, y)``:
    ``(y_new, f(t + h, y_new), error estimate)``, all ``(batch, state)``.

    ``W`` is factorized once for the three solves; the error estimate is computed without
    a graph since it only steers the step size.
    """
    n = y.shape[-1]
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    lu, pivots, _ = torch.linalg.lu_factor_ex(eye - (h * D) * jac)

    def solve(b: torch.Tensor) -> torch.Tensor:
        return torch.linalg.lu_solve(lu, pivots, b.unsqueeze(-1)).squeeze(-1)

    as_time = y.new_tensor
    hdt = 0.0 if dfdt is None else (h * D) * dfdt
    k1 = solve(f0 + hdt)
    f1 = func(as_time(t + 0.5 * h), y + (0.5 * h) * k1)
    k2 = solve(f1 - k1) + k1
    y_new = y + h * k2
    f2 = func(as_time(t + h), y_new)
    with torch.no_grad():
        k3 = solve(f2 - E32 * (k2 - f1) - 2.0 * (k1 - f0) + hdt)
        err = (h / 6.0) * (k1 - 2.0 * k2 + k3)
    return y_new, f2, err


def _step_factor(error: float, accepted: bool) -> float:
    """Factor of the next step from the error norm of this one (non-finite: the smallest)."""
    if not math.isfinite(error):
        return MIN_FACTOR
    if error == 0.0:
        return MAX_FACTOR
    factor = SAFETY * error ** (-ERROR_EXPONENT)
    return min(max(factor, MIN_FACTOR), MAX_FACTOR if accepted else 1.0)


def _next_step(h: float, h_step: float, error: float, accepted: bool) -> float:
    """The step to try next, after a step of ``h_step`` (``h`` clipped to an output time)
    with error norm ``error``. After an accepted step the error is extrapolated to ``h``
    (``O(h^3)``), so that a short step onto an output time does not shrink the next one."""
    if not accepted:
        return h_step * _step_factor(error, accepted=False)
    return h * _step_factor(error * (h / h_step) ** 3, accepted=True)


def rosenbrock23(
    func: Func,
    y0: torch.Tensor,
    t: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_steps: int = 5_000,
) -> torch.Tensor:
    """Solution ``(time, batch, state)`` of ``dy/dt = func(t, y)`` at the times ``t (time,)``
    (strictly increasing or decreasing) from ``y0 (batch, state)``.

    Steps are clipped to land on each output time. Raises :class:`StiffSolverFailed` after
    ``max_steps`` attempted (accepted + rejected) steps, or when the step falls below
    ``1e-12`` of the span (e.g. a blow-up, or values that stay non-finite).
    """
    times = [float(s) for s in t.tolist()]
    outputs = [y0]
    if len(times) < 2:
        return torch.stack(outputs)
    span = abs(times[-1] - times[0])
    direction = 1.0 if times[-1] > times[0] else -1.0
    eps = torch.finfo(y0.dtype).eps
    t_cur, y = times[0], y0
    f0 = func(y.new_tensor(t_cur), y)
    h = initial_step(
        lambda s, x: direction * func(s, x), t_cur, y, direction * f0, rtol, atol, span
    )
    jac, dfdt = None, None
    n_steps, last_error = 0, 0.0
    for t_out in times[1:]:
        while direction * (t_out - t_cur) > 0:
            if h < max(MIN_RELATIVE_STEP * span, 4 * eps * abs(t_cur)):
                why = " (non-finite values)" if not math.isfinite(last_error) else ""
                raise StiffSolverFailed(f"step size underflow{why}", t_cur, h)
            n_steps += 1
            if n_steps > max_steps:
                raise StiffSolverFailed(f"{max_steps} steps were not enough", t_cur, h)
            if jac is None:
                jac, dfdt = jacobian(func, y.new_tensor(t_cur), y)
            remaining = abs(t_out - t_cur)
            clipped = remaining <= 1.1 * h  # also stretches to avoid a sliver of a last step
            h_step = remaining if clipped else h
            y_new, f_new, err = rosenbrock_step(func, t_cur, direction * h_step, y, f0, jac, dfdt)
            last_error = error_norm(err, y, y_new, rtol, atol).item()
            accepted = last_error <= 1.0
            if accepted:
                t_cur = t_out if clipped else t_cur + direction * h_step
                y, f0, jac = y_new, f_new, None
            h = _next_step(h, h_step, last_error, accepted)
        outputs.append(y)
    return torch.stack(outputs)
