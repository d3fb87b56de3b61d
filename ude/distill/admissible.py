"""Twins whose neural reactions keep their species non-negative.

A neural reaction's network learns the flux of a reaction whose reactants and products the user
wrote down; a reaction cannot consume a species that is not there. So a species such a reaction
consumes or produces, when it is a concentration (its data stay at or above zero:
:func:`ude.distill.distiller.concentrations`), cannot be driven below zero: wherever it is zero,
its rate of change must not be negative. A candidate twin that breaks this fits the data only
where the trajectory stays away from zero, and predicts negative amounts from other starts: a
binding flux ``E + S -> C`` written as ``c*C`` or ``c*S`` still consumes free enzyme (or
substrate) where there is none.

A state whose equation a network completes without a reaction is checked only where the spec
declares it an amount (``nonnegative: [C, M, X]``): otherwise nothing the user wrote says it
is one (a response, a biomarker: the virtual-population example's true drug effect
``-Emax*A/(A + EC50)`` takes the response below zero where it is zero, and its data reach
zero). Goldbeter's cyclin C, whose degradation a network learns: a twin ``-c*M*X/(K + M)``
degrades cyclin that is not there, where the true ``-vd*X*C/(Kd + C)`` stops at C = 0.

The check runs on the points the network was sampled at along the trained trajectories: for
each concentration, the twin's rate of change of it on the face where it is set to zero (the
other states at their sampled values, concentrations clipped at zero). A rate below
``-tolerance`` times that state's largest rate of change along the trajectories breaks it.

What the user wrote is not second-guessed: a state whose face the known terms alone already
drive negative (a constant drain, a known term that ignores its own state) is not checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ude.distill.refit import RefitResult
from ude.distill.sampling import Samples
from ude.model.hybrid import HybridODE
from ude.spec.model_spec import ModelSpec

TOLERANCE = 1e-3
"""A concentration's rate on its zero face may dip below zero by this share of its largest rate
along the trajectories (rounding, a coefficient refitted to ~0) before a twin is refused."""


@dataclass
class Faces:
    """The points each checked concentration is zero at: ``points[i] (point, state)`` for the
    state index ``i`` (the trajectory samples with that state set to zero), their
    ``conditions (point,)``, and each checked state's rate ``scale`` (its largest rate of
    change along the trajectories)."""

    points: dict[int, np.ndarray]
    conditions: np.ndarray
    scale: dict[int, float]
    states: list[str]
    tolerance: float = TOLERANCE

    def breach(self, model: HybridODE) -> str | None:
        """Where ``model`` (a twin) drives a concentration below zero: ``"dS/dt = -0.3 at S
        = 0"`` for the worst such state, or None where it keeps them all non-negative."""
        worst: tuple[float, str] | None = None
        dtype = model.initial.dtype
        with torch.no_grad():
            context = model.context(torch.as_tensor(self.conditions))
            for i, points in self.points.items():
                y = torch.as_tensor(points, dtype=dtype)
                rate = model.rhs(y, context)[:, i].cpu().numpy()
                low = float(np.min(rate)) if rate.size else 0.0
                if not np.isfinite(low):
                    continue  # a rate law undefined at zero (the refit's own solve decides)
                depth = -low / self.scale[i]
                if depth > self.tolerance and (worst is None or depth > worst[0]):
                    state = self.states[i]
                    worst = (depth, f"d{state}/dt = {low:.3g} at {state} = 0")
        return None if worst is None else worst[1]


def reaction_species(spec: ModelSpec, states: list[str]) -> np.ndarray:
    """``(state,)``: the species that a neural reaction of ``spec`` consumes or produces."""
    named = {s for r in spec.reactions if r.neural for s in (*r.reactants, *r.products)}
    return np.array([s in named for s in states], dtype=bool)


def amounts(spec: ModelSpec, states: list[str]) -> np.ndarray:
    """``(state,)``: the states a twin must keep non-negative: a neural reaction's species
    (:func:`reaction_species`) and those the spec declares ``nonnegative``."""
    declared = np.array([s in spec.nonnegative for s in states], dtype=bool)
    return reaction_species(spec, states) | declared


def zero_faces(
    model: HybridODE,
    samples: Samples,
    concentration: np.ndarray,
    checked: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
) -> Faces:
    """The faces of the ``checked (state,)`` concentrations (default: every concentration,
    ``concentration (state,)``) that the trained ``model``'s known terms keep non-negative, at
    its trajectory samples, every concentration clipped at zero there. A concentration that is
    not checked is clipped too: SEIR's infected fraction dips below zero along a noisy fit,
    and the true incidence ``beta*I*S`` then takes the exposed below zero where there are none
    (it was refused at 20 % and 30 % noise and with 15 time points)."""
    n = len(samples.states)
    keep = samples.on_trajectory
    checked = concentration if checked is None else np.asarray(checked, dtype=bool) & concentration
    base = np.array(samples.X[keep][:, :n], dtype=float, copy=True)
    base[:, concentration] = np.maximum(base[:, concentration], 0.0)
    conditions = np.asarray(samples.condition[keep], dtype=np.int64)
    dtype = model.initial.dtype
    points, scale = {}, {}
    with torch.no_grad():
        context = model.context(torch.as_tensor(conditions))
        rates = model.rhs(torch.as_tensor(base, dtype=dtype), context).cpu().numpy()
        for i in np.flatnonzero(checked):
            face = base.copy()
            face[:, i] = 0.0
            known = model.known_terms(torch.as_tensor(face, dtype=dtype), context)[:, i]
            size = float(np.max(np.abs(rates[:, i]))) if len(rates) else 0.0
            if size == 0 or not np.isfinite(size):
                continue
            if float(known.min()) < -tolerance * size:
                continue  # the known terms alone leave this face: not the twin's to keep
            points[int(i)], scale[int(i)] = face, size
    return Faces(points, conditions, scale, list(samples.states), tolerance)


def admitted(result: RefitResult, faces: Faces | None) -> RefitResult:
    """``result`` as it is, or refused (not ``ok``, NMSE ∞, ``refused``: where) when its
    twin drives a concentration below zero on ``faces`` (None: no check)."""
    if faces is None or not result.ok or result.model is None:
        return result
    why = faces.breach(result.model)
    if why is None:
        return result
    return replace(result, ok=False, nmse=math.inf, refused=why, refused_nmse=result.nmse)
