"""Credible intervals of the twin's coefficients: the Laplace approximation at the final
refit (:func:`ude.distill.uncertainty.laplace`), for twin.json's ``credible_intervals`` and
equations.md's coefficient ± interval table."""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.distill.distiller import Distillation
from ude.distill.selection import refitted_constants


def coefficient_intervals(
    result: Distillation, measurements: Measurements, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """``{parameter: {target, term, value, interval: [lo, hi]}}`` for each discovered
    coefficient of the twin: its refitted value ± the normal quantile times its Laplace
    standard deviation, in the twin's plain units. Empty when the Hessian cannot be had."""
    from ude.distill.uncertainty import laplace

    try:
        approx = laplace(result.model, measurements)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return {}
    sd = dict(zip(approx.names, np.sqrt(np.diag(approx.covariance)), strict=True))
    mean = dict(zip(approx.names, approx.mean, strict=True))
    z = NormalDist().inv_cdf((1 + level) / 2)
    owner = result.chosen.candidate.info.get("owner", {})
    values = result.refit.values
    constants = refitted_constants(result.chosen)
    for name, own in owner.items():  # the final refit's constants
        if own.constant is not None and name in values:
            constants.setdefault(own.target, {}).setdefault(own.index, {})[own.constant] = float(
                values[name]
            )
    out = {}
    for name, own in owner.items():
        # a coefficient is unbounded: its raw Laplace entry is its value
        if own.constant is not None or name not in mean:
            continue
        term = result.terms[own.target][own.index]
        consts = constants.get(own.target, {}).get(own.index)
        shown = str(term.numeric(consts)) if term.free else term.name
        value = float(values.get(name, mean[name])) * own.scale
        half = z * float(sd[name]) * abs(own.scale)
        out[name] = {
            "target": own.target,
            "term": shown,
            "value": value,
            "interval": [value - half, value + half],
        }
    return out


def intervals_markdown(intervals: dict[str, dict[str, Any]], level: float = 0.95) -> str:
    """equations.md's section: each discovered coefficient ± the half-width of its interval."""
    if not intervals:
        return ""
    lines = [
        f"## Coefficients with {level:.0%} credible intervals",
        "",
        "Laplace approximation at the final refit (parameter uncertainty of this structure).",
        "",
        "| state | term | coefficient | interval |",
        "|---|---|---|---|",
    ]
    for e in intervals.values():
        lo, hi = e["interval"]
        lines.append(
            f"| {e['target']} | {e['term']} | {e['value']:.4g} ± {(hi - lo) / 2:.2g} | "
            f"[{lo:.4g}, {hi:.4g}] |"
        )
    return "\n".join(lines) + "\n"
