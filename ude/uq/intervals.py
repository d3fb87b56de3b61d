"""Credible intervals of the twin's coefficients.

Two kinds, both from the Laplace approximation of a refit
(:func:`ude.distill.uncertainty.laplace`):

- :func:`coefficient_intervals`: each coefficient of the reported twin, given its structure
  (twin.json's ``credible_intervals``, equations.md's coefficient ± interval table), and
  :func:`constant_intervals` each rate-law constant's (``K``, a Hill ``n``) beside them;
- :func:`averaged_intervals`: each library term that a weighted structure of the
  :class:`ude.uq.StructureMixture` holds, averaged over the structures (twin.json's
  ``term_intervals``). A term's posterior is then a mixture: each structure that has it
  contributes its Gaussian at its weight, the structures without it a point mass at zero.
  Its central interval is what a Bayesian sparse regression reports for the coefficient
  (the BaSIC benchmark's definition): where the structures disagree on a term, its interval
  reaches zero; where one structure holds nearly all the weight, it is that structure's.
  Where a term is identified only by parsimony, each coefficient's interval also holds its
  values along the larger structure's profile (:mod:`ude.uq.ridge`), the region the data do
  not bound.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.distill.distiller import Distillation
from ude.distill.selection import Scored, refitted_constants


def structure_coefficients(
    result: Distillation,
    scored: Scored,
    model: Any,
    values: dict[str, float],
    measurements: Measurements,
) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(target, term index): {parameter, term, value, sd}}`` for each coefficient of the
    structure ``scored`` refitted as ``model`` (its parameters' raw ``values``): the
    refitted value and Laplace standard deviation in the twin's plain units, ``term`` the
    term with its constants at their refitted values. Empty when the Hessian cannot be had."""
    from ude.distill.uncertainty import laplace

    try:
        approx = laplace(model, measurements)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return {}
    sd = dict(zip(approx.names, np.sqrt(np.diag(approx.covariance)), strict=True))
    mean = dict(zip(approx.names, approx.mean, strict=True))
    owner = scored.candidate.info.get("owner", {})
    constants = refitted_constants(scored)
    for name, own in owner.items():  # the refit's own constants
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
        out[(own.target, own.index)] = {
            "parameter": name,
            "term": str(term.numeric(consts)) if term.free else term.name,
            "value": float(values.get(name, mean[name])) * own.scale,
            "sd": float(sd[name]) * abs(own.scale),
        }
    return out


def coefficient_intervals(
    result: Distillation, measurements: Measurements, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """``{parameter: {target, term, value, interval: [lo, hi]}}`` for each discovered
    coefficient of the twin: its refitted value ± the normal quantile times its Laplace
    standard deviation, in the twin's plain units. Empty when the Hessian cannot be had."""
    z = NormalDist().inv_cdf((1 + level) / 2)
    found = structure_coefficients(
        result, result.chosen, result.model, result.refit.values, measurements
    )
    return {
        e["parameter"]: {
            "target": target,
            "term": e["term"],
            "value": e["value"],
            "interval": [e["value"] - z * e["sd"], e["value"] + z * e["sd"]],
        }
        for (target, _), e in found.items()
    }


def constant_intervals(
    result: Distillation, measurements: Measurements, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """``{parameter: {target, term, constant, value, interval: [lo, hi]}}`` for each rate-law
    constant of the twin held between bounds (a Michaelis-Menten or Hill ``K``, a Hill
    ``n``): the central ``level`` interval of its Laplace marginal on its natural coordinate
    (:mod:`ude.uq.parameter_ranges`: the log of ``K``, ``n`` itself), truncated to its box as
    the band's draws are, in the constant's own units. The constant the data hold least is
    often one of these (a Michaelis-Menten ``K`` with doses below and around it), and a
    coefficient's interval alone does not show it. Empty when the Hessian cannot be had."""
    from scipy.stats import truncnorm

    from ude.distill.uncertainty import laplace

    try:
        approx = laplace(result.model, measurements)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return {}
    if approx.natural_mean is None or approx.natural_covariance is None:
        return {}
    ranges, tail = approx.ranges, (1 - level) / 2
    owner = result.chosen.candidate.info.get("owner", {})
    terms = structure_coefficients(
        result, result.chosen, result.model, result.refit.values, measurements
    )
    out = {}
    for i, name in enumerate(approx.names):
        own = owner.get(name)
        if own is None or own.constant is None or not ranges.box[i] or not approx.free[i]:
            continue
        mean, sd = approx.natural_mean[i], float(np.sqrt(approx.natural_covariance[i, i]))
        if not (np.isfinite(mean) and np.isfinite(sd) and sd > 0):
            continue
        a, b = (ranges.lower[i] - mean) / sd, (ranges.upper[i] - mean) / sd
        ends = truncnorm.ppf([tail, 1 - tail], a, b, loc=mean, scale=sd)
        value = (np.exp if ranges.log_box[i] else float)(mean)
        ends = np.exp(ends) if ranges.log_box[i] else ends
        shown = terms.get((own.target, own.index))
        out[name] = {
            "target": own.target,
            "term": shown["term"] if shown else result.terms[own.target][own.index].name,
            "constant": own.constant,
            "value": float(result.refit.values.get(name, value)),
            "interval": [float(ends[0]), float(ends[1])],
        }
    return out


def mixture_quantile(
    weights: np.ndarray, means: np.ndarray, sds: np.ndarray, zero: float, q: float
) -> float:
    """The ``q`` quantile of ``zero`` times a point mass at 0 plus ``weights[i]`` times the
    normal ``(means[i], sds[i])`` (an sd of 0: a point mass at the mean); the weights sum
    to ``1 - zero``."""
    lo = float(min((means - 12 * sds).min(), 0.0)) - 1e-12
    hi = float(max((means + 12 * sds).max(), 0.0)) + 1e-12
    tol = 1e-12 * max(1.0, float(np.abs(means).max()))
    normal = NormalDist()

    def cdf(x: float) -> float:
        below = [
            w * (normal.cdf((x - m) / s) if s > 0 else float(x >= m))
            for w, m, s in zip(weights, means, sds, strict=True)
        ]
        return float(sum(below)) + zero * float(x >= 0.0)

    if zero and cdf(-1e-300) < q <= cdf(0.0):  # inside the point mass at zero: exactly 0
        return 0.0
    for _ in range(200):  # bisection on the right-continuous cdf: its smallest x with cdf >= q
        mid = (lo + hi) / 2
        if cdf(mid) >= q:
            hi = mid
        else:
            lo = mid
        if hi - lo <= tol:
            break
    return hi


def averaged_intervals(
    result: Distillation, measurements: Measurements, mixture: Any
) -> tuple[dict[str, dict[str, dict[str, Any]]], float]:
    """``{target: {term: {weight, value, interval: [lo, hi], structures}}}`` for each library
    term held by a structure of ``mixture`` (:meth:`ude.uq.StructureMixture.components`: the
    structures above its weight floor, weights renormalised over them): ``weight`` the
    weight of the structures holding it, ``value`` the mean of its mixture posterior (see the
    module), ``interval`` the central ``mixture.level`` interval of it. ``term`` is written
    with the constants of its heaviest structure. A structure whose Laplace approximation
    cannot be had is left out and the weights renormalised over the others; the second value
    is the weight left out so."""
    comps, _ = mixture.components(result)
    held: dict[tuple[str, int], list[tuple[float, dict[str, Any]]]] = {}
    total, left_out = 0.0, 0.0
    for scored, weight, model, _ in comps:
        chosen = scored is result.chosen
        values = result.refit.values if chosen else scored.refit.values
        found = structure_coefficients(result, scored, model, values, measurements)
        if not found:
            left_out += weight
            continue
        total += weight
        for key, e in found.items():
            held.setdefault(key, []).append((weight, e))
    if not total:
        return {}, round(left_out, 6)
    alpha = (1 - mixture.level) / 2
    out: dict[str, dict[str, dict[str, Any]]] = {}
    entry_of: dict[tuple[str, int], dict[str, Any]] = {}
    for (target, index), entries in sorted(held.items()):
        w = np.array([weight for weight, _ in entries]) / total
        means = np.array([e["value"] for _, e in entries])
        sds = np.array([e["sd"] for _, e in entries])
        zero = max(0.0, 1.0 - float(w.sum()))
        heaviest = entries[int(np.argmax(w))][1]
        out.setdefault(target, {})[heaviest["term"]] = {
            "weight": round(float(w.sum()), 6),
            "value": float(np.dot(w, means)),
            "interval": [
                mixture_quantile(w, means, sds, zero, alpha),
                mixture_quantile(w, means, sds, zero, 1 - alpha),
            ],
            "structures": len(entries),
        }
        entry_of[(target, index)] = out[target][heaviest["term"]]
    _along_ridges(result, measurements, mixture, out, entry_of)
    return out, round(left_out, 6)


def _along_ridges(
    result: Distillation,
    measurements: Measurements,
    mixture: Any,
    out: dict[str, dict[str, dict[str, Any]]],
    entry_of: dict[tuple[str, int], dict[str, Any]],
) -> None:
    """Widen ``out``'s intervals (in place) to hold each coefficient's values along the
    profiles of the terms identified only by parsimony (:mod:`ude.uq.ridge`): the profile
    likelihood's region, which the Laplace approximations of single points do not see. A
    term that only the profiled structure holds gets an entry of weight 0 (the mixture's
    point mass at zero) whose interval is its range along the profile, zero included."""
    if not getattr(mixture, "profile", False):
        return
    from ude.uq.ridge import chi2_margin

    margin = chi2_margin(mixture.level)
    for profile in mixture.ridges(result, measurements):
        constants = refitted_constants(profile.scored)
        for (target, index), (lo, hi) in profile.coefficients(margin).items():
            entry = entry_of.get((target, index))
            if entry is None:
                term = result.terms[target][index]
                consts = constants.get(target, {}).get(index)
                name = str(term.numeric(consts)) if term.free else term.name
                entry = out.setdefault(target, {}).setdefault(
                    name, {"weight": 0.0, "value": 0.0, "interval": [0.0, 0.0], "structures": 0}
                )
                entry_of[(target, index)] = entry
            entry["interval"] = [min(entry["interval"][0], lo), max(entry["interval"][1], hi)]
            entry["along_profile"] = [lo, hi]


def intervals_markdown(
    intervals: dict[str, dict[str, Any]],
    level: float = 0.95,
    constants: dict[str, dict[str, Any]] | None = None,
) -> str:
    """equations.md's section: each discovered coefficient ± the half-width of its interval,
    then each rate-law constant with its interval (:func:`constant_intervals`; on the log of
    ``K``, so not symmetric about it)."""
    if not intervals and not constants:
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
    for e in (constants or {}).values():
        lo, hi = e["interval"]
        lines.append(
            f"| {e['target']} | {e['constant']} of {e['term']} | {e['value']:.4g} | "
            f"[{lo:.4g}, {hi:.4g}] |"
        )
    return "\n".join(lines) + "\n"


def averaged_markdown(
    averaged: dict[str, dict[str, dict[str, Any]]], level: float = 0.95, left_out: float = 0.0
) -> str:
    """equations.md's section: each term of the weighted structures, with the weight of the
    structures that hold it and its interval averaged over them (:func:`averaged_intervals`)."""
    lines = [
        f"## Every term of the weighted structures, {level:.0%} intervals averaged over them",
        "",
        "A term's weight is that of the structures holding it; its interval comes from the "
        "mixture of their Laplace approximations and a point mass at zero for the others, so "
        "it reaches zero where the structures disagree on the term.",
    ]
    if left_out:
        lines.append(
            f"Structures of weight {left_out:.3g} had no Laplace approximation and are left out."
        )
    if any("along_profile" in e for terms in averaged.values() for e in terms.values()):
        lines.append(
            "An interval marked * also holds the term's values along the profile of a term "
            "identified only by parsimony: there the data do not bound it."
        )
    lines += ["", "| state | term | weight | mean | interval |", "|---|---|---|---|---|"]
    for target, terms in averaged.items():
        for term, e in sorted(terms.items(), key=lambda te: -te[1]["weight"]):
            lo, hi = e["interval"]
            mark = " *" if "along_profile" in e else ""
            lines.append(
                f"| {target} | {term} | {e['weight']:.2f} | {e['value']:.4g} | "
                f"[{lo:.4g}, {hi:.4g}]{mark} |"
            )
    return "\n".join(lines) + "\n"
