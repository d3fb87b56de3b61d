"""Forecast bands of a refitted twin: a Laplace approximation at the refit's optimum.

The refit (:class:`ude.distill.TwinRefit`) minimises the mean Gaussian NLL of the data over the
twin's learnable parameters (coefficients, constants such as K, learned initial states and the
log noise levels). Around that optimum the posterior of the parameters is approximated by a
Gaussian on each parameter's own scale (the log of a log-scaled one, not the optimiser's logit
between its bounds) whose precision is the Hessian of the *summed* NLL (with the spec's priors)
plus the weak prior that each parameter's range implies, truncated to the parameters' bounds
(:mod:`ude.uq.parameter_ranges`; why: :func:`_laplace`). Parameters are drawn from it and each
draw's trajectory is simulated. Directions the data do not bound get their spread from the
ranges: ``n_prior_bounded`` counts them (distill.json's ``forecast_interval``, the summary).
Residuals that are not independent (serially correlated, or replicates that miss together:
a twin that misses part of the dynamics) hold fewer independent entries than the Hessian
counts: its data part is scaled by their effective share
(:mod:`ude.distill.residual_dependence`; the priors' part is not), which is 1 where the
residuals look independent.

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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ude.data.measurements import Measurements
from ude.distill.noise_blocks import (
    EVEN,
    NoiseBlocks,
    noise_blocks,
    sandwich_precision,
    weighted_measurements,
)
from ude.distill.refit import _batch
from ude.distill.residual_dependence import (
    INDEPENDENT,
    ResidualDependence,
    standardised_residuals,
)
from ude.distill.residual_dependence import dependence as residual_dependence_of
from ude.fit import make_module
from ude.model.doses import RowsRHS, solve_with_doses
from ude.model.hybrid import HybridODE
from ude.model.initial_scale import entry_conditions, held_entries
from ude.model.rodas_autograd import differentiable_twice, fixed_steps, solve_reached
from ude.model.solver import FIXED, Solver, SolverFailed


@dataclass
class Laplace:
    """A Gaussian over a model's learnable parameter entries, flattened in the order of
    ``model.parameters()``.

    It is built on each entry's natural coordinate (:mod:`ude.uq.parameter_ranges`: the
    position between two bounds on the parameter's own scale where the raw entry is a logit,
    the raw entry elsewhere), with the weak prior the entry's range implies added to the data's
    precision: ``natural_mean (entry,)``, ``precision (entry, entry)`` (eigenvalue-floored) and
    ``natural_covariance`` (its inverse). Draws are taken there, truncated to the boxes
    (``ranges``), and mapped to the raw entries.

    ``mean (entry,)``: the raw values (bounded parameters on their log / logit scale);
    ``covariance (entry, entry)``: the natural covariance carried to the raw entries by the
    delta method (what a linearised consumer such as :mod:`ude.twin.band` maps back);
    ``hessian (entry, entry)``: of the summed NLL over the raw entries; ``names (entry,)``.
    ``free (entry,)``: entries the data inform (a non-zero Hessian row); the others (e.g.
    initial states the data give) have zero variance. ``n_floored``: eigenvalues raised to the
    floor (directions that neither the data nor a prior bound); ``n_prior_bounded``: directions
    along which the prior's precision exceeds the data's (their spread comes from the parameters'
    ranges, not the data). ``dependence``: the residuals' :class:`ResidualDependence`, whose
    ``factor`` scaled the data's part of the precision (``hessian`` is the unscaled one)."""

    mean: np.ndarray
    covariance: np.ndarray
    hessian: np.ndarray
    names: list[str]
    free: np.ndarray
    n_floored: int
    n_prior_bounded: int = 0
    natural_mean: np.ndarray | None = None
    natural_covariance: np.ndarray | None = None
    precision: np.ndarray | None = None
    ranges: Any = None
    dependence: ResidualDependence = INDEPENDENT
    noise_blocks: NoiseBlocks = EVEN

    def std(self) -> dict[str, float]:
        """Standard deviation of each entry (raw scale, delta method)."""
        return dict(zip(self.names, np.sqrt(np.diag(self.covariance)).tolist(), strict=True))

    def natural_std(self) -> dict[str, float]:
        """Standard deviation of each entry on its natural scale, before the truncation to
        its box."""
        return dict(
            zip(self.names, np.sqrt(np.diag(self.natural_covariance)).tolist(), strict=True)
        )

    def draw(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``n_samples`` raw parameter vectors ``(sample, entry)``: Gaussian on the natural
        coordinates of the free entries, truncated to their boxes, the others at their
        values."""
        from ude.uq.parameter_ranges import truncated_gaussian

        free = self.free
        draws = np.tile(self.mean, (n_samples, 1))
        ranges = self.ranges
        if ranges is None or not (ranges.box[free].any() or ranges.sign[free].any()):
            # no bounds: the plain Gaussian (the same draws as a raw Gaussian: x = raw)
            lam, V = np.linalg.eigh(self.natural_covariance[np.ix_(free, free)])
            z = rng.standard_normal((n_samples, int(free.sum())))
            draws[:, free] += z @ (V * np.sqrt(np.clip(lam, 0, None))).T
            return draws
        natural = np.tile(self.natural_mean, (n_samples, 1))
        natural[:, free] = truncated_gaussian(
            self.natural_mean[free],
            self.precision[np.ix_(free, free)],
            ranges.lower[free],
            ranges.upper[free],
            n_samples,
            rng,
        )
        draws[:, free] = ranges.raw(natural)[:, free]
        return draws


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
        if name in ("initial", "parametrizations.initial.original"):
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
    the model's learnable parameter entries.

    A model without networks solved by rodas5p (a stiff twin): central differences of the
    exact gradient (the compiled solve and its adjoint), every solve taking the accepted steps
    of the solve at the values (:func:`ude.model.rodas_autograd.fixed_steps`), so the
    differences are of one smooth discrete map. Otherwise, or where a solve does not replay:
    one vectorised double-backward pass (a stiff solve taken as the plain graph of its
    accepted steps, :func:`ude.model.rodas_autograd.differentiable_twice`)."""
    stiff_twin = getattr(model.solver, "method", None) == "rodas5p" and not len(model.networks)
    if BY_DIFFERENCES and stiff_twin:
        found = _hessian_by_differences(model, measurements)
        if found is not None:
            return found
    params = [p for p in model.parameters() if p.requires_grad]
    module = make_module(model, measurements, loss="nll")
    batch = _batch(measurements)
    with differentiable_twice() if BATCHED_HESSIAN else nullcontext():
        loss = module.losses(batch)["loss"] * batch["mask"].sum()
    if not torch.isfinite(loss):
        raise SolverFailed("non-finite NLL at the refit's optimum")

    g = _gradient(loss, params, create_graph=True)
    H = _batched_rows(g, params) if BATCHED_HESSIAN else None
    if H is None:
        H = torch.stack([_gradient(g[i], params, retain_graph=True) for i in range(g.numel())])
    H = H.detach().cpu().numpy()
    return g.detach().cpu().numpy(), 0.5 * (H + H.T)


def _hessian_by_differences(
    model: HybridODE, measurements: Measurements, relative_step: float = 1e-5
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`hessian` by central differences of the gradient, each entry moved by
    ``relative_step`` times its magnitude (at least 1), the solves' steps fixed at those of
    the solve at the values. Where the two one-sided differences disagree (the NLL is not
    one smooth function at that scale: a singularity near the values) the step shrinks a
    hundredfold, at most :data:`SHRINKS` times; None where it still disagrees, a solve would
    not replay or a value is not finite. Two gradients per entry: a few seconds where the
    double-backward pass takes minutes.

    An entry of one condition's initial state changes that condition's trajectory alone: its
    row is the difference of the gradient of that condition's NLL (plus the priors), solved
    alone on the whole data's steps (its trajectory the one the whole data's replay gives it);
    the other conditions' terms would cancel (:data:`BY_CONDITION`). With 8 conditions such a
    row costs an eighth of a whole-data one, and those are most of the entries. Where a
    condition's solves do not replay alone, its rows come from the whole data.

    A held entry (a known initial state: its value enters the solve, its gradient is
    detached) gets a zero row and column, as in the double-backward pass: moving it would
    change the other entries' gradients, and the Laplace approximation would count it free."""
    params = [p for p in model.parameters() if p.requires_grad]
    held = held_entries(model, params)
    condition = entry_conditions(model, params)
    module = make_module(model, measurements, loss="nll")
    batch = _batch(measurements)
    n_measured = batch["mask"].sum()

    def flat(loss: torch.Tensor) -> torch.Tensor:
        return _flat(torch.autograd.grad(loss, params, allow_unused=True), params)

    def gradient() -> torch.Tensor:
        return flat(module.losses(batch)["loss"] * n_measured)

    def part_gradient(part: dict[str, torch.Tensor]) -> torch.Tensor:
        local = module.local_losses(part)  # sums over the part's entries
        return flat(local["fit"] + local["prior"])

    values = nn.utils.parameters_to_vector(params).detach().clone()

    def move_to(vector: torch.Tensor) -> None:
        with torch.no_grad():
            nn.utils.vector_to_parameters(vector, params)

    def difference_rows(
        entries: list[int], grad: Callable[[], torch.Tensor], g: torch.Tensor, plan, floor: float
    ) -> dict[int, torch.Tensor] | None:
        def moved_by(i: int, step: float) -> torch.Tensor:
            moved = values.clone()
            moved[i] += step
            move_to(moved)
            plan.replay()
            try:
                return grad()
            except SolverFailed:  # not a point the NLL is smooth at
                return torch.full_like(g, torch.nan)

        rows = {}
        for i in entries:
            step = relative_step * max(float(values[i].abs()), 1.0)
            for _ in range(SHRINKS + 1):
                up, down = moved_by(i, step), moved_by(i, -step)
                forward, backward = up - g, g - down
                # one smooth function at this scale: the one-sided differences agree (a
                # pole or a kink within the step, e.g. a Michaelis-Menten denominator
                # near zero, makes them differ by orders of magnitude)
                gap = (forward - backward).abs()
                close = gap <= 1e-3 * (forward.abs() + backward.abs()) + floor
                if torch.isfinite(gap).all() and close.all():
                    break
                step /= 100.0
            else:
                return None
            rows[i] = (up - down) / (2 * step)
        return rows if plan.exact else None

    free = [i for i in range(len(values)) if not held[i]]
    own: dict[int, list[int]] = {}  # a condition's initial-state entries, taken alone
    if BY_CONDITION and measurements.n_conditions > 1:
        for i in free:
            if condition[i] >= 0:
                own.setdefault(int(condition[i]), []).append(i)
    with fixed_steps() as plan:
        try:
            g = gradient()
            if not plan.exact or not plan.steps or not torch.isfinite(g).all():
                return None
            floor = 1e-8 * (float(g.abs().max()) + 1.0)
            alone = {i for entries in own.values() for i in entries}
            rows = difference_rows([i for i in free if i not in alone], gradient, g, plan, floor)
            for b, entries in sorted(own.items()):
                if rows is None:
                    break
                grad_b = partial(part_gradient, {k: v[b : b + 1] for k, v in batch.items()})
                move_to(values)  # the rows before left the last entry moved
                with fixed_steps() as plan_b:
                    # this condition alone on the whole data's steps: the trajectory the whole
                    # data's replays give it, to rounding
                    plan_b.steps = list(plan.steps)
                    plan_b.replay()
                    try:
                        g_b = grad_b()
                    except SolverFailed:
                        g_b = torch.full_like(g, torch.nan)
                    replays = plan_b.exact and bool(torch.isfinite(g_b).all())
                    found = (
                        difference_rows(entries, grad_b, g_b, plan_b, floor) if replays else None
                    )
                    replays = replays and plan_b.exact
                if not replays:  # its solves do not replay alone: its rows from the whole data
                    found = difference_rows(entries, gradient, g, plan, floor)
                rows = None if found is None else {**rows, **found}
            if rows is None:
                return None
        finally:
            move_to(values)
    zero = torch.zeros_like(g)
    H = np.zeros((0, 0))
    if len(values):
        H = torch.stack([rows.get(i, zero) for i in range(len(values))]).detach().cpu().numpy()
    if not np.isfinite(H).all():
        return None
    H[held, :] = 0.0
    H[:, held] = 0.0
    return g.detach().cpu().numpy(), 0.5 * (H + H.T)


SHRINKS = 3
"""How many times :func:`_hessian_by_differences` shrinks an entry's step before it leaves
the Hessian to the double-backward pass."""


BY_DIFFERENCES = True
"""Whether :func:`hessian` takes a stiff twin's Hessian by differences of its exact gradient."""

BY_CONDITION = True
"""Whether :func:`_hessian_by_differences` takes a condition's initial-state rows from that
condition alone (False: every row from the whole data's gradient, as before;
``python bench/hessian_conditions.py`` times both)."""

BATCHED_HESSIAN = True
"""Whether :func:`hessian` takes all its rows in one vectorised backward pass."""

SANDWICH = True
"""Whether :func:`_laplace` takes the sandwich's precision where the noise differs between
conditions (:mod:`ude.distill.noise_blocks`; False: the Hessian's, as before;
``python bench/noise_blocks.py`` compares both)."""


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
    lam, V, n_floored = _floored_eigen(H, eigen_floor)
    return (V / lam) @ V.T, n_floored


def _floored_eigen(H: np.ndarray, eigen_floor: float) -> tuple[np.ndarray, np.ndarray, int]:
    lam, V = np.linalg.eigh(0.5 * (H + H.T))
    floor = eigen_floor * max(float(np.abs(lam).max(initial=0.0)), np.finfo(float).tiny)
    n_floored = int(np.sum(lam < floor))
    return np.maximum(lam, floor), V, n_floored


_LAPLACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""The last Laplace approximation of each model, with what it was computed from: the report
asks for the twin's three times (its forecast band, the structure mixture, the coefficients'
intervals), each a double-backward pass per parameter through the ODE."""


def laplace(model: HybridODE, measurements: Measurements, eigen_floor: float = 1e-8) -> Laplace:
    """The Laplace approximation of ``model``'s learnable parameters at their current values
    (meant for a refitted twin: a few to some tens of entries). Entries with a zero Hessian row
    do not move the NLL and are held at their values; the rest get their Hessian block on
    their natural coordinates plus their ranges' weak prior, eigenvalue-floored
    (:func:`_laplace`). Computed once per model, data (the same
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
    """The Laplace approximation on the entries' natural coordinates with their ranges' weak
    prior (:mod:`ude.uq.parameter_ranges`).

    Why a prior and a truncation rather than the data's Hessian alone: an entry the data do
    not bound (a Hill constant far below every concentration, an initial value that the
    trajectory forgets) has a near-zero curvature, and the inverse Hessian gives it a variance
    limited only by the eigenvalue floor: e^±200 on a log scale, draws that no solver
    integrates. What bounds such an entry is what was known before the data: the problem's
    bounds (PEtab's default prior is uniform within them), or for a log-scale entry without
    bounds a weak uniform prior over some decades. The prior enters as the Gaussian with the
    uniform's variance, centred at the fitted value (so it leaves the fitted twin where it is,
    and tightens a direction the data do bound by a negligible share), and the box itself by
    truncating the draws to it: the posterior of a uniform prior times the likelihood's local
    quadratic is that Gaussian truncated to the box, and an entry fitted at its bound (where
    the likelihood keeps improving towards it) keeps its draws on the inside. It is computed
    on the natural coordinates because the raw logit squashes decades of the value into a
    sliver near a bound: there a raw Gaussian of any width is either a point or both bounds."""
    from ude.uq.parameter_ranges import entry_ranges

    g, H = hessian(model, measurements)
    residuals = standardised_residuals(model, measurements)
    g_prior, H_prior = prior_hessian(model)
    H_data = H - H_prior
    # conditions whose noise differs from the shared level the likelihood assumed: the
    # sandwich's precision in place of the Hessian's (the priors' part is not touched)
    blocks = noise_blocks(residuals)
    if SANDWICH and blocks.applies:
        H_data = _sandwiched(model, measurements, blocks, H_data, H_prior)
    # residuals that are not independent hold fewer independent entries than the Hessian
    # counts: the data's part of it is scaled by their effective share (the priors' is not)
    dependence = residual_dependence_of(residuals)
    g = dependence.factor * (g - g_prior) + g_prior
    H_data = dependence.factor * H_data
    ranges = entry_ranges(model)
    # an entry the NLL does not depend on at all (a known initial state, detached; a rate
    # that only an unmeasured observable sees) is held at its value, as before the prior:
    # twin.json's per-condition Gaussians and the twin's own band take this covariance too
    free = np.any(H != 0, axis=1)
    mean = nn.utils.parameters_to_vector([p for p in model.parameters() if p.requires_grad])
    mean = mean.detach().cpu().numpy()
    H_nat = ranges.to_natural_hessian(mean, g, H_data + H_prior)
    prior = np.where(np.isfinite(ranges.prior_sd), ranges.prior_sd, np.inf) ** -2.0
    sub = np.ix_(free, free)
    lam, V, n_floored = _floored_eigen(H_nat[sub] + np.diag(prior[free]), eigen_floor)
    cov_nat, Q = np.zeros_like(H), np.zeros_like(H)
    cov_nat[sub], Q[sub] = (V / lam) @ V.T, (V * lam) @ V.T
    slope = ranges.slope(mean)
    return Laplace(
        mean=mean,
        covariance=cov_nat / np.outer(slope, slope),
        hessian=H,
        names=_parameter_names(model),
        free=free,
        n_floored=n_floored,
        n_prior_bounded=prior_bounded(H_nat[sub], prior[free]),
        natural_mean=ranges.natural(mean),
        natural_covariance=cov_nat,
        precision=Q,
        ranges=ranges,
        dependence=dependence,
        noise_blocks=blocks,
    )


def _sandwiched(
    model: HybridODE,
    measurements: Measurements,
    blocks: NoiseBlocks,
    H_data: np.ndarray,
    H_prior: np.ndarray,
) -> np.ndarray:
    """The data's precision ``H_data`` replaced by the sandwich's (:mod:`ude.distill.
    noise_blocks`) where that is smaller: ``B``, the Hessian of the likelihood with each
    block's noise scaled by its ratio, less the priors'; the learned noise levels' rows (which
    ``B`` does not see) and the entries the data do not move stay ``H_data``'s."""
    _, B = hessian(model, weighted_measurements(model, measurements, blocks))
    B = B - H_prior
    names = _parameter_names(model)
    noise = np.array([n.startswith("log_noise[") for n in names], dtype=bool)
    sub = np.any(H_data != 0, axis=1) & ~noise
    if not sub.any() or not np.isfinite(B[np.ix_(sub, sub)]).all():
        return H_data
    # only ever less precise than the Hessian: where the sandwich would be more precise (the
    # noisier series carrying less of the information) the Hessian's is kept, since the ratios
    # come from the same residuals and a few conditions estimate them loosely (Goodwin with 2
    # conditions, the exact twin: its band covered 1.00 of the truth, 0.82 narrowed)
    out = H_data.copy()
    out[np.ix_(sub, sub)] = sandwich_precision(
        H_data[np.ix_(sub, sub)], B[np.ix_(sub, sub)], (1.0, float(blocks.ratios.max()))
    )
    return out


def _flat(parts: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]) -> torch.Tensor:
    """Gradients ``parts`` of ``params`` as one vector ``(entry,)``; zeros for an unused one."""
    pairs = zip(parts, params, strict=True)
    return torch.cat([(torch.zeros_like(p) if d is None else d).reshape(-1) for d, p in pairs])


def _gradient(y: torch.Tensor, params: list[torch.Tensor], **kw) -> torch.Tensor:
    """d y / d params ``(entry,)``; zero for entries ``y`` does not depend on (all of them
    where ``y`` depends on none)."""
    if not y.requires_grad:
        return y.new_zeros(sum(p.numel() for p in params))
    return _flat(torch.autograd.grad(y, params, allow_unused=True, **kw), params)


def prior_hessian(model: HybridODE) -> tuple[np.ndarray, np.ndarray]:
    """Gradient ``(entry,)`` and Hessian ``(entry, entry)`` of the model's prior NLL
    (:meth:`HybridODE.prior_nll`: the spec's parameter priors, a population's, the initial
    states') over its learnable entries; zeros without priors. No solve: cheap."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = _gradient(torch.as_tensor(model.prior_nll()), params, create_graph=True)
    rows = [_gradient(g[i], params, retain_graph=True) for i in range(g.numel())]
    H = (torch.stack(rows) if rows else g.new_zeros((0, 0))).detach().cpu().numpy()
    return g.detach().cpu().numpy(), 0.5 * (H + H.T)


def prior_bounded(H: np.ndarray, prior: np.ndarray) -> int:
    """How many directions the prior bounds rather than the data: with the data's precision
    ``H (entry, entry)`` over the entries that have a prior (``prior (entry,)`` > 0; the
    others profiled out), whitened by the prior's precision, the eigenvalues below one (the
    data know less along them than the prior)."""
    p = prior > 0
    if not p.any():
        return 0
    info = H[np.ix_(p, p)]
    if (~p).any():  # the entries without a prior are free: their Schur complement
        info = info - H[np.ix_(p, ~p)] @ np.linalg.pinv(H[np.ix_(~p, ~p)]) @ H[np.ix_(~p, p)]
    s = 1 / np.sqrt(prior[p])
    return int(np.sum(np.linalg.eigvalsh(0.5 * (info + info.T) * np.outer(s, s)) < 1))


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
        draws = approx.draw(n_samples, np.random.default_rng(self.seed))
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
        compiled = [_compiled_rows(ready, slice(s * n_c, (s + 1) * n_c), solver, times)
                    for s in range(n_s)] if _compiles(ready, solver) else []  # fmt: skip
        if compiled and all(c is not None for c in compiled):  # each draw alone, compiled
            out = torch.cat([states for states, _ in compiled])
            return ready.split(out, torch.cat([dead for _, dead in compiled]))
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


def _compiles(ready: Prepared, solver: Any) -> bool:
    """Whether the draws of ``ready`` can be solved by the compiled Rodas5P kernels: a twin
    (no networks) solved by rodas5p, without doses."""
    stiff = getattr(solver, "method", None) == "rodas5p"
    return stiff and not len(ready.model.networks) and not any(ready.doses)


def _compiled_rows(
    ready: Prepared, rows: slice, solver: Any, times: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One draw's ``rows`` solved alone by the compiled Rodas5P kernels (:func:`_compiles`):
    states ``(row, time, state)`` and ``dead (row,)``, as :class:`RowsRHS` leaves
    them: a row that leaves the bound (or is not finite) is held at its first such output
    from there on, and one whose solve stopped (a blow-up in finite time) at the bound from
    the first output it did not reach. Milliseconds where the torch solve of a draw that
    blows up takes seconds. None where it does not apply."""
    model = ready.model
    y0, context = ready.y0[rows], ready.context[rows]
    system = model.numeric_rhs(context)
    numpy = lambda x: x.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    out = solve_reached(system, numpy(y0), np.asarray(times, dtype=float), solver.rtol,
                        solver.atol, solver.max_steps)  # fmt: skip
    if out is None:
        return None
    out = np.moveaxis(out, 1, 0)  # (row, time, state)
    reached = ~np.isnan(out).all(-1)
    inside = np.isfinite(out).all(-1) & (np.abs(out) <= ready.bound).all(-1)
    dead = ~inside.all(-1)  # left the bound, or the solve stopped (at the blow-up)
    for r in np.flatnonzero(dead):
        first = int(np.argmin(inside[r]))
        # held from there: at that output where it was reached, else at the bound
        held = out[r, first] if reached[r, first] else np.copysign(ready.bound, out[r, first - 1])
        out[r, first:] = held
    as_t = lambda x: torch.as_tensor(x, device=y0.device)  # noqa: E731
    return as_t(out).to(y0.dtype), as_t(dead).bool()


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
