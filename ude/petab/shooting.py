"""Multiple shooting for a PEtab problem (Bock 1981; Peifer & Timmer 2007): a fit that does
not have to follow one trajectory from t0 through every measurement.

The measurement grid is cut into ``K`` segments; each segment after the first starts from
free states, its *node* ``(experiment, state)``, and the first from the model's initial
values. The likelihood is that of the piecewise trajectory, and the gaps between where a
segment ends and where the next one starts enter as residuals weighted by a continuity
weight raised stage by stage until the trajectory is continuous. An oscillator's
single-shooting likelihood has a local optimum for nearly every wrong period or phase; with
the nodes near the data each segment only has to follow a short stretch, and the period is
found before the segments are joined (``x'' = -w^2 x`` from w = 1: w = 2 reached, where single
shooting ends at llh -1644 against 56.7). It is no cure where most states are unobserved:
on the repressilator (one of eight states measured) 20 random starts end no nearer the
published optimum than without it (README, "A real-data example").

:func:`shooting_fit` runs the stages by trust-region least squares (as
:mod:`ude.petab.least_squares`, its Jacobian by finite differences grouped so that nodes of
segments that do not touch share an evaluation) and leaves the model's ``theta`` at the
result, for a single-shooting polish.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch
from torch import nn

from ude.model.solver import Solver, SolverFailed, _failure
from ude.petab.fast import CompiledSolve, SolveFailed
from ude.petab.least_squares import FAILED, MAX_STEPS, SIGMA_SHIFT, residuals
from ude.petab.objective import PetabModel
from ude.petab.problem import PetabProblem

Tensor = torch.Tensor

WEIGHTS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)
"""Continuity weights of the stages. A gap (between a segment's end and the next node, in
decades for positive states) as large as the noise (sigma's geometric mean over the
measurements) costs ``weight / 2`` in negative log-likelihood units: at the last stage a gap
of 1/300 of sigma costs 0.5 per state, so the single-shooting polish starts from a trajectory
that is continuous to about that."""


FLOOR = 1e-12
"""Relative floor of a positive state on its log scale (of the state's largest value along
the first simulation): states this small count as zero."""


def segment_bounds(n_times: int, segments: int) -> list[int]:
    """Indices into the time grid ``(time,)`` where segments start, and its last index: as
    equal numbers of grid points per segment as the grid allows (at most ``n_times - 1``
    segments)."""
    k = max(1, min(segments, n_times - 1))
    return sorted({int(round(i * (n_times - 1) / k)) for i in range(k + 1)})


class ShootingModel(PetabModel):
    """A :class:`PetabModel` whose trajectory is pieced together from segments (see the
    module docstring). ``nodes (experiment, segment - 1, state)`` are the later segments'
    initial states: ``log10`` of the state (plus its floor, :data:`FLOOR`) for states
    positive along the first simulation, the state over its largest value there otherwise.
    :meth:`gaps` are the continuity residuals of the last :meth:`simulate` (set there, so
    that one solve gives both)."""

    def __init__(self, problem: PetabProblem, solver: Solver, segments: int):
        super().__init__(problem, solver=solver)
        self.cuts = segment_bounds(len(self.times), segments)
        n_e, n_s = len(problem.experiments), len(self.states)
        self.nodes = nn.Parameter(torch.zeros(n_e, len(self.cuts) - 2, n_s, dtype=torch.float64))
        self.register_buffer("positive", torch.ones(n_s, dtype=torch.bool))
        self.register_buffer("floor", torch.full((n_s,), FLOOR, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_s, dtype=torch.float64))
        self._gaps: Tensor | None = None

    @property
    def segments(self) -> int:
        return len(self.cuts) - 1

    def start_nodes(self) -> None:
        """Nodes (and which states are positive, and their floors) from the single-shooting
        trajectory at the current ``theta``; raises SolverFailed where it cannot be solved."""
        with torch.no_grad():
            states, ctx = PetabModel.simulate(self)  # (e, time, s)
            peak = states.abs().amax(dim=(0, 1))
            peak = torch.where(peak > 0, peak, torch.ones_like(peak))
            # below the solver's absolute tolerance a state is noise: its floor, and a
            # state that dips below zero by no more than that is positive
            floor = torch.clamp(peak * FLOOR, min=getattr(self.solver, "atol", 0.0))
            self.floor.copy_(floor)
            self.scale.copy_(peak)
            self.positive.copy_((states >= -floor).all(dim=0).all(dim=0))
            nodes = states[:, self.cuts[1:-1]].clone()
            self._observed_nodes(nodes, ctx)
            self.nodes.copy_(self._to_node(nodes))

    def _observed_nodes(self, nodes: Tensor, ctx: Tensor) -> None:
        """Nodes ``(experiment, segment - 1, state)`` of states an observable is affine in
        (``a + b x``, ``a`` and ``b`` free of states) set where the observable is measured
        at the node's time: ``x = (measurement - a) / b`` (kept where a positive state
        would come out negative or ``b`` is zero)."""
        node_of_time = {t: k for k, t in enumerate(self.cuts[1:-1])}
        overrides = self.override_fn(self.parameter_values())
        for _oid, rows, fn, ph, o in self._observables:
            free = {str(s) for s in o.formula.free_symbols} & set(self.states)
            if len(free) != 1 or self.plans:
                continue
            (name,) = free
            slope = sp.diff(o.formula, sp.Symbol(name))
            if {str(s) for s in slope.free_symbols} & set(self.states):
                continue
            j = self.states.index(name)
            for i, r in enumerate(rows.tolist()):
                k = node_of_time.get(int(self._row_time[r]))
                if k is None:
                    continue
                e = int(self._row_exp[r])
                at = [nodes[e, k].clone(), nodes[e, k].clone()]
                at[0][j], at[1][j] = 0.0, 1.0
                h = [
                    fn(
                        torch.cat(
                            [
                                y,
                                ctx[e],
                                self.times[self._row_time[r]].reshape(1),
                                overrides[ph[i]],
                            ]
                        )[None]
                    )[0, 0]
                    for y in at
                ]
                b = float(h[1] - h[0])
                x = (float(self.values[r]) - float(h[0])) / b if b != 0 else math.nan
                if math.isfinite(x) and (x > 0 or not bool(self.positive[j])):
                    nodes[e, k, j] = x

    def _to_node(self, y: Tensor) -> Tensor:
        return torch.where(self.positive, torch.log10(y.abs() + self.floor), y / self.scale)

    def node_states(self) -> Tensor:
        """The nodes as states ``(experiment, segment - 1, state)``."""
        return torch.where(self.positive, torch.pow(10.0, self.nodes), self.nodes * self.scale)

    def simulate(self) -> tuple[Tensor, Tensor]:
        """States ``(experiment, time, s)`` on ``times``, each segment from its own start;
        sets the gaps ``(experiment, segment - 1, s)`` between segment ends and nodes."""
        ctx, y0 = self.experiment_context()
        self._batch_exp = torch.arange(y0.shape[0])
        starts = self.node_states()
        pieces, ends = [], []
        for k in range(self.segments):
            a, b = self.cuts[k], self.cuts[k + 1]
            y = solve_segment(self, y0 if k == 0 else starts[:, k - 1], ctx, self.times[a : b + 1])
            last = k == self.segments - 1
            pieces.append(y if last else y[:, :-1])
            if not last:
                ends.append(y[:, -1])
        if ends:
            end = torch.stack(ends, dim=1)
            self._gaps = self._to_node(end) - self.nodes
        else:
            self._gaps = y0.new_zeros(y0.shape[0], 0, y0.shape[1])
        return torch.cat(pieces, dim=1), ctx

    def gaps(self) -> Tensor:
        """Continuity residuals of the last simulation ``(experiment, segment - 1, state)``."""
        assert self._gaps is not None, "simulate first"
        return self._gaps


def solve_segment(model: PetabModel, y0: Tensor, ctx: Tensor, times: Tensor) -> Tensor:
    """``model``'s states ``(experiment, time, state)`` at ``times`` from ``y0 (experiment,
    state)`` at ``times[0]``, by the model's own solve (compiled dopri5, rodas5p in numpy,
    or torch)."""
    s = model.solver
    if model.compiled is not None:
        try:
            return CompiledSolve.apply(
                model.compiled,
                (s.rtol, s.atol, s.max_steps),
                times,
                y0,
                ctx,
                model.compiled.params(),
            )
        except SolveFailed as err:
            raise _failure(s.method, err.t, err.h, err.reason) from None
    system = model.stiff_system
    if system is not None and getattr(s, "method", None) == "rodas5p":
        if system.clock:
            y0 = torch.cat([y0, times[:1].expand(len(y0), 1)], dim=-1)
        return s(system.bind(ctx), y0, times).transpose(0, 1)[..., : len(model.states)]
    model._ctx = ctx
    try:
        return s(model.rhs, y0, times).transpose(0, 1)
    finally:
        model._ctx = None


def _sparsity(model: ShootingModel) -> np.ndarray:
    """Which residuals ``(row,)`` each node ``(column,)`` moves, ``(row, node)`` booleans:
    rows are the measurements' weighted residuals, their noise terms, then the gaps."""
    n = model._n_rows
    n_e, n_k, n_s = model.nodes.shape
    seg_of_time = np.searchsorted(np.array(model.cuts[1:-1]), np.arange(len(model.times)), "right")
    row_seg = seg_of_time[model._row_time.numpy()]
    row_exp = model._row_exp.numpy()
    data = np.zeros((2 * n, n_e, n_k, n_s), dtype=bool)
    gap = np.zeros((n_e, n_k, n_s, n_e, n_k, n_s), dtype=bool)
    for e in range(n_e):
        for k in range(n_k):  # node k starts segment k + 1
            rows = np.where((row_exp == e) & (row_seg == k + 1))[0]
            data[np.concatenate([rows, n + rows]), e, k, :] = True  # sigma may use states
            gap[e, k, :, e, k, :] = True  # its own gap
            if k + 1 < n_k:
                gap[e, k + 1, :, e, k, :] = True  # where its segment ends
    return np.concatenate([data.reshape(2 * n, -1), gap.reshape(n_e * n_k * n_s, n_e * n_k * n_s)])


def _groups(sparsity: np.ndarray) -> list[list[int]]:
    """Columns of ``sparsity (row, column)`` in groups whose rows do not overlap (greedy):
    one finite-difference evaluation per group."""
    groups: list[tuple[list[int], np.ndarray]] = []
    for j in range(sparsity.shape[1]):
        for cols, rows in groups:
            if not (rows & sparsity[:, j]).any():
                cols.append(j)
                rows |= sparsity[:, j]
                break
        else:
            groups.append(([j], sparsity[:, j].copy()))
    return [cols for cols, _ in groups]


def shooting_fit(
    model: ShootingModel,
    lo: Tensor,
    hi: Tensor,
    evaluations: int,
    weights: tuple[float, ...] = WEIGHTS,
    log=print,
) -> dict:
    """The stages of multiple shooting from ``model.theta`` (within ``[lo, hi]``) and nodes
    from its single-shooting trajectory: at each weight of ``weights``, trust-region least
    squares over ``theta`` and the nodes, at most ``evaluations / len(weights)`` evaluations
    (each solves every segment once; the Jacobians' included). ``model.theta`` ends where the
    last stage ends. Returns ``{"stages": [(weight, llh, largest gap), ...], "evaluations"}``
    (llh of the piecewise trajectory; gaps in decades for positive states); raises
    SolverFailed where the start cannot be solved."""
    from scipy.optimize import least_squares

    model.start_nodes()
    n_theta = model.theta.numel()
    n_data = model._n_rows
    n_rows = 2 * n_data + model.nodes.numel()
    sparsity = _sparsity(model)
    groups = _groups(sparsity)
    count = {"evaluations": 0}
    per_jacobian = n_theta + len(groups)

    def load(x: np.ndarray) -> None:
        with torch.no_grad():
            model.theta.copy_(torch.as_tensor(x[:n_theta]))
            model.nodes.copy_(torch.as_tensor(x[n_theta:]).reshape(model.nodes.shape))

    def fun(x: np.ndarray, weight: float) -> np.ndarray:
        count["evaluations"] += 1
        load(x)
        with torch.no_grad():
            try:
                r = residuals(model)
                # gaps in units of the noise (its geometric mean): an estimated sigma that
                # shrinks as the segments fit their data would weaken the weight otherwise
                log_sigma = r[n_data:] ** 2 / 2 - SIGMA_SHIFT
                sigma = torch.exp(log_sigma.mean())
                r = torch.cat([r, math.sqrt(weight) / sigma * model.gaps().flatten()])
            except SolverFailed:
                return np.full(n_rows, FAILED)
        out = r.numpy()
        return out if np.isfinite(out).all() else np.full(n_rows, FAILED)

    def jac(x: np.ndarray, weight: float) -> np.ndarray:
        f0 = fun(x, weight)
        J = np.zeros((n_rows, len(x)))
        h = 1e-6 * np.maximum(1.0, np.abs(x))
        for j in range(n_theta):
            step = np.zeros_like(x)
            step[j] = h[j]
            J[:, j] = (fun(x + step, weight) - f0) / h[j]
        for cols in groups:
            step = np.zeros_like(x)
            step[n_theta + np.array(cols)] = h[n_theta + np.array(cols)]
            diff = fun(x + step, weight) - f0
            for c in cols:
                rows = sparsity[:, c]
                J[rows, n_theta + c] = diff[rows] / h[n_theta + c]
        return J

    x = np.concatenate([model.theta.detach().numpy(), model.nodes.detach().numpy().ravel()])
    lower = np.concatenate([lo.numpy(), np.full(model.nodes.numel(), -np.inf)])
    upper = np.concatenate([hi.numpy(), np.full(model.nodes.numel(), np.inf)])
    margin = np.where(np.isfinite(upper - lower), 1e-9 * (upper - lower), 0.0)
    x = np.clip(x, lower + margin, upper - margin)  # least_squares starts strictly inside
    stages = []
    budget = max(1, evaluations // len(weights))
    steps = getattr(model.solver, "max_steps", None)
    if steps is not None:
        model.solver.max_steps = min(steps, MAX_STEPS)
    try:
        for weight in weights:
            result = least_squares(
                fun,
                x,
                jac=jac,
                bounds=(lower, upper),
                method="trf",
                x_scale="jac",
                max_nfev=max(1, budget // (per_jacobian + 1)),
                kwargs={"weight": weight},
            )
            x = result.x
            load(x)
            with torch.no_grad():
                try:
                    llh = float(model.forward())
                    gap = float(model.gaps().abs().max()) if model.nodes.numel() else 0.0
                except SolverFailed:
                    llh, gap = -math.inf, math.inf
            stages.append((weight, llh, gap))
            log(f"multiple shooting, weight {weight:g}: llh {llh:.6g}, largest gap {gap:.3g}")
    finally:
        if steps is not None:
            model.solver.max_steps = steps
    return {"stages": stages, "evaluations": count["evaluations"]}
