"""Levenberg-Marquardt for a stiff twin's refit: the NLL's curvature from its residuals.

A twin's refit minimises the Gaussian NLL of the data, a sum of squared residuals (and the
noise levels' logs). L-BFGS learns that sum's curvature from gradients, twenty iterations a
step, and the selection's refits of a stiff twin over many conditions ran 200-300 of them
(yeast glycolysis with 8 conditions: 13 s of CPU for its true structure). The residuals'
Jacobian gives the curvature at once (Gauss-Newton, damped as Levenberg and Marquardt damp
it): the same refit reaches its optimum in about ten iterations.

The Jacobian is taken by forward differences of the compiled Rodas5P solve, every solve on
the accepted steps of the solve at the values, each condition on its own
(:func:`ude.model.rodas_autograd.fixed_steps`: one smooth discrete map, so the differences
are of it and not of step-size control). The conditions' solves are then independent: moving
one entry of every condition's initial state at once moves each condition's residuals by its
own entry alone, so the Jacobian costs one solve per state and per shared parameter, not one
per entry (8 conditions of 7 states: 7 solves for the 56 initial values).

The noise levels have their optimum in closed form given the rest (each observable's
residuals' mean square); the parameters' priors (cheap, no solve) add their exact gradient
and Hessian. Where a solve does not replay (a model with networks, the numpy or torch
solvers) or the likelihood is not Gaussian on the data alone (noise models, populations),
:func:`applies` is False and the refit keeps L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ude.model.hybrid import HybridODE
from ude.model.initial_scale import entry_conditions, held_entries
from ude.model.rodas_autograd import fixed_steps
from ude.model.solver import SolverFailed

STEP = 1e-7
"""An entry's difference step, relative to its magnitude (at least 1)."""
CONVERGED_DAMPING = 0.1
"""The most damping of a last step whose small change counts as convergence."""
DAMPING = (1e-3, 1e-9, 1e10)
"""The damping's start, floor and ceiling (relative to the curvature's diagonal): past the
ceiling no step lowers the NLL, the refit is at its optimum to the solve's accuracy."""


def applies(model: HybridODE) -> bool:
    """Whether a refit of ``model`` can take Gauss-Newton steps: a twin (no networks) solved
    by the compiled Rodas5P, with Gaussian noise and no populations."""
    return (
        getattr(model.solver, "method", None) == "rodas5p"
        and not len(model.networks)
        and not model.has_noise_models
        and not len(model.parameters_.location)
    )


class _Residuals:
    """The data's residuals at the parameters' values and their Jacobian over the free
    entries of ``params`` (a known initial state is held: no column)."""

    def __init__(self, module, batch: dict[str, torch.Tensor], params: list[torch.Tensor]):
        self.module, self.model = module, module.model
        self.params = params
        cond, mask, values, sigma = (batch[k] for k in ("condition", "mask", "values", "sigma"))
        self.cond, self.values = cond, values
        self.measured = mask.bool()
        where = torch.nonzero(self.measured)  # (row, (item, time, replicate, observable))
        self.row_condition = cond[where[:, 0]].cpu().numpy()
        self.row_observable = where[:, 3]
        self.row_sigma = sigma.expand_as(values)[self.measured]
        self.free = np.flatnonzero(~held_entries(self.model, params))
        self.free_index = torch.as_tensor(self.free)
        conditions = entry_conditions(self.model, params)
        self.entry_condition = conditions[self.free]
        self.colours = _colours(self.entry_condition)
        # each condition's residual rows, for its own entries' columns
        self.rows_of = {
            c: torch.as_tensor(self.row_condition == c) for c in set(self.entry_condition)
        }

    def vector(self) -> torch.Tensor:
        return nn.utils.parameters_to_vector(self.params).detach().clone()

    def move_to(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            nn.utils.vector_to_parameters(vector, self.params)

    @torch.no_grad()
    def errors(self) -> torch.Tensor:
        """``values - prediction`` at the measured entries ``(row,)``."""
        states, _ = self.module.trajectory(self.cond)
        pred = self.model.observe(states, self.cond)
        return (self.values - pred[:, :, None, :])[self.measured]

    def scale(self) -> torch.Tensor:
        """Each row's noise level: the data's sigma where given, else the model's."""
        noise = self.model.noise.detach().reshape(-1)[self.row_observable]
        return torch.where(self.row_sigma > 0, self.row_sigma, noise)

    @torch.no_grad()
    def settle_noise(self, errors: torch.Tensor) -> None:
        """The noise levels at their optimum given ``errors``: each observable's mean square
        over its rows without a sigma of their own."""
        log_noise = self.model.log_noise.view(-1)
        own = self.row_sigma <= 0
        for o in range(log_noise.numel()):
            rows = own & (self.row_observable == o)
            if rows.any():
                mean_square = float((errors[rows] ** 2).mean())
                if mean_square > 0:
                    log_noise[o] = 0.5 * np.log(mean_square)

    def jacobian(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The errors at ``theta`` and their Jacobian ``(row, free entry)``; None where a
        solve fails both ways or does not replay."""
        self.move_to(theta)
        with fixed_steps(each=True) as plan:
            try:
                e0 = self.errors()
                if not plan.exact or not plan.steps or not torch.isfinite(e0).all():
                    return None
                J = e0.new_zeros(e0.numel(), len(self.free))
                for colour in self.colours:
                    entries = torch.as_tensor(self.free[colour])
                    steps = STEP * torch.clamp(theta[entries].abs(), min=1.0)
                    moved = None
                    for sign in (1.0, -1.0):
                        trial = theta.clone()
                        trial[entries] += sign * steps
                        self.move_to(trial)
                        plan.replay()
                        try:
                            moved = self.errors()
                        except SolverFailed:
                            continue
                        if torch.isfinite(moved).all():
                            steps = sign * steps
                            break
                        moved = None
                    if moved is None:
                        return None
                    for k, col in enumerate(colour):
                        c = self.entry_condition[col]
                        rows = slice(None) if c < 0 else self.rows_of[c]
                        J[rows, col] = (moved[rows] - e0[rows]) / steps[k]
            except SolverFailed:
                return None
            finally:
                self.move_to(theta)
            return (e0, J) if plan.exact else None

    def prior_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The priors' gradient ``(free,)`` and Hessian ``(free, free)`` (exact, no solve)."""
        n = len(self.free)
        prior = self.model.prior_nll()
        if not prior.requires_grad:
            return prior.new_zeros(n), prior.new_zeros(n, n)

        def flat(parts) -> torch.Tensor:
            pairs = zip(parts, self.params, strict=True)
            full = [(torch.zeros_like(p) if d is None else d).reshape(-1) for d, p in pairs]
            return torch.cat(full)[self.free_index]

        g = flat(torch.autograd.grad(prior, self.params, create_graph=True, allow_unused=True))
        rows = []
        for i in range(n):
            if not g[i].requires_grad:
                rows.append(g.new_zeros(n))
                continue
            parts = torch.autograd.grad(g[i], self.params, retain_graph=True, allow_unused=True)
            rows.append(flat(parts))
        return g.detach(), torch.stack(rows).detach() if rows else g.new_zeros(0, 0)


def _colours(entry_condition: np.ndarray) -> list[list[int]]:
    """Groups of free entries (positions in ``entry_condition``) moved together: each shared
    entry alone; a condition's k-th entry with every other condition's k-th."""
    colours: list[list[int]] = []
    by_position: dict[int, list[int]] = {}
    seen: dict[int, int] = {}
    for col, c in enumerate(entry_condition):
        if c < 0:
            colours.append([col])
            continue
        k = seen.get(int(c), 0)
        seen[int(c)] = k + 1
        by_position.setdefault(k, []).append(col)
    return colours + [by_position[k] for k in sorted(by_position)]


def levenberg_marquardt(
    module,
    batch: dict[str, torch.Tensor],
    params: list[torch.Tensor],
    loss: Callable[[], float],
    max_iter: int,
    tol: float,
    criterion_tol: float | None,
    trace: list[float],
) -> tuple[int, bool]:
    """Damped Gauss-Newton steps on the NLL over ``params`` (the noise levels among them
    taken at their closed-form optimum each iteration); ``loss()``: the refit's mean NLL at
    the current values (its own solves, each condition on its own steps). Stops when an
    iteration moves the criterion (twice the summed NLL) by less than ``criterion_tol`` or
    relatively by less than ``tol``, or when no damped step lowers it. Appends the criterion
    after each iteration to ``trace``. Returns the iterations and whether it converged: its
    last step nearly undamped (:data:`CONVERGED_DAMPING`). False where a Jacobian could not
    be taken, no damped step lowered the NLL, the last step was heavily damped or
    ``max_iter`` ran out: the caller goes on with L-BFGS from the values reached."""
    model = module.model
    noise = next((p for p in params if p is model.log_noise), None)
    rest = [p for p in params if p is not model.log_noise]
    if not rest:  # the noise levels alone: their closed form
        residuals = _Residuals(module, batch, params)
        _final_noise(residuals, noise)
        return 0, True
    residuals = _Residuals(module, batch, rest)
    n = float(batch["mask"].sum())
    theta = residuals.vector()
    current = loss()
    damping, floor, ceiling = DAMPING
    for iteration in range(max_iter):
        found = residuals.jacobian(theta)
        if found is None:
            return iteration, False
        e0, J = found
        if noise is not None:
            residuals.settle_noise(e0)
            current = loss()
        scale = residuals.scale()
        r, Jr = e0 / scale, J / scale[:, None]
        g_prior, H_prior = residuals.prior_terms()
        gradient = Jr.T @ r + g_prior
        curvature = Jr.T @ Jr + H_prior
        diagonal = torch.diagonal(curvature).clamp(min=1e-12 * float(curvature.diagonal().max()))
        before, taken = current, np.inf
        while damping <= ceiling:
            try:
                step = torch.linalg.solve(curvature + damping * torch.diag(diagonal), -gradient)
            except RuntimeError:  # singular: damp more
                damping *= 4.0
                continue
            trial = theta.clone()
            trial[residuals.free_index] += step
            residuals.move_to(trial)
            value = loss()
            if value < current:
                theta, current, taken = trial, value, damping
                damping = max(damping / 3.0, floor)
                break
            damping *= 4.0
        residuals.move_to(theta)
        if current >= before:  # no damped step lowers the NLL (at an optimum, or stuck)
            break
        trace.append(2 * n * current)
        change = before - current
        if change < tol * max(1.0, abs(current)) or (
            criterion_tol is not None and 2 * n * change < criterion_tol
        ):
            _final_noise(residuals, noise)
            # a small change from a full Gauss-Newton step is convergence; from a heavily
            # damped one, a model that fits the data badly (large residuals, where Gauss-Newton
            # is slow): L-BFGS takes over
            return iteration + 1, taken <= CONVERGED_DAMPING
    else:
        iteration = max_iter - 1
    _final_noise(residuals, noise)
    return iteration + 1, False


def _final_noise(residuals: _Residuals, noise: torch.Tensor | None) -> None:
    """The noise levels at their optimum for the final values."""
    if noise is None:
        return
    try:
        residuals.settle_noise(residuals.errors())
    except SolverFailed:
        pass
