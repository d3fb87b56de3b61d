"""Warm start by gradient matching: fit the networks to derivative residuals of smoothed data.

No ODE is solved: each observed series is smoothed by a spline (penalty chosen by generalised
cross-validation), differentiated, and the networks (and learned parameters) are fitted so that
known terms + networks match the smoothed derivatives. Trajectory fitting then starts close to
the answer, which makes it both faster and less prone to poor local minima.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import make_smoothing_spline

from ude.data.measurements import Measurements
from ude.model.hybrid import HybridODE


@dataclass
class SmoothedStates:
    """Smoothed states ``y (point, state)``, derivatives ``dy (point, state)``, their
    ``condition (point,)``, and smoothed initial states ``initial (condition, state)``."""

    y: np.ndarray
    dy: np.ndarray
    condition: np.ndarray
    initial: np.ndarray


def smooth_states(
    measurements: Measurements, states: list[str], density: int = 4
) -> SmoothedStates | None:
    """Spline-smoothed states on a grid ``density`` times finer than the data, or None when a
    state is not measured directly (then gradient matching does not apply)."""
    if any(s not in measurements.observables for s in states):
        return None
    m = measurements
    cols = [m.observables.index(s) for s in states]
    ys, dys, conds, initial = [], [], [], []
    for c in range(m.n_conditions):
        per_state, per_deriv, first = [], [], []
        grid = None
        for col in cols:
            series = np.nanmean(m.values[c, :, :, col], axis=1) if m.values.shape[2] else None
            ok = np.isfinite(series)
            t, v = m.times[ok], series[ok]
            if len(t) < 5:
                return None
            if grid is None:
                grid = np.linspace(t[0], t[-1], density * len(t))
            spline = make_smoothing_spline(t, v)
            per_state.append(spline(grid))
            per_deriv.append(spline.derivative()(grid))
            first.append(float(spline(m.times[0])))
        ys.append(np.stack(per_state, axis=1))
        dys.append(np.stack(per_deriv, axis=1))
        conds.append(np.full(len(grid), c))
        initial.append(first)
    return SmoothedStates(
        np.concatenate(ys), np.concatenate(dys), np.concatenate(conds), np.array(initial)
    )


def gradient_matching(
    model: HybridODE,
    smoothed: SmoothedStates,
    steps: int = 500,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    step: Callable[[], object] | None = None,
) -> float:
    """Fit ``model``'s networks and learned parameters to the smoothed derivatives; set the
    initial states to the smoothed values at the first time. Returns the final loss (mean
    squared residual in units of the derivative scale). ``step`` (optional) is called after
    each of the ``steps`` (progress)."""
    p0 = next(model.parameters())
    as_t = lambda a: torch.as_tensor(a, dtype=p0.dtype, device=p0.device)  # noqa: E731
    y, dy = as_t(smoothed.y), as_t(smoothed.dy)
    cond = torch.as_tensor(smoothed.condition, device=p0.device)
    # an ensemble's members each fit the same points: (member * point, state), member-major;
    # the loss is the sum of the members' own
    members = int(getattr(model, "n_members", 1))
    y, dy = y.repeat(members, 1), dy.repeat(members, 1)
    nets = list(model.networks.parameters())
    params = list(model.parameters_.parameters())
    opt = torch.optim.AdamW(
        [{"params": nets, "weight_decay": weight_decay}, {"params": params, "weight_decay": 0.0}],
        lr=lr,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ctx = model.context(cond)
        resid = (model.known_terms(y, ctx) + model.neural_terms(y, ctx) - dy) / model.deriv_scale
        loss = (resid * resid).mean()
        opt.zero_grad()
        (loss * members).backward()
        opt.step()
        schedule.step()
        if step is not None:
            step()
    with torch.no_grad():
        model.initial.copy_(as_t(smoothed.initial))
    return float(loss.detach())
