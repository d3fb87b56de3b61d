"""Warm start by gradient matching: fit the networks to derivative residuals of smoothed data.

No ODE is solved: each observed series is smoothed by a spline (penalty chosen by generalised
cross-validation), differentiated, and the networks (and learned parameters) are fitted so that
known terms + networks match the smoothed derivatives. Trajectory fitting then starts close to
the answer, which makes it both faster and less prone to poor local minima.

A state the data do not measure (a latent species) has no smoothed series. Its path is
reconstructed instead: integrated along the smoothed grid by the model's own right-hand side,
with the measured states held at their smoothed values and its initial value learned with the
networks. The measured states' residuals then see the latent state's feedback (Goodwin's
repressor ``z`` behind the repression ``a/(1 + z^n)`` of the measured mRNA), where the fit
without a warm start sat on a flat solution (training NMSE 0.22 and a wrong twin ``c*z``).
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
from ude.data.noise_level import pseudo_residuals
from ude.model import network_kernels
from ude.model.hybrid import HybridODE
from ude.model.initial_scale import set_initial
from ude.model.numeric_rhs import UnsupportedNetwork, numpy_networks
from ude.spec.compile import CompiledExpressions
from ude.spec.tape_kernels import encode_tape
from ude.train.latent_kernels import CompiledHeun, LatentProblem


@dataclass
class SmoothedStates:
    """Smoothed states ``y (point, state)``, derivatives ``dy (point, state)``, their
    ``condition (point,)``, smoothed initial states ``initial (condition, state)`` (NaN for a
    condition without enough data) and the infusion rates ``rate (point, state)`` the doses
    add to the derivatives there (None: no doses). ``time (point,)`` and ``piece (point,)``
    place each point on its piece's grid (consecutive points, evenly spaced); ``latent
    (state,)`` marks the states the data do not measure (their columns are NaN; None: every
    state measured)."""

    y: np.ndarray
    dy: np.ndarray
    condition: np.ndarray
    initial: np.ndarray
    rate: np.ndarray | None = None
    time: np.ndarray | None = None
    piece: np.ndarray | None = None
    latent: np.ndarray | None = None


def smooth_states(
    measurements: Measurements,
    states: list[str],
    density: int = 4,
    min_points: int = 5,
    bounded_starts: bool = False,
) -> SmoothedStates | None:
    """Spline-smoothed states on a grid ``density`` times finer than the data, or None when no
    state is measured directly, when one is not and doses are given (a bolus would move the
    latent state's reconstructed path), or when no condition has ``min_points`` measured
    times of every measured state. A condition with fewer (one held out, or sparsely sampled)
    contributes no points, and NaN initial states. The states not measured get NaN columns
    (``latent``): :func:`gradient_matching` reconstructs them. ``bounded_starts``: the initial
    states from splines whose residuals stay within the samples' noise (:func:`within_noise`),
    the paths and derivatives from cross-validation's splines still.

    Doses cut a condition's series into the pieces between them (:func:`ude.data.doses.segments`;
    a sample at a dose's time belongs to the piece before it); each piece with ``min_points``
    measured times of every state is smoothed on its own, so no spline crosses a jump."""
    m = measurements
    measured = np.array([s in m.observables for s in states])
    if not measured.any() or (not measured.all() and any(m.schedules())):
        return None
    cols = [m.observables.index(s) for s in states if s in m.observables]

    def full(values: np.ndarray) -> np.ndarray:
        """``values (point, measured state)`` spread over every state, NaN where not measured."""
        out = np.full((values.shape[0], len(states)), np.nan)
        out[:, measured] = values
        return out

    ys, dys, conds, rates, times, pieces = [], [], [], [], [], []
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
            smoothed = _smooth(
                m.times[piece], series[piece], seg.start, density, min_points, bounded_starts
            )
            if smoothed is None:
                continue
            grid, y, dy, at_start = smoothed
            ys.append(full(y))
            dys.append(full(dy))
            conds.append(np.full(len(grid), c))
            times.append(grid)
            pieces.append(np.full(len(grid), len(pieces)))
            rates.append(np.broadcast_to(seg.rate[0], (len(grid), len(states))))
            if k == 0 and seg.start == t0:  # the state before a dose at the first time
                initial[c] = full(at_start[None])[0] - seg.jump[0]
    if not ys:
        return None
    dosed = any(m.schedules())
    return SmoothedStates(
        np.concatenate(ys),
        np.concatenate(dys),
        np.concatenate(conds),
        initial,
        np.concatenate(rates) if dosed else None,
        np.concatenate(times),
        np.concatenate(pieces),
        None if measured.all() else ~measured,
    )


def _smooth(
    times: np.ndarray,
    series: np.ndarray,
    start: float,
    density: int,
    min_points: int,
    bounded_starts: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """One piece of a series ``(time, state)`` smoothed: the grid, the states and derivatives
    on it ``(point, state)`` and the states at the piece's ``start`` (``bounded_starts``: from
    the spline :func:`within_noise` keeps); None when a state has fewer than ``min_points``
    values."""
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
        at_start.append(float((within_noise(spline, t, v) if bounded_starts else spline)(start)))
    return grid, np.stack(per_state, axis=1), np.stack(per_deriv, axis=1), np.array(at_start)


def spline_bound(t: np.ndarray, v: np.ndarray) -> float:
    """The largest root mean square residual a smoothing spline through samples ``v`` at
    times ``t`` may leave: the root mean square of the samples' pseudo-residuals against
    the lines through their neighbours (:func:`ude.data.noise_level.pseudo_residuals`), the
    noise where the signal is straight and more where it curves between samples (the mean of
    the squares, not :mod:`ude.data.noise_level`'s median, which a few bends do not move: a
    generous bound, exceeded only by a spline that smooths the signal away); inf with fewer
    than three samples."""
    if len(t) < 3:
        return float("inf")
    return float(np.sqrt(np.mean(pseudo_residuals(t, v) ** 2)))


def within_noise(spline: Callable, t: np.ndarray, v: np.ndarray, steps: int = 40) -> Callable:
    """``spline`` (its penalty chosen by generalised cross-validation) where its residuals'
    root mean square is within :func:`spline_bound` of the samples, else the smoothest spline
    whose residuals are (the penalty found by bisection on its log).

    Cross-validation over a few samples of a signal that changes fast between them can take
    the signal for noise and choose a nearly straight line: yeast glycolysis with 8
    conditions (the benchmark's seed 0) had a first condition whose splines missed their
    samples by a quarter to a third of each species' range, for noise of 5 %, and smoothed
    starts a tenth to a third of the range from the truth; the hybrid trained from them
    fitted at NMSE 0.12, and the distillation, screening on the same splines and starting
    its refits there, ended the true ``-c*S6`` at criterion -2,566, where its refit from the
    first samples reached -9,157 (from this function's starts: -9,139). The warm start keeps
    cross-validation's splines: cut back, their derivatives trained yeast's hybrids worse
    (the base cell's training NMSE 0.04 -> 0.37), so only the distillation's starts on the
    data (:func:`ude.distill.integral.data_path`) come from here."""
    spread = spline_bound(t, v)

    def misses(candidate: Callable) -> bool:
        return bool(np.sqrt(np.mean((v - candidate(t)) ** 2)) > spread)

    if not misses(spline):
        return spline
    span = float(t[-1] - t[0])
    lo, hi = np.log(1e-12 * span**3), np.log(1e3 * span**3)
    best = make_smoothing_spline(t, v, lam=float(np.exp(lo)))
    for _ in range(steps):
        mid = (lo + hi) / 2
        trial = make_smoothing_spline(t, v, lam=float(np.exp(mid)))
        if misses(trial):
            hi = mid
        else:
            lo, best = mid, trial
    return best


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
    all, unless a restart lowered the loss by less than the fraction ``plateau`` of where
    the cycle before ended (yeast glycolysis with ATP latent: 7375.84, 7375.62, 7375.28,
    7374.80 over four cycles, from 8412); a fit that takes hold in one cycle runs exactly
    one.
    ``step`` (optional) is called after each step (progress), ``on_cycle`` with the number
    of each cycle after the first before it starts.

    Latent states (``smoothed.latent``) are integrated along each piece's grid from learned
    initial values (:class:`LatentPaths`), which then become the model's; their own
    residuals do not enter the loss (they have no smoothed derivative)."""
    p0 = next(model.parameters())
    as_t = lambda a: torch.as_tensor(a, dtype=p0.dtype, device=p0.device)  # noqa: E731
    y, dy = as_t(smoothed.y), as_t(smoothed.dy)
    if smoothed.rate is not None:  # what infusions add is known: the rest is the model's
        dy = dy - as_t(smoothed.rate)
    cond = torch.as_tensor(smoothed.condition, device=p0.device)
    # an ensemble's members each fit the same points: (member * point, state), member-major;
    # the loss is the sum of the members' own
    members = int(getattr(model, "n_members", 1))
    latent = None
    if smoothed.latent is not None and smoothed.latent.any():
        if members > 1:  # one reconstructed path per point: not per member
            return WarmStartResult(float("nan"), 0)
        latent = LatentPaths(model, smoothed)
    y, dy = y.repeat(members, 1), dy.repeat(members, 1)
    measured = torch.ones(y.shape[1], dtype=torch.bool, device=p0.device)
    if latent is not None:
        measured = ~latent.latent
    nets = list(model.networks.parameters())
    params = list(model.parameters_.parameters())
    groups = [
        {"params": nets, "weight_decay": weight_decay},
        {"params": params, "weight_decay": 0.0},
    ]
    if latent is not None:
        groups.append({"params": [latent.start], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr)
    loss = torch.tensor(float("nan"))
    done, first, previous = 0, None, None
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
                at = y if latent is None else latent.states(y, ctx)
                resid = model.known_terms(at, ctx) + model.neural_terms(at, ctx) - dy
                resid = (resid / model.deriv_scale)[:, measured]
                loss = (resid * resid).mean()
                if latent is not None and not torch.isfinite(loss):
                    # the latent path blows up (an explicit step on stiff kinetics, or a
                    # state that grows without the data's bound): no step from it, and as
                    # nothing moves, every later step would see the same path; from the
                    # start, nothing was learned and the model stays as it was
                    if first is None:
                        return WarmStartResult(float(loss.detach()), 0)
                    break
                if first is None:
                    first = float(loss.detach())
                if k == steps // 2:
                    halfway = float(loss.detach())
                opt.zero_grad()
                (loss * members).backward()
                opt.step()
                if latent is not None:
                    latent.project()
                schedule.step()
                if step is not None:
                    step()
            final = float(loss.detach())  # NaN: neither, and nothing more to try
            if not np.isfinite(final):
                break
            on_plateau = steps >= 2 and final >= (1.0 - plateau) * halfway
            if not (on_plateau or final > unexplained * first):
                break
            if previous is not None and final >= (1.0 - plateau) * previous:
                break  # a restart that gained nothing: the next ones would not either
            previous = final
    with torch.no_grad():
        start = as_t(smoothed.initial)
        if latent is not None:
            start = latent.initial(start)
        keep = model.initial_known | ~torch.isfinite(start)
        set_initial(model, torch.where(keep, model.initial, start))
    return WarmStartResult(float(loss.detach()), done)


RANGE_MARGIN = 0.01
"""How far inside its range (a share of it) the warm start keeps a latent start it moves back:
the training after it holds the start on the logistic between the range's ends, whose
gradient vanishes at an end (at 1e-6 of the range from it, Adam's steps of 0.01 on the
logistic's scale take some 900 steps to reach 1 % inside)."""


class LatentPaths:
    """The latent states' paths along the smoothed grid, by Heun's method on the model's
    right-hand side with the measured states held at their smoothed values.

    ``start (piece, state)`` holds each piece's latent values at its first point, learned:
    from the model's initial states on a condition's first piece (the spec's, a conditions
    table's, or ``latent_initial``), which a known initial value keeps (its gradient is
    masked). Pieces of the same length integrate as one batch, in the compiled kernels
    (:mod:`ude.train.latent_kernels`: the same steps and their exact reverse pass;
    ``bench/training_split.py --torch`` compares the two) unless a network has no compiled
    form (``compiled``)."""

    def __init__(self, model: HybridODE, smoothed: SmoothedStates):
        self.model = model
        like = model.initial.detach()
        self.latent = torch.as_tensor(smoothed.latent, device=like.device)
        piece = np.asarray(smoothed.piece)
        self.rows = [np.flatnonzero(piece == k) for k in range(int(piece.max()) + 1)]
        first = [int(r[0]) for r in self.rows]
        self.condition = torch.as_tensor(smoothed.condition[first], device=like.device)
        time = np.asarray(smoothed.time)
        self.first_time = time[first]
        self.step = [float(time[r[1]] - time[r[0]]) if len(r) > 1 else 0.0 for r in self.rows]
        self.t0 = float(np.min(self.first_time))
        self.start = like[self.condition].clone().requires_grad_(True)
        held = model.initial_known[self.condition] | ~self.latent
        self.start.register_hook(lambda g: torch.where(held, torch.zeros_like(g), g))
        # the spec's ranges of the latent states (bounds): their starts stay inside, off the
        # ends by RANGE_MARGIN of the range
        lower = torch.full((like.shape[1],), -torch.inf, dtype=like.dtype, device=like.device)
        upper = torch.full_like(lower, torch.inf)
        states = model.spec.states
        bounded = {states.index(s): b for s, b in model.spec.bounds.items()}
        bounded = {i: b for i, b in bounded.items() if smoothed.latent[i]}
        for i, (lo, hi) in bounded.items():
            lower[i], upper[i] = lo + RANGE_MARGIN * (hi - lo), hi - RANGE_MARGIN * (hi - lo)
        self.range = (lower, upper) if bounded else None
        self.by_length: dict[int, list[int]] = {}
        for k, r in enumerate(self.rows):
            self.by_length.setdefault(len(r), []).append(k)
        # a latent state no network targets (known kinetics: the common case) is integrated
        # without the networks, which halves a step's cost
        targets = {t for slot in model.spec.neural for t in slot.targets}
        self.neural = any(smoothed.latent[states.index(t)] for t in targets)
        # a step needs the latent states' derivatives alone: their known terms compiled on
        # their own (yeast glycolysis with ATP and the outer pool latent: 17 operations of
        # the 35 of all seven), and the state vector rebuilt from the measured columns and
        # the latent ones by one permutation
        self.latent_index = np.flatnonzero(smoothed.latent)
        self.latent_columns = torch.as_tensor(self.latent_index, device=like.device)
        self.measured_index = np.flatnonzero(~np.asarray(smoothed.latent, dtype=bool))
        rhs = model.spec.known_rhs()
        self.known_latent = CompiledExpressions(
            [rhs[i] for i in self.latent_index], model.spec.symbols
        )
        order = np.concatenate([self.measured_index, self.latent_index])
        self.unpermute = torch.as_tensor(np.argsort(order), device=like.device)
        # the same steps compiled (:mod:`ude.train.latent_kernels`), unless a network has no
        # compiled form: the latent rows' known terms as a tape (the measured rows' zero)
        self.compiled = True
        if self.neural:
            try:
                numpy_networks(model)
            except UnsupportedNetwork:
                self.compiled = False
        latent_rows = [rhs[i] if smoothed.latent[i] else 0 for i in range(len(states))]
        self.tape = encode_tape(CompiledExpressions(latent_rows, model.spec.symbols))

    def states(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``y (point, state)`` with the latent columns replaced by their integrated paths."""
        index, values = [], []
        for n, pieces in self.by_length.items():
            rows = torch.as_tensor(np.stack([self.rows[k] for k in pieces]), device=y.device)
            h = torch.as_tensor([self.step[k] for k in pieces], dtype=y.dtype, device=y.device)
            z0 = self.start[pieces][:, self.latent_index]
            if self.compiled:
                path = self._integrate_compiled(y[rows], context[rows], z0, h)
            else:
                path = self._integrate(y[rows], context[rows], z0, h[:, None], n)
            index.append(rows.reshape(-1))
            values.append(path.reshape(-1, len(self.latent_index)))
        paths = torch.zeros_like(y[:, self.latent_index])
        paths = paths.index_copy(0, torch.cat(index), torch.cat(values))
        return self._full(y[:, self.measured_index], paths)

    def _full(self, measured: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """States ``(..., state)`` from their measured and latent columns."""
        return torch.cat([measured, latent], dim=-1)[..., self.unpermute]

    def _integrate_compiled(self, y, context, z0, h):
        """:meth:`_integrate` in the compiled kernels: ``h (piece,)``."""
        net, params = None, []
        if self.neural:
            model = self.model
            net = network_kernels.encode(numpy_networks(model))
            params = [p for p in model.networks.parameters() if p.requires_grad]
        held = y.detach().to("cpu", torch.float64).numpy()
        h = h.detach().to("cpu", torch.float64).numpy()
        problem = LatentProblem(self.tape, net, held, h, self.latent_index)
        return CompiledHeun.apply(problem, z0, context, *params)

    def _integrate(self, y, context, z0, h, n):
        """The latent columns ``(piece, point, latent)`` by Heun's method over ``n`` grid
        points from ``z0 (piece, latent)``: ``y``, ``context (piece, point, ...)``. The
        reference for :meth:`_integrate_compiled`, which takes the same steps."""
        model, held = self.model, y[..., self.measured_index]

        def f(z, k):
            state, ctx = self._full(held[:, k], z), context[:, k]
            slope = self.known_latent(torch.cat([state, ctx], dim=-1))
            if self.neural:
                slope = slope + model.neural_terms(state, ctx)[:, self.latent_columns]
            return slope

        z = z0
        path = [z]
        for k in range(n - 1):
            slope = f(z, k)
            z = z + 0.5 * h * (slope + f(z + h * slope, k + 1))
            path.append(z)
        return torch.stack(path, dim=1)

    def project(self) -> None:
        """Each learned start moved into its state's range (the spec's ``bounds``; within
        :data:`RANGE_MARGIN` of its ends), where a step took it out: past a range's end a
        known rate law can have its pole (Goldbeter's ``(1 - M)/(K1 + 1 - M)`` at
        ``M = 1.005``)."""
        if self.range is not None:
            with torch.no_grad():
                self.start.clamp_(*self.range)

    def initial(self, start: torch.Tensor) -> torch.Tensor:
        """``start (condition, state)`` with each condition's latent initial values from its
        first piece where that piece begins at the data's first time."""
        out = start.clone()
        fitted = self.start.detach()
        for k, c in enumerate(self.condition.tolist()):
            if self.first_time[k] == self.t0:
                out[c] = torch.where(self.latent, fitted[k], out[c])
        return out
