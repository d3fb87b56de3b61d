"""The distillation pipeline: sample the networks, regress on a library, select, refit."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.distill.bootstrap import BootstrapInclusion, squared_residuals
from ude.distill.integral import IntegralPath, IntegralProblem, integral_problems, screen_score
from ude.distill.library import Library, Term, combine
from ude.distill.refit import RefitResult, TwinRefit
from ude.distill.sampling import Samples, TrajectorySampler
from ude.distill.selection import NoSolvableTwin, Scored, TrajectorySelector, refitted_coef
from ude.distill.sparse import Candidate, EliminationPath, Problem, ThresholdPath, candidate_union
from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.solver import SolverFailed
from ude.spec.model_spec import POPULATIONS, ModelSpec
from ude.twin.symbolic import numeric_twin, twin_spec


@dataclass
class Distillation:
    """What a distillation found.

    ``twin``: the refitted symbolic ModelSpec (parameters fixed at their refitted values);
    ``terms[target]``: the library terms per target; ``chosen``: the selected candidate;
    ``path``: every scored candidate; ``inclusion``: bootstrap inclusion probabilities
    ``{target: {term: p}}``; ``samples``: the network samples regressed on; ``routes``: the
    states each target changes (a neural reaction's flux: several, by their stoichiometry).
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

    def path_rows(self) -> list[dict[str, Any]]:
        """One row per scored candidate (:func:`path_rows`)."""
        return path_rows(self.path, self.terms, self.chosen)


def path_rows(
    path: list[Scored], terms: dict[str, list[Term]], chosen: Scored | None = None
) -> list[dict[str, Any]]:
    """One row per scored candidate: terms, trajectory NMSE (None: its refit could not be
    solved), criterion, chosen."""
    rows = []
    for s in path:
        fitted = refitted_coef(s)
        constants = _refitted_constants(s)
        names = {
            t: " ".join(
                f"{'+' if c[j] > 0 else '-'}{abs(c[j]):.3g}*"
                + _term_name(terms[t][j], constants.get((t, int(j)), {}))
                for j in np.flatnonzero(c)
            )
            for t, c in fitted.items()
        }
        rows.append(
            {
                "step": s.step,
                "origin": s.candidate.origin,
                "threshold": s.candidate.threshold,
                "n_terms": s.candidate.n_terms,
                "n_params": s.n_params,
                "solved": bool(s.refit.ok),
                "trajectory_nmse": s.refit.nmse if s.refit.ok else None,
                "criterion": s.criterion if np.isfinite(s.criterion) else None,
                "chosen": s is chosen,
                "terms": names,
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
    result: RefitResult, owner: dict[str, tuple[str, int, float]]
) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """The refit's per-condition values and populations, a scaled coefficient's
    (``c * scale * term``) multiplied by its scale, as the plain twin writes it."""
    each, population = dict(result.individual), dict(result.population)
    for name, (_, _, scale) in owner.items():
        if not name.startswith("c_") or scale == 1.0:
            continue
        if name in each:
            each[name] = [v * scale for v in each[name]]
        if name in population:
            pop = dict(population[name])
            for key in ("median", "mean"):
                if key in pop:
                    pop[key] *= scale
            if pop["distribution"] == "normal":
                pop["spread"] *= abs(scale)
            population[name] = pop
    return each, population


def _refitted_constants(scored: Scored) -> dict[tuple[str, int], dict[str, float]]:
    """Refitted nonlinear constants (e.g. K) per (target, term index)."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for name, (target, j, _) in scored.candidate.info.get("owner", {}).items():
        if not name.startswith("c_") and name in scored.refit.values:
            out.setdefault((target, j), {})[name.split("_")[0]] = float(scored.refit.values[name])
    return out


def _term_name(term: Term, constants: dict[str, float]) -> str:
    """The term's name with its constants at their refitted values."""
    if not constants:
        return term.name
    return Term(term.expr, {**term.constants, **constants}, term.learnable, term.family).name


class Distiller:
    """Distils the networks of a trained HybridODE into symbolic terms.

    Args:
        library: one library or a list (concatenated), built over each slot's inputs.
        sampler: where the networks are sampled (default :class:`TrajectorySampler`).
        paths: candidate generators (default: integral matching on the data, the STLSQ
            threshold path and joint elimination on the network samples).
        selector: scores candidates by refitting them (default :class:`TrajectorySelector`);
            it sees each candidate's integral-matching score (``info["screen"]``).
        score_refit: the ODE refit that scores candidates (default: RK4 on the data's time
            grid, 300 L-BFGS iterations, loose tolerance).
        refit: the final ODE refit of the chosen twin (default: dopri5, tight tolerance).
        bootstrap: inclusion probabilities (None: skipped).
        individual: targets (states, or neural reactions) whose discovered coefficients are
            individual: each condition (patient) gets its own value under a learned
            ``population`` distribution (``lognormal``, or ``normal``), in every refit.

    Parameters of the prior spec that are per condition start every refit from the trained
    model's values for each condition (and a population's from its median and spread).
    """

    def __init__(
        self,
        library: Library | Sequence[Library] | None = None,
        sampler: TrajectorySampler | None = None,
        paths: Sequence | None = None,
        selector: TrajectorySelector | None = None,
        score_refit: TwinRefit | None = None,
        refit: TwinRefit | None = None,
        bootstrap: BootstrapInclusion | None = None,
        individual: Sequence[str] = (),
        population: str = "lognormal",
    ):
        self.individual = list(individual)
        self.population = population
        self.library = library
        self.sampler = sampler
        self.paths = paths
        self.selector = selector
        self.score_refit = score_refit
        self.refit = refit
        self.bootstrap = bootstrap

    def _n_grid(self) -> int:
        return (self.sampler or TrajectorySampler()).n_times

    def _library(self) -> Library:
        if self.library is None:
            from ude.distill.library import PolynomialLibrary

            return PolynomialLibrary(2)
        return combine(self.library)

    def _check_individual(self, known: ModelSpec, terms: dict[str, list[Term]]) -> None:
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

    def _slot_libraries(self, model: HybridODE) -> list[tuple[Any, Library]]:
        """Each neural slot with the library fitted to its inputs."""
        return [(slot, self._library().fit(list(slot.inputs))) for slot in model.spec.neural]

    def theta(
        self, model: HybridODE, slots: list[tuple[Any, Library]] | None = None
    ) -> Callable[[np.ndarray], dict]:
        """``X (point, state + input) -> {target: (library matrix, term names)}`` (``slots``:
        the fitted slot libraries, default fitted here). A target is a network output: a
        state's term, or a neural reaction's flux (distilled once, into a rate law that the
        twin applies through the reaction's stoichiometry, so conserved totals stay so)."""
        names = [*model.spec.states, *model.spec.inputs]
        slots = self._slot_libraries(model) if slots is None else slots

        def theta(X: np.ndarray) -> dict[str, tuple[np.ndarray, list[str]]]:
            out = {}
            for slot, lib in slots:
                T = lib.transform(X[:, [names.index(n) for n in slot.inputs]])
                for target in slot.outputs:
                    out[target] = (T, lib.get_feature_names())
            return out

        return theta

    def problems(self, model: HybridODE, samples: Samples) -> tuple[dict, dict]:
        """The regression problem and the library terms of every network target."""
        problems = {}
        slots = self._slot_libraries(model)
        for target, (Theta, names) in self.theta(model, slots)(samples.X).items():
            if not np.all(np.isfinite(Theta)):
                bad = [n for n, ok in zip(names, np.isfinite(Theta).all(0), strict=True) if not ok]
                raise UdeError(
                    f"library term {bad[0]} is not finite along the trajectories",
                    source="distill.library",
                    fix="drop terms that divide by zero or take logs of non-positive states",
                )
            problems[target] = Problem(Theta, samples.target(target), names)
        terms = {t: list(lib.terms_) for slot, lib in slots for t in slot.outputs}
        return problems, terms

    def fit(self, model: HybridODE, measurements: Measurements) -> Distillation:
        """Distil ``model`` (trained on ``measurements``) into a refitted twin."""
        if not len(model.networks):
            raise UdeError("the model has no neural slots: nothing to distil", source="distill")
        clock = {}
        t0 = time.perf_counter()
        samples = (self.sampler or TrajectorySampler()).sample(model, measurements.times)
        problems, terms = self.problems(model, samples)
        theta = self.theta(model)
        integral = integral_problems(model, measurements, theta, n_grid=self._n_grid())
        paths = self.paths
        if paths is None:
            paths = [IntegralPath(), ThresholdPath(), EliminationPath()]
        proposer = next((p for p in paths if isinstance(p, IntegralPath)), None)
        around: dict[int, dict[str, IntegralProblem]] = {}

        def integral_along(best: Scored | None) -> dict[str, IntegralProblem]:
            """The integral problems along a refitted twin's trajectory (None: the UDE's)."""
            if best is None or not best.refit.ok or best.refit.model is None:
                return integral
            if id(best) not in around:
                try:
                    around[id(best)] = integral_problems(
                        model, measurements, theta, best.refit.model, self._n_grid()
                    )
                except SolverFailed:
                    around[id(best)] = integral
            return around[id(best)]

        candidates = candidate_union(paths, problems, integral)
        for cand in candidates:
            cand.info["regression_residual"] = {
                t: round(problems[t].relative_residual(c), 4) for t, c in cand.coef.items()
            }
            cand.info["screen"] = screen_score(integral, cand)
        clock["regression_seconds"] = time.perf_counter() - t0
        initial = model.initial.detach().cpu().numpy()
        scorer = self.score_refit or TwinRefit(max_iter=300, tol=1e-7, method="rk4")
        known = trained_individuals(model)
        self._check_individual(known, terms)
        individual = {t: self.population for t in self.individual}
        # coefficients in units of each term's contribution relative to the network output
        scales = {t: p.y_scale / p.col_scale for t, p in problems.items()}
        noise = model.noise.detach().cpu().numpy()

        def score(cand: Candidate) -> tuple[RefitResult, int]:
            twin, owner = twin_spec(
                known, terms, cand.coef, learn=True, scales=scales, individual=individual
            )
            cand.info["owner"] = owner
            return scorer.fit(twin, measurements, initial, noise), len(owner)

        t1 = time.perf_counter()
        selector = self.selector or TrajectorySelector()
        try:
            chosen, path = selector.select(
                candidates,
                score,
                lambda cand, best: screen_score(integral_along(best), cand),
                None if proposer is None else lambda b: proposer.candidates(integral_along(b)),
            )
        except NoSolvableTwin as err:
            err.rows = path_rows(err.scored, terms)
            err.timings = {"total_seconds": round(time.perf_counter() - t0, 3)}
            raise
        clock["selection_seconds"] = time.perf_counter() - t1
        # final refit from the scored values, with the accurate solver
        t2 = time.perf_counter()
        twin, owner = twin_spec(
            known, terms, chosen.candidate.coef, learn=True, scales=scales, individual=individual
        )
        start = {k: chosen.refit.values.get(k, p.value) for k, p in twin.parameters.items()}
        twin = numeric_twin(twin, start, True, chosen.refit.individual, chosen.refit.population)
        result = (self.refit or TwinRefit()).fit(
            twin, measurements, chosen.refit.model.initial.detach().cpu().numpy(), noise
        )
        if not result.ok:
            result = chosen.refit
        clock["refit_seconds"] = time.perf_counter() - t2
        # the reported twin carries plain coefficients (no scale factors)
        final_scored = Scored(
            Candidate(chosen.candidate.coef, "final", info={"owner": owner}), result, 0.0, 0
        )
        coef = refitted_coef(final_scored)
        plain, _ = twin_spec(known, terms, coef, learn=True, individual=individual)
        values = {
            **result.values,
            **{k: p.value for k, p in plain.parameters.items() if k.startswith("c_")},
        }
        each, population = _unscaled(result, owner)
        final = numeric_twin(plain, values, False, each, population)
        final.name = f"{known.name}_twin"
        inclusion = None
        if self.bootstrap is not None:
            t2 = time.perf_counter()
            residuals = [squared_residuals(s, measurements) for s in path]
            inclusion = self.bootstrap.inclusion(
                path, residuals, selector.choose, selector.criterion, chosen, terms
            )
            clock["bootstrap_seconds"] = time.perf_counter() - t2
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
        )
