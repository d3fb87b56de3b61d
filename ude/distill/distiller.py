"""The distillation pipeline: sample the networks, regress on a library, select, refit."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from ude.spec.model_spec import ModelSpec
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
    ):
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
        known = model.spec
        # coefficients in units of each term's contribution relative to the network output
        scales = {t: p.y_scale / p.col_scale for t, p in problems.items()}
        noise = model.noise.detach().cpu().numpy()

        def score(cand: Candidate) -> tuple[RefitResult, int]:
            twin, owner = twin_spec(known, terms, cand.coef, learn=True, scales=scales)
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
        twin, owner = twin_spec(known, terms, chosen.candidate.coef, learn=True, scales=scales)
        start = {k: chosen.refit.values.get(k, p.value) for k, p in twin.parameters.items()}
        twin = numeric_twin(twin, start, keep_learn=True)
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
        plain, _ = twin_spec(known, terms, coef, learn=True)
        values = {
            **result.values,
            **{k: p.value for k, p in plain.parameters.items() if k.startswith("c_")},
        }
        final = numeric_twin(plain, values)
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
