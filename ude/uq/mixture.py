"""Structure averaging: the twin's predictive band as a mixture over the refitted candidate
structures, each weighted by its model weight, each with its own parameter uncertainty, plus
the observation noise.

The weights (:func:`structure_weights`). With the structure bootstrap
(:mod:`ude.uq.structure_bootstrap`), every structure it knows (the selection's refits and
those a resample's screen led it to refit) weighs its ``bootstrap_weight``: its evidence
weight ``exp(-criterion/2)`` on each resample of the data, averaged over the resamples. That
is the bagged posterior of the structures (Huggins & Miller 2023, "Reproducible model
selection using bagged posteriors", Bayesian Anal. 18:79): the one-data-set evidence weight
treats the criterion's differences as exact, so a gap of a few units that a different draw of
the noise would reverse reads as certainty (Lotka-Volterra at 5 % noise, seed 5: evidence 0.62
for the chosen structure, which 15 % of the resamples choose, and 0.01 for the truth); the
bagged weight is spread over every structure the data's resamples support, and it is stable
from one realisation of the data to the next where the evidence weight swings. Its share
of wins (``bootstrap_share``) is not used: a structure that is a close second on every
resample wins none and would be left out, where it is a genuine rival. Without the bootstrap
each structure of the selection's path weighs its evidence weight
(:func:`ude.distill.selection.evidence_weights`).

Each structure whose weight is above ``floor`` contributes ``round(weight_k · n_samples)``
draws (the weights renormalised over those kept): parameter draws from the Laplace
approximation at its refit (:class:`ude.distill.uncertainty.LaplaceInterval`), each
simulated. The chosen structure uses the final, accurate refit.
A directly observed state then gets Gaussian noise at its observable's fitted level (the
refit's learned noise): the band is for a new measurement, not only for the trajectory.
Quantiles over the pooled draws give the band; the state band (no noise) is kept beside it.

Draws that blow up are part of the mixture, not errors to drop: a rival structure that diverges
past the data is exactly the uncertainty the band must show. A draw's trajectory counts up to
the output time before its solve froze it (:func:`ude.uq.escape.escape_index`); from then on
its value is unknown (in practice beyond every bound). At each time the band keeps its level
whatever those values are: with a share ``e`` of the draws escaped, the band is the central
``level / (1 - e)`` interval of the surviving draws, so it holds at least ``level`` of the
whole mixture even if every escaped draw lies outside it. Once ``e`` passes ``1 - level`` no
finite band can hold ``level``: the band is unbounded there (``±inf``; the plot's band stops,
``unbounded_from`` says when, and the report warns). A structure whose Laplace approximation
cannot be had (a singular Hessian) has no draws at all: it is left out, its weight named.

Where the structures disagree, the mixture is wider than any one of them; where one
structure holds all the weight it is that structure's Laplace band plus noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ude.data.measurements import Measurements
from ude.distill.distiller import Distillation
from ude.distill.uncertainty import LaplaceInterval, solve_stacked, stackable
from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.solver import SolverFailed
from ude.uq.escape import escape_index, escaped_quantiles, unbounded_from
from ude.uq.ridge import RidgeProfile, ridge_profiles, widen


@dataclass
class PredictiveBand:
    """A pointwise band over ``times (time,)``: ``lower``, ``median``, ``upper``
    ``(condition, time, state)`` for new measurements (observed states with noise), and
    ``state_lower``, ``state_upper`` for the noise-free trajectory; ``±inf`` where the band
    is unbounded, the median ``nan`` where half the draws have escaped. ``escaped
    (condition, time)``: the share of the mixture's draws that have blown up by each time.
    ``components``: each structure's weight, draws, draws that blew up and when;
    ``noise (state,)``: the standard deviation added (0: a latent state);
    ``left_out_weight``: the weight of structures that could not be simulated; ``profiles``:
    the ridges the band was widened along (:mod:`ude.uq.ridge`)."""

    times: np.ndarray
    lower: np.ndarray
    median: np.ndarray
    upper: np.ndarray
    state_lower: np.ndarray
    state_upper: np.ndarray
    level: float
    n_samples: int
    n_failed: int
    noise: np.ndarray
    escaped: np.ndarray
    components: list[dict[str, Any]] = field(default_factory=list)
    left_out_weight: float = 0.0
    profiles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bounded(self) -> np.ndarray:
        """``(condition, time)``: where the band is finite."""
        return np.isfinite(self.state_lower).all(-1) & np.isfinite(self.state_upper).all(-1)

    @property
    def usable(self) -> bool:
        """Whether there is a band to show: finite at the first time of every condition."""
        return bool(self.bounded[:, 0].all())

    def unbounded_from(self) -> list[float | None]:
        """Per condition, the first time at which the band is unbounded (None: never)."""
        return unbounded_from(self.bounded, self.times)

    def coverage(self, truth: np.ndarray, noisy: bool = False) -> float:
        """Fraction of ``truth (condition, time, state)`` inside the state band (``noisy``:
        the predictive band, for values with measurement noise), over the times where the
        band is bounded (an unbounded band covers trivially); nan where it never is."""
        lo, hi = (self.lower, self.upper) if noisy else (self.state_lower, self.state_upper)
        inside = (truth >= lo) & (truth <= hi)
        mask = np.broadcast_to(self.bounded[..., None], inside.shape)
        return float(np.mean(inside[mask])) if mask.any() else float("nan")

    def for_plot(self) -> PredictiveBand:
        """A copy for a plot: every value within a hundred times the largest median, so the
        unbounded parts shade the plot's whole height (an unbounded band says: anything),
        where ``±inf`` would leave a gap that reads as no uncertainty at all."""
        centre = self.median[np.isfinite(self.median)]
        far = 100 * max(float(np.abs(centre).max()) if centre.size else 1.0, 1.0)
        ends = ("lower", "upper", "state_lower", "state_upper")
        return replace(self, **{k: np.clip(getattr(self, k), -far, far) for k in ends})

    def mean_width(self) -> float:
        """Mean width of the predictive band where it is bounded."""
        mask = np.broadcast_to(self.bounded[..., None], self.upper.shape)
        return float(np.mean((self.upper - self.lower)[mask])) if mask.any() else float("nan")


def observation_noise(model: HybridODE, states: list[str]) -> np.ndarray:
    """``(state,)``: the fitted noise standard deviation of each state measured directly
    (its observable is the state itself), 0 for the others."""
    with torch.no_grad():
        noise = model.noise.detach().cpu().numpy().reshape(-1)
    out = np.zeros(len(states))
    for i, s in enumerate(states):
        if s in model.observable_names and s not in model.spec.observables:
            out[i] = float(noise[model.observable_names.index(s)])
    return out


class StructureMixture:
    """Predictive bands averaged over the refitted structures (see the module).

    Args:
        n_samples: draws in all, shared out by weight.
        floor: structures with a weight (:func:`structure_weights`) at or below this are left
            out (the reported twin's structure never is).
        level: the band's probability.
        seed: seeds the parameter draws and the noise.
        noise: add the observation noise (False: the band of the trajectories alone).
        weights: ``bootstrap``: the structure bootstrap's resample-averaged evidence weights
            where it ran (else the evidence weights); ``evidence``: the evidence weights on the
            data always (:func:`structure_weights`).
        profile: widen the band to hold the forecasts along each ridge the data do not
            bound, where the run named a term identified only by parsimony
            (:mod:`ude.uq.ridge`; each profiled value one refit of at most ``profile_iter``
            L-BFGS iterations).
    """

    def __init__(
        self,
        n_samples: int = 200,
        floor: float = 0.01,
        level: float = 0.95,
        seed: int = 0,
        noise: bool = True,
        weights: str = "bootstrap",
        profile: bool = True,
        profile_iter: int = 100,
    ):
        if weights not in WEIGHTS:
            raise UdeError(
                f"weights={weights!r} is not a choice",
                source="distill.uq.mixture.weights",
                fix=" or ".join(WEIGHTS),
            )
        self.weights = weights
        self.profile = profile
        self.profile_iter = profile_iter
        self.n_samples = n_samples
        self.floor = floor
        self.level = level
        self.seed = seed
        self.noise = noise

    def components(
        self, result: Distillation
    ) -> tuple[list[tuple[Any, float, HybridODE, str]], str]:
        """``(scored, weight, model, label)`` of each structure kept, heaviest first; the
        weights (:func:`structure_weights`) renormalised over them; and where they come from."""
        kept = []
        weighted, source = structure_weights(result, self.weights)
        for s, w, model, chosen in weighted:
            if chosen or (w > self.floor and s.refit.ok and model is not None):
                # the twin itself always counts
                label = "; ".join(f"d{t}: {e}" for t, e in result.describe(s).items())
                kept.append((s, max(float(w), self.floor) if chosen else float(w), model, label))
        total = sum(w for _, w, _, _ in kept)
        comps = [(s, w / total, m, lbl) for s, w, m, lbl in kept]
        return sorted(comps, key=lambda c: -c[1]), source

    def band(
        self,
        result: Distillation,
        measurements: Measurements,
        times: np.ndarray,
        initial: np.ndarray | None = None,
        conditions: list[int] | None = None,
    ) -> PredictiveBand:
        """The band over ``times (time,)`` from each structure's own fitted initial states
        (uncertain too), for the conditions of ``measurements`` (the data distilled on); or
        from ``initial (condition, state)`` with the inputs and parameters of ``conditions``
        (as :meth:`ude.distill.uncertainty.LaplaceInterval.forecast`)."""
        rng = np.random.default_rng(self.seed)
        pooled, escapes, info, left_out = [], [], [], 0.0
        comps, source = self.components(result)
        counts = _share(np.array([w for _, w, _, _ in comps]), self.n_samples)
        ready: dict[int, Any] = {}  # each structure's draws, prepared to simulate
        for k, ((_, w, model, label), n) in enumerate(zip(comps, counts, strict=True)):
            entry = {"discovered": label, "weight": round(w, 6), "n_samples": int(n)}
            entry["weight_from"] = source
            info.append(entry)
            if n == 0:
                entry |= {"n_failed": 0, "failed_share": 0.0}
                continue
            interval = LaplaceInterval(n_samples=int(n), level=self.level, seed=self.seed + k)
            try:
                ready[k] = (interval, interval.prepare(model, measurements, initial, conditions))
            except (RuntimeError, ValueError, np.linalg.LinAlgError, SolverFailed) as err:
                # no draws at all (the Laplace approximation failed): not a blow-up
                entry["left_out"] = f"{type(err).__name__}: {err}"
                left_out += w
        for k, (states, dead) in _simulated(ready, times).items():
            if states is None:  # its solve failed outright
                info[k]["left_out"] = f"SolverFailed: {dead}"
                left_out += comps[k][1]
                continue
            failed = ready[k][1].failed(states, dead)
            escape = escape_index(states, failed)
            blew = (escape < len(times)).any(axis=1)
            info[k]["n_failed"] = int(blew.sum())
            info[k]["failed_share"] = round(float(blew.mean()), 4)
            if blew.any():
                info[k]["first_failure"] = float(times[escape.min()])
            pooled.append(states)
            escapes.append(escape)
        states = result.twin.states
        noise = observation_noise(result.model, states) if self.noise else np.zeros(len(states))
        n_c = measurements.n_conditions if initial is None else len(initial)
        shape = (n_c, len(times), len(states))
        if pooled:
            draws = np.concatenate(pooled)  # (sample, condition, time, state)
            escape = np.concatenate(escapes)  # (sample, condition)
            alive = escape[:, :, None] > np.arange(len(times))  # (sample, condition, time)
            noisy = draws + noise * rng.standard_normal(draws.shape)
            s_lo, _, s_hi = escaped_quantiles(draws, alive, self.level)
            lo, med, hi = escaped_quantiles(noisy, alive, self.level)
            escaped = 1 - alive.mean(axis=0)
            n_failed = int((escape < len(times)).any(axis=1).sum())
        else:
            lo = hi = s_lo = s_hi = np.full(shape, np.nan)
            med = np.full(shape, np.nan)
            escaped, n_failed = np.ones(shape[:2]), 0
        band = PredictiveBand(
            times=np.asarray(times, dtype=float),
            lower=lo,
            median=med,
            upper=hi,
            state_lower=s_lo,
            state_upper=s_hi,
            level=self.level,
            n_samples=int(sum(counts)),
            n_failed=n_failed,
            noise=noise,
            escaped=escaped,
            components=info,
            left_out_weight=round(left_out, 6),
        )
        if self.profile:
            band.profiles = widen(
                band, self.ridges(result, measurements), times, initial, conditions
            )
        return band

    def ridges(self, result: Distillation, measurements: Measurements) -> list[RidgeProfile]:
        """The profiles along the ridges of the terms the run says are identified only by
        parsimony (:func:`ude.uq.ridge.ridge_profiles`), traced once per distillation."""
        if getattr(result, "ridges", None) is None:
            from ude.distill.refit import TwinRefit

            refit = TwinRefit(max_iter=self.profile_iter, tol=1e-7, criterion_tol=0.1)
            result.ridges = ridge_profiles(result, measurements, refit, self.level)
        return result.ridges


def _simulated(ready: dict[int, Any], times: np.ndarray) -> dict[int, tuple[Any, Any]]:
    """``{k: (states, dead)}`` of each prepared structure (``ready[k] = (interval,
    prepared)``), in their order: the structures whose solver steps on a fixed grid in one
    solve together (:func:`ude.distill.uncertainty.solve_stacked`: the solver's and the
    blow-up checks' cost per step paid once, not once per structure), each other one in its
    own. A solve that fails outright gives ``(None, why)``."""
    groups: dict[Any, list[int]] = {}
    for k, (_, prepared) in ready.items():
        key = stackable(prepared.model.solver)
        groups.setdefault(key if key is not None else ("own", k), []).append(k)
    out: dict[int, tuple[Any, Any]] = {}
    for ks in groups.values():
        if len(ks) > 1:
            try:
                solved = solve_stacked([ready[k][1] for k in ks], times)
                out.update(zip(ks, solved, strict=True))
                continue
            except SolverFailed:
                pass  # each on its own, with its own fallback
        for k in ks:
            interval, prepared = ready[k]
            try:
                out[k] = interval.solve(prepared, times)
            except (RuntimeError, ValueError, SolverFailed) as err:
                out[k] = (None, err)
    return dict(sorted(out.items()))


WEIGHTS = ("bootstrap", "evidence")
"""The choices of the mixture's weights (:func:`structure_weights`)."""


def structure_weights(
    result: Distillation, prefer: str = "bootstrap"
) -> tuple[list[tuple[Any, float, Any, bool]], str]:
    """The refitted structures with the weight the mixture gives them (see the module):
    ``(scored, weight, model, chosen)`` each (``model``: the final refit for the reported
    twin's structure, else the structure's own refit), and where the weights come from:
    ``"bootstrap"`` (the resample-averaged evidence weights of every structure the structure
    bootstrap refitted; with ``prefer="bootstrap"`` where it ran) or ``"evidence"`` (the
    path's evidence weights)."""
    found = getattr(result, "structure_bootstrap", None)
    if prefer == "bootstrap" and found is not None and found.weight:
        mine = result.chosen.candidate.support()
        out = [
            (result.chosen, found.weight.get(key, 0.0), result.model, True)
            if key == mine
            else (s.scored(), found.weight.get(key, 0.0), s.refit.model, False)
            for key, s in found.structures.items()
        ]
        if not any(chosen for *_, chosen in out):
            out.append((result.chosen, 0.0, result.model, True))
        return out, "bootstrap"
    weights = result.weights if result.weights is not None else np.ones(len(result.path))
    out = [
        (s, float(w), result.model if s is result.chosen else s.refit.model, s is result.chosen)
        for s, w in zip(result.path, weights, strict=True)
    ]
    return out, "evidence"


def _share(weights: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws shared out by ``weights`` (largest remainders), at least one to each
    structure whose share is at least half a draw."""
    raw = weights * n
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(raw - counts))[:rest]] += 1
    return counts
