"""Structure averaging by a bootstrap over the data, through the screen.

Each resample draws the data's points again (whole conditions, or blocks of time points
within each condition: :mod:`ude.uq.resampling`) and runs the distillation's selection again
on it: the integral-matching screen on the resampled rows proposes and ranks the candidates,
the selector refits them in its own order, moves one term at a time from the best and
chooses by its rule, every criterion computed on the resampled points. A term's inclusion
probability is the share of resamples whose chosen structure has it; a structure's
``bootstrap_share`` the share that chose it.

What a resample does not redo is the fit of a structure already refitted: a refit through the
ODE costs seconds, so each structure is refitted once, on all the data, and a resample rescores
its residuals at the points it drew (their weighted mean is the resampled NMSE). A structure
that a resample's screen or moves reach and no refit has tried yet is refitted then, up to
``max_refits`` in all; past that budget it cannot be chosen (``unscored`` counts how often a
resample wanted one). The inclusion probabilities then carry the data's noise through the
screen and the choice, and the coefficients' own uncertainty is the credible intervals'.

``bootstrap_weight`` averages each refitted structure's evidence weight
(``exp(-criterion/2)``, normalised) over the resamples, every structure scored on every
resample: a smoother measure than the share of wins, for structures that are rarely best and
never far behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ude.data.measurements import Measurements
from ude.distill.bootstrap import squared_residuals
from ude.distill.integral import IntegralProblem
from ude.distill.library import Term
from ude.distill.refit import RefitResult
from ude.distill.selection import NoSolvableTwin, Scored, information_criterion, log_supports
from ude.distill.sparse import Candidate
from ude.uq.resampling import draw_counts, entry_points, present_points, resolve_unit

Support = tuple[tuple[str, tuple[int, ...]], ...]
Refit = Callable[[Candidate], tuple[RefitResult, int]]
View = Callable[[dict[str, IntegralProblem]], dict[str, IntegralProblem]]


@dataclass
class Replay:
    """What the bootstrap needs of a distillation (:meth:`ude.distill.Distiller.fit` builds
    it): ``select(view, refit)`` runs the screen and the selection again with every integral
    problem seen through ``view`` and every candidate scored by ``refit``, and returns the
    chosen candidate; ``refit(candidate)`` refits a candidate on all the data; ``path``: the
    candidates the selection refitted; ``chosen``: the reported twin's candidate;
    ``terms[target]``: the library terms, named as the report names them; ``criterion``:
    the selector's; ``residuals(scored)``: a refitted candidate's squared residuals
    ``(entry,)`` at the measured entries, in the order of ``values[isfinite(values)]``
    (None: its solve failed; default :func:`ude.distill.bootstrap.squared_residuals`);
    ``choose(scored, criteria)``: the selector's rule among scored candidates, for a
    resample whose selection could score none of its own candidates within the refit
    budget (None: such a resample chooses nothing)."""

    measurements: Measurements
    select: Callable[[View, Refit], Scored]
    refit: Refit
    path: list[Scored]
    chosen: Scored
    terms: dict[str, list[Term]]
    criterion: str = "ebic"
    residuals: Callable[[Scored], np.ndarray | None] | None = None
    choose: Callable[[list[Scored], list[float]], Scored] | None = None

    def squared_residuals(self, scored: Scored) -> np.ndarray | None:
        if self.residuals is not None:
            return self.residuals(scored)
        return squared_residuals(scored, self.measurements)


@dataclass
class Structure:
    """A structure refitted on all the data: its candidate (with the refit's owner map),
    refit, discovered parameters, squared residuals ``(entry,)`` (None: no solve) and where
    it was first refitted (``selection`` or ``bootstrap``)."""

    candidate: Candidate
    refit: RefitResult
    n_params: int
    residuals: np.ndarray | None
    origin: str

    def scored(self) -> Scored:
        return Scored(self.candidate, self.refit, 0.0, self.n_params)


@dataclass
class BootstrapFindings:
    """What the bootstrap found: ``inclusion`` ``{target: {term: p}}``; per structure
    (by support) its ``share`` of the resamples' choices and its resample-averaged evidence
    ``weight``; ``structures`` every structure refitted; the settings and counts in
    ``info``."""

    inclusion: dict[str, dict[str, float]]
    share: dict[Support, float]
    weight: dict[Support, float]
    structures: dict[Support, Structure]
    info: dict[str, Any] = field(default_factory=dict)

    def report(
        self, describe: Callable[[Scored], dict[str, str]], chosen: Support | None = None
    ) -> dict[str, Any]:
        """distill.json's ``structure_bootstrap``: the settings and counts, and the
        structures any resample chose or weighed above 1 %, heaviest share first, the
        reported twin's (support ``chosen``) marked."""
        rows = []
        for key, s in self.structures.items():
            share, weight = self.share.get(key, 0.0), self.weight.get(key, 0.0)
            if share > 0 or weight > 0.01 or key == chosen:
                rows.append(
                    {
                        "discovered": describe(s.scored()),
                        "bootstrap_share": round(share, 4),
                        "bootstrap_weight": round(weight, 4),
                        "refitted_in": s.origin,
                        "chosen": key == chosen,
                    }
                )
        rows.sort(key=lambda r: (-r["bootstrap_share"], -r["bootstrap_weight"]))
        return {**self.info, "structures": rows}


def resampled_problem(p: IntegralProblem, counts: np.ndarray) -> IntegralProblem:
    """``p`` with each row repeated as often as a resample drew its point (``counts
    (condition, time)``); the free constants stay at the full data's values (the screen's
    joint refinement refits them on the resampled rows)."""
    if p.entries is None:
        return p
    rows = np.repeat(np.arange(p.n_points), counts[p.entries[:, 0], p.entries[:, 1]])
    return IntegralProblem(
        F=p.F[rows],
        y=p.y[rows],
        condition=p.condition[rows],
        terms=p.terms,
        from_data=p.from_data,
        W=None if p.W is None else p.W[rows],
        X=p.X,
        laws=p.laws,
        constants={j: dict(c) for j, c in p.constants.items()},
        degenerate=set(p.degenerate),
        entries=p.entries[rows],
    )


def resampled_criterion(
    key: Support, structure: Structure, weights: np.ndarray, replay: Replay
) -> float:
    """The selector's criterion of a refitted structure (support ``key``) on a resample
    whose measured entries have the counts ``weights (entry,)``."""
    sizes = {t: len(ts) for t, ts in replay.terms.items()}
    log_models = sum(log_supports(sizes[t], len(idx)) for t, idx in key if t in sizes)
    n = float(weights.sum())
    nmse = float(weights @ structure.residuals / n)
    return information_criterion(nmse, int(n), structure.n_params, replay.criterion, log_models)


class StructureBootstrap:
    """Inclusion probabilities and structure shares from ``n_resamples`` resamples of the
    data, each running the screen and the selection again (see the module).

    Args:
        n_resamples: resamples.
        unit: ``auto``, ``conditions`` or ``times`` (:mod:`ude.uq.resampling`).
        min_conditions: with ``auto``, resample whole conditions from this many up.
        block: consecutive time points per block (None: ``ceil(m ** (1/3))``).
        max_refits: refits through the ODE of structures the selection had not refitted,
            in all resamples together (each costs about what one refit of the selection
            does).
        seed: seed of the resampling.
    """

    def __init__(
        self,
        n_resamples: int = 40,
        unit: str = "auto",
        min_conditions: int = 5,
        block: int | None = None,
        max_refits: int = 2,
        seed: int = 0,
    ):
        self.n_resamples = n_resamples
        self.unit = unit
        self.min_conditions = min_conditions
        self.block = block
        self.max_refits = max_refits
        self.seed = seed

    def resample(self, replay: Replay) -> BootstrapFindings:
        """Run the resamples (see the module)."""
        m = replay.measurements
        present = present_points(m.values)
        unit = resolve_unit(self.unit, m.n_conditions, self.min_conditions)
        cond, time = entry_points(m.values)
        known: dict[Support, Structure] = {}
        for s in replay.path:
            known.setdefault(
                s.candidate.support(),
                Structure(
                    s.candidate, s.refit, s.n_params, replay.squared_residuals(s), "selection"
                ),
            )
        rng = np.random.default_rng(self.seed)
        wins: dict[Support, int] = {}
        draws: list[np.ndarray] = []
        state = {"new": 0, "unscored": 0, "fallback": 0}

        def structure(cand: Candidate) -> Structure | None:
            key = cand.support()
            if key not in known:
                if state["new"] >= self.max_refits:
                    return None
                state["new"] += 1
                result, k = replay.refit(cand)
                s = Scored(cand, result, 0.0, k)
                known[key] = Structure(cand, result, k, replay.squared_residuals(s), "bootstrap")
            return known[key]

        for _ in range(self.n_resamples):
            counts = draw_counts(present, unit, self.block, rng)
            weights = counts[cond, time].astype(float)
            draws.append(weights)

            def refit(cand: Candidate, weights: np.ndarray = weights) -> tuple[RefitResult, int]:
                s = structure(cand)
                if s is None:  # over the refit budget: cannot be chosen
                    state["unscored"] += 1
                    return RefitResult(None, {}, np.inf, int(weights.sum()), False, 0), 0
                if s.candidate is not cand:  # the refit's values map onto this candidate
                    cand.info["owner"] = s.candidate.info.get("owner", {})
                    cand.constants = s.candidate.constants
                if s.residuals is None:
                    return replace(s.refit, ok=False, nmse=np.inf), s.n_params
                n = float(weights.sum())
                nmse = float(weights @ s.residuals / n)
                return replace(s.refit, nmse=nmse, n_points=int(n)), s.n_params

            seen: dict[int, tuple[dict, dict]] = {}  # the screen views a problem set often

            def view(problems: dict, counts: np.ndarray = counts, seen: dict = seen) -> dict:
                if id(problems) not in seen:  # (the problems are kept alive: ids are unique)
                    drawn = {t: resampled_problem(p, counts) for t, p in problems.items()}
                    seen[id(problems)] = (problems, drawn)
                return seen[id(problems)][1]

            try:
                chosen = replay.select(view, refit)
            except NoSolvableTwin:
                # every candidate of this resample's screen was past the refit budget: the
                # selector's rule among the structures refitted so far, rescored here
                chosen = self._among_known(known, weights, replay)
                state["fallback"] += 1
                if chosen is None:
                    continue
            key = chosen.candidate.support()
            wins[key] = wins.get(key, 0) + 1
        n = self.n_resamples
        share = {k: v / n for k, v in wins.items()}
        weight = self._averaged_weights(known, np.array(draws), replay)
        return BootstrapFindings(
            inclusion=self._inclusion(share, replay),
            share=share,
            weight=weight,
            structures=known,
            info={
                "method": "bootstrap of the data through the screen and the selection",
                "unit": unit,
                "block": None if unit == "conditions" else (self.block or "ceil(m^(1/3))"),
                "n_resamples": n,
                "refits_added": state["new"],
                "unscored_proposals": state["unscored"],
                "resamples_chosen_among_refitted": state["fallback"],
            },
        )

    @staticmethod
    def _among_known(
        known: dict[Support, Structure], weights: np.ndarray, replay: Replay
    ) -> Scored | None:
        """The selector's choice among the refitted structures, scored on the resample whose
        entries have the counts ``weights (entry,)``; None without a rule or a solved one."""
        if replay.choose is None:
            return None
        solved = [(k, s) for k, s in known.items() if s.residuals is not None and s.refit.ok]
        scored = [s.scored() for _, s in solved]
        criteria = [resampled_criterion(k, s, weights, replay) for k, s in solved]
        try:
            return replay.choose(scored, criteria)
        except NoSolvableTwin:
            return None

    def _inclusion(
        self, share: dict[Support, float], replay: Replay
    ) -> dict[str, dict[str, float]]:
        """``{target: {term: p}}``: every term of the reported twin, and every other term a
        resample chose."""
        terms = replay.terms
        p = {t: np.zeros(len(ts)) for t, ts in terms.items()}
        for key, f in share.items():
            for t, idx in key:
                p[t][list(idx)] += f
        out = {}
        for t, c in replay.chosen.candidate.coef.items():
            listed = sorted(set(np.flatnonzero(c)) | set(np.flatnonzero(p[t])))
            out[t] = {terms[t][j].name: round(float(p[t][j]), 3) for j in listed}
        return out

    @staticmethod
    def _averaged_weights(
        known: dict[Support, Structure], draws: np.ndarray, replay: Replay
    ) -> dict[Support, float]:
        """Each structure's evidence weight on each resample (``draws (resample, entry)``:
        the entries' counts), averaged over the resamples."""
        keys = [k for k, s in known.items() if s.residuals is not None and s.refit.ok]
        if not keys or not len(draws):
            return {}
        crit = np.array(
            [[resampled_criterion(k, known[k], w, replay) for k in keys] for w in draws]
        )
        ok = np.isfinite(crit)
        best = np.where(ok, crit, np.inf).min(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):  # a resample where nothing solved: inf - inf
            w = np.where(ok, np.exp(-(crit - best) / 2), 0.0)
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
        return dict(zip(keys, w.mean(axis=0).tolist(), strict=True))
