"""The distillation pipeline: sample the networks, regress on a library, select, refit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.distill.bootstrap import BootstrapInclusion
from ude.distill.library import Library, Term, combine
from ude.distill.refit import RefitResult, TwinRefit
from ude.distill.sampling import Samples, TrajectorySampler
from ude.distill.selection import Scored, TrajectorySelector, refitted_coef
from ude.distill.sparse import Candidate, EliminationPath, Problem, ThresholdPath, candidate_union
from ude.distill.twin import numeric_twin, twin_spec
from ude.errors import UdeError
from ude.model.hybrid import HybridODE
from ude.model.solver import Solver
from ude.spec.model_spec import ModelSpec


@dataclass
class Distillation:
    """What a distillation found.

    ``twin``: the refitted symbolic ModelSpec (parameters fixed at their refitted values);
    ``terms[target]``: the library terms per target; ``chosen``: the selected candidate;
    ``path``: every scored candidate; ``inclusion``: bootstrap inclusion probabilities
    ``{state: {term: p}}``; ``samples``: the network samples regressed on.
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
    timings: dict[str, float] = field(default_factory=dict)

    def path_rows(self) -> list[dict[str, Any]]:
        """One row per scored candidate: terms, trajectory NMSE, criterion, chosen."""
        rows = []
        for s in self.path:
            fitted = refitted_coef(s)
            terms = {
                t: " ".join(
                    f"{'+' if c[j] > 0 else '-'}{abs(c[j]):.3g}*{self.terms[t][j].name}"
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
                    "trajectory_nmse": s.refit.nmse,
                    "criterion": s.criterion if np.isfinite(s.criterion) else None,
                    "chosen": s is self.chosen,
                    "terms": terms,
                    "regression_residual": s.candidate.info.get("regression_residual"),
                }
            )
        return rows


class Distiller:
    """Distils the networks of a trained HybridODE into symbolic terms.

    Args:
        library: one library or a list (concatenated), built over each slot's inputs.
        sampler: where the networks are sampled (default :class:`TrajectorySampler`).
        paths: candidate generators (default: STLSQ threshold path and joint elimination).
        selector: scores candidates by refitting them (default :class:`TrajectorySelector`).
        score_refit: the ODE refit that scores candidates (default: L-BFGS, RK4 at the data's
            time step, loose tolerance).
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

    def _library(self) -> Library:
        if self.library is None:
            from ude.distill.library import PolynomialLibrary

            return PolynomialLibrary(2)
        return combine(self.library)

    def problems(self, model: HybridODE, samples: Samples) -> tuple[dict, dict]:
        """The regression problem and the library terms of every network target."""
        problems, terms = {}, {}
        for slot in model.spec.neural:
            lib = self._library().fit(list(slot.inputs))
            Theta = lib.transform(samples.columns(list(slot.inputs)))
            if not np.all(np.isfinite(Theta)):
                bad = [
                    n
                    for n, ok in zip(
                        lib.get_feature_names(), np.isfinite(Theta).all(0), strict=True
                    )
                    if not ok
                ]
                raise UdeError(
                    f"library term {bad[0]} is not finite along the trajectories",
                    source="distill.library",
                    fix="drop terms that divide by zero or take logs of non-positive states",
                )
            for target in slot.targets:
                problems[target] = Problem(Theta, samples.target(target), lib.get_feature_names())
                terms[target] = list(lib.terms_)
        return problems, terms

    def fit(self, model: HybridODE, measurements: Measurements) -> Distillation:
        """Distil ``model`` (trained on ``measurements``) into a refitted twin."""
        if not len(model.networks):
            raise UdeError("the model has no neural slots: nothing to distil", source="distill")
        clock = {}
        t0 = time.perf_counter()
        samples = (self.sampler or TrajectorySampler()).sample(model, measurements.times)
        problems, terms = self.problems(model, samples)
        paths = self.paths if self.paths is not None else [ThresholdPath(), EliminationPath()]
        candidates = candidate_union(paths, problems)
        for cand in candidates:
            cand.info["regression_residual"] = {
                t: round(problems[t].relative_residual(c), 4) for t, c in cand.coef.items()
            }
        clock["regression_seconds"] = time.perf_counter() - t0
        initial = model.initial.detach().cpu().numpy()
        dt = float(np.min(np.diff(measurements.times))) if len(measurements.times) > 1 else 1.0
        scorer = self.score_refit or TwinRefit(
            max_iter=100, tol=1e-7, solver=Solver("rk4", step_size=dt)
        )
        known = model.spec

        def score(cand: Candidate) -> tuple[RefitResult, int]:
            twin, owner = twin_spec(known, terms, cand.coef, learn=True)
            cand.info["owner"] = owner
            return scorer.fit(twin, measurements, initial), len(owner)

        t1 = time.perf_counter()
        chosen, path = (self.selector or TrajectorySelector()).select(candidates, score)
        clock["selection_seconds"] = time.perf_counter() - t1
        # final refit from the scored values, with the accurate solver
        t2 = time.perf_counter()
        twin, _ = twin_spec(known, terms, chosen.candidate.coef, learn=True)
        start = {
            k: (v.value if k not in chosen.refit.values else chosen.refit.values[k])
            for k, v in twin.parameters.items()
        }
        twin = numeric_twin(twin, start, keep_learn=True)
        result = (self.refit or TwinRefit(max_iter=400, tol=1e-10)).fit(
            twin, measurements, chosen.refit.model.initial.detach().cpu().numpy()
        )
        if not result.ok:
            result = chosen.refit
        clock["refit_seconds"] = time.perf_counter() - t2
        final = numeric_twin(twin, result.values)
        final.name = f"{known.name}_twin"
        inclusion = None
        if self.bootstrap is not None:
            t2 = time.perf_counter()
            inclusion = self.bootstrap.inclusion(problems, chosen.candidate, terms)
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
            timings={k: round(v, 3) for k, v in clock.items()},
        )
