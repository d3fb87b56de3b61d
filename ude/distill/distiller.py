"""The distillation pipeline: sample the networks, regress on a library, select, refit."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ude.data.measurements import Measurements
from ude.data.noise_level import difference_variance
from ude.distill.admissible import admitted, amounts, zero_faces
from ude.distill.bootstrap import squared_residuals
from ude.distill.integral import (
    IntegralPath,
    IntegralProblem,
    data_path,
    integral_problems,
    screen_score,
)
from ude.distill.library import Library, Term, combine, slot_library
from ude.distill.refit import RefitResult, TwinRefit
from ude.distill.rewrites import complements, limits
from ude.distill.sampling import Samples, TrajectorySampler
from ude.distill.selection import (
    TIE,
    NoSolvableTwin,
    Scored,
    TrajectorySelector,
    evidence_weights,
    moved_from,
    refitted_coef,
    refitted_constants,
    ties,
)
from ude.distill.sparse import Candidate, Problem, candidate_union
from ude.distill.swaps import (
    first_order_swaps,
    saturating_swaps,
    sibling_swaps,
    single_term_swaps,
)
from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.initial_scale import set_initial
from ude.model.solver import SolverFailed
from ude.progress import Progress
from ude.spec.library_key import DEFAULT_FAMILIES, LibraryChoice, parse_library
from ude.spec.model_spec import POPULATIONS, ModelSpec
from ude.twin.symbolic import Owner, numeric_twin, twin_spec


@dataclass
class Distillation:
    """What a distillation found.

    ``twin``: the refitted symbolic ModelSpec (parameters fixed at their refitted values);
    ``terms[target]``: the library terms per target; ``chosen``: the selected candidate;
    ``path``: every scored candidate, with ``weights (candidate,)`` their evidence weights
    (:func:`ude.distill.selection.evidence_weights`); ``ties``: other structures that fit as
    well as the chosen one; ``identifiability``: whether the data identify each discovered
    term (:mod:`ude.distill.identifiability`; None when it could not be computed);
    ``inclusion``: bootstrap inclusion probabilities ``{target: {term: p}}``; ``samples``: the
    network samples regressed on; ``routes``: the states each target changes (a neural
    reaction's flux: several, by their stoichiometry); ``structure_bootstrap``: with a
    :class:`ude.uq.StructureBootstrap`, its findings (each structure's share of the
    resamples' choices and resample-averaged evidence weight); ``oracle``: on synthetic data,
    what the truth refitted as a candidate scores beside the chosen twin
    (:meth:`Distiller._oracle`; None on real data or with the oracle off); ``screened_on``:
    the path the screen evaluated the library along, ``model`` (the trained model's) or
    ``data`` (the data's own, where the trained model misses them: :data:`FAILED_FIT`,
    :data:`MISFIT_RATIO`); ``misfit``: the trained model's residuals' mean square over the
    data's noise (:func:`misfit_ratio`; None where it could not be had); ``ridges``: the
    profiles along the terms identified only by parsimony, traced by the predictive band
    (:mod:`ude.uq.ridge`; None until then).
    """

    twin: ModelSpec
    model: HybridODE
    refit: RefitResult
    terms: dict[str, list[Term]]
    chosen: Scored
    path: list[Scored]
    inclusion: dict[str, dict[str, float]] | None
    samples: Samples
    problems: dict[str, Problem]
    integral: dict[str, IntegralProblem]
    timings: dict[str, float] = field(default_factory=dict)
    routes: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: np.ndarray | None = None
    ties: list[Scored] = field(default_factory=list)
    identifiability: dict[str, Any] | None = None
    structure_bootstrap: Any = None
    oracle: dict[str, Any] | None = None
    screened_on: str = "model"
    misfit: float | None = None
    ridges: list[Any] | None = None

    def describe(self, scored: Scored) -> dict[str, str]:
        """``{target: "+0.9*x*y -0.1*y"}``: a scored candidate's terms at its refitted
        coefficients and constants."""
        return describe(scored, self.terms)

    def path_rows(self) -> list[dict[str, Any]]:
        """One row per scored candidate (:func:`path_rows`), with its evidence weight."""
        weights = self.weights if self.weights is not None else evidence_weights(self.path)
        return path_rows(self.path, self.terms, self.chosen, weights)

    def tie_rows(self) -> list[dict[str, Any]]:
        """The structures that fit as well as the chosen one: their terms and criterion above
        the chosen one's (negative: better, kept out by parsimony)."""
        return [
            {
                "terms": self.describe(s),
                "criterion_difference": round(s.criterion - self.chosen.criterion, 3),
            }
            for s in self.ties
        ]


def _shown_constants(
    fitted: dict[str, dict[int, dict[str, float]]],
    final: dict[str, dict[int, dict[str, float]]],
    target: str,
    j: int,
) -> dict[str, float]:
    """Term ``j`` of ``target``'s free constants as the reports name it: the reported twin's
    refitted ones (``final``) where the twin has the term, the screen's (``fitted``) else."""
    return {**(fitted.get(target, {}).get(j) or {}), **(final.get(target, {}).get(j) or {})}


def describe(scored: Scored, terms: dict[str, list[Term]]) -> dict[str, str]:
    """``{target: "+0.9*x*y -0.1*y"}``: a scored candidate's terms (of ``terms``) at its
    refitted coefficients and constants."""
    fitted = refitted_coef(scored)
    constants = refitted_constants(scored)

    def one(t: str, j: int, c: float) -> str:
        name = _term_name(terms[t][j], constants.get(t, {}).get(j, {}))
        return f"{'+' if c > 0 else '-'}{abs(c):.3g}" + ("" if name == "1" else f"*{name}")

    return {t: " ".join(one(t, int(j), c[j]) for j in np.flatnonzero(c)) for t, c in fitted.items()}


def path_rows(
    path: list[Scored],
    terms: dict[str, list[Term]],
    chosen: Scored | None = None,
    weights: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per scored candidate: terms, trajectory NMSE (None: its refit could not be
    solved), criterion, evidence weight (``weights``; default from the criteria), chosen."""
    weights = evidence_weights(path) if weights is None else weights
    rows = []
    for s, w in zip(path, weights, strict=True):
        rows.append(
            {
                "step": s.step,
                "origin": s.candidate.origin,
                "threshold": s.candidate.threshold,
                "n_terms": s.candidate.n_terms,
                "n_params": s.n_params,
                "solved": bool(s.refit.ok),
                "refused": s.refit.refused,
                "trajectory_nmse": s.refit.nmse if s.refit.ok else None,
                "criterion": s.criterion if np.isfinite(s.criterion) else None,
                "weight": round(float(w), 6),
                "chosen": s is chosen,
                "terms": describe(s, terms),
                "regression_residual": s.candidate.info.get("regression_residual"),
                "screen": s.candidate.info.get("screen"),
            }
        )
    return rows


def trained_individuals(model: HybridODE) -> ModelSpec:
    """``model``'s spec with its per-condition parameters starting at the trained values of
    each condition (a population's at its trained median and spread): where every refit of
    the distillation starts them."""
    values = model.parameter_values()
    population = model.population()
    params = {}
    for k, p in model.spec.parameters.items():
        v = values.get(k)
        if not (p.learn and p.per_condition and isinstance(v, list)):
            params[k] = p
            continue
        pop = population.get(k, {})
        centre = pop.get("median", pop.get("mean", p.value))
        params[k] = replace(p, value=centre, spread=pop.get("spread", p.spread), values=tuple(v))
    return replace(model.spec, parameters=params)


def _unscaled(
    result: RefitResult, owner: dict[str, Owner]
) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """The refit's per-condition values and populations, a scaled coefficient's
    (``c * scale * term``) multiplied by its scale, as the plain twin writes it."""
    each, population = dict(result.individual), dict(result.population)
    for name, o in owner.items():
        if o.constant is not None or o.scale == 1.0:
            continue
        if name in each:
            each[name] = [v * o.scale for v in each[name]]
        if name in population:
            pop = dict(population[name])
            for key in ("median", "mean"):
                if key in pop:
                    pop[key] *= o.scale
            if pop["distribution"] == "normal":
                pop["spread"] *= abs(o.scale)
            population[name] = pop
    return each, population


def _term_name(term: Term, constants: dict[str, float]) -> str:
    """The term's name with its constants at their (refitted) values."""
    if not constants and not term.free:
        return term.name
    return str(term.numeric(constants))


def rewritten(
    best: Scored, terms: dict[str, list[Term]], bounds: dict[str, dict[int, dict]]
) -> list[Candidate]:
    """``best`` written with a term or a constant fewer (:mod:`ude.distill.rewrites`): a rate
    law whose ``K`` went to the edge of its range replaced by its limit, a rate law and a
    constant that cancel by the complementary law; each refitted from ``best``'s initial
    states."""
    out = limits(best, terms, bounds) + complements(best, terms)
    for cand in out:
        cand.info.update(moved_from(best))
    return out


def steep_restarts(
    cand: Candidate,
    result: RefitResult,
    owner: dict[str, Owner],
    integral: dict[str, IntegralProblem],
    bounds: dict[str, dict[int, dict]],
) -> list[tuple[dict[str, np.ndarray], dict[str, dict[int, dict[str, float]]]]]:
    """Other starts ``(coef, constants)`` for ``cand`` where its refit left a Hill ``n`` on
    its upper bound: that ``n`` at each of the switch-like and steep starts of the screen
    (:data:`ude.distill.projection.N_STARTS` above 2), ``K`` as refitted, the coefficients
    solved on the screen at those constants. A steep switch seen along an imperfect
    trajectory looks steeper than it is (Goodwin's ``z**10``): from ``n`` on the bound the
    refit's gradient in ``n`` is flat and it stays there."""
    from ude.distill.projection import N_STARTS

    if not result.ok:
        return []
    at_bound: dict[str, dict[int, dict[str, float]]] = {}
    for name, o in owner.items():
        if o.constant is None:
            continue
        law = integral[o.target].laws.get(o.index)
        if law is None or law.law.kind == "saturation" or o.constant != law.law.n:
            continue
        hi = bounds.get(o.target, {}).get(o.index, {}).get(o.constant, (None, np.inf))[1]
        if result.values.get(name, -np.inf) >= 0.98 * hi:
            k_name = next(
                (k for k, w in owner.items() if w[:2] == o[:2] and w.constant == law.law.K), None
            )
            refitted = dict(cand.constants[o.target][o.index])
            if k_name is not None:
                refitted[law.law.K] = float(result.values[k_name])
            at_bound.setdefault(o.target, {})[o.index] = refitted
    if not at_bound:
        return []
    out = []
    for n in (n for n in N_STARTS if n > 2):
        constants = {t: {j: dict(c) for j, c in cs.items()} for t, cs in cand.constants.items()}
        coef = {t: c.copy() for t, c in cand.coef.items()}
        for t, found in at_bound.items():
            for j, c in found.items():
                constants[t][j] = {**c, integral[t].laws[j].law.n: n}
            support = np.flatnonzero(coef[t])
            coef[t] = integral[t].at_constants(support, {j: constants[t][j] for j in found})[0]
        out.append((coef, constants))
    return out


OTHER_START = 0.2
"""A proposal is refitted from the trained model's coefficients too when they differ from its
own start by more than this fraction in some term (:func:`network_start`)."""


def network_start(
    cand: Candidate, problems: dict[str, IntegralProblem]
) -> dict[str, np.ndarray] | None:
    """``cand``'s coefficients solved on the trained model's integral-matching ``problems``
    at ``cand``'s support and constants, where they differ from its own start by more than
    :data:`OTHER_START` in some term; else None.

    A proposal along a refitted twin's trajectory starts from the coefficients that mimic
    that twin: when the twin is wrong, they can lie in a poor basin of the refit's loss (the
    distillation refits it from these too when it fits worse than that twin). An
    oscillator's loss has several: yeast glycolysis, 4 conditions, refitted the true
    ``-k5*S6`` from the ``2.32`` that mimics the best's ``-9.46*S4*S6`` and stayed there
    (trajectory NMSE 0.20), where the trained network's ``1.20`` reaches the truth's 1.28
    (NMSE 0.0035)."""
    out, differs = {}, False
    for t, c in cand.coef.items():
        support = np.flatnonzero(c)
        other = problems[t].at_constants(support, cand.constants.get(t, {}))[0]
        scale = np.maximum(np.abs(c[support]), np.abs(other[support]))
        gap = np.abs(c[support] - other[support]) / np.where(scale > 0, scale, 1.0)
        differs |= bool(np.any(gap > OTHER_START))
        out[t] = other
    return out if differs else None


FAILED_FIT = 1.0
"""A trained model whose trajectories leave more than this of the data's variance (normalised
mean squared error over the measured observables) fits worse than their means: its path is no
guide to the terms, and the distillation screens along the data's own instead
(:func:`ude.distill.integral.data_path`). Goldbeter at 10 % noise: its training stopped at
epoch 8 with a normalised error of 58, its path with cyclin below zero."""

MISFIT_RATIO = 4.0
"""A trained model whose residuals' mean square is more than this many times the data's noise
variance (estimated from the data alone: :func:`ude.data.noise_level.difference_variance`),
averaged over the observables, misses dynamics the data show by more than their noise
(residuals twice as large): its path is no guide to the terms either, and where every state is
measured the screen follows the data's own path. Goldbeter's base cell over 16 noise draws
(seeds 1-16, the benchmark's settings; README): 10 trained models fitted better than the
data's means, 8 of them at 6.6-23 times the noise; screened along them, 6 of the 8 distilled a
dead oscillator (forecast NMSE about 1.05; the truth, refitted, about 300 criterion units
ahead), screened along the data none did. The two that fit within the noise (1.5, 1.9 times
it) keep their path."""


def failed_fit(model: HybridODE, measurements: Measurements, limit: float = MISFIT_RATIO) -> bool:
    """Whether ``model``'s trajectories miss the data by more than :data:`FAILED_FIT` of their
    variance, or by more than ``limit`` times their noise (:func:`misfit_ratio`), or do not
    solve."""
    return fit_check(model, measurements, limit)[0]


def fit_check(
    model: HybridODE, measurements: Measurements, limit: float = MISFIT_RATIO
) -> tuple[bool, float | None]:
    """:func:`failed_fit`, and the :func:`misfit_ratio` of ``model``'s trajectories (None
    where they do not solve or no observable has a noise estimate)."""
    from ude.fit import predict

    try:
        _, observed = predict(model, measurements.times)
    except SolverFailed:
        return True, None
    values = measurements.values  # (condition, time, replicate, observable)
    nmse = [np.mean(r**2) / np.var(v) for v, r, _ in _residuals(values, observed) if np.var(v) > 0]
    ratio = misfit_ratio(measurements, observed)
    worse_than_means = bool(nmse) and not np.mean(nmse) <= FAILED_FIT
    return worse_than_means or (ratio is not None and not ratio <= limit), ratio


def misfit_ratio(measurements: Measurements, observed: np.ndarray) -> float | None:
    """The mean over the observables of the mean square of the residuals of ``observed
    (condition, time, observable)`` over the observable's noise variance estimated from the
    data (:func:`ude.data.noise_level.difference_variance`); None where none has one."""
    noise = difference_variance(measurements)
    ratios = [
        np.mean(r**2) / noise[o]
        for _, r, o in _residuals(measurements.values, observed)
        if np.isfinite(noise[o]) and noise[o] > 0
    ]
    return float(np.mean(ratios)) if ratios else None


def _residuals(
    values: np.ndarray, predicted: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per observable with more than one measured entry: its measured values, their residuals
    from ``predicted (condition, time, observable)`` and its index; ``values (condition, time,
    replicate, observable)``."""
    residual = values - predicted[:, :, None, :]
    ok = np.isfinite(values)
    out = []
    for o in range(values.shape[-1]):
        v, r = values[..., o][ok[..., o]], residual[..., o][ok[..., o]]
        if v.size > 1:
            out.append((v, r, o))
    return out


def has_constants(coef: dict[str, np.ndarray], terms: dict[str, list[Term]]) -> bool:
    """Whether a candidate's support holds a term with free constants (``K``, a Hill ``n``)."""
    return any(terms[t][j].free for t, c in coef.items() for j in np.flatnonzero(c))


def final_refitter(
    refit: TwinRefit, coef: dict[str, np.ndarray], terms: dict[str, list[Term]]
) -> TwinRefit:
    """The final refit for the chosen support: ``refit``, without its L-BFGS restarts where the
    support holds no term with free constants. The restarts were measured to free a rate law's
    constant that L-BFGS left where it began (bench/final_refit.py); a twin linear in its
    coefficients has no such constant, and there they were not shown to help (ten
    Lotka-Volterra and SEIR benchmark cells with and without them: the same figures to five
    digits), so they are kept to where they were measured."""
    if refit.restarts and not has_constants(coef, terms):
        refit = copy.copy(refit)
        refit.restarts = 0
    return refit


def concentrations(samples: Samples, measurements: Measurements) -> np.ndarray:
    """``(state,)``: which states behave as concentrations, never below zero but for noise:
    a measured state whose measurements have a nonnegative median, a latent one whose fitted
    trajectory has."""
    out = np.zeros(len(samples.states), dtype=bool)
    for i, s in enumerate(samples.states):
        if s in measurements.observables:
            v = measurements.values[..., measurements.observables.index(s)]
            values = v[np.isfinite(v)]
        else:
            values = samples.X[samples.on_trajectory, i]
        out[i] = bool(values.size) and float(np.median(values)) >= 0
    return out


def _nonnegative_start(initial: np.ndarray, concentration: np.ndarray) -> np.ndarray:
    """``initial (condition, state)`` with the concentrations' starts at 0 or above: an initial
    state fitted below zero from noisy first samples (or by a poorly trained model) turns
    mass action's growth into a blow-up and makes a Hill term's ``x**n`` undefined; the refit
    moves it up from zero if the data want."""
    out = np.array(initial, dtype=float, copy=True)
    out[:, concentration] = np.maximum(out[:, concentration], 0.0)
    return out


def screen_start(model: HybridODE, measurements: Measurements, samples: Samples) -> np.ndarray:
    """``(condition, state)``: where the distillation follows the trained ``model`` from, and
    its refits start: the model's initial states, a concentration's at zero or above
    (:func:`concentrations` from the model's ``samples``; :meth:`Distiller.fit`)."""
    initial = model.initial.detach().cpu().numpy()
    return _nonnegative_start(initial, concentrations(samples, measurements))


def _is_libraries(value: Any) -> bool:
    if isinstance(value, Library):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], Library)


def library_sizes(terms: dict[str, list[Term]]) -> dict[str, int]:
    """Each target's library size: what the extended BIC pays for searching it."""
    return {t: len(ts) for t, ts in terms.items()}


PARTS = ("sampler", "paths", "selector", "score_refit", "refit")
"""The parts of a :class:`Distiller` that default to ``python train.py``'s (None)."""


class Distiller:
    """Distils the networks of a trained HybridODE into symbolic terms.

    Args:
        library: which terms each slot searches. None: the families of the spec's
            ``library:`` key, else :data:`ude.spec.library_key.DEFAULT_FAMILIES` (mass
            action, Michaelis-Menten and Hill with free constants). A list of family names
            and custom terms, or ``{add: [...], remove: [...]}``, changes that list (the
            config's ``distill.library``). Library objects (one or a list, concatenated)
            replace it, built over each slot's inputs.
        sampler, paths, selector, score_refit, refit: where the networks are sampled
            (:class:`TrajectorySampler`), the candidate generators (integral matching on the
            data, the STLSQ threshold path, joint elimination on the network samples), the
            selection that refits and scores them (:class:`TrajectorySelector`; it sees each
            candidate's integral-matching score, ``info["screen"]``), the ODE refit that
            scores a candidate and the final refit of the chosen twin. None: ``python
            train.py``'s, from ``ude/conf/distill/default.yaml`` (:meth:`complete`), the
            file the command and the benchmark read, for the model's training solver.
        bootstrap: inclusion probabilities: a :class:`BootstrapInclusion` rescores the
            refitted candidates on resampled entries; a :class:`ude.uq.StructureBootstrap`
            resamples the data and runs the screen and the selection again on each resample;
            ``"default"``: ``python train.py``'s (the structure bootstrap of ``distill.uq``);
            None: skipped.
        progress: where the stages (screen, refits k of n, final refit, bootstrap) are
            shown and timed (:class:`ude.progress.Progress`; default: nowhere).
        tie: criterion units within which another structure fits as well as the chosen one.
        identify: check from the final refit's Fisher information whether the data identify
            each discovered term (:mod:`ude.distill.identifiability`).
        individual: targets (states, or neural reactions) whose discovered coefficients are
            individual: each condition (patient) gets its own value under a learned
            ``population`` distribution (``lognormal``, or ``normal``), in every refit.
        oracle: on synthetic data (measurements that carry their truth), when the chosen
            structure is not the truth's, refit the truth as a candidate and score it as the
            search scores its own (:mod:`ude.distill.oracle`): did the search miss it, or do
            the data prefer the twin?
        nonnegative: refuse a candidate twin that drives a species a neural reaction consumes
            or produces (a concentration: its data stay at or above zero), or a state the spec
            declares ``nonnegative``, below zero where it is zero
            (:mod:`ude.distill.admissible`): its refit counts as failed, with the reason in
            the path.
        misfit_ratio: a trained model whose residuals' mean square is more than this many
            times the data's noise variance is no guide to the terms: where every state is
            measured the screen follows the data's smoothed path (:data:`MISFIT_RATIO`; a huge
            value keeps the trained model's path unless it fits worse than the data's means).
        seed: the seed of the parts taken from ``python train.py``'s (``seed=`` there: the
            sampler's jitter, the bootstrap's resamples).

    Parameters of the prior spec that are per condition start every refit from the trained
    model's values for each condition (and a population's from its median and spread).
    """

    def __init__(
        self,
        library: Library | Sequence[Library] | Sequence[str] | dict | LibraryChoice | None = None,
        sampler: TrajectorySampler | None = None,
        paths: Sequence | None = None,
        selector: TrajectorySelector | None = None,
        score_refit: TwinRefit | None = None,
        refit: TwinRefit | None = None,
        bootstrap: Any = "default",
        progress: Progress | None = None,
        tie: float = TIE,
        identify: bool = True,
        individual: Sequence[str] = (),
        population: str = "lognormal",
        oracle: bool = True,
        nonnegative: bool = True,
        misfit_ratio: float = MISFIT_RATIO,
        seed: int = 0,
    ):
        if not misfit_ratio > 0:
            raise ValueError(f"misfit_ratio={misfit_ratio!r}: expected a number > 0")
        if isinstance(bootstrap, str) and bootstrap != "default":
            raise ValueError(f"bootstrap={bootstrap!r}: expected 'default', None or a bootstrap")
        self.misfit_ratio = float(misfit_ratio)
        self.nonnegative = nonnegative
        self.individual = list(individual)
        self.population = population
        self.library = library
        self.sampler = sampler
        self.paths = paths
        self.selector = selector
        self.score_refit = score_refit
        self.refit = refit
        self.bootstrap = bootstrap
        self.progress = progress
        self.tie = tie
        self.identify = identify
        self.oracle = oracle
        self.seed = seed

    def complete(self, model: HybridODE) -> Distiller:
        """This distiller with each part it was not given (None; the bootstrap's
        ``"default"``) taken from the one ``python train.py seed=SEED`` builds for ``model``
        (:func:`ude.distill.cli.packaged_distiller`: its training solver decides the twin's
        own, ``refit.twin_method``); itself where it has them all."""
        missing = [name for name in PARTS if getattr(self, name) is None]
        if isinstance(self.bootstrap, str):
            missing.append("bootstrap")
        if not missing:
            return self
        from ude.distill.cli import packaged_distiller

        packaged = packaged_distiller(self.seed, model.solver.method)
        out = copy.copy(self)
        for name in missing:
            setattr(out, name, getattr(packaged, name))
        return out

    def _n_grid(self) -> int:
        return self.sampler.n_times

    def _check_individual(self, terms: dict[str, list[Term]]) -> None:
        for target in self.individual:
            if target not in terms:
                raise UdeError(
                    f"'{target}' has no network to distil",
                    source="distill.distiller.individual",
                    fix="name network targets: " + ", ".join(terms),
                )
        if self.individual and self.population not in POPULATIONS:
            raise UdeError(
                f"unknown population {self.population!r}",
                source="distill.distiller.population",
                fix=" or ".join(POPULATIONS),
            )

    def families(self, spec: ModelSpec) -> list[str]:
        """The family names and custom terms searched: the default, then the spec's
        ``library:`` key, then this distiller's ``library`` choice."""
        items = list(DEFAULT_FAMILIES)
        if spec.library is not None:
            items = spec.library.apply(items)
        own = self.library
        if own is not None and not _is_libraries(own):
            if not isinstance(own, LibraryChoice):
                names = [*spec.states, *spec.inputs]
                own = parse_library(own, names, source="config", where="distill.library")
            items = own.apply(items)
        return items

    def libraries(self, model: HybridODE) -> dict[str, Library]:
        """Each network output's library, fitted to its slot's inputs (one per slot, shared
        by the slot's outputs)."""
        spec = model.spec
        out = {}
        for slot in spec.neural:
            if _is_libraries(self.library):
                lib = copy.deepcopy(combine(self.library))
            else:
                declared = [*spec.states, *spec.inputs]
                lib = slot_library(self.families(spec), slot.inputs, declared)
            lib.fit(list(slot.inputs))
            for target in slot.outputs:
                out[target] = lib
        return out

    def problems(
        self,
        libraries: dict[str, Library],
        samples: Samples,
        constants: dict[str, dict[int, dict[str, float]]] | None = None,
    ) -> dict[str, Problem]:
        """The network-sample regression of every target, free terms at ``constants``."""
        problems = {}
        for target, lib in libraries.items():
            Theta = lib.transform(samples.columns(lib.names_), (constants or {}).get(target))
            names = lib.get_feature_names()
            if not np.all(np.isfinite(Theta)):
                bad = [n for n, ok in zip(names, np.isfinite(Theta).all(0), strict=True) if not ok]
                raise UdeError(
                    f"library term {bad[0]} is not finite along the trajectories",
                    source="distill.library",
                    fix="drop terms that divide by zero or take logs of non-positive states",
                )
            problems[target] = Problem(Theta, samples.target(target), names)
        return problems

    def fit(self, model: HybridODE, measurements: Measurements) -> Distillation:
        """Distil ``model`` (trained on ``measurements``) into a refitted twin.

        The screen follows the trained model from where the refits start: a concentration's
        initial state that training left below zero (noisy first samples of a species that
        starts near zero) at zero (:func:`_nonnegative_start`), the model given back as it
        came. From below zero the trained path is not one the species can take: Goldbeter
        with 8 conditions (the benchmark's cell) started cyclin at -0.02 to -0.04 in six of
        them, and every candidate screened along that path refitted about 2,500 units behind
        the truth (the twin a Hill switch of M); from zero, the search refitted the true law
        and chose its sibling ``c*M*X/(K + M)``, 0.7 ahead of it."""
        if not len(model.networks):
            raise UdeError("the model has no neural slots: nothing to distil", source="distill")
        complete = self.complete(model)
        if complete is not self:
            return complete.fit(model, measurements)
        t0 = time.perf_counter()
        progress = self.progress or Progress()
        stage = progress.start("screen")
        sampler = self.sampler
        samples = sampler.sample(model, measurements.times)
        trained = model.initial.detach().clone()
        start = screen_start(model, measurements, samples)
        if np.array_equal(start, trained.cpu().numpy()):
            return self._distil(model, measurements, samples, t0, progress, stage)
        set_initial(model, torch.as_tensor(start, dtype=trained.dtype, device=trained.device))
        try:
            try:
                samples = sampler.sample(model, measurements.times)
            except SolverFailed:
                # from zero the trained model cannot be solved (Goldbeter at 10 % noise, whose
                # training blew up): its own path, the one it was trained on
                set_initial(model, trained)
            return self._distil(model, measurements, samples, t0, progress, stage)
        finally:
            set_initial(model, trained)

    def _distil(
        self,
        model: HybridODE,
        measurements: Measurements,
        samples: Samples,
        t0: float,
        progress: Progress,
        stage: Any,
    ) -> Distillation:
        """:meth:`fit` from the trained model's ``samples``, its screen ``stage`` open."""
        clock = {}
        libraries = self.libraries(model)
        terms = {t: list(lib.terms_) for t, lib in libraries.items()}
        # a trained model that does not fit its data: the screen along the data's own path,
        # and the refits from the data's initial states
        on_data = None
        failed, misfit = fit_check(model, measurements, self.misfit_ratio)
        if failed:
            on_data = data_path(measurements, model.spec.states)
        integral = integral_problems(
            model, measurements, libraries, n_grid=self._n_grid(), path=on_data and on_data[0]
        )
        # free constants of each term alone, fitted on the data along the UDE's trajectory
        fitted = {t: {j: dict(c) for j, c in p.constants.items()} for t, p in integral.items()}
        # constants' ranges over the fitted trajectory and the data: a poorly trained model's
        # trajectory may not span the measured range
        measured = {
            o: v[np.isfinite(v)]
            for o, v in zip(
                measurements.observables, np.moveaxis(measurements.values, -1, 0), strict=True
            )
        }
        bounds = {t: p.bounds(measured) for t, p in integral.items()}
        problems = self.problems(libraries, samples, fitted)
        paths = self.paths
        proposer = next((p for p in paths if isinstance(p, IntegralPath)), None)
        around: dict[int, dict[str, IntegralProblem]] = {}

        def integral_along(best: Scored | None) -> dict[str, IntegralProblem]:
            """The integral problems along a refitted twin's trajectory (None: the UDE's)."""
            solved = best is not None and (best.refit.ok or best.refit.refused is not None)
            if not solved or best.refit.model is None:
                return integral
            key = id(best.refit.model)  # a resample rescores the same refitted model
            if key not in around:
                try:
                    around[key] = integral_problems(
                        model, measurements, libraries, best.refit.model, self._n_grid()
                    )
                except SolverFailed:
                    around[key] = integral
            return around[key]

        network: dict[int, list[Candidate]] = {}  # the network paths' candidates, once
        candidates = candidate_union(paths, problems, integral, network)
        for cand in candidates:
            cand.info["regression_residual"] = {
                t: round(problems[t].relative_residual(c), 4) for t, c in cand.coef.items()
            }
            cand.info["screen"] = screen_score(integral, cand)
        clock["regression_seconds"] = time.perf_counter() - t0
        stage.close()
        initial = model.initial.detach().cpu().numpy()
        if on_data is not None:
            initial = np.where(np.isfinite(on_data[1]), on_data[1], initial)
        scorer = self.score_refit
        known = trained_individuals(model)
        # species no data measure directly: their initial states are the trained model's
        # guesses until a twin's refit places them (the selector's reswaps), and the refits
        # also grow their window (TwinRefit.grow_from); with every species measured, the
        # data anchor the phase where the refits start
        unmeasured = any(
            s not in model.observable_names or s in model.spec.observables for s in known.states
        )
        if not unmeasured and scorer.grow_from is not None:
            scorer = copy.copy(scorer)
            scorer.grow_from = None
        joint = copy.copy(scorer)
        joint.settle_first = False
        self._check_individual(terms)
        individual = {t: self.population for t in self.individual}
        # coefficients in units of each term's contribution relative to the network output
        scales = {t: p.y_scale / p.col_scale for t, p in problems.items()}
        noise = model.noise.detach().cpu().numpy()
        # a state the spec declares an amount is one, whatever its noisy data's median
        declared = np.array([s in known.nonnegative for s in samples.states], dtype=bool)
        positive = concentrations(samples, measurements) | declared
        faces = None
        if self.nonnegative:
            faces = zero_faces(model, samples, positive, amounts(known, samples.states))

        def constants_of(cand: Candidate) -> dict[str, dict[int, dict[str, float]]]:
            """The candidate's own constants over the library's fitted ones."""
            out = {t: {j: dict(c) for j, c in cs.items()} for t, cs in fitted.items()}
            for t, cs in cand.constants.items():
                for j, c in cs.items():
                    out.setdefault(t, {})[j] = {**out.get(t, {}).get(j, {}), **c}
            return out

        def refit_twin(
            cand: Candidate, coef, constants, start: np.ndarray | None = None
        ) -> tuple[RefitResult, dict[str, Owner]]:
            twin, owner = twin_spec(
                known,
                terms,
                coef,
                True,
                scales,
                constants=constants,
                bounds=bounds,
                individual=individual,
            )
            with counting:  # the selection's refits may run in threads
                refits.advance(note=f"{cand.n_terms} terms ({cand.origin})")
            if start is None:
                start = cand.info.get("initial", initial)
            # a second refit with the initial states held first only where a rate law's
            # constant is to be placed (TwinRefit.settle_first): with none, the joint fit found
            # yeast's -c*S6 at 20 % noise where settling first left a constant 21.9 units behind
            fitter = scorer if has_constants(coef, terms) else joint
            result = fitter.fit(twin, measurements, _nonnegative_start(start, positive), noise)
            return admitted(result, faces), owner

        def score(cand: Candidate) -> tuple[RefitResult, int]:
            cand.constants = constants_of(cand)
            result, owner = refit_twin(cand, cand.coef, cand.constants)
            # a proposal that fits worse than the twin it came from: again from the trained
            # model's coefficients
            other_start = cand.info.get("network_start")
            if other_start is not None and not result.nmse < cand.info["proposed_by"]:
                other, other_owner = refit_twin(cand, other_start, cand.constants, initial)
                if other.ok and (not result.ok or other.nmse < result.nmse):
                    result, owner = other, other_owner
                    cand.coef, cand.info["initial"] = other_start, initial
            # a Hill n the refit left on its upper bound: again from steeper-than-linear starts
            for coef, constants in steep_restarts(cand, result, owner, integral, bounds):
                other, other_owner = refit_twin(cand, coef, constants)
                if other.ok and (not result.ok or other.nmse < result.nmse):
                    result, owner = other, other_owner
                    cand.coef, cand.constants = coef, constants
            cand.info["owner"] = owner
            return result, len(owner)

        def swap_path(best: Scored) -> dict[str, IntegralProblem]:
            """Where a swap's coefficients are matched: along the trained model's trajectory,
            or, where that trajectory missed the data and the screen ran along the data's own
            smoothed path, along ``best``'s refitted one (:func:`first_order_swaps`)."""
            return integral if on_data is None else integral_along(best)

        def same(problems: dict[str, IntegralProblem]) -> dict[str, IntegralProblem]:
            return problems

        selector = self.selector
        reactions = {r.name: r for r in known.reactions if r.neural}
        counting = threading.Lock()

        def select(
            cands: list[Candidate] | None,
            refit: Callable,
            view: Callable = same,
            workers: int | None = None,
        ) -> tuple[Scored, list[Scored]]:
            """The selection with every integral problem seen through ``view`` (a resample
            of the data's rows: :mod:`ude.uq.structure_bootstrap`) and every candidate
            scored by ``refit``; ``cands``: the screen's candidates (None: screened again
            through ``view``); ``workers``: as the selector's (None: its own)."""

            def propose(best: Scored) -> list[Candidate]:
                """Integral-matching candidates along ``best``'s trajectory, each refitted
                from ``best``'s initial states."""
                out = [] if proposer is None else proposer.candidates(view(integral_along(best)))
                for cand in out:
                    cand.info.update(moved_from(best))
                    cand.info["network_start"] = network_start(cand, view(integral))
                    cand.info["proposed_by"] = best.refit.nmse
                return out

            if cands is None:
                cands = candidate_union(paths, problems, view(integral), network)
            return selector.select(
                cands,
                refit,
                lambda cand, best: screen_score(view(integral_along(best)), cand),
                propose,
                sizes=library_sizes(terms),
                rewrite=lambda best: rewritten(best, terms, bounds),
                swap=lambda best: first_order_swaps(best, terms, view(swap_path(best)), reactions),
                # a best's siblings, and its monomials' saturating forms from the screen
                sibling=lambda best: (
                    sibling_swaps(
                        best, terms, view(integral_along(best)), best.refit.refused is not None
                    )
                    + saturating_swaps(best, terms, view(integral))
                ),
                workers=workers,
                reswap=unmeasured,
                single=lambda best: single_term_swaps(best, terms, view(integral)),
            )

        t1 = time.perf_counter()
        most = [getattr(selector, k, None) for k in ("max_refits", "max_candidates")]
        refits = progress.start("refits", total=max(most) if None not in most else None)
        try:
            chosen, path = select(candidates, score)
        except NoSolvableTwin as err:
            err.rows = path_rows(err.scored, terms)
            err.timings = {"total_seconds": round(time.perf_counter() - t0, 3)}
            raise
        finally:
            refits.close()
        clock["selection_seconds"] = time.perf_counter() - t1
        oracle = None
        truth = measurements.truth
        if self.oracle and truth is not None and truth.missing:
            t2 = time.perf_counter()
            refits = progress.start("oracle", total=2)
            try:
                oracle = self._oracle(
                    terms,
                    integral,
                    truth,
                    known,
                    chosen,
                    path,
                    score,
                    selector,
                    library_sizes(terms),
                    measurements,
                )
            finally:
                refits.close()
            clock["oracle_seconds"] = time.perf_counter() - t2
        # final refit from the scored values, with the accurate solver
        t2 = time.perf_counter()
        stage = progress.start("final refit")
        start_constants = refitted_constants(chosen)
        twin, owner = twin_spec(
            known, terms, chosen.candidate.coef, True, scales, start_constants, bounds, individual
        )
        start = {k: chosen.refit.values.get(k, p.value) for k, p in twin.parameters.items()}
        twin = numeric_twin(twin, start, True, chosen.refit.individual, chosen.refit.population)
        start = chosen.refit.model.initial.detach().cpu().numpy()
        start = _nonnegative_start(start, positive)
        refit = final_refitter(self.refit, chosen.candidate.coef, terms)
        result = refit.fit(twin, measurements, start, noise)
        if not result.ok:
            result = chosen.refit
            owner = chosen.candidate.info["owner"]
        clock["refit_seconds"] = time.perf_counter() - t2
        stage.close()
        # the reported twin carries plain coefficients (no scale factors)
        final_scored = Scored(
            Candidate(chosen.candidate.coef, "final", info={"owner": owner}), result, 0.0, 0
        )
        coef = refitted_coef(final_scored)
        final_constants = refitted_constants(final_scored)
        plain, _ = twin_spec(known, terms, coef, True, None, final_constants, bounds, individual)
        values = {
            **result.values,
            **{k: p.value for k, p in plain.parameters.items() if k.startswith("c_")},
        }
        each, population = _unscaled(result, owner)
        final = numeric_twin(plain, values, False, each, population)
        final.name = f"{known.name}_twin"
        identified = None
        if self.identify and result.model is not None:
            t2 = time.perf_counter()
            identified = self._identifiability(result.model, measurements, owner)
            if identified.get("targets"):
                identified["by_parsimony"] = self._by_parsimony(
                    identified, chosen, path, terms, measurements, samples
                )
            clock["identifiability_seconds"] = time.perf_counter() - t2
        inclusion, resampled = None, None
        if self.bootstrap is not None:
            t2, cpu = time.perf_counter(), time.process_time()
            # free terms named at their constants in the reported twin, the others at those
            # their columns were built with (a Hill n of 13.1 on the screen, 9.4 in the twin:
            # the inclusion is the twin's term's)
            shown = {
                t: [
                    Term(
                        term.numeric(_shown_constants(fitted, final_constants, t, j)),
                        family=term.family,
                    )
                    if term.free
                    else term
                    for j, term in enumerate(ts)
                ]
                for t, ts in terms.items()
            }
            with progress.stage("bootstrap") as refits:  # score() counts its refits here
                if hasattr(self.bootstrap, "resample"):  # through the screen (ude.uq)
                    from ude.uq.structure_bootstrap import Replay

                    resampled = self.bootstrap.resample(
                        Replay(
                            measurements,
                            # one refit at a time: the replay's budget of new refits goes to
                            # the first candidates that need one
                            lambda view, refit: select(None, refit, view, 1)[0],
                            score,
                            path,
                            chosen,
                            shown,
                            selector.criterion,
                            choose=selector.choose,
                        )
                    )
                    inclusion = resampled.inclusion
                else:
                    residuals = [squared_residuals(s, measurements) for s in path]
                    inclusion = self.bootstrap.inclusion(
                        path, residuals, selector.choose, selector.criterion, chosen, shown
                    )
            clock["bootstrap_seconds"] = time.perf_counter() - t2
            clock["bootstrap_cpu_seconds"] = time.process_time() - cpu  # the machine may be shared
        clock["total_seconds"] = time.perf_counter() - t0
        return Distillation(
            twin=final,
            model=result.model,
            refit=result,
            terms=terms,
            chosen=chosen,
            path=path,
            inclusion=inclusion,
            samples=samples,
            problems=problems,
            integral=integral,
            timings={k: round(v, 3) for k, v in clock.items()},
            routes=known.neural_routes(),
            weights=evidence_weights(path),
            ties=ties(chosen, path, self.tie),
            identifiability=identified,
            structure_bootstrap=resampled,
            oracle=oracle,
            screened_on="model" if on_data is None else "data",
            misfit=misfit,
        )

    @staticmethod
    def _oracle(
        terms: dict[str, list[Term]],
        integral: dict[str, IntegralProblem],
        truth: Any,
        known: ModelSpec,
        chosen: Scored,
        path: list[Scored],
        score: Callable[[Candidate], tuple[RefitResult, int]],
        selector: TrajectorySelector,
        sizes: dict[str, int],
        measurements: Measurements,
    ) -> dict[str, Any]:
        """The truth refitted and scored as a candidate (:mod:`ude.distill.oracle`), unless
        the library cannot express it; where the chosen support is the truth's, only when the
        twin's Hill n is off the truth's, from the truth's own values."""
        from ude.distill.oracle import (
            at_truth,
            constants_verdict,
            from_twin,
            hill_n_off,
            true_support,
            truth_candidate,
            unsolved,
            verdict,
        )

        def taken(found: Scored) -> bool:
            """Whether the selection, offered ``found`` beside its own candidates, takes it."""
            offered = [*path, found]
            return selector.choose(offered, [s.criterion for s in offered]) is found

        routes = known.neural_routes()
        support = true_support(terms, truth.missing, truth.spec, routes)
        if isinstance(support, str):
            return {"verdict": "truth not in the library", "why": support}
        cand = truth_candidate(support, integral)
        truth_start = at_truth(support, terms, integral, measurements, routes, known.states)
        if cand.support() == chosen.candidate.support():
            # the truth's terms: with a Hill n off, the truth refitted from its own values
            if truth_start is None or not hill_n_off(truth_start, chosen, terms):
                return {"verdict": "chosen is the truth's support"}
            ((result, k),) = selector.refit_all(score, [truth_start], selector.workers)
            if not result.ok:
                return {"verdict": "chosen is the truth's support"}
            found = selector.scored(truth_start, result, k, sizes)
            # a refit that leaves the truth's n for the twin's found the twin's optimum
            kept = not hill_n_off(truth_start, found, terms)
            return constants_verdict(found.criterion, chosen.criterion, taken(found), kept)
        # from the screen's solution, from the twin's refit (its initial states, the terms
        # they share) and from the truth's own values, in the selection's threads
        labelled = [
            (label, start)
            for label, start in (
                ("screen", cand),
                ("twin", from_twin(cand, chosen)),
                ("truth", truth_start),
            )
            if start is not None
        ]
        refits = selector.refit_all(score, [start for _, start in labelled], selector.workers)
        tries, starts, refused = [], {}, []
        for (label, start), (result, k) in zip(labelled, refits, strict=True):
            starts[label] = None
            if result.ok:
                tries.append(selector.scored(start, result, k, sizes))
                starts[label] = round(float(tries[-1].criterion), 3)
            elif result.refused:
                refused.append(f"from the {label}'s start, {result.refused}")
        if not tries:
            return unsolved(refused) | {"starts": starts}
        found = min(tries, key=lambda s: s.criterion)
        # each start's criterion (None: its refit failed): a truth reached only from its own
        # values was out of reach of any start the search has
        return verdict(found.criterion, chosen.criterion, taken(found)) | {"starts": starts}

    def _by_parsimony(
        self,
        identified: dict[str, Any],
        chosen: Scored,
        path: list[Scored],
        terms: dict[str, list[Term]],
        measurements: Measurements,
        samples: Samples,
    ) -> list[dict[str, Any]]:
        """The twin's parameters identified only because the selection left a term out
        (:func:`ude.distill.identifiability.identified_by_parsimony`), from the Fisher
        information of the selection's refits of the twin's structure with one term more;
        an added term is compared with the twin's as functions over the sampled states'
        ranges, each variable drawn apart (:func:`ude.distill.identifiability.spanned`)."""
        from ude.distill.identifiability import identifiability, identified_by_parsimony, spanned

        rng = np.random.default_rng(0)
        kept = samples.X[samples.on_trajectory]
        apart = {n: rng.permutation(kept[:, i]) for i, n in enumerate(samples.names)}

        def redundant(s: Scored, target: str, j: int) -> bool:
            constants = refitted_constants(s).get(target, {})
            values = {
                k: terms[target][k].evaluate(apart, constants.get(k))
                for k in np.flatnonzero(s.candidate.coef[target])
            }
            mine = [values[k] for k in values if k != j]
            return bool(mine) and spanned(values[j], np.column_stack(mine))

        return identified_by_parsimony(
            identified,
            chosen,
            path,
            lambda s: identifiability(s.refit.model, measurements, s.candidate.info["owner"]),
            {t: [term.name for term in ts] for t, ts in terms.items()},
            lambda s: describe(s, terms),
            self.tie,
            redundant=redundant,
        )

    @staticmethod
    def _identifiability(
        model: HybridODE, measurements: Measurements, owner: dict[str, Owner]
    ) -> dict[str, Any]:
        """The Fisher-information check of the final twin (an error is recorded, not
        raised: the twin stands without it)."""
        from ude.distill.identifiability import identifiability

        try:
            return identifiability(model, measurements, owner)
        except (RuntimeError, ValueError, np.linalg.LinAlgError, SolverFailed) as err:
            return {"error": f"{type(err).__name__}: {err}"}
