"""Warm start by gradient matching: fit the networks to derivative residuals of smoothed data.

No ODE is solved: each observed series is smoothed by a spline (penalty chosen by generalised
cross-validation), differentiated, and the networks (and learned parameters) are fitted so that
known terms + networks match the smoothed derivatives. Trajectory fitting then starts close to
the answer, which makes it both faster and less prone to poor local minima.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import make_smoothing_spline

from ude.data.doses import segments
from ude.data.measurements import Measurements
from ude.model.hybrid import HybridODE
from ude.model.initial_scale import set_initial


@dataclass
class SmoothedStates:
    """Smoothed states ``y (point, state)``, derivatives ``dy (point, state)``, their
    ``condition (point,)``, smoothed initial states ``initial (condition, state)`` (NaN for a
    condition without enough data) and the infusion rates ``rate (point, state)`` the doses
    add to the derivatives there (None: no doses)."""

    y: np.ndarray
    dy: np.ndarray
    condition: np.ndarray
    initial: np.ndarray
    rate: np.ndarray | None = None


def smooth_states(
    measurements: Measurements, states: list[str], density: int = 4, min_points: int = 5
) -> SmoothedStates | None:
    """Spline-smoothed states on a grid ``density`` times finer than the data, or None when a
    state is not measured directly (then gradient matching does not apply) or no condition
    has ``min_points`` measured times of every state. A condition with fewer (one held out,
    or sparsely sampled) contributes no points, and NaN initial states.

    Doses cut a condition's series into the pieces between them (:func:`ude.data.doses.segments`;
    a sample at a dose's time belongs to the piece before it); each piece with ``min_points``
    measured times of every state is smoothed on its own, so no spline crosses a jump."""
    if any(s not in measurements.observables for s in states):
        return None
    m = measurements
    cols = [m.observables.index(s) for s in states]
    ys, dys, conds, rates = [], [], [], []
    initial = np.full((m.n_conditions, len(states)), np.nan)
    t0, t1 = float(m.times[0]), float(m.times[-1])
    for c, schedule in enumerate(m.schedules()):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN time: no mean
            series = np.nanmean(m.values[c][:, :, cols], axis=1)  # (time, state)
        for k, seg in enumerate(segments([schedule], states, t0, t1)):
            # a sample at a dose's time is before it: the first piece holds the first time
            # unless a bolus is given then
            first = k == 0 and not seg.jump.any()
            piece = (m.times > seg.start) | ((m.times == seg.start) & first)
            piece &= m.times <= seg.end
            smoothed = _smooth(m.times[piece], series[piece], seg.start, density, min_points)
            if smoothed is None:
                continue
            grid, y, dy, at_start = smoothed
            ys.append(y)
            dys.append(dy)
            conds.append(np.full(len(grid), c))
            rates.append(np.broadcast_to(seg.rate[0], y.shape))
            if k == 0 and seg.start == t0:  # the state before a dose at the first time
                initial[c] = at_start - seg.jump[0]
    if not ys:
        return None
    dosed = any(m.schedules())
    return SmoothedStates(
        np.concatenate(ys),
        np.concatenate(dys),
        np.concatenate(conds),
        initial,
        np.concatenate(rates) if dosed else None,
    )


def _smooth(
    times: np.ndarray, series: np.ndarray, start: float, density: int, min_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """One piece of a series ``(time, state)`` smoothed: the grid, the states and derivatives
    on it ``(point, state)`` and the states at the piece's ``start``; None when a state has
    fewer than ``min_points`` values."""
    if (np.isfinite(series).sum(axis=0) < min_points).any():
        return None
    per_state, per_deriv, at_start = [], [], []
    grid = None
    for i in range(series.shape[1]):
        ok = np.isfinite(series[:, i])
        t, v = times[ok], series[ok, i]
        if grid is None:
            grid = np.linspace(t[0], t[-1], density * len(t))
        spline = make_smoothing_spline(t, v)
        per_state.append(spline(grid))
        per_deriv.append(spline.derivative()(grid))
        at_start.append(float(spline(start)))
    return grid, np.stack(per_state, axis=1), np.stack(per_deriv, axis=1), np.array(at_start)


@dataclass
class WarmStartResult:
    """The final ``loss`` of gradient matching (mean squared residual in units of the
    derivative scale) and how many ``cycles`` of steps it ran."""

    loss: float
    cycles: int


def gradient_matching(
    model: HybridODE,
    smoothed: SmoothedStates,
    steps: int = 500,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    step: Callable[[], object] | None = None,
    cycles: int = 1,
    plateau: float = 1e-3,
    unexplained: float = 0.4,
    on_cycle: Callable[[int], object] | None = None,
) -> WarmStartResult:
    """Fit ``model``'s networks and learned parameters to the smoothed derivatives; set the
    initial states to the smoothed values at the first time, except the ones the data give
    (``model.initial_known``, a conditions table's ``init_<state>``), which stay exactly as
    given, and the ones of conditions without enough data to smooth (NaN in
    ``smoothed.initial``).

    A cycle is ``steps`` AdamW steps with the learning rate cosine-decayed from ``lr``. The
    fit has not taken hold when a cycle ends on a plateau (its second half lowers the loss by
    less than the fraction ``plateau``) or still leaves more than the fraction
    ``unexplained`` of the loss before the first step (of what the known terms leave
    unexplained): the networks sit on or creep along a flat solution, as before a steep
    switch such as a Hill repression is found (the loss stays put for hundreds of steps,
    then falls tenfold). Then another cycle starts from the full rate, up to ``cycles`` in
    all; a fit that takes hold in one cycle runs exactly one.
    ``step`` (optional) is called after each step (progress), ``on_cycle`` with the number
    of each cycle after the first before it starts."""
    p0 = next(model.parameters())
    as_t = lambda a: torch.as_tensor(a, dtype=p0.dtype, device=p0.device)  # noqa: E731
    y, dy = as_t(smoothed.y), as_t(smoothed.dy)
    if smoothed.rate is not None:  # what infusions add is known: the rest is the model's
        dy = dy - as_t(smoothed.rate)
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
    loss = torch.tensor(float("nan"))
    done, first = 0, None
    if steps > 0 and any(p.requires_grad for p in nets + params):
        for done in range(1, max(int(cycles), 1) + 1):
            if done > 1 and on_cycle is not None:
                on_cycle(done)
            for group in opt.param_groups:
                group["lr"] = lr
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=steps, eta_min=lr * 0.05
            )
            halfway = None
            for k in range(steps):
                ctx = model.context(cond)
                resid = model.known_terms(y, ctx) + model.neural_terms(y, ctx) - dy
                resid = resid / model.deriv_scale
                loss = (resid * resid).mean()
                if first is None:
                    first = float(loss.detach())
                if k == steps // 2:
                    halfway = float(loss.detach())
                opt.zero_grad()
                (loss * members).backward()
                opt.step()
                schedule.step()
                if step is not None:
                    step()
            final = float(loss.detach())  # NaN: neither, and nothing more to try
            on_plateau = steps >= 2 and final >= (1.0 - plateau) * halfway
            if not (on_plateau or final > unexplained * first):
                break
    with torch.no_grad():
        start = as_t(smoothed.initial)
        keep = model.initial_known | ~torch.isfinite(start)
        set_initial(model, torch.where(keep, model.initial, start))
    return WarmStartResult(float(loss.detach()), done)
