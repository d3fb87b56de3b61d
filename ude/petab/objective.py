"""The likelihood of a PEtab problem in torch: simulate every experiment, observe, score.

:class:`PetabModel` is a torch module whose trainable tensors are the estimated problem
parameters (on their ``parameterScale``) and the networks' estimated layers; calling it gives
the log-likelihood, and autograd its gradient. Shapes: experiments ``e``, states ``s``, the
per-experiment *context* ``c`` (model parameters, problem parameters, network inputs set by
conditions), measurement rows ``n``.

Networks enter where the hybridization table says: one whose inputs depend on states (or time)
is evaluated inside the right-hand side; one whose inputs do not is evaluated once per
experiment before the solve (it sets parameters or initial values); one whose outputs appear in
observable formulas is evaluated at each measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
import torch
from torch import nn

from ude.errors import UdeError
from ude.model.numeric_rhs import NumericRHS, NumericSystem
from ude.model.observation import log_density
from ude.model.solver import Solver, _failure
from ude.petab.fast import CompiledSolve, SolveFailed, compile_system
from ude.petab.problem import TIME, NetworkUse, PetabProblem, ProblemParameter
from ude.spec.compile import CompiledExpressions
from ude.spec.derivatives import compiled_derivatives

Tensor = torch.Tensor
_LN10 = math.log(10.0)


def to_scale(value: float, scale: str) -> float:
    """A parameter value on its ``parameterScale``."""
    if scale == "log":
        return math.log(value)
    if scale == "log10":
        return math.log10(value)
    return value


def from_scale(x: Tensor, scale: str) -> Tensor:
    if scale == "log":
        return torch.exp(x)
    if scale == "log10":
        return torch.pow(10.0, x)
    return x


def _batched(net: nn.Module, args: list[Tensor]) -> Tensor:
    """``net`` (written for one unbatched sample) over the leading dimension of ``args``."""
    if args[0].shape[0] == 1:
        out = net(*(a[0] for a in args))
        return _first_output(out).unsqueeze(0)
    return torch.func.vmap(lambda *a: _first_output(net(*a)))(*args)


def _first_output(out) -> Tensor:
    return (
        torch.stack([o.reshape(-1) for o in out]) if isinstance(out, tuple) else out.reshape(1, -1)
    )


class ScipySolver:
    """Forward solves with scipy's LSODA (stiff and non-stiff alike), one row at a time.

    For evaluating a problem (``python -m ude.petab check``): accurate on stiff kinetics where
    an explicit method crawls. It does not differentiate: use a torch :class:`Solver` for
    gradients.
    """

    method = "lsoda"

    def __init__(self, rtol: float = 1e-10, atol: float = 1e-12, method: str = "LSODA"):
        self.rtol, self.atol, self.scipy_method = rtol, atol, method

    def __call__(self, func, y0: Tensor, t: Tensor) -> Tensor:
        from scipy.integrate import solve_ivp

        times = t.detach().cpu().numpy()
        out = []
        with torch.no_grad():
            for b in range(y0.shape[0]):

                def f(tt: float, y: np.ndarray, b: int = b) -> np.ndarray:
                    full = y0.detach().clone()
                    full[b] = torch.from_numpy(y)
                    return func(torch.tensor(tt, dtype=y0.dtype), full)[b].numpy()

                sol = solve_ivp(
                    f,
                    (times[0], times[-1]),
                    y0[b].detach().numpy(),
                    method=self.scipy_method,
                    t_eval=times,
                    rtol=self.rtol,
                    atol=self.atol,
                )
                if sol.status != 0:
                    from ude.model.solver import SolverFailed

                    raise SolverFailed(f"scipy {self.scipy_method}: {sol.message}")
                out.append(torch.from_numpy(sol.y.T))
        return torch.stack(out, dim=1).to(y0)


@dataclass
class _NetPlan:
    """How one network is fed and what its outputs set."""

    net_id: str
    use: NetworkUse
    kind: str  # rhs, pre or observable
    inputs: CompiledExpressions | None  # scalar input elements over the symbols of ``kind``
    arg_sizes: list[int]  # elements per argument (-1: an array argument)
    arrays: list[Tensor | None]  # per argument: (experiment, ...) array, or None
    outputs: list[str]  # output problem ids, in (argument, element) order


class PetabModel(nn.Module):
    """``forward() -> log-likelihood`` of a :class:`PetabProblem` at its current parameters.

    Args:
        problem: the problem (see :func:`ude.petab.load_problem`).
        solver: the ODE solver (default: dopri5 at rtol 1e-8, atol 1e-10, or, when
            ``stiff``, rodas5p at rtol 1e-7: compiled with its exact adjoint where no network
            is in the right-hand side).
    """

    def __init__(
        self,
        problem: PetabProblem,
        solver: Solver | None = None,
        stiff: bool = False,
        compiled: bool = True,
    ):
        super().__init__()
        dtype = torch.float64
        p = problem
        spec = p.spec
        self.problem = p
        if solver is None:
            solver = (
                Solver("rodas5p", rtol=1e-7, atol=1e-10, max_steps=100_000)
                if stiff
                else Solver("dopri5", rtol=1e-8, atol=1e-10, max_steps=100_000)
            )
        self.solver = solver
        self.states = list(spec.states)
        model_params = list(spec.parameters)
        scalars = [q for q, row in p.parameters.items() if row.nominal is not None]
        self.scalars = scalars
        hybrid = p.hybridization
        net_inputs = [i for use in p.networks.values() for arg in use.inputs for i in arg]
        set_inputs = [k for k in net_inputs if k not in hybrid and k not in use_arrays(p)]
        self.context = list(
            dict.fromkeys(
                [*model_params, *(q for q in scalars if q not in model_params), *set_inputs]
            )
        )
        # -- problem parameters -> per-experiment context ------------------------------------
        estimated = [q for q in scalars if p.parameters[q].estimate]
        self.estimated = estimated
        self.theta = nn.Parameter(
            torch.tensor(
                [to_scale(p.parameters[q].nominal, p.parameters[q].scale) for q in estimated],
                dtype=dtype,
            )
        )
        self.register_buffer(
            "nominal", torch.tensor([p.parameters[q].nominal for q in scalars], dtype=dtype)
        )
        self._est_index = torch.tensor([scalars.index(q) for q in estimated], dtype=torch.long)
        self._scales = [p.parameters[q].scale for q in estimated]
        exprs = []
        for exp in p.experiments:
            for c in self.context:
                exprs.append(self._context_expr(c, exp.changes))
        self.context_fn = CompiledExpressions(exprs, scalars)
        # -- networks -------------------------------------------------------------------------
        self.networks = nn.ModuleDict({k: u.net for k, u in p.networks.items()})
        self._net_groups(p)
        dynamic = {*self.states, TIME}
        used_in_obs = set()
        for o in p.observables.values():
            used_in_obs |= {str(s) for s in (o.formula.free_symbols | o.noise.sigma.free_symbols)}
        self.plans: list[_NetPlan] = []
        for net_id, use in p.networks.items():
            elems = [hybrid.get(k, sp.Symbol(k)) for arg in use.inputs for k in arg]
            is_dynamic = any(str(s) in dynamic for e in elems for s in e.free_symbols)
            outs = sorted(use.outputs, key=lambda k: use.outputs[k])
            feeds_model = any(
                str(s) in outs
                for t, v in hybrid.items()
                if t not in net_inputs
                for s in v.free_symbols
            )
            if feeds_model and any(o in used_in_obs for o in outs):
                raise UdeError(
                    f"network '{net_id}' both sets model quantities and appears in observables",
                    source=p.source,
                    fix="use two networks",
                )
            kind = "rhs" if feeds_model and is_dynamic else "pre" if feeds_model else "observable"
            self.plans.append(self._plan(net_id, use, kind, hybrid))
        # Model quantities set by networks: parameters (columns of the context), initial values.
        pre_outputs = [o for pl in self.plans if pl.kind == "pre" for o in pl.outputs]
        rhs_outputs = [o for pl in self.plans if pl.kind == "rhs" for o in pl.outputs]
        self._targets: dict[str, tuple[list[int], CompiledExpressions]] = {}
        for kind, outs in (("pre", pre_outputs), ("rhs", rhs_outputs)):
            names = [
                t
                for t, v in hybrid.items()
                if t not in net_inputs
                and t in self.context
                and any(str(s) in outs for s in v.free_symbols)
            ]
            if names:
                fn = CompiledExpressions([hybrid[t] for t in names], [*self.context, *outs])
                self._targets[kind] = ([self.context.index(t) for t in names], fn)
        # -- initial states -------------------------------------------------------------------
        init = []
        for exp in p.experiments:
            for s in self.states:
                if s in hybrid:
                    init.append(hybrid[s])
                elif s in exp.changes:
                    init.append(exp.changes[s])
                elif s in spec.initial_assignments:
                    init.append(spec.initial_assignments[s])
                else:
                    init.append(sp.Float(spec.initial.get(s, 0.0)))
        self._init_symbols = [*self.context, *pre_outputs]
        self.initial_fn = CompiledExpressions(init, self._init_symbols)
        # -- right-hand side -------------------------------------------------------------------
        rhs_symbols = [*self.states, *self.context, TIME]
        self.rhs_fn = CompiledExpressions(spec.known_rhs(), rhs_symbols)
        # -- time grid and measurement rows ----------------------------------------------------
        m = p.measurements
        t0 = p.experiments[0].t0 if p.experiments else 0.0
        grid = np.unique(np.concatenate([[t0], m.time]))
        self.register_buffer("times", torch.tensor(grid, dtype=dtype))
        self._row_time = torch.tensor(np.searchsorted(grid, m.time), dtype=torch.long)
        self._row_exp = torch.tensor(m.experiment, dtype=torch.long)
        self.register_buffer("values", torch.tensor(m.value, dtype=dtype))
        overrides, self._row_ph, self._row_nph = [], [], []
        for ops, nps in zip(m.observable_parameters, m.noise_parameters, strict=True):
            self._row_ph.append(list(range(len(overrides), len(overrides) + len(ops))))
            overrides.extend(ops)
            self._row_nph.append(list(range(len(overrides), len(overrides) + len(nps))))
            overrides.extend(nps)
        self.override_fn = CompiledExpressions(overrides, scalars)
        obs_outputs = [o for pl in self.plans if pl.kind == "observable" for o in pl.outputs]
        self._obs_outputs = obs_outputs
        self._observables = []
        for k, (oid, o) in enumerate(p.observables.items()):
            rows = np.where(m.observable == k)[0]
            if rows.size == 0:
                continue
            symbols = [
                *self.states,
                *self.context,
                TIME,
                *o.placeholders,
                *o.noise_placeholders,
                *obs_outputs,
            ]
            fn = CompiledExpressions([o.formula, o.noise.sigma], symbols)
            ph = torch.tensor([self._row_ph[r] + self._row_nph[r] for r in rows], dtype=torch.long)
            self._observables.append((oid, torch.tensor(rows), fn, ph.reshape(len(rows), -1), o))
        self._n_rows = len(m.value)
        self._ctx: Tensor | None = None
        self.stiff_system = (
            None if any(pl.kind == "rhs" for pl in self.plans) else _StiffSystem(self)
        )
        # The non-stiff solve in compiled code when its right-hand side compiles (fast.py).
        self.compiled = (
            compile_system(self)
            if compiled and getattr(solver, "method", None) == "dopri5"
            else None
        )

    # -- building -------------------------------------------------------------------------------
    def _context_expr(self, c: str, changes: dict[str, sp.Expr]) -> sp.Expr:
        p = self.problem
        if c in changes:
            return changes[c]
        if c in p.parameters and p.parameters[c].nominal is not None:
            return sp.Symbol(c)
        if c in p.spec.parameters:
            return sp.Float(p.spec.parameters[c].value)
        raise UdeError(
            f"network input '{c}' has no value in some experiment",
            source=p.source,
            fix="set it in the conditions, hybridization or parameter table",
        )

    def _plan(self, net_id: str, use: NetworkUse, kind: str, hybrid: dict) -> _NetPlan:
        symbols = [*self.states, *self.context, TIME] if kind != "pre" else list(self.context)
        elems, sizes, arrays = [], [], []
        p = self.problem
        for arg in use.inputs:
            if len(arg) == 1 and arg[0] in use.arrays:
                sizes.append(-1)
                table = use.arrays[arg[0]]
                per_exp = []
                for exp in p.experiments:
                    key = next((c for c in [*exp.conditions, exp.id] if c in table), "0")
                    if key not in table:
                        raise UdeError(
                            f"array input '{arg[0]}' has no entry for experiment '{exp.id}'",
                            source=p.source,
                            fix="give inputs/<id>/<condition> or inputs/<id>/0 in an array file",
                        )
                    per_exp.append(torch.tensor(table[key], dtype=torch.float64))
                arrays.append(torch.stack(per_exp))
                continue
            sizes.append(len(arg))
            arrays.append(None)
            elems.extend(hybrid.get(k, sp.Symbol(k)) for k in arg)
        for e in elems:
            unknown = {str(s) for s in e.free_symbols} - set(symbols)
            if unknown:
                raise UdeError(
                    f"network '{net_id}' input uses '{sorted(unknown)[0]}', which is not "
                    f"available where the network is evaluated ({kind})",
                    source=p.source,
                )
        fn = CompiledExpressions(elems, symbols) if elems else None
        outs = sorted(use.outputs, key=lambda k: use.outputs[k])
        return _NetPlan(net_id, use, kind, fn, sizes, arrays, outs)

    def _net_groups(self, p: PetabProblem) -> None:
        """Nominal values, frozen layers and priors of network parameters: the most specific
        parameter-table group that covers a tensor decides."""
        self.net_priors: list[tuple[Tensor, tuple[str, tuple[float, ...]]]] = []
        for use in p.networks.values():
            for key, tensor in use.net.named_parameters():
                _, layer, name = key.split(".", 2)
                row: ProblemParameter | None = None
                for pid, g_layer, g_name in use.parameter_groups:
                    if (g_layer in (None, layer)) and (g_name in (None, name)):
                        row = p.parameters.get(pid)
                if row is None:
                    tensor.requires_grad_(False)
                    continue
                if row.nominal is not None:
                    with torch.no_grad():
                        tensor.fill_(row.nominal)
                tensor.requires_grad_(row.estimate)
                if row.prior is not None:
                    self.net_priors.append((tensor, row.prior))

    # -- evaluation -----------------------------------------------------------------------------
    def parameter_values(self) -> Tensor:
        """Values of the scalar problem parameters ``(parameter,)`` (estimated ones from
        ``theta``, on the linear scale)."""
        values = self.nominal
        if len(self.estimated):
            x = torch.stack([from_scale(self.theta[i], s) for i, s in enumerate(self._scales)])
            values = values.index_put((self._est_index,), x)
        return values

    def _run_net(self, plan: _NetPlan, values: Tensor | None, batch: int) -> Tensor:
        """Outputs ``(batch, output)`` of ``plan``'s network; ``values`` are its symbols'
        values ``(batch, symbol)``."""
        flat = plan.inputs(values) if plan.inputs is not None else None
        args, at = [], 0
        for size, array in zip(plan.arg_sizes, plan.arrays, strict=True):
            if size < 0:
                args.append(array if array.shape[0] == batch else array[self._batch_exp])
            else:
                args.append(flat[..., at : at + size])
                at += size
        out = _batched(plan.use.net, args)  # (batch, argument, element)
        cols = [out[:, i, j] for i, j in (plan.use.outputs[o] for o in plan.outputs)]
        return torch.stack(cols, dim=-1)

    def experiment_context(self) -> tuple[Tensor, Tensor]:
        """Context ``(experiment, c)`` after the pre-solve networks, and initial states
        ``(experiment, s)``."""
        n_e = len(self.problem.experiments)
        ctx = self.context_fn(self.parameter_values()).reshape(n_e, len(self.context))
        outs = [self._run_net(pl, ctx, n_e) for pl in self.plans if pl.kind == "pre"]
        pre = torch.cat(outs, dim=-1) if outs else ctx.new_zeros(n_e, 0)
        if "pre" in self._targets:
            cols, fn = self._targets["pre"]
            new = fn(torch.cat([ctx, pre], dim=-1))
            ctx = ctx.index_copy(1, torch.tensor(cols), new)
        n_s = len(self.states)
        init_all = self.initial_fn(torch.cat([ctx, pre], dim=-1))  # (e, e*s): one block each
        idx = torch.arange(n_e)
        y0 = init_all.reshape(n_e, n_e, n_s)[idx, idx]
        return ctx, y0

    def rhs(self, t: Tensor, y: Tensor) -> Tensor:
        ctx = self._ctx
        time = t.reshape(1, 1).expand(y.shape[0], 1).to(y)
        if "rhs" in self._targets:
            values = torch.cat([y, ctx, time], dim=-1)
            outs = [self._run_net(pl, values, y.shape[0]) for pl in self.plans if pl.kind == "rhs"]
            cols, fn = self._targets["rhs"]
            new = fn(torch.cat([ctx, *outs], dim=-1))
            ctx = ctx.index_copy(1, self._rhs_cols(cols), new)
        return self.rhs_fn(torch.cat([y, ctx, time], dim=-1))

    def _rhs_cols(self, cols: list[int]) -> Tensor:
        if not hasattr(self, "_rhs_cols_t"):
            self._rhs_cols_t = torch.tensor(cols)
        return self._rhs_cols_t

    def simulate(self) -> tuple[Tensor, Tensor]:
        """States ``(experiment, time, s)`` on ``times`` and the context ``(experiment, c)``."""
        ctx, y0 = self.experiment_context()
        self._batch_exp = torch.arange(y0.shape[0])
        if len(self.times) == 1:
            return y0[:, None, :], ctx
        if self.compiled is not None:
            s = self.solver
            try:
                states = CompiledSolve.apply(
                    self.compiled,
                    (s.rtol, s.atol, s.max_steps),
                    self.times,
                    y0,
                    ctx,
                    self.compiled.params(),
                )
            except SolveFailed as err:
                raise _failure(s.method, err.t, err.h, err.reason) from None
            return states, ctx
        if self.stiff_system is not None and getattr(self.solver, "method", None) == "rodas5p":
            return self._solve_stiff(y0, ctx), ctx
        self._ctx = ctx
        try:
            states = self.solver(self.rhs, y0, self.times).transpose(0, 1)
        finally:
            self._ctx = None
        return states, ctx

    def _solve_stiff(self, y0: Tensor, ctx: Tensor) -> Tensor:
        """Rodas5P on the right-hand side in numpy with its exact adjoint
        (:mod:`ude.model.rodas_autograd`); time, when the rates use it, as a clock state."""
        system = self.stiff_system
        if system.clock:
            y0 = torch.cat([y0, self.times[:1].expand(len(y0), 1)], dim=-1)
        states = self.solver(system.bind(ctx), y0, self.times).transpose(0, 1)
        return states[..., : len(self.states)]

    def observe(self) -> tuple[Tensor, Tensor, Tensor]:
        """Simulated observables, sigmas and log densities ``(n,)`` in measurement-row order."""
        states, ctx = self.simulate()
        rows_state = states[self._row_exp, self._row_time]  # (n, s)
        rows_ctx = ctx[self._row_exp]
        rows_time = self.times[self._row_time][:, None]
        overrides = self.override_fn(self.parameter_values())
        base = torch.cat([rows_state, rows_ctx, rows_time], dim=-1)
        obs_out = []
        for pl in self.plans:
            if pl.kind == "observable":
                self._batch_exp = self._row_exp
                obs_out.append(self._run_net(pl, base, base.shape[0]))
        net_cols = torch.cat(obs_out, dim=-1) if obs_out else base.new_zeros(len(base), 0)
        h = base.new_zeros(self._n_rows)
        sigma = base.new_ones(self._n_rows)
        llh = base.new_zeros(self._n_rows)
        for _oid, rows, fn, ph, o in self._observables:
            values = torch.cat(
                [
                    base[rows],
                    overrides[ph] if ph.numel() else base.new_zeros(len(rows), 0),
                    net_cols[rows],
                ],
                dim=-1,
            )
            out = fn(values)
            h_o, s_o = out[:, 0], out[:, 1]
            ll = log_density(
                self.values[rows], h_o, s_o, o.noise.transformation, o.noise.distribution
            )
            h = h.index_put((rows,), h_o)
            sigma = sigma.index_put((rows,), s_o)
            llh = llh.index_put((rows,), ll)
        return h, sigma, llh

    def log_prior(self) -> Tensor:
        """Log prior density of the estimated parameters (0 without priors)."""
        total = self.theta.new_zeros(())
        for i, q in enumerate(self.estimated):
            row = self.problem.parameters[q]
            if row.prior is not None:
                x = self.theta[i]
                total = total + _log_prior(row.prior, x, from_scale(x, row.scale), row.scale)
        for tensor, prior in self.net_priors:
            total = total + _log_prior(prior, tensor, tensor, "lin").sum()
        return total

    def forward(self) -> Tensor:
        """The log-likelihood."""
        return self.observe()[2].sum()

    # -- reporting ------------------------------------------------------------------------------
    def gradient(self, posterior: bool = False) -> tuple[float, dict, dict]:
        """``(value, mechanistic, networks)``: the log-likelihood (or log-posterior) and its
        gradient: ``{parameter id: d/d(scaled value)}`` and ``{network: {layer: {name:
        array}}}`` (frozen tensors: empty arrays)."""
        self.zero_grad(set_to_none=True)
        value = self.forward()
        if posterior:
            value = value + self.log_prior()
        value.backward()
        g = self.theta.grad if self.theta.grad is not None else torch.zeros_like(self.theta)
        mech = {q: float(g[i]) for i, q in enumerate(self.estimated)}
        nets: dict = {}
        for net_id, net in self.networks.items():
            for key, t in net.named_parameters():
                _, layer, name = key.split(".", 2)
                arr = (
                    np.zeros(0)
                    if not t.requires_grad
                    else (t.grad if t.grad is not None else torch.zeros_like(t)).numpy()
                )
                nets.setdefault(net_id, {}).setdefault(layer, {})[name] = arr
        return float(value.detach()), mech, nets


class _StiffSystem:
    """A PetabModel's right-hand side without networks, for rodas5p's numpy path: the rates
    over ``(states[, time], context)`` with their symbolic derivatives (time, when they use
    it, is a clock state so the system is autonomous)."""

    def __init__(self, model: PetabModel):
        exprs = list(model.problem.spec.known_rhs())
        self.clock = any(str(s) == TIME for e in exprs for s in e.free_symbols)
        states = [*model.states, *([TIME] if self.clock else [])]
        exprs = [*exprs, *([sp.Integer(1)] if self.clock else [])]
        symbols = [*states, *model.context]
        self.derivatives = compiled_derivatives(exprs, symbols, len(states))
        self.fn = CompiledExpressions(exprs, symbols)

    def torch_rhs(self, y: Tensor, context: Tensor) -> Tensor:
        return self.fn(torch.cat([y, context], dim=-1))

    def bind(self, context: Tensor) -> _BoundStiff:
        return _BoundStiff(self, context)


class _BoundStiff:
    """``f(t, y)`` for one solve's contexts, with the ``numeric_rhs`` rodas5p looks for."""

    def __init__(self, system: _StiffSystem, context: Tensor):
        self.system, self.context = system, context

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return self.system.torch_rhs(y, self.context)

    def numeric_rhs(self) -> NumericSystem:
        rhs = NumericRHS(self.system.derivatives, [], self.context.detach().numpy(), 0)
        return NumericSystem(rhs, self.context, [], self.system.torch_rhs)


def use_arrays(p: PetabProblem) -> set[str]:
    return {k for use in p.networks.values() for k in use.arrays}


def _log_prior(
    prior: tuple[str, tuple[float, ...]], x: Tensor, value: Tensor, scale: str
) -> Tensor:
    """Log density of a PEtab prior; ``x`` on the parameter scale, ``value`` linear."""
    kind, (a, b) = prior
    on_scale = kind.startswith("parameterScale")
    v = x if on_scale else value
    kind = kind.removeprefix("parameterScale").lower() if on_scale else kind
    if kind == "normal":
        return -0.5 * ((v - a) / b) ** 2 - math.log(b) - 0.5 * math.log(2 * math.pi)
    if kind == "laplace":
        return -torch.abs(v - a) / b - math.log(2 * b)
    if kind == "uniform":
        inside = (v >= a) & (v <= b)
        return torch.where(inside, -math.log(b - a), -math.inf * torch.ones_like(v))
    if kind in ("logNormal", "log-normal"):
        lv = torch.log(v)
        return -0.5 * ((lv - a) / b) ** 2 - math.log(b) - 0.5 * math.log(2 * math.pi) - lv
    if kind in ("logLaplace", "log-laplace"):
        lv = torch.log(v)
        return -torch.abs(lv - a) / b - math.log(2 * b) - lv
    raise ValueError(kind)
