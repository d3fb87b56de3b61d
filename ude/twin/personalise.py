"""A new subject's twin from a few measurements: MAP under the population, structure frozen.

The twin's equations, its shared parameters, its populations (median and spread) and its noise
levels are held. Each new subject (a condition of the new data) gets its own values of the
individual parameters and the initial states of its measured states, by maximum a posteriori:
the Gaussian negative log-likelihood of its measurements plus the population distributions'
negative log density of its random effects (:meth:`ude.model.parameters.SpecParameters.prior_nll`).
The initial states are individual too, under the population of the initial states the twin
fitted for its conditions (:func:`initial_population`): a Gaussian with their mean and
standard deviation, so that a subject whose first sample comes after the start does not trade
its initial state against its parameters. (On the virtual-population example, measured at 1, 2
and 4 h, a free initial response took the effect's constant 10-16 % below the truth and made
the forecast 3 to 4 times worse than that of the whole series; ``bench/personal.py``.) With no
measurement, a subject is the population's median; with many, its data decide. Initial states
the data give (``init_<state>`` in a conditions table) are held there; those of states the data
do not measure (latent ones), and those that every fitted condition shares, are held at the
twin's typical value (the median over its conditions). The band is the Laplace approximation at
the MAP (:mod:`ude.twin.band`), under the same priors.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ude.data.measurements import Measurements
from ude.distill.refit import TwinRefit
from ude.distill.uncertainty import laplace
from ude.errors import UdeError
from ude.model.parameters import MIN_SPREAD
from ude.spec.model_spec import ModelSpec, Parameter
from ude.twin.band import condition_gaussians
from ude.twin.symbolic import numeric_twin

if TYPE_CHECKING:
    from ude.twin.twin import Twin


def personal_spec(twin: Twin) -> ModelSpec:
    """The twin's spec for new subjects: every parameter fixed at its value, except the
    individual ones, learned per subject from the population's median (a population parameter
    under its distribution; one without a population from the typical value, by maximum
    likelihood); initial values default to the twin's typical ones."""
    params = {}
    for k, p in twin.spec.parameters.items():
        if p.values is None and not p.per_condition:
            params[k] = Parameter(p.value)
        else:
            params[k] = Parameter(
                p.value, learn=True, per_condition=True, population=p.population, spread=p.spread
            )
    typical = twin._initial(None, {}) if twin.conditions else dict(twin.spec.initial)
    return replace(twin.spec, parameters=params, initial=typical)


def initial_population(twin: Twin) -> dict[str, tuple[float, float]]:
    """Each state's population of initial states, from the initial values the twin fitted for
    its ``N`` conditions: their mean and the standard deviation of a new subject's value about
    it. That is the population's spread, net of each fit's error (the values' variance over
    the conditions, ``N - 1``, less the mean of their bands' variances of ``<state>(0)``: the
    spread of fitted values overstates the population's by each fit's noise), with the
    mean's own error (the values' variance over ``N``) added. It is 0 when all the values are
    one (within :data:`~ude.model.parameters.MIN_SPREAD` of its magnitude: the state is then
    held there), infinite with fewer than two conditions (no population to learn from: the
    data alone decide)."""
    out = {}
    for s in twin.states:
        x, error = [], []
        for c in twin.conditions:
            if s not in c.initial or not np.isfinite(c.initial[s]):
                continue
            x.append(c.initial[s])
            band, entry = c.band, f"{s}(0)"
            if band is not None and entry in band.entries:
                k = band.entries.index(entry)
                error.append(float(band.covariance[k, k]))
            else:
                error.append(0.0)
        if len(x) < 2:
            out[s] = (float(np.mean(x)) if x else np.nan, np.inf)
            continue
        mean, var = float(np.mean(x)), float(np.var(x, ddof=1))
        sd = float(np.sqrt(max(var - float(np.mean(error)), 0.0) + var / len(x)))
        out[s] = (mean, 0.0 if sd <= MIN_SPREAD * abs(mean) else sd)
    return out


def personalise(
    twin: Twin, measurements: Measurements, max_iter: int = 400, tol: float = 1e-9
) -> Twin:
    """The personal twin of each condition (new subject) of ``measurements``.

    Returns a :class:`~ude.twin.Twin` whose conditions are the new subjects: their individual
    values, fitted initial states, inputs, doses and band; the populations, shared values,
    noise levels and solver are the twin's. ``personal.fit`` says how it went: the subjects'
    normalised MSE on their measurements, L-BFGS iterations, wall and CPU seconds.
    """
    from ude.twin.twin import Twin, TwinCondition

    missing = [o for o in measurements.observables if o not in twin.noise]
    if missing:
        raise UdeError(
            f"the twin has no noise level for '{missing[0]}'",
            source=measurements.source,
            fix="measure the observables the twin was fitted on: "
            + ", ".join(twin.noise or twin.observed),
        )
    wall, cpu = time.perf_counter(), time.process_time()
    data = measurements.starting_at(twin.t0)
    spec = personal_spec(twin)
    population = initial_population(twin)
    mean = np.array([[population[s][0] for s in spec.states]] * data.n_conditions)
    sd = np.array([[population[s][1] for s in spec.states]] * data.n_conditions)
    latent = np.array([[s not in data.observables for s in spec.states]] * data.n_conditions)
    held = latent | (sd == 0)
    # from the typical subject (not the first sample, which may come hours after the start),
    # with the initial states the data give
    start = np.array([[spec.initial[s] for s in spec.states]] * data.n_conditions, dtype=float)
    for i, s in enumerate(spec.states):
        given = data.initial.get(s)
        if given is not None:
            start[:, i] = np.where(np.isfinite(given), given, start[:, i])
    refit = TwinRefit(
        max_iter=max_iter,
        tol=tol,
        method=twin.solver,
        learn_noise=False,
        learn_population=False,
    )
    noise = np.array([twin.noise[o] for o in data.observables])
    result = refit.fit(
        spec,
        data,
        start,
        noise,
        held_initial=held,
        initial_prior=(mean, np.where(held, np.inf, sd)),
    )
    if not result.ok:
        raise UdeError(
            "the personal twin's solve failed on these measurements",
            source=measurements.source,
            fix="check the measurements' units and times against the twin's data",
        )
    model = result.model
    bands = condition_gaussians(model, laplace(model, data).covariance)
    fitted = model.initial.detach().cpu().numpy()
    own = numeric_twin(spec, result.values, False, result.individual, result.population)
    own = replace(own, initial=dict(twin.spec.initial))
    conditions = [
        TwinCondition(
            name,
            {s: float(fitted[c, i]) for i, s in enumerate(spec.states)},
            {u: float(data.inputs[c, data.input_names.index(u)]) for u in spec.inputs},
            data.doses.get(name, ()),
            bands[c],
        )
        for c, name in enumerate(data.conditions)
    ]
    extra = {k: v for k, v in twin.extra.items() if k not in {"inclusion_probability"}}
    extra["personalised"] = {"twin": twin.source, "data": measurements.source}
    t_end = max(twin.t_end or twin.t0, float(data.times[-1]))
    personal = Twin(
        own, conditions, data.observables, twin.noise, twin.t0, twin.solver, extra, None, t_end
    )
    personal.fit = {
        "nmse": result.nmse,
        "n_points": result.n_points,
        "iterations": result.iterations,
        "seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "threads": torch.get_num_threads(),
    }
    return personal
