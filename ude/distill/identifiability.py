"""Whether the data identify the discovered terms: the Fisher information of the refitted twin.

At the final refit's optimum the observed Fisher information is the Hessian of the summed
Gaussian NLL over the twin's learnable parameters (coefficients, constants, initial states,
noise levels; :func:`ude.distill.uncertainty.laplace`). Its regularised inverse gives each
discovered parameter's standard error with every other parameter free: a direction the data do
not constrain (a latent state's scale traded against a rate constant, two terms that move
together, a Hill ``n`` that the data never probe) shows as a large error. A term whose
parameters all have a relative standard error under ``threshold`` is identified; the report
says which are not, instead of presenting them as found.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.distill.twin import Owner
from ude.model.hybrid import HybridODE
from ude.spec.model_spec import Parameter

THRESHOLD = 0.5
"""Relative standard error above which a parameter is not identified: the 95 % interval of a
coefficient then includes zero, that of ``K`` spans more than a factor of seven."""


def _value(p: Parameter, raw: float) -> float:
    """A parameter's value from its raw (optimiser) value (:mod:`ude.model.parameters`)."""
    if p.min is not None and p.max is not None:
        return p.min + (p.max - p.min) / (1.0 + math.exp(-max(min(raw, 700.0), -700.0)))
    if p.min is not None:
        return p.min + math.exp(min(raw, 700.0))
    if p.max is not None:
        return p.max - math.exp(min(raw, 700.0))
    return raw


def relative_error(p: Parameter, raw: float, sd: float) -> float:
    """Half the width of the value's ±1 sd interval (mapped from the raw scale) over the
    value's magnitude."""
    value = _value(p, raw)
    spread = abs(_value(p, raw + sd) - _value(p, raw - sd)) / 2
    return spread / abs(value) if value != 0 else math.inf


def identifiability(
    model: HybridODE,
    measurements: Measurements,
    owner: dict[str, Owner],
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """Per target: each discovered parameter's value, standard error and relative error, and
    whether all of them are under ``threshold``. ``model``: the refitted twin; ``owner``: its
    discovered parameters (:func:`ude.distill.twin.twin_spec`)."""
    from ude.distill.uncertainty import laplace

    approx = laplace(model, measurements)
    index = {n: i for i, n in enumerate(approx.names)}
    sd = np.sqrt(np.clip(np.diag(approx.covariance), 0.0, None))
    targets: dict[str, dict[str, Any]] = {}
    for name, own in owner.items():
        if name not in index:
            continue
        i = index[name]
        p = model.spec.parameters[name]
        rel = relative_error(p, float(approx.mean[i]), float(sd[i]))
        entry = targets.setdefault(own.target, {"identified": True, "parameters": {}})
        entry["parameters"][name] = {
            "term": own.index,
            "constant": own.constant,
            "value": _value(p, float(approx.mean[i])) * (own.scale if own.constant is None else 1),
            "relative_error": rel if math.isfinite(rel) else None,
        }
        entry["identified"] &= bool(rel < threshold)
    return {"threshold": threshold, "n_floored": approx.n_floored, "targets": targets}
