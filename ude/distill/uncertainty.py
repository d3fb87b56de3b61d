"""Forecast bands of a refitted twin: a Laplace approximation at the refit's optimum.

The refit (:class:`ude.distill.TwinRefit`) minimises the mean Gaussian NLL of the data over the
twin's learnable parameters (coefficients, constants such as K, learned initial states and the
log noise levels). Around that optimum the posterior of the parameters (flat prior, or the
spec's priors) is approximated by a Gaussian whose covariance is the inverse Hessian of the
*summed* NLL. Parameters are drawn from it and each draw's trajectory is simulated.

The band is for the noise-free trajectory (the states): it holds parameter uncertainty only,
not the scatter of new measurements around the trajectory. That is what is compared with a
true noise-free trajectory; a band for new data would add the learned noise on top.

A draw whose solve fails or blows up stays in the band as a draw outside it, from the time it
escapes (:mod:`ude.uq.escape`): the band is the central ``level / (1 - e)`` interval of the
draws still alive (``e`` the share escaped by then), unbounded (``±inf``) once more than
``1 - level`` of the draws have escaped. Dropping them would make the band tightest exactly
where the parameters are least certain.
"""

from __future__ import annotations

import copy
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ude.data.measurements import Measurements
from ude.distill.refit import _batch
from ude.fit import make_module
from ude.model.doses import RowsRHS, solve_with_doses
from ude.model.hybrid import HybridODE
from ude.model.rodas_autograd import differentiable_twice
from ude.model.solver import FIXED, Solver, SolverFailed


@dataclass
class Laplace:
    """A Gaussian over a model's learnable parameter entries, flattened in the order of
    ``model.parameters()``: ``mean (entry,)`` (raw values: bounded parameters are on their
    log / logit scale), ``covariance (entry, entry)``, ``hessian (entry, entry)`` of the summed
    NLL, ``names (entry,)``. ``free (entry,)``: entries the data inform (a non-zero Hessian row);
    the others (e.g. initial states the data give) have zero variance. ``n_floored``: Hessian
    eigenvalues raised to the floor."""

    mean: np.ndarray
    covariance: np.ndarray
    hessian: np.ndarray
    names: list[str]
    free: np.ndarray
    n_floored: int

    def std(self) -> dict[str, float]:
        """Standard deviation of each entry (raw scale)."""
        return dict(zip(self.names, np.sqrt(np.diag(self.covariance)).tolist(), strict=True))


@dataclass
class ForecastInterval:
    """A pointwise band of the states over ``times (time,)``.

    ``lower``, ``median``, ``upper`` ``(condition, time, state)``: the band's ends and median
    with the draws that escaped counted outside it (:func:`ude.uq.escape.escaped_quantiles`:
    ``±inf`` where more than ``1 - level`` of the draws have escaped, the median NaN where
    half have); ``n_samples``: draws; ``failed (sample,)``: draws whose solve failed or
    diverged; ``escaped (condition, time)``: the share of the draws escaped by each time;
    ``samples (sample, entry)``: the raw parameter draws.
    """

    times: np.ndarray
    lower: np.ndarray
    median: np.ndarray
    upper: np.ndarray
    level: float
    n_samples: int
    failed: np.ndarray
    samples: np.ndarray
    laplace: Laplace
    escaped: np.ndarray | None = None

    @property
    def n_failed(self) -> int:
        return int(self.failed.sum())

    @property
    def bounded(self) -> np.ndarray:
        """``(condition, time)``: where the band is finite."""
        return np.isfinite(self.lower).all(-1) & np.isfinite(self.upper).all(-1)

    @property
    def usable(self) -> bool:
        """Whether there is a band to show: finite at the first time of every condition
        (more than ``1 - level`` of the draws failing from the start leave none)."""
        return bool(self.bounded[:, 0].all())

    def unbounded_from(self) -> list[float | None]:
        """Per condition, the first time at which the band is unbounded (None: never)."""
        from ude.uq.escape import unbounded_from

        return unbounded_from(self.bounded, self.times)

    def coverage(self, truth: np.ndarray) -> float:
        """Fraction of the true states ``(condition, time, state)`` inside the band, over the
        times where it is bounded (an unbounded band covers trivially); nan where it never
        is."""
        inside = (truth >= self.lower) & (truth <= self.upper)
        mask = np.broadcast_to(self.bounded[..., None], inside.shape)
        return float(np.mean(inside[mask])) if mask.any() else float("nan")

    def for_plot(self) -> ForecastInterval:
        """A copy for a plot: the unbounded parts clipped to a hundred times the largest
        median, so they shade the plot's whole height (see
        :meth:`ude.uq.mixture.PredictiveBand.for_plot`)."""
        centre = self.median[np.isfinite(self.median)]
        far = 100 * max(float(np.abs(centre).max()) if centre.size else 1.0, 1.0)
        return replace(
            self, lower=np.clip(self.lower, -far, far), upper=np.clip(self.upper, -far, far)
        )


def _parameter_names(model: HybridODE) -> list[str]:
    names = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == "initial":
            names += [f"{s}(t0)[{c}]" for c in range(p.shape[0]) for s in model.spec.states]
        elif name == "log_noise":
            names += [f"log_noise[{o}]" for o in model.observable_names]
        elif name.startswith("parameters_.location."):  # a population's median (mean)
            names.append(f"{name.removeprefix('parameters_.location.')}.location")
        elif name.startswith("parameters_.log_spread."):
            names.append(f"{name.removeprefix('parameters_.log_spread.')}.log_spread")
        else:
            short = name.removeprefix("parameters_.learned.")
            names += [short] if p.dim() == 0 else [f"{short}[{i}]" for i in range(p.numel())]
    return names


def hessian(model: HybridODE, measurements: Measurements) -> tuple[np.ndarray, np.ndarray]:
    """Gradient ``(entry,)`` and Hessian ``(entry, entry)`` of the summed Gaussian NLL (the
    refit's mean NLL, plus its parameter priors, times the number of measured entries) over
    the model's learnable parameter entries; one vectorised double-backward pass (a stiff
    solve taken as the plain graph of its accepted steps,
    :func:`ude.model.rodas_autograd.differentiable_twice`, so that it can be vectorised)."""
    params = [p for p in model.parameters() if p.requires_grad]
    module = make_module(model, measurements, loss="nll")
    batch = _batch(measurements)
    with differentiable_twice() if BATCHED_HESSIAN else nullcontext():
        loss = module.losses(batch)["loss"] * batch["mask"].sum()
    if not torch.isfinite(loss):
        raise SolverFailed("non-finite NLL at the refit's optimum")

    n_entries = sum(p.numel() for p in params)

    def grad(y: torch.Tensor, **kw) -> torch.Tensor:
        """d y / d params ``(entry,)``; zero for entries ``y`` does not depend on."""
        if not y.requires_grad:
            return y.new_zeros(n_entries)
        parts = torch.autograd.grad(y, params, allow_unused=True, **kw)
        pairs = zip(parts, params, strict=True)
        return torch.cat([(p.new_zeros(p.shape) if d is None else d).reshape(-1) for d, p in pairs])

    g = grad(loss, create_graph=True)
    H = _batched_rows(g, params) if BATCHED_HESSIAN else None
    if H is None:
        H = torch.stack([grad(g[i], retain_graph=True) for i in range(g.numel())])
    H = H.detach().cpu().numpy()
    return g.detach().cpu().numpy(), 0.5 * (H + H.T)


BATCHED_HESSIAN = True
"""Whether :func:`hessian` takes all its rows in one vectorised backward pass."""


def _batched_rows(g: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor | None:
    """The Jacobian ``(entry, entry)`` of the gradient ``g (entry,)`` in one vectorised
    backward pass (``is_grads_batched``: the backward graph through the solve walked once for
    all rows, not once per row); None where the graph cannot be batched (then row by row)."""
    if not g.requires_grad:
        return g.new_zeros(len(g), len(g))
    try:
        parts = torch.autograd.grad(
            g,
            params,
            grad_outputs=torch.eye(len(g), dtype=g.dtype, device=g.device),
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
    except (RuntimeError, NotImplementedError):
        return None
    pairs = zip(parts, params, strict=True)
    return torch.cat(
        [g.new_zeros(len(g), p.numel()) if d is None else d.reshape(len(g), -1) for d, p in pairs],
        dim=1,
    )


def regularised_inverse(H: np.ndarray, eigen_floor: float = 1e-8) -> tuple[np.ndarray, int]:
    """Covariance ``(entry, entry)`` from a symmetric Hessian, and how many eigenvalues were
    floored: eigenvalues below ``eigen_floor`` times the largest one in magnitude (negative
    ones: the refit stopped short of a minimum in that direction) are raised to it, so the
    direction gets a large but finite variance instead of a negative or infinite one."""
    lam, V = np.linalg.eigh(H)
    floor = eigen_floor * max(float(np.abs(lam).max(initial=0.0)), np.finfo(float).tiny)
    n_floored = int(np.sum(lam < floor))
    lam = np.maximum(lam, floor)
    return (V / lam) @ V.T, n_floored


_LAPLACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""The last Laplace approximation of each model, with what it was computed from: the report
asks for the twin's three times (its forecast band, the structure mixture, the coefficients'
intervals), each a double-backward pass per parameter through the ODE."""


def laplace(model: HybridODE, measurements: Measurements, eigen_floor: float = 1e-8) -> Laplace:
    """The Laplace approximation of ``model``'s learnable parameters at their current values
    (meant for a refitted twin: a few to some tens of entries). Entries with a zero Hessian row
    do not move the NLL and are held at their values; the rest get the regularised inverse of
    their Hessian block (:func:`regularised_inverse`). Computed once per model, data (the same
    object), parameter values and floor; the result is shared: do not change it."""
    params = [p for p in model.parameters() if p.requires_grad]
    values = nn.utils.parameters_to_vector(params).detach().cpu().numpy()
    key = (id(measurements), eigen_floor, values.tobytes(), len(values))
    cached = _LAPLACE.get(model)
    if cached is not None and cached[0] == key and cached[1] is measurements:
        return cached[2]
    approx = _laplace(model, measurements, eigen_floor)
    _LAPLACE[model] = (key, measurements, approx)
    return approx


def _laplace(model: HybridODE, measurements: Measurements, eigen_floor: float) -> Laplace:
    _, H = hessian(model, measurements)
    free = np.any(H != 0, axis=1)
    cov = np.zeros_like(H)
    cov_free, n_floored = regularised_inverse(H[np.ix_(free, free)], eigen_floor)
    cov[np.ix_(free, free)] = cov_free
    mean = nn.utils.parameters_to_vector([p for p in model.parameters() if p.requires_grad])
    return Laplace(
        mean=mean.detach().cpu().numpy(),
        covariance=cov,
        hessian=H,
        names=_parameter_names(model),
        free=free,
        n_floored=n_floored,
    )


class LaplaceInterval:
    """Pointwise forecast bands of a refitted twin (a HybridODE without networks) from the
    Laplace approximation at its optimum (:func:`laplace`).

    Args:
        n_samples: parameter draws.
        level: the band's probability (0.95: the 2.5 and 97.5 % quantiles).
        seed: seed of the draws.
        eigen_floor: relative floor of the Hessian's eigenvalues (:func:`regularised_inverse`).
        blow_up: a draw whose states exceed ``blow_up`` times the larger of the initial states
            and the data's scale has diverged: it counts outside the band from then on (see
            the module). So does a draw whose state or derivative is not finite at any
            evaluation, including those of a step the solver then rejects.
    """

    def __init__(
        self,
        n_samples: int = 200,
        level: float = 0.95,
        seed: int = 0,
        eigen_floor: float = 1e-8,
        blow_up: float = 1e3,
    ):
        self.n_samples = n_samples
        self.level = level
        self.seed = seed
        self.eigen_floor = eigen_floor
        self.blow_up = blow_up

    def forecast(
        self,
        model: HybridODE,
        measurements: Measurements,
        times: np.ndarray,
        initial: np.ndarray | None = None,
        conditions: list[int] | None = None,
    ) -> ForecastInterval:
        """The band over ``times (time,)`` from ``initial (condition, state)`` (default: each
        draw's own fitted initial states, which are uncertain too), with the inputs and
        parameters of ``conditions`` (default: all, or 0..n-1 for ``n`` given initial rows).
        ``measurements``: the data the model was refitted on."""
        states, failed, draws, approx = self.trajectories(
            model, measurements, times, initial, conditions
        )
        from ude.uq.escape import escape_index, escaped_quantiles

        # a failed draw counts as outside the band from when it escaped, not dropped
        alive = escape_index(states, failed)[:, :, None] > np.arange(len(times))
        lower, median, upper = escaped_quantiles(states, alive, self.level)
        return ForecastInterval(
            times=np.asarray(times, dtype=float),
            lower=lower,
            median=median,
            upper=upper,
            level=self.level,
            n_samples=self.n_samples,
            failed=failed,
            samples=draws,
            laplace=approx,
            escaped=1 - alive.mean(axis=0),
        )

    def trajectories(
        self,
        model: HybridODE,
        measurements: Measurements,
        times: np.ndarray,
        initial: np.ndarray | None = None,
        conditions: list[int] | None = None,
        n_samples: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Laplace]:
        """The draws behind :meth:`forecast`: states ``(sample, condition, time, state)``,
        ``failed (sample,)``, the raw parameter draws ``(sample, entry)`` and the Laplace
        approximation; ``n_samples`` draws (default: this interval's)."""
        ready = self.prepare(model, measurements, initial, conditions, n_samples)
        states, dead = self.solve(ready, times)
        return states, ready.failed(states, dead), ready.draws, ready.laplace

    def prepare(
        self,
        model: HybridODE,
        measurements: Measurements,
        initial: np.ndarray | None = None,
        conditions: list[int] | None = None,
        n_samples: int | None = None,
    ) -> Prepared:
        """The parameter draws of ``model`` and what simulating them needs (see
        :meth:`trajectories`): each draw's initial states and context, one row per draw and
        condition."""
        if len(model.networks):
            raise ValueError("LaplaceInterval needs a twin without neural slots")
        n_samples = self.n_samples if n_samples is None else n_samples
        approx = laplace(model, measurements, self.eigen_floor)
        n_c = model.initial.shape[0] if initial is None else len(initial)
        cond = torch.as_tensor(list(range(n_c)) if conditions is None else conditions)
        rng = np.random.default_rng(self.seed)
        free = approx.free
        lam, V = np.linalg.eigh(approx.covariance[np.ix_(free, free)])
        draws = np.tile(approx.mean, (n_samples, 1))
        z = rng.standard_normal((n_samples, int(free.sum())))
        draws[:, free] += z @ (V * np.sqrt(np.clip(lam, 0, None))).T
        params = [p for p in model.parameters() if p.requires_grad]
        dtype, device = model.initial.dtype, model.initial.device
        saved = nn.utils.parameters_to_vector(params).clone()
        contexts, starts = [], []
        try:
            with torch.no_grad():
                for d in draws:
                    nn.utils.vector_to_parameters(
                        torch.as_tensor(d, dtype=dtype, device=device), params
                    )
                    contexts.append(model.context(cond))
                    starts.append(model.initial[cond].clone())
        finally:
            with torch.no_grad():
                nn.utils.vector_to_parameters(saved, params)
        y0 = torch.cat(starts)
        if initial is not None:
            y0 = torch.as_tensor(initial, dtype=dtype, device=device).repeat(len(draws), 1)
        scale = max(float(y0.abs().max()), float(model.state_scale.max()), 1.0)
        return Prepared(
            model=model,
            draws=draws,
            laplace=approx,
            y0=y0,
            context=torch.cat(contexts),
            bound=self.blow_up * scale,
            doses=[model.doses[c] for c in cond.tolist()] * len(draws),
            n_conditions=len(cond),
        )

    @torch.no_grad()
    def solve(self, ready: Prepared, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """States ``(sample, condition, time, state)`` of every draw of ``ready`` over
        ``times (time,)`` and the draws that died ``(sample,)``, in one solve."""
        model, y0 = ready.model, ready.y0
        t = torch.as_tensor(times, dtype=y0.dtype, device=y0.device)
        n_s, n_c = len(ready.draws), ready.n_conditions
        states = model.spec.states
        solver = model.solver
        try:
            rhs = RowsRHS(model.known_terms, ready.context, ready.bound)
            out = solve_with_doses(solver, rhs.dosing, y0, t, ready.doses, states)
            out = out.transpose(0, 1)
            dead = rhs.dead
        except SolverFailed:
            # one stiff draw can exhaust the shared step budget: solve the draws one by one,
            # each with a tenth of the budget, and give up once half of them failed (the band
            # is then not reported anyway): stiff draws would otherwise cost minutes each
            out = torch.full((len(y0), len(t), y0.shape[1]), torch.nan, dtype=y0.dtype)
            dead = torch.ones(len(y0), dtype=torch.bool)
            if isinstance(solver, Solver):
                solver = copy.copy(solver)
                solver.max_steps = max(100, solver.max_steps // 10)
            failures = 0
            for s in range(n_s):
                rows = slice(s * n_c, (s + 1) * n_c)
                rhs = RowsRHS(model.known_terms, ready.context[rows], ready.bound)
                try:
                    doses = ready.doses[rows]
                    solved = solve_with_doses(solver, rhs.dosing, y0[rows], t, doses, states)
                    out[rows] = solved.transpose(0, 1)
                    dead[rows] = rhs.dead
                except SolverFailed:
                    failures += 1
                    if failures > n_s / 2:
                        break
        return ready.split(out, dead)


@dataclass
class Prepared:
    """One structure's parameter draws ready to simulate (:meth:`LaplaceInterval.prepare`):
    ``draws (sample, entry)`` from ``laplace``; one row per draw and condition (draw-major):
    initial states ``y0 (row, state)``, ``context (row, input + parameter)``, dose schedules
    ``doses (row,)``; a row past ``bound`` in any state has blown up."""

    model: HybridODE
    draws: np.ndarray
    laplace: Laplace
    y0: torch.Tensor
    context: torch.Tensor
    bound: float
    doses: list
    n_conditions: int

    def split(self, out: torch.Tensor, dead: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``out (row, time, state)`` and ``dead (row,)`` as states ``(sample, condition,
        time, state)`` and the draws with a dead row ``(sample,)``."""
        n_s, n_c = len(self.draws), self.n_conditions
        states = out.reshape(n_s, n_c, out.shape[1], -1).cpu().numpy()
        return states, dead.reshape(n_s, n_c).any(dim=1).cpu().numpy()

    @staticmethod
    def failed(states: np.ndarray, dead: np.ndarray) -> np.ndarray:
        """``(sample,)``: draws that died or are not finite somewhere."""
        return dead | ~np.isfinite(states).all(axis=(1, 2, 3))


def stackable(solver: Any) -> tuple | None:
    """A key under which structures can share one solve, or None: a fixed-step
    :class:`ude.model.solver.Solver` steps every row alike (its grid does not depend on the
    states), so many structures' rows can go through one solve with results identical to
    their own solves; an adaptive or stiff solver's steps depend on every row."""
    if not isinstance(solver, Solver) or solver.method not in FIXED:
        return None
    return (solver.method, solver.step_size)


@torch.no_grad()
def solve_stacked(parts: list[Prepared], times: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The draws of several structures (each :class:`Prepared`, all with one
    :func:`stackable` solver and the same states) in one solve: each structure's rows go
    through its own right-hand side, the solver's steps and the blow-up checks are taken once
    for all of them. Per structure: states ``(sample, condition, time, state)`` and the
    draws that died ``(sample,)``. Raises :class:`SolverFailed` as a solve does."""
    y0 = torch.cat([p.y0 for p in parts])
    edges = np.cumsum([0] + [len(p.y0) for p in parts]).tolist()
    blocks = list(zip(parts, edges[:-1], edges[1:], strict=True))

    def known(y: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.model.known_terms(y[a:b], p.context) for p, a, b in blocks])

    bound = torch.cat([torch.full((len(p.y0), 1), p.bound, dtype=y0.dtype) for p in parts])
    rhs = RowsRHS(known, y0.new_zeros(len(y0), 0), bound)
    t = torch.as_tensor(times, dtype=y0.dtype, device=y0.device)
    doses = [d for p in parts for d in p.doses]
    model = parts[0].model
    out = solve_with_doses(model.solver, rhs.dosing, y0, t, doses, model.spec.states)
    out = out.transpose(0, 1)
    return [p.split(out[a:b], rhs.dead[a:b]) for p, a, b in blocks]
