"""The forecasts along a ridge the data do not bound: a term identified only by parsimony.

Where the run says a twin's term is identified only by parsimony
(:func:`ude.distill.identifiability.identified_by_parsimony`), the twin's structure with one
term more fits the data as well, and that term's coefficient is not identified: the data hold
the fit along a ridge on which the extra coefficient and the twin's own move together. The
enzyme's binding flux with the complex and the free enzyme unmeasured is the example: beside
the twin's ``-kf E S``, an unbinding ``kr C`` fits as well from ``kr = 0`` (the twin) out to
rapid equilibrium, the data fixing the quasi-steady state's ``K_M`` and little of the binding's
speed. Neither part of the structure mixture sees that ridge. The larger structure weighs
little (the criterion charges it for a term the data do not need: 0.4 % of the weight in the
benchmark's 50-time-point cell), and one Laplace approximation is a straight line through one
point of a curved ridge. The band is then the twin's alone, and a forecast from a new state
where the binding's speed matters (a fresh assay, no complex yet) runs outside it: that cell's
band covered 0.68 of the true forecast.

:func:`ridge_profiles` traces each such ridge as a profile likelihood: the extra coefficient
(order one: the twin's coefficients are scaled, :func:`ude.twin.symbolic.twin_spec`) is held
at 0, where the larger structure is the twin, and then at ``±10^k`` for ``k`` from ``-2`` to
``4`` by half decades. At each value the structure's other parameters are refitted, starting
from the previous value's optimum. Each side stops at its first value whose fit (the
criterion's data term ``n log(NMSE)``) is more than ``chi2_1(level)`` above the best along the
profile (3.84 at 0.95), or at its first failed solve. The values within that margin form the
likelihood-ratio confidence region of the extra coefficient. :func:`widen` widens a band
until it holds each such value's forecast, and the noisy band until it holds that forecast
plus the observation noise's quantile. This bounds the band from outside (Kreutz et al. 2012,
BMC Syst. Biol. 6:120, profile the prediction itself), and it is cheap: one refit per value.
On the 50-time-point cell the extra coefficient stays within 0.52 units of the best from 0 to
-10^4; the widened band holds 1.00 of the true forecast of S and P (0.68 before), its mean
width 0.058 -> 0.062 of a range (docs/benchmark.md, 987bcfb).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ude.data.measurements import Measurements
from ude.model.hybrid import HybridODE
from ude.model.solver import SolverFailed

EXPONENTS = tuple(np.arange(-2.0, 4.01, 0.5))
"""The extra coefficient's magnitudes along each side of the profile, as powers of ten."""


@dataclass
class RidgeProfile:
    """One profiled structure: the twin's with ``term`` added to ``target``, its coefficient
    ``parameter`` held at each of ``values`` in turn; ``fits``: the fit part
    (``n log(NMSE)``) at each, minus the best of them; ``models``: each value's refitted
    model (None: its solve failed)."""

    target: str
    term: str
    parameter: str
    scored: Any = None
    values: list[float] = field(default_factory=list)
    fits: list[float] = field(default_factory=list)
    models: list[HybridODE | None] = field(default_factory=list)

    def within(self, margin: float) -> list[int]:
        """The indices of the values whose fit is within ``margin`` of the best."""
        return [i for i, f in enumerate(self.fits) if f <= margin and self.models[i] is not None]

    def coefficients(self, margin: float) -> dict[tuple[str, int], tuple[float, float]]:
        """``{(target, term index): (lowest, highest)}``: each coefficient of the structure
        in the twin's plain units over the values within ``margin``."""
        out: dict[tuple[str, int], tuple[float, float]] = {}
        for i in self.within(margin):
            learned = self.models[i].parameters_
            for name, own in self.scored.candidate.info.get("owner", {}).items():
                if own.constant is not None or name not in learned.learned:
                    continue
                v = float(learned.value(name).detach()) * own.scale
                lo, hi = out.get((own.target, own.index), (v, v))
                out[(own.target, own.index)] = (min(lo, v), max(hi, v))
        return out

    def as_dict(self, margin: float) -> dict[str, Any]:
        """For ``distill.json``: the values tried, their fits, and the range kept."""
        kept = [self.values[i] for i in self.within(margin)]
        end = float(10.0 ** EXPONENTS[-1])
        return {
            "target": self.target,
            "term": self.term,
            "parameter": self.parameter,
            "values": [float(f"{v:.6g}") for v in self.values],
            "fit_above_best": [round(f, 3) if math.isfinite(f) else None for f in self.fits],
            "margin": round(margin, 3),
            "kept_from": min(kept) if kept else None,
            "kept_to": max(kept) if kept else None,
            # the side's last value still within the margin: the region runs on past it
            "open_below": bool(kept) and bool(min(kept) <= -end),
            "open_above": bool(kept) and bool(max(kept) >= end),
        }


def chi2_margin(level: float) -> float:
    """The likelihood-ratio margin of a one-parameter region at ``level``:
    ``chi2_1^{-1}(level)`` (3.84 at 0.95)."""
    from scipy.stats import chi2

    return float(chi2.ppf(level, 1))


def _extra_parameter(result: Any, scored: Any) -> tuple[str, str] | None:
    """The coefficient (parameter name) and target of the one term ``scored`` has beyond the
    twin's structure (:func:`ude.distill.identifiability.one_term_larger`); None where it has
    not exactly one such term with a scalar coefficient."""
    from ude.distill.identifiability import one_term_larger

    added = one_term_larger(result.chosen, scored)
    if added is None or scored.refit.model is None:
        return None
    learned = scored.refit.model.parameters_.learned
    for name, own in scored.candidate.info.get("owner", {}).items():
        if own.constant is None and (own.target, own.index) == added:
            return (name, own.target) if name in learned and learned[name].numel() == 1 else None
    return None


def _start_at_twin(superset: HybridODE, twin: HybridODE) -> HybridODE:
    """A copy of ``superset``'s model with every parameter the twin's model shares (its
    coefficients, constants, initial states and noise levels) at the twin's values."""
    model = copy.deepcopy(superset)
    theirs = dict(twin.named_parameters())
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key in theirs and theirs[key].shape == p.shape:
                p.copy_(theirs[key])
    return model


def _profile_side(
    model: HybridODE,
    name: str,
    values: list[float],
    refit: Any,
    measurements: Measurements,
    margin: float,
    best: float,
) -> list[tuple[float, float, HybridODE | None]]:
    """The profile along ``values`` in turn from ``model``'s parameters (continuation);
    stops after the first value more than ``margin`` above the best fit so far, or whose
    solve fails."""
    out: list[tuple[float, float, HybridODE | None]] = []
    model = copy.deepcopy(model)
    param = model.parameters_.learned[name]
    param.requires_grad_(False)  # held; the others refitted
    for v in values:
        with torch.no_grad():
            param.fill_(v)  # a coefficient is unbounded: its raw value is its value
        fit = refit.continue_fit(model, measurements)
        out.append((v, fit, copy.deepcopy(model) if math.isfinite(fit) else None))
        best = min(best, fit)
        if not math.isfinite(fit) or fit - best > margin:
            break
    return out


def ridge_profiles(
    result: Any, measurements: Measurements, refit: Any, level: float = 0.95
) -> list[RidgeProfile]:
    """The profile of each structure the run named as identifying a twin's term only by
    parsimony (``result.identifiability["by_parsimony"]``; see the module); ``refit``: a
    :class:`ude.distill.refit.TwinRefit` whose :meth:`continue_fit` refits each value."""
    named = (getattr(result, "identifiability", None) or {}).get("by_parsimony") or []
    margin = chi2_margin(level)
    out = []
    for entry in named:
        scored = next((s for s in result.path if result.describe(s) == entry["structure"]), None)
        found = None if scored is None else _extra_parameter(result, scored)
        if found is None:
            continue
        name, target = found
        start = _start_at_twin(scored.refit.model, result.model)
        first = _profile_side(start, name, [0.0], refit, measurements, margin, math.inf)
        v0, f0, m0 = first[0]
        if m0 is None:
            continue
        points = [(v0, f0, m0)]
        for sign in (1.0, -1.0):
            side = [float(sign * 10.0**k) for k in EXPONENTS]
            best = min(f for _, f, _ in points)
            points += _profile_side(m0, name, side, refit, measurements, margin, best)
        points.sort(key=lambda p: p[0])
        best = min(f for _, f, _ in points)
        out.append(
            RidgeProfile(
                target=target,
                term=entry["term"],
                parameter=name,
                scored=scored,
                values=[v for v, _, _ in points],
                fits=[f - best for _, f, _ in points],
                models=[m for _, _, m in points],
            )
        )
    return out


def widen(
    band: Any,
    profiles: list[RidgeProfile],
    times: np.ndarray,
    initial: np.ndarray | None,
    conditions: list[int] | None,
) -> list[dict[str, Any]]:
    """Widen ``band`` (a :class:`ude.uq.mixture.PredictiveBand`, in place) to hold the
    forecast of every profiled value within the margin of its level, over ``times`` from
    ``initial (condition, state)`` with ``conditions``' inputs (or each model's own fitted
    initial states); the noisy band to hold each forecast plus the observation noise's
    central quantile. Returns each profile's record for ``distill.json``, with how many of
    its forecasts failed to solve (left out)."""
    from scipy.stats import norm

    margin = chi2_margin(band.level)
    z = float(norm.ppf(0.5 + band.level / 2))
    records = []
    for profile in profiles:
        record = profile.as_dict(margin)
        failed = 0
        for i in profile.within(margin):
            states = _forecast(profile.models[i], times, initial, conditions)
            if states is None:
                failed += 1
                continue
            band.state_lower = np.minimum(band.state_lower, states)
            band.state_upper = np.maximum(band.state_upper, states)
            band.lower = np.minimum(band.lower, states - z * band.noise)
            band.upper = np.maximum(band.upper, states + z * band.noise)
        record["forecasts_failed"] = failed
        records.append(record)
    return records


@torch.no_grad()
def _forecast(
    model: HybridODE, times: np.ndarray, initial: np.ndarray | None, conditions: list[int] | None
) -> np.ndarray | None:
    """States ``(condition, time, state)``; None where the solve fails or blows up."""
    dtype = model.initial.dtype
    t = torch.as_tensor(times, dtype=dtype)
    if initial is None:
        cond = torch.arange(model.initial.shape[0])
        y0 = None
    else:
        cond = torch.as_tensor(list(range(len(initial))) if conditions is None else conditions)
        y0 = torch.as_tensor(initial, dtype=dtype)
    try:
        out = model.simulate(t, cond, y0=y0).cpu().numpy()
    except SolverFailed:
        return None
    return out if np.isfinite(out).all() else None
