"""Rodas5P solves (:mod:`ude.model.rodas`) as differentiable torch operations.

Two paths:

- **A HybridODE** (anything with ``numeric_rhs()``): the solve and the exact adjoint of its
  accepted steps run compiled (:mod:`ude.model.rodas_kernels`), the known terms as the spec's
  tapes and the networks as :mod:`ude.model.network_kernels` arrays, with no autograd graph:
  the gradients of the initial states, the context (inputs, parameter values) and the
  networks' weights all come from the kernels. With ``compiled=False`` the same steps run in
  numpy on the frozen right-hand side (:class:`~ude.model.numeric_rhs.NumericRHS`), the
  backward pass is the numpy adjoint and one batched torch vector-Jacobian product over all
  stage evaluations for the parameters. A division by zero gives inf or NaN in both. An
  ensemble (:class:`~ude.model.ensemble.HybridEnsemble`) solves each row with its member's
  networks in the kernels, or takes the generic path.
- **Any other** ``f(t, y)``: the same integrator evaluates ``f`` and its Jacobian (autograd)
  through torch without a graph; when a gradient is wanted the accepted steps are replayed
  with a graph (their sizes fixed), the Jacobian differentiated too.

A second derivative through a solve (``create_graph``, e.g. a Laplace approximation's Hessian)
replays the accepted steps with a graph in both paths. Inside :func:`differentiable_twice` a
HybridODE solve returns that replay itself (no custom autograd Function): its Hessian can then
be taken in one vectorised backward pass, which the Function's numpy backward does not allow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ude.model import network_kernels, rodas, rodas_kernels, stiff
from ude.model.numeric_rhs import Members, NumericRHS

Tensor = torch.Tensor
Func = Callable[[Tensor, Tensor], Tensor]


class RodasFailed(RuntimeError):
    """A Rodas5P solve stopped: ``t`` reached, step size ``h``, and why."""

    def __init__(self, failure: rodas.StepFailure):
        super().__init__(str(failure))
        self.t, self.h, self.reason = failure.t, failure.h, failure.reason


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


_TWICE = False


@contextmanager
def differentiable_twice() -> Iterator[None]:
    """HybridODE solves (with grad enabled) inside it return the replay of their accepted
    steps as a plain torch graph: the same values, differentiable any number of times, and
    vectorisable (``is_grads_batched``). Slower than the adjoint for one gradient."""
    global _TWICE
    before, _TWICE = _TWICE, True
    try:
        yield
    finally:
        _TWICE = before


def solve(
    func: Func,
    y0: Tensor,
    t: Tensor,
    rtol: float,
    atol: float,
    max_steps: int,
    stats: rodas.Stats | None = None,
    compiled: bool = True,
    shared_steps: bool = False,
) -> Tensor:
    """Solution ``(time, batch, state)`` of ``dy/dt = func(t, y)`` at ``t (time,)`` from
    ``y0 (batch, state)``; differentiable in ``y0`` and in what ``func`` depends on.
    ``compiled``: solve with the compiled kernels where they run the model (False: always
    numpy). The kernels step each condition (batch row) alone with its own
    step size (:func:`ude.model.rodas_kernels.integrate_each`), unless ``shared_steps``:
    then one step size for all, the numpy path's steps (the two agree to rounding). The
    numpy path always shares the step: its cost is per call, not per row.
    Raises :class:`RodasFailed`."""
    system = func.numeric_rhs() if hasattr(func, "numeric_rhs") else None
    if system is not None and system.members is not None:  # an ensemble: compiled or generic
        problem = _Problem(system.torch_rhs, system.rhs, t, rtol, atol, max_steps, stats)
        own_steps = not shared_steps and _plan() is None
        if compiled and own_steps and not (_TWICE and torch.is_grad_enabled()):
            problem.compile_members(system.members)
            return _HybridSolve.apply(problem, y0, system.context, *system.params)
        system = None
    if system is not None:
        problem = _Problem(system.torch_rhs, system.rhs, t, rtol, atol, max_steps, stats)
        problem.shared_steps = shared_steps
        if compiled:
            problem.compile()
        if problem.tapes is None and _plan() is not None:
            _plan().exact = False
        if _TWICE and torch.is_grad_enabled():  # the replay follows one shared step
            problem.integrate(_numpy(y0), record=True, shared=True)
            return _replayed(problem, y0, system.context)
        return _HybridSolve.apply(problem, y0, system.context, *system.params)
    if _plan() is not None:
        _plan().exact = False
    return _generic(func, y0, t, rtol, atol, max_steps, stats)


def solve_reached(
    system, y0: np.ndarray, times: np.ndarray, rtol: float, atol: float, max_steps: int
) -> np.ndarray | None:
    """States ``(time, batch, state)`` of a compiled Rodas5P solve of ``system`` (a
    :class:`~ude.model.numeric_rhs.NumericSystem` without networks) from ``y0 (batch,
    state)``, as far as the solve got: NaN at the output times it did not reach (no error).
    None where the kernels cannot run it (networks)."""
    if system is None or system.rhs.networks:
        return None
    times = np.ascontiguousarray(times, dtype=float)
    result = rodas_kernels.integrate(
        np.ascontiguousarray(y0, dtype=float),
        times,
        np.ascontiguousarray(system.rhs.context),
        *rodas_kernels.tapes(system.rhs.derivatives),
        float(rtol),
        float(atol),
        int(max_steps),
        False,
    )
    out, status, reached = result[0], result[8], result[9]
    if status != rodas_kernels.OK:
        direction = 1.0 if times[-1] >= times[0] else -1.0
        out[direction * (times - reached) > 0] = np.nan  # outputs it never wrote
    return out


class StepPlan:
    """The accepted steps of the compiled solves of one evaluation, in call order, taken again
    by the evaluations after :meth:`replay`: at nearby parameters the same discrete map, so
    that differences of gradients are smooth (no step-size control switching between them).
    ``exact``: False once a solve inside took a path that does not replay (numpy, networks,
    another output grid, more solves than recorded).

    ``each``: a solve of several conditions keeps each condition's own steps (as the solves
    outside a plan take them) and replays each on its own; a step (``steps``' second and third
    items) is then a list with one entry per condition. Otherwise all conditions share one
    step, the smallest any needs (the union of their steps)."""

    def __init__(self, each: bool = False) -> None:
        self.steps: list[tuple[np.ndarray, Any, Any]] = []
        self.cursor: int | None = None
        self.exact = True
        self.each = each

    def replay(self) -> None:
        """The next solves take the recorded steps, from the first."""
        self.cursor = 0

    def next_steps(self, times: np.ndarray, conditions: int | None = None) -> tuple | None:
        """The recorded steps of the next solve, or None (and ``exact`` False) where they do
        not fit it (``conditions``: a solve of that many conditions on their own steps;
        None: one shared step)."""
        if self.cursor is None or self.cursor >= len(self.steps):
            self.exact = False
            return None
        recorded, h, output_step = self.steps[self.cursor]
        self.cursor += 1
        own = isinstance(h, list)
        fits = own == (conditions is not None) and (not own or len(h) == conditions)
        if not fits or recorded.shape != times.shape or not np.array_equal(recorded, times):
            self.exact = False
            return None
        return h, output_step


_THREAD = threading.local()
"""This thread's :class:`StepPlan` (``plan``): the selection refits twins in threads, and one
refit's plan must not fix another's steps."""


def _plan() -> StepPlan | None:
    return getattr(_THREAD, "plan", None)


@contextmanager
def fixed_steps(each: bool = False) -> Iterator[StepPlan]:
    """Compiled Rodas5P solves inside record their accepted steps; after ``plan.replay()``
    the following solves take those steps again instead of choosing their own (``each``:
    each condition its own, :class:`StepPlan`)."""
    before = _plan()
    _THREAD.plan = plan = StepPlan(each)
    try:
        yield plan
    finally:
        _THREAD.plan = before


class _Problem:
    """What a HybridODE solve carries from its forward pass to its backward pass."""

    def __init__(self, torch_rhs, rhs: NumericRHS, t, rtol, atol, max_steps, stats):
        self.torch_rhs, self.rhs, self.t = torch_rhs, rhs, t
        self.rtol, self.atol, self.max_steps = rtol, atol, max_steps
        self.stats = stats
        self.trajectory: rodas.Trajectory | None = None
        # the compiled kernels' tapes (None: numpy) and their record of the accepted steps:
        # one for a shared step, else one per condition
        self.tapes: tuple | None = None
        self.shared_steps = False
        self.record: tuple | None = None
        self.records: list[tuple] | None = None
        self.net_code: network_kernels.NetCode | None = None
        # an ensemble's: each member's networks, and each row's tapes (members, member-major)
        self.members: Members | None = None
        self.member_codes: list[network_kernels.NetCode] | None = None
        self.row_tapes: list[tuple] | None = None

    def compile(self) -> None:
        """Solve with the compiled kernels (:attr:`tapes`), the networks included."""
        tapes = rodas_kernels.tapes(self.rhs.derivatives)
        if self.rhs.networks:
            self.net_code = network_kernels.encode(self.rhs.networks)
            tapes = (*tapes[:4], self.net_code.arrays)
        self.tapes = tapes

    def compile_members(self, members: Members) -> None:
        """Each row solved in the kernels with its member's networks."""
        codes = [network_kernels.encode(nets) for nets in members.networks]
        known = rodas_kernels.tapes(self.rhs.derivatives)[:4]
        rows = self.rhs.context.shape[0]
        self.members, self.member_codes = members, codes
        per = members.rows_per_member
        self.row_tapes = [(*known, codes[b // per].arrays) for b in range(rows)]
        self.tapes = self.row_tapes[0]

    def integrate(self, y0: np.ndarray, record: bool, shared: bool = False) -> np.ndarray:
        """The states at ``t`` from ``y0``; ``record``: keep the accepted steps for the
        backward pass; ``shared``: one step size for all conditions (a replay needs it)."""
        if self.tapes is not None:
            return self._integrate_compiled(y0, record, shared or self.shared_steps)
        rhs = self.rhs
        try:
            out, self.trajectory = rodas.integrate(
                lambda _t, y: rhs(y),
                lambda _t, y: rhs.value_and_jacobian(y),
                y0,
                _numpy(self.t),
                self.rtol,
                self.atol,
                self.max_steps,
                record=record,
                stats=self.stats,
            )
        except rodas.StepFailure as failure:
            raise RodasFailed(failure) from None
        return out

    def _integrate_compiled(self, y0: np.ndarray, record: bool, shared: bool) -> np.ndarray:
        y0 = np.ascontiguousarray(y0)  # one compiled version for all calls
        times = np.ascontiguousarray(_numpy(self.t))
        context = np.ascontiguousarray(self.rhs.context)
        plan = _plan()
        self.record = self.records = self.trajectory = None
        if self.row_tapes is not None or (plan is None and not shared and y0.shape[0] > 1):
            return self._integrate_each(y0, times, context, record)
        if plan is not None and plan.each and not shared and y0.shape[0] > 1:
            return self._integrate_each_planned(y0, times, context, record, plan)
        fixed = None if plan is None or plan.cursor is None else plan.next_steps(times)
        if fixed is not None:
            result = rodas_kernels.replay(y0, times, context, *self.tapes, *fixed)
            record = True
        else:
            record = record or plan is not None
            result = rodas_kernels.integrate(
                y0,
                times,
                context,
                *self.tapes,
                float(self.rtol),
                float(self.atol),
                int(self.max_steps),
                bool(record),
            )
        out, t, h, y, u, lu, piv, output_step, status, t_reached, h_last, counts = result
        if plan is not None and plan.cursor is None and status == rodas_kernels.OK:
            plan.steps.append((times, h, output_step))
        self._count_and_check(counts, status, t_reached, h_last)
        if record:
            self.record = (h, y, u, lu, piv, output_step)
            # what a replay (create_graph) needs; its W is refactored there
            self.trajectory = rodas.Trajectory(t, h, y, u, None, output_step)
        return out

    def _integrate_each(self, y0, times, context, record: bool) -> np.ndarray:
        row_tapes = self.row_tapes or [self.tapes] * y0.shape[0]
        results = rodas_kernels.integrate_rows(
            y0, times, context, row_tapes, float(self.rtol), float(self.atol),
            int(self.max_steps), bool(record),
        )  # fmt: skip
        last = results[-1]
        self._count_and_check(sum(r[11] for r in results), last[8], last[9], last[10])
        if record:
            self.records = [r[2:8] for r in results]
        return np.concatenate([r[0] for r in results], axis=1)

    def _integrate_each_planned(self, y0, times, context, record: bool, plan) -> np.ndarray:
        """:meth:`_integrate_each` under a plan that keeps each condition's steps: recorded
        before ``plan.replay()``, replayed condition by condition after it."""
        fixed = None if plan.cursor is None else plan.next_steps(times, y0.shape[0])
        if fixed is None:
            out = self._integrate_each(y0, times, context, True)
            if plan.cursor is None and self.records is not None:
                plan.steps.append(
                    (times, [r[0] for r in self.records], [r[5] for r in self.records])
                )
            return out
        results = []
        for b, (h, output_step) in enumerate(zip(*fixed, strict=True)):
            results.append(
                rodas_kernels.replay(
                    np.ascontiguousarray(y0[b : b + 1]),
                    times,
                    np.ascontiguousarray(context[b : b + 1]),
                    *self.tapes,
                    h,
                    output_step,
                )
            )
        self._count_and_check(sum(r[11] for r in results), rodas_kernels.OK, 0.0, 0.0)
        self.records = [r[2:8] for r in results]
        return np.concatenate([r[0] for r in results], axis=1)

    def _count_and_check(self, counts, status: int, t_reached: float, h_last: float) -> None:
        if self.stats is not None:
            self.stats.accepted += int(counts[0])
            self.stats.rejected += int(counts[1])
            self.stats.f_evals += int(counts[2])
            self.stats.jac_evals += int(counts[3])
        try:
            rodas_kernels.raise_failure(status, t_reached, h_last, self.max_steps)
        except rodas.StepFailure as failure:
            raise RodasFailed(failure) from None

    def adjoint_compiled(self, grad_out: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cotangents of ``y0 (B, n)``, of the context ``(B, c)`` and of the networks' folded
        weights by the kernels."""
        if self.row_tapes is not None:  # an ensemble: each row's weights apart
            return rodas_kernels.adjoint_rows(
                grad_out, self.records, np.ascontiguousarray(self.rhs.context), self.row_tapes
            )
        if self.records is not None:
            return rodas_kernels.adjoint_each(
                grad_out, self.records, np.ascontiguousarray(self.rhs.context), *self.tapes
            )
        return rodas_kernels.adjoint(
            np.ascontiguousarray(grad_out),
            *self.record,
            np.ascontiguousarray(self.rhs.context),
            *self.tapes,
        )


class _HybridSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem: _Problem, y0: Tensor, context: Tensor, *params: Tensor) -> Tensor:
        record = any(ctx.needs_input_grad[1:])
        out = problem.integrate(_numpy(y0), record)
        ctx.problem = problem
        ctx.save_for_backward(y0, context, *params)
        return torch.as_tensor(out, dtype=y0.dtype, device=y0.device)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        problem: _Problem = ctx.problem
        y0, context, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that is itself differentiable
            if problem.members is not None:
                raise RuntimeError(
                    "an ensemble's compiled rodas5p solve is differentiable once: take second "
                    "derivatives inside rodas_autograd.differentiable_twice() (the generic path)"
                )
            return (None, *_replay_grads(problem, y0, context, params, grad_out, ctx))
        if problem.tapes is not None:
            return _compiled_grads(problem, context, params, grad_out, ctx.needs_input_grad)
        traj = problem.trajectory
        rhs = problem.rhs
        grad_y0, omega = rodas.adjoint(
            traj,
            _numpy(grad_out),
            rhs.jacobian,
            rhs.hessian_values,
            rhs.directional_hessian,
        )
        grads = _parameter_grads(problem, traj, omega, context, params, ctx.needs_input_grad[2:])
        out_y0 = torch.as_tensor(grad_y0, dtype=y0.dtype, device=y0.device)
        return (None, out_y0 if ctx.needs_input_grad[1] else None, *grads)


def _compiled_grads(problem: _Problem, context, params, grad_out, needed) -> tuple:
    """The backward pass in the compiled kernels (a division by zero in them gives inf/NaN,
    as numpy's adjoint does)."""
    grad_y0, grad_ctx, grad_w = problem.adjoint_compiled(_numpy(grad_out))
    if problem.members is not None:
        grads = _member_grads(problem, grad_w, params, needed[3:])
    elif problem.net_code is None:
        grads = [
            torch.zeros_like(p) if need else None
            for p, need in zip(params, needed[3:], strict=True)
        ]
    else:
        grads = network_kernels.torch_param_grads(problem.net_code, grad_w, params, needed[3:])
    return (
        None,
        torch.as_tensor(grad_y0, dtype=grad_out.dtype, device=grad_out.device)
        if needed[1]
        else None,
        torch.as_tensor(grad_ctx, dtype=context.dtype, device=context.device)
        if needed[2]
        else None,
        *grads,
    )


def _member_grads(problem: _Problem, row_grads: list, params, needed) -> list:
    """An ensemble's stacked network parameters' gradients ``(member, ...)`` from each row's
    folded weights' cotangent (rows member-major)."""
    per = problem.members.rows_per_member
    out = [torch.zeros_like(p) if need else None for p, need in zip(params, needed, strict=True)]
    where = {id(p): i for i, p in enumerate(params)}
    for m, (code, pairs) in enumerate(
        zip(problem.member_codes, problem.members.slices, strict=True)
    ):
        rows = row_grads[m * per : (m + 1) * per]
        if not rows:
            continue
        by_id = code.unfold(np.sum(rows, axis=0))
        for stacked, piece in pairs:
            i = where.get(id(stacked))
            if i is not None and out[i] is not None:
                g = torch.as_tensor(by_id[id(piece)], dtype=stacked.dtype, device=stacked.device)
                out[i][m] = g.reshape(piece.shape)
    return out


def _parameter_grads(
    problem: _Problem,
    traj: rodas.Trajectory,
    omega: np.ndarray,
    context: Tensor,
    params: list[Tensor],
    needed: tuple[bool, ...],
) -> list[Tensor | None]:
    """Gradients of the context ``(B, c)`` and the networks' parameters: one batched torch
    pass over every stage evaluation of the accepted steps (``omega . f(Y)``) and over the
    Jacobians inside their ``W`` (``omega . J(y_n) U``, by double backward)."""
    wanted = [x for x, need in zip([context, *params], needed, strict=True) if need]
    if not wanted or not len(traj.h):
        return [
            torch.zeros_like(x) if need else None
            for x, need in zip([context, *params], needed, strict=True)
        ]
    dtype, device = context.dtype, context.device
    n_steps, n_stages, n_batch, n = omega.shape
    as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device).reshape(-1, n)  # noqa: E731
    with torch.enable_grad():
        leaf = context.detach().requires_grad_(needed[0])
        rows = leaf.expand(n_steps * n_stages, n_batch, -1).reshape(-1, leaf.shape[-1])
        w = as_t(omega)
        points = as_t(traj.stage_points())
        total = (problem.torch_rhs(points, rows) * w).sum()
        starts = as_t(np.repeat(traj.y[:, None], n_stages, axis=1)).requires_grad_(True)
        f_start = problem.torch_rhs(starts, rows)
        (jt_w,) = torch.autograd.grad(
            (f_start * w).sum(), starts, create_graph=True, allow_unused=True
        )
        if jt_w is not None:  # None: f does not depend on the states
            total = total + (jt_w * as_t(traj.stages)).sum()
        inputs = [leaf, *params]
        take = [x for x, need in zip(inputs, needed, strict=True) if need]
        got = iter(torch.autograd.grad(total, take, allow_unused=True))
    out = []
    for x, need in zip(inputs, needed, strict=True):
        g = next(got) if need else None
        out.append(torch.zeros_like(x) if need and g is None else g)
    return out


def _replay_grads(problem: _Problem, y0, context, params, grad_out, ctx) -> list:
    """Gradients by replaying the accepted steps with a graph (their sizes fixed): slow, and
    differentiable again."""
    if problem.trajectory is None:  # forward ran without recording, or per condition
        problem.integrate(_numpy(y0), record=True, shared=True)
    out = _replayed(problem, y0, context)
    inputs = [y0, context, *params]
    take = [x for x, need in zip(inputs, ctx.needs_input_grad[1:], strict=True) if need]
    got = iter(torch.autograd.grad(out, take, grad_out, create_graph=True, allow_unused=True))
    return [next(got) if need else None for need in ctx.needs_input_grad[1:]]


def _replayed(problem: _Problem, y0: Tensor, context: Tensor) -> Tensor:
    """The recorded solve of ``problem`` replayed through its accepted steps with a graph."""

    def func(_t: Tensor, y: Tensor) -> Tensor:
        return problem.torch_rhs(y, context)

    jacobian = None
    if not problem.rhs.networks:  # a twin: its compiled Jacobian, differentiable as it is
        derivatives = problem.rhs.derivatives

        def jacobian(_t: Tensor, y: Tensor) -> Tensor:
            return derivatives.jacobian_torch(torch.cat([y, context], dim=-1))

    return _replay(func, y0, problem.trajectory, jacobian=jacobian)


# -- the generic path ------------------------------------------------------------------------
def _jacobian(func: Func, t: Tensor, y: Tensor, create_graph: bool = False) -> Tensor:
    """``df/dy (batch, state, state)`` by autograd, rows independent: cotangent ``e_i`` on
    every row at once gives row ``i`` of each row's Jacobian."""
    n_batch, n = y.shape
    with torch.enable_grad():
        y_ = y if create_graph else y.detach()
        y_ = y_.requires_grad_(True) if not y_.requires_grad else y_
        out = func(t, y_)
        if not out.requires_grad:
            return y.new_zeros(n_batch, n, n)
        rows = []
        for i in range(n):
            basis = torch.zeros_like(out)
            basis[:, i] = 1.0
            (g,) = torch.autograd.grad(
                out, y_, basis, create_graph=create_graph, retain_graph=True, allow_unused=True
            )
            rows.append(torch.zeros_like(y_) if g is None else g)
    return torch.stack(rows, dim=1)


def _uses_time(func: Func, t: Tensor, y: Tensor) -> bool:
    with torch.enable_grad():
        t_ = t.detach().requires_grad_(True)
        out = func(t_, y.detach())
        if not out.requires_grad:
            return False
        (g,) = torch.autograd.grad(out.sum(), t_, allow_unused=True)
    return g is not None


def _time_derivative(func: Func, t: Tensor, y: Tensor) -> Tensor:
    """``df/dt (batch, state)`` by one forward-mode pass."""
    _, dfdt = torch.func.jvp(lambda s: func(s, y), (t,), (torch.ones_like(t),))
    return dfdt


def _generic(func: Func, y0: Tensor, t: Tensor, rtol, atol, max_steps, stats) -> Tensor:
    dtype, device = y0.dtype, y0.device

    def as_t(x: np.ndarray | float) -> Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device)

    t0 = t[0].detach()
    timed = _uses_time(func, t0, y0.detach())

    def f(tt: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _numpy(func(as_t(tt), as_t(y)))

    def value_and_jacobian(tt: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y_ = as_t(y)
        with torch.no_grad():
            value = func(as_t(tt), y_)
        # one batched backward pass for all rows of the Jacobian
        return _numpy(value), _numpy(stiff.jacobian(func, as_t(tt), y_)[0])

    def time_derivative(tt: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _numpy(_time_derivative(func, as_t(tt), as_t(y)))

    wants_grad = torch.is_grad_enabled() and (
        y0.requires_grad
        or (isinstance(func, nn.Module) and any(p.requires_grad for p in func.parameters()))
    )
    try:
        out, traj = rodas.integrate(
            f,
            value_and_jacobian,
            _numpy(y0),
            _numpy(t),
            rtol,
            atol,
            max_steps,
            record=wants_grad,
            time_derivative=time_derivative if timed else None,
            stats=stats,
        )
    except rodas.StepFailure as failure:
        raise RodasFailed(failure) from None
    if not wants_grad:
        return as_t(out)
    return _replay(func, y0, traj, timed)


def _replay(
    func: Func,
    y0: Tensor,
    traj: rodas.Trajectory,
    timed: bool = False,
    jacobian: Func | None = None,
) -> Tensor:
    """The solution ``(time, batch, state)`` recomputed through the accepted steps of
    ``traj`` with an autograd graph (the Jacobian in each ``W`` differentiated too:
    ``jacobian(t, y)``, by default autograd's with ``create_graph``)."""
    n = y0.shape[-1]
    eye = torch.eye(n, dtype=y0.dtype, device=y0.device)
    a = torch.as_tensor(rodas._A, dtype=y0.dtype, device=y0.device)
    c = torch.as_tensor(rodas._C, dtype=y0.dtype, device=y0.device)
    m = torch.as_tensor(rodas._M, dtype=y0.dtype, device=y0.device)
    states = [y0]
    y = y0
    for t_cur, h in zip(traj.t.tolist(), traj.h.tolist(), strict=True):
        tt = torch.as_tensor(t_cur, dtype=y0.dtype, device=y0.device)
        jac = jacobian(tt, y) if jacobian else _jacobian(func, tt, y, create_graph=True)
        dfdt = _time_derivative(func, tt, y) if timed else None
        lu, piv = torch.linalg.lu_factor(eye / (h * rodas.GAMMA) - jac)
        stages: list[Tensor] = []
        for i in range(rodas.STAGES):
            if i == 0:
                rhs = func(tt, y)
            else:
                point = y + sum(a[i, j] * stages[j] for j in range(i))
                rhs = func(tt + rodas._STAGE_TIME[i] * h, point)
                rhs = rhs + sum((c[i, j] / h) * stages[j] for j in range(i))
            if dfdt is not None and rodas._D[i]:
                rhs = rhs + (rodas._D[i] * h) * dfdt
            stages.append(torch.linalg.lu_solve(lu, piv, rhs.unsqueeze(-1)).squeeze(-1))
        y = y + sum(m[i] * stages[i] for i in range(rodas.STAGES))
        states.append(y)
    return torch.stack([states[k] for k in traj.output_step.tolist()])
