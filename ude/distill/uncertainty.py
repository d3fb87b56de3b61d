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
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ude.data.measurements import Measurements
from ude.distill.refit import _batch
from ude.fit import make_module
from ude.model.doses import RowsRHS, solve_with_doses
from ude.model.hybrid import HybridODE
from ude.model.solver import Solver, SolverFailed


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
    the model's learnable parameter entries; one double-backward pass per entry."""
    params = [p for p in model.parameters() if p.requires_grad]
    module = make_module(model, measurements, loss="nll")
    batch = _batch(measurements)
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
    rows = [grad(g[i], retain_graph=True) for i in range(g.numel())]
    H = torch.stack(rows).detach().cpu().numpy()
    return g.detach().cpu().numpy(), 0.5 * (H + H.T)


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


def laplace(model: HybridODE, measurements: Measurements, eigen_floor: float = 1e-8) -> Laplace:
    """The Laplace approximation of ``model``'s learnable parameters at their current values
    (meant for a refitted twin: a few to some tens of entries). Entries with a zero Hessian row
    do not move the NLL and are held at their values; the rest get the regularised inverse of
    their Hessian block (:func:`regularised_inverse`)."""
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
        states, dead = self._simulate(model, draws, times, initial, cond)
        failed = dead | ~np.isfinite(states).all(axis=(1, 2, 3))
        return states, failed, draws, approx

    @torch.no_grad()
    def _simulate(
        self,
        model: HybridODE,
        draws: np.ndarray,
        times: np.ndarray,
        initial: np.ndarray | None,
        cond: torch.Tensor,
    ) -> tuple[np.ndarray, np.ndarray]:
        """States ``(sample, condition, time, state)`` of every draw and the draws that died."""
        params = [p for p in model.parameters() if p.requires_grad]
        dtype, device = model.initial.dtype, model.initial.device
        saved = nn.utils.parameters_to_vector(params).clone()
        contexts, starts = [], []
        try:
            for d in draws:
                nn.utils.vector_to_parameters(
                    torch.as_tensor(d, dtype=dtype, device=device), params
                )
                contexts.append(model.context(cond))
                starts.append(model.initial[cond].clone())
        finally:
            nn.utils.vector_to_parameters(saved, params)
        y0 = torch.cat(starts)
        if initial is not None:
            y0 = torch.as_tensor(initial, dtype=dtype, device=device).repeat(len(draws), 1)
        context = torch.cat(contexts)
        scale = max(float(y0.abs().max()), float(model.state_scale.max()), 1.0)
        t = torch.as_tensor(times, dtype=dtype, device=device)
        n_s, n_c = len(draws), len(cond)
        states = model.spec.states
        doses = [model.doses[c] for c in cond.tolist()]
        try:
            rhs = RowsRHS(model.known_terms, context, self.blow_up * scale)
            out = solve_with_doses(model.solver, rhs.dosing, y0, t, doses * n_s, states)
            out = out.transpose(0, 1)
            dead = rhs.dead
        except SolverFailed:
            # one stiff draw can exhaust the shared step budget: solve the draws one by one,
            # each with a tenth of the budget, and give up once half of them failed (the band
            # is then not reported anyway): stiff draws would otherwise cost minutes each
            out = torch.full((len(y0), len(t), y0.shape[1]), torch.nan, dtype=dtype)
            dead = torch.ones(len(y0), dtype=torch.bool)
            solver = model.solver
            if isinstance(solver, Solver):
                solver = copy.copy(solver)
                solver.max_steps = max(100, solver.max_steps // 10)
            failures = 0
            for s in range(n_s):
                rows = slice(s * n_c, (s + 1) * n_c)
                rhs = RowsRHS(model.known_terms, context[rows], self.blow_up * scale)
                try:
                    solved = solve_with_doses(solver, rhs.dosing, y0[rows], t, doses, states)
                    out[rows] = solved.transpose(0, 1)
                    dead[rows] = rhs.dead
                except SolverFailed:
                    failures += 1
                    if failures > n_s / 2:
                        break
        states = out.reshape(n_s, n_c, len(t), -1).cpu().numpy()
        return states, dead.reshape(n_s, n_c).any(dim=1).cpu().numpy()
