"""Whether the data identify the discovered terms: the Fisher information of the refitted twin.

At the final refit's optimum the observed Fisher information is the Hessian of the summed
Gaussian NLL over the twin's learnable parameters (coefficients, constants, initial states,
noise levels; :func:`ude.distill.uncertainty.laplace`). Its regularised inverse gives each
discovered parameter's standard error with every other parameter free: a direction the data do
not constrain (a latent state's scale traded against a rate constant, two terms that move
together, a Hill ``n`` that the data never probe) shows as a large error. A term whose
parameters all have a relative standard error under ``threshold`` is identified; the report
says which are not, instead of presenting them as found.

A twin's term can be identified only because the selection left another term out. The
enzyme's binding flux ``kf E S - kr C`` with ``E`` and ``C`` unmeasured: the data give the
quasi-steady state's ``K_M = (kr + kcat) / kf`` and little of the fast binding, so
``-0.47 E S`` (``kr = 0``) fits as well as the truth; alone its coefficient's relative error is
6 %, beside a ``C`` term 94 %, and the ``C`` term's own is 52 times its value (the benchmark's
50-time-point cell). The parsimony prior, not the data, chose ``kr = 0``.
:func:`identified_by_parsimony` finds such terms among the selection's refits: a structure
that is the twin's with one term more, fits the data as well or better (its fit part at most
``margin`` criterion units above the twin's), does not need the extra term (the extra term
not identified), and with it some of the twin's own parameters are not identified either;
an extra term that is one of the twin's own again as a function (a Hill term at ``n = 1``
beside a Michaelis-Menten one: :func:`spanned`) is not a second mechanism and is skipped.
The report names them (``by_parsimony``): a confident number that the data do not give is the
twin's most misleading output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.model.hybrid import HybridODE
from ude.spec.model_spec import Parameter
from ude.twin.symbolic import Owner

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


FLOORED_LOADING = 0.01
"""An entry with at least this share of its weight on the precision's floored eigenvectors
(:func:`floored_entries`) is not bounded by the data."""


def floored_entries(approx: Any) -> np.ndarray:
    """``(entry,)`` True for the entries of a :class:`ude.distill.uncertainty.Laplace` that
    lie along a direction neither the data nor a prior bound (the ``n_floored`` eigenvalues
    of its precision raised to the floor), by at least :data:`FLOORED_LOADING` of their
    weight. The floor is relative to the largest eigenvalue, so such an entry's variance is
    finite and, where its value is large, its relative error can read as small: the
    enzyme's binding beside unbinding refitted out to rapid equilibrium, kf = 1.8e6 and
    kr = 2 kf, the data fixing only their ratio, gave a relative error of 0.0003."""
    out = np.zeros(len(approx.names), dtype=bool)
    if not approx.n_floored or approx.precision is None:
        return out
    free = np.flatnonzero(approx.free)
    _, V = np.linalg.eigh(approx.precision[np.ix_(free, free)])
    loading = np.sum(V[:, : approx.n_floored] ** 2, axis=1)
    out[free] = loading >= FLOORED_LOADING
    return out


def identifiability(
    model: HybridODE,
    measurements: Measurements,
    owner: dict[str, Owner],
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """Per target: each discovered parameter's value, standard error and relative error, and
    whether all of them are under ``threshold``. ``model``: the refitted twin; ``owner``: its
    discovered parameters (:func:`ude.twin.symbolic.twin_spec`)."""
    from ude.distill.uncertainty import laplace

    approx = laplace(model, measurements)
    index = {n: i for i, n in enumerate(approx.names)}
    sd = np.sqrt(np.clip(np.diag(approx.covariance), 0.0, None))
    unbounded = floored_entries(approx)
    targets: dict[str, dict[str, Any]] = {}
    for name, own in owner.items():
        if name not in index:
            continue
        i = index[name]
        p = model.spec.parameters[name]
        rel = math.inf if unbounded[i] else relative_error(p, float(approx.mean[i]), float(sd[i]))
        entry = targets.setdefault(own.target, {"identified": True, "parameters": {}})
        entry["parameters"][name] = {
            "term": own.index,
            "constant": own.constant,
            "value": _value(p, float(approx.mean[i])) * (own.scale if own.constant is None else 1),
            "relative_error": rel if math.isfinite(rel) else None,
        }
        entry["identified"] &= bool(rel < threshold)
    return {"threshold": threshold, "n_floored": approx.n_floored, "targets": targets}


SPANNED_R2 = 0.999
"""Share of a term's sum of squares that the twin's own terms of its target reproduce above
which the term adds no function of its own (:func:`spanned`)."""


def spanned(added: np.ndarray, kept: np.ndarray) -> bool:
    """Whether a term's values ``added (sample,)`` lie in the span of the twin's terms'
    ``kept (sample, term)``: least squares leaves less than ``1 - SPANNED_R2`` of its sum of
    squares. Evaluated with each variable drawn apart from the others (a dynamics ties a
    complex to its substrate, a function does not): the dose-response twin's
    ``D/(D + 3.88)`` beside a Hill term that went to ``n = 1``, ``K = 3.63`` (0.99995 of it
    reproduced) is one function twice, where the enzyme's ``C`` beside ``E S`` (0.41 over
    independent draws) is a second mechanism."""
    ok = np.isfinite(added) & np.isfinite(kept).all(axis=1)
    y, A = added[ok], kept[ok]
    total = float(y @ y)
    if not ok.any() or total == 0.0 or A.shape[1] == 0:
        return False
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r = y - A @ coef
    return 1.0 - float(r @ r) / total >= SPANNED_R2


BY_PARSIMONY_LIMIT = 3
"""At most this many of the twin's one-term-larger structures are checked (those that fit the
data best): each costs a Laplace approximation."""


def _entries(report: dict[str, Any]) -> dict[tuple[str, int, str | None], dict[str, Any]]:
    """An identifiability report's parameters keyed by ``(target, term, constant)``: the same
    key names a term's parameter in every candidate (the parameters' names may differ)."""
    return {
        (target, p["term"], p["constant"]): p | {"name": name}
        for target, entry in (report or {}).get("targets", {}).items()
        for name, p in entry["parameters"].items()
    }


def _unidentified(p: dict[str, Any], threshold: float) -> bool:
    rel = p["relative_error"]
    return rel is None or rel >= threshold


def one_term_larger(chosen: Any, scored: Any) -> tuple[str, int] | None:
    """``(target, term)``: the one term ``scored``'s support has beyond ``chosen``'s, where
    it holds all of ``chosen``'s terms and exactly one more; else None."""
    extra = []
    for target, coef in scored.candidate.coef.items():
        mine = set(np.flatnonzero(chosen.candidate.coef.get(target, np.zeros(0))))
        theirs = set(np.flatnonzero(coef))
        if not mine <= theirs:
            return None
        extra += [(target, int(j)) for j in sorted(theirs - mine)]
    return extra[0] if len(extra) == 1 else None


def fit_part(scored: Any) -> float:
    """The criterion's data term ``n log(NMSE)`` of a refitted candidate (inf: failed)."""
    r = scored.refit
    return r.n_points * math.log(r.nmse) if r.ok and r.nmse > 0 else math.inf


def identified_by_parsimony(
    report: dict[str, Any] | None,
    chosen: Any,
    path: list[Any],
    report_of: Callable[[Any], dict[str, Any]],
    term_names: dict[str, list[str]],
    describe: Callable[[Any], dict[str, str]],
    margin: float,
    threshold: float = THRESHOLD,
    limit: int = BY_PARSIMONY_LIMIT,
    redundant: Callable[[Any, str, int], bool] | None = None,
) -> list[dict[str, Any]]:
    """The twin's parameters that the data identify only if a term the selection left out
    is absent (see the module). ``report``: the twin's identifiability report; ``chosen``
    and ``path``: the selection's scored candidates; ``report_of(scored)``: a candidate
    refit's identifiability report (:func:`identifiability`; raises where it cannot be
    had, and that candidate is skipped); ``term_names[target]``: the library terms' names;
    ``describe(scored)``: its terms at their refitted values; ``redundant(scored, target,
    term)``: whether the added term is, as a function, one of the twin's own terms again
    (:func:`spanned`; such a structure is skipped: its parameters trade whatever the data).

    One row per structure found: the ``target`` and ``term`` added, the ``structure``
    (``describe``), ``criterion_difference`` and ``fit_difference`` (its fit part less the
    twin's), the added term's largest ``extra_relative_error`` (None: unbounded), and
    ``parameters``: each of the twin's parameters identified alone and not beside the term,
    with its ``term`` and its relative error ``alone`` and ``with`` it (None: unbounded)."""
    mine = _entries(report)
    if not mine:
        return []
    own_fit = fit_part(chosen)
    larger = []
    for s in path:
        added = one_term_larger(chosen, s)
        if added is None or s.refit.model is None or not s.refit.ok:
            continue
        gap = fit_part(s) - own_fit
        if math.isfinite(gap) and gap <= margin and not (redundant and redundant(s, *added)):
            larger.append((gap, added, s))
    rows = []
    for gap, (target, j), s in sorted(larger, key=lambda x: x[0])[:limit]:
        try:
            theirs = _entries(report_of(s))
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue  # no Fisher information for that refit: nothing said about it
        extra = [p for k, p in theirs.items() if k[:2] == (target, j)]
        if not extra or not all(_unidentified(p, threshold) for p in extra):
            continue  # the data need the added term: the twin's structure is not theirs
        lost = {
            p["name"]: {
                "term": term_names[k[0]][k[1]],
                "alone": p["relative_error"],
                "with": theirs[k]["relative_error"],
            }
            for k, p in mine.items()
            if k in theirs
            and not _unidentified(p, threshold)
            and _unidentified(theirs[k], threshold)
        }
        if not lost:
            continue
        rels = [p["relative_error"] for p in extra]
        rows.append(
            {
                "target": target,
                "term": term_names[target][j],
                "structure": describe(s),
                "criterion_difference": round(s.criterion - chosen.criterion, 3),
                "fit_difference": round(gap, 3),
                "extra_relative_error": None if None in rels else max(rels),
                "parameters": lost,
            }
        )
    return rows
