"""Integral matching: scoring candidate supports on the data, without an ODE solve.

Along the fitted trajectory ``x̂(t)`` of the UDE, a candidate's terms ``θ_j`` integrate to
``F_j(t) = ∫_{t0}^{t} θ_j(x̂) dτ``. For a directly measured state ``s`` the UDE satisfies
``x̂_s(t) = x̂_s(t0) + ∫ known_s + ∫ network_s``, so the data obey, up to noise,

    d_s(t) - x̂_s(t) + ∫ network_s dτ  =  a_c + Σ_j w_j F_j(t)

with a free intercept ``a_c`` per condition (its initial state) when the candidate's terms are
right. This is linear in ``w``: every support is scored by least squares and an information
criterion on the *data's* residuals, in microseconds. The library is evaluated on the
denoised trajectory, and the target is the data, not the network's output, so a network that
is poorly identified off the directions the data constrain does not mislead the ranking.

Targets that are not measured directly (latent states, observables that are expressions) have
no data of their own; their problems regress the trajectory's own missing part instead. After
the first refits, the problems are rebuilt along the best refitted twin's trajectory, which
removes what the network's errors put into the UDE's trajectory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import cumulative_trapezoid

from ude.data.doses import dosed
from ude.data.measurements import Measurements
from ude.distill.sparse import Candidate
from ude.errors import UdeError
from ude.fit import predict
from ude.model.hybrid import HybridODE

LATENT_RESOLUTION = 1e-3
"""Relative RMS below which a latent target's integral residual counts as zero: above the
quadrature error of the trajectory grid, below what tells near-collinear terms apart."""


@dataclass
class IntegralProblem:
    """One target's integral regression: ``y (point,) ≈ a[condition] + F (point, term) w``.

    ``from_data``: whether ``y`` holds measurements (else the integrated network output).
    """

    F: np.ndarray
    y: np.ndarray
    condition: np.ndarray
    terms: list[str]
    from_data: bool

    def __post_init__(self) -> None:
        self.levels = np.unique(self.condition)
        self.dummies = (self.condition[:, None] == self.levels[None, :]).astype(float)
        scale = np.sqrt(np.mean(self.F**2, axis=0))
        self.col_scale = np.where(scale > 0, scale, 1.0)

    @property
    def n_points(self) -> int:
        return len(self.y)

    def lstsq(self, support: Sequence[int]) -> tuple[np.ndarray, float]:
        """Coefficients ``(term,)`` (zero off ``support``) and the residual sum of squares."""
        s = list(support)
        A = np.concatenate([self.dummies, self.F[:, s] / self.col_scale[s]], axis=1)
        w, *_ = np.linalg.lstsq(A, self.y, rcond=None)
        coef = np.zeros(self.F.shape[1])
        coef[s] = w[self.dummies.shape[1] :] / self.col_scale[s]
        r = self.y - A @ w
        return coef, float(r @ r)

    def criterion(self, support: Sequence[int], kind: str = "bic") -> tuple[np.ndarray, float]:
        """Coefficients and ``n log(RSS/n) + penalty(k)`` with ``k`` the terms + intercepts."""
        from ude.distill.selection import information_criterion

        coef, rss = self.lstsq(support)
        n = self.n_points
        if not self.from_data:
            # no noise to measure the fit against: residuals under 0.1 % of the signal's RMS
            # (the quadrature error of the trajectory grid) count as a perfect fit
            rss = max(rss, n * (LATENT_RESOLUTION * float(np.sqrt(np.mean(self.y**2)))) ** 2)
        k = len(support) + len(self.levels)
        return coef, information_criterion(max(rss / n, 1e-300), n, k, kind)


def integral_problems(
    model: HybridODE,
    measurements: Measurements,
    theta: Callable[[np.ndarray], dict[str, tuple[np.ndarray, list[str]]]],
    trajectory: HybridODE | None = None,
    n_grid: int = 200,
) -> dict[str, IntegralProblem]:
    """The integral problem of every network target of ``model`` along the solution of
    ``trajectory`` (default: ``model`` itself; a refitted twin gives its own trajectory).

    ``theta(X)`` maps network inputs ``X (point, state + input)`` to each target's library
    matrix and term names. The known terms are ``model``'s; on the data
    ``d_s(t) - ∫ known_s = a_c + Σ_j w_j ∫ θ_j`` (latent targets: ``x̂_s`` instead of ``d_s``).
    A neural reaction's flux changes several states: their rows are stacked, each scaled by
    the state's stoichiometric change and with an intercept per condition and state.
    """
    traj = trajectory if trajectory is not None else model
    times = measurements.times
    grid = np.linspace(float(times[0]), float(times[-1]), n_grid)
    on_grid, _ = predict(traj, grid)  # (condition, time, state)
    at_data, _ = predict(traj, times)
    n_c, _, n_s = on_grid.shape
    flat = on_grid.reshape(-1, n_s)
    with torch.no_grad():
        y = torch.as_tensor(flat, dtype=model.initial.dtype, device=model.initial.device)
        ctx = model.context(torch.arange(n_c, device=y.device).repeat_interleave(n_grid))
        known = model.known_terms(y, ctx).cpu().numpy().reshape(n_c, n_grid, n_s)
        inputs = ctx[:, : len(model.spec.inputs)].cpu().numpy()
    library = theta(np.concatenate([flat, inputs], axis=1))
    identity = {
        o: i
        for i, o in enumerate(measurements.observables)
        if o in model.spec.states and o not in model.spec.observables
    }
    routes = model.spec.neural_routes()
    given = [dosed(d, model.spec.states, times) for d in measurements.schedules()]
    out = {}
    for target, (Theta, names) in library.items():
        Theta = Theta.reshape(n_c, n_grid, -1)
        cum_theta = cumulative_trapezoid(Theta, grid, axis=1, initial=0.0)
        F = [np.stack([np.interp(times, grid, col) for col in cum.T], axis=1) for cum in cum_theta]
        # a flux enters every state it changes: stack those states' rows, the measured ones
        # when there are any (the others only echo the trajectory), each with its own intercept
        changes = routes[target]
        measured = [s for s in changes if s in identity]
        F_rows, y_rows, cond_rows = [], [], []
        for state in measured or list(changes):
            s = model.spec.states.index(state)
            for c in range(n_c):
                known_c = np.interp(
                    times, grid, cumulative_trapezoid(known[c, :, s], grid, initial=0.0)
                )
                known_c += given[c][:, s]  # what doses put in is known too
                if state in identity:
                    data = measurements.values[c, :, :, identity[state]]  # (time, replicate)
                    t_idx, _ = np.nonzero(np.isfinite(data))
                    y_c = data[np.isfinite(data)] - known_c[t_idx]
                else:
                    t_idx = np.arange(len(times))
                    y_c = at_data[c, :, s] - known_c
                F_rows.append(changes[state] * F[c][t_idx])
                y_rows.append(y_c)
                cond_rows.append(np.full(len(t_idx), c * n_s + s))
        out[target] = IntegralProblem(
            F=np.concatenate(F_rows),
            y=np.concatenate(y_rows),
            condition=np.concatenate(cond_rows),
            terms=list(names),
            from_data=bool(measured),
        )
    return out


def screen_score(
    integral: dict[str, IntegralProblem], candidate: Candidate, kind: str = "bic"
) -> float:
    """The candidate's summed integral criterion over the targets measured directly."""
    total = 0.0
    for t, c in candidate.coef.items():
        if t in integral and integral[t].from_data:
            total += integral[t].criterion(np.flatnonzero(c), kind)[1]
    return total


class IntegralPath:
    """Candidate supports ranked by integral matching on the data.

    Per target, every support of up to ``max_terms`` library terms is scored, together with
    the supports of forward stepwise selection up to ``stepwise_terms`` (past
    ``max_enumerate`` supports, stepwise selection alone). Joint candidates combine each
    target's supports whose summed criterion is within ``margin`` of the best combination;
    the ``n_joint`` sparsest of them are returned (ties: the better score first), with the
    integral least-squares coefficients as the refit's start.

    The margin is wide because the score is linearised along one trajectory: models within a
    few units of each other swap places once refitted through the ODE.

    Args:
        max_terms: largest support per target that is enumerated exhaustively.
        per_target: supports kept per target (the best-scored).
        n_joint: joint candidates returned.
        margin: criterion units above the best combination still proposed.
        stepwise_terms: forward stepwise selection proposes supports up to this size.
        criterion: ``bic`` or ``aicc``.
        max_enumerate: enumerate at most this many supports per target.
    """

    name = "integral"
    source = "data"

    def __init__(
        self,
        max_terms: int = 2,
        per_target: int = 8,
        n_joint: int = 8,
        margin: float = 15.0,
        stepwise_terms: int = 6,
        criterion: str = "bic",
        max_enumerate: int = 20000,
    ):
        if max_terms < 1 or per_target < 1 or n_joint < 1 or margin < 0:
            raise UdeError(
                f"max_terms={max_terms}, per_target={per_target}, n_joint={n_joint}, "
                f"margin={margin}",
                source="distill.paths.integral",
                fix="counts at least 1, margin at least 0",
            )
        self.max_terms = max_terms
        self.per_target = per_target
        self.n_joint = n_joint
        self.margin = margin
        self.stepwise_terms = stepwise_terms
        self.criterion = criterion
        self.max_enumerate = max_enumerate

    def _supports(self, n_terms: int) -> list[tuple[int, ...]]:
        count = sum(math.comb(n_terms, k) for k in range(1, self.max_terms + 1))
        if count > self.max_enumerate:
            return [(j,) for j in range(n_terms)]
        return [
            s
            for k in range(1, min(self.max_terms, n_terms) + 1)
            for s in itertools.combinations(range(n_terms), k)
        ]

    def _stepwise(self, p: IntegralProblem) -> list[tuple[int, ...]]:
        """Forward selection: add the term that lowers the criterion most, up to
        ``stepwise_terms`` terms; every step's support."""
        support: list[int] = []
        out = []
        for _ in range(min(self.stepwise_terms, p.F.shape[1])):
            rest = [j for j in range(p.F.shape[1]) if j not in support]
            scores = [p.criterion([*support, j], self.criterion)[1] for j in rest]
            support.append(rest[int(np.argmin(scores))])
            out.append(tuple(sorted(support)))
        return out

    def ranked(self, p: IntegralProblem) -> list[tuple[float, tuple[int, ...], np.ndarray]]:
        """Scored supports of one target, best first, ``(criterion, support, coef)``."""
        seen = {}
        for s in [*self._supports(p.F.shape[1]), *self._stepwise(p)]:
            if s not in seen:
                coef, crit = p.criterion(s, self.criterion)
                seen[s] = (crit, s, coef)
        return sorted(seen.values(), key=lambda r: (r[0], len(r[1])))

    def candidates(self, integral: dict[str, IntegralProblem]) -> list[Candidate]:
        targets = list(integral)
        options = [self.ranked(integral[t])[: self.per_target] for t in targets]
        floor = sum(o[0][0] for o in options)
        # combinations within the margin: a beam over targets, pruned by the best remainder
        rest = np.cumsum([o[0][0] for o in options][::-1])[::-1].tolist() + [0.0]
        beam: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
        for k, opts in enumerate(options):
            beam = [
                (score + o[0], (*idx, i))
                for score, idx in beam
                for i, o in enumerate(opts)
                if score + o[0] + rest[k + 1] <= floor + self.margin
            ]
            beam = sorted(beam)[:5000]  # many near-ties over many targets: keep the best

        def size(idx: tuple[int, ...]) -> int:
            return sum(len(options[k][i][1]) for k, i in enumerate(idx))

        beam.sort(key=lambda b: (size(b[1]), b[0]))
        out = []
        for score, idx in beam[: self.n_joint]:
            coef = {
                t: options[k][i][2].copy()
                for k, (t, i) in enumerate(zip(targets, idx, strict=True))
            }
            out.append(Candidate(coef, self.name, info={"integral_criterion": score}))
        return out
