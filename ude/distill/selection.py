"""Choosing the twin: refit each candidate through the ODE, score it on the data with an
information criterion, then prune the best by trajectory-level backward elimination."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ude.distill.refit import RefitResult
from ude.distill.sparse import Candidate
from ude.errors import UdeError


def information_criterion(nmse: float, n: int, k: int, kind: str = "bic") -> float:
    """``n log(RSS/n) + penalty(k)`` for ``n`` data points and ``k`` discovered parameters;
    ``kind``: ``bic`` (k log n) or ``aicc`` (2k + 2k(k+1)/(n-k-1))."""
    if not math.isfinite(nmse) or nmse <= 0:
        return math.inf
    base = n * math.log(nmse)
    if kind == "bic":
        return base + k * math.log(n)
    if kind == "aicc":
        return base + 2 * k + (2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf)
    raise UdeError(
        f"unknown criterion '{kind}'", source="distill.selector.criterion", fix="bic or aicc"
    )


@dataclass
class Scored:
    """A candidate with its refit and score."""

    candidate: Candidate
    refit: RefitResult
    criterion: float
    n_params: int
    step: str = "path"
    info: dict = field(default_factory=dict)


def refitted_coef(scored: Scored) -> dict[str, np.ndarray]:
    """The candidate's coefficients ``{target: (term,)}`` at their refitted values."""
    coef = {k: v.copy() for k, v in scored.candidate.coef.items()}
    for name, (target, j) in scored.candidate.info.get("owner", {}).items():
        if name.startswith("c_") and name in scored.refit.values:
            coef[target][j] = float(scored.refit.values[name])
    return coef


class TrajectorySelector:
    """Refits every candidate of the regression path through the ODE and scores it with
    ``criterion`` on its trajectory error against the data; then, from the best, removes one
    term at a time (each removal refitted) while the criterion improves.

    Args:
        criterion: ``bic`` or ``aicc``.
        prune: do the trajectory-level backward elimination.
        max_candidates: refit at most this many path candidates (the sparsest first).
    """

    def __init__(self, criterion: str = "bic", prune: bool = True, max_candidates: int = 6):
        self.criterion = criterion
        self.prune = prune
        self.max_candidates = max_candidates

    def select(
        self,
        candidates: list[Candidate],
        refit: Callable[[Candidate], tuple[RefitResult, int]],
    ) -> tuple[Scored, list[Scored]]:
        """The chosen candidate and every scored one (the whole path), in order of scoring.

        ``refit(candidate)`` returns the refit and the number of discovered parameters.
        """
        if not candidates:
            raise UdeError(
                "the sparse regression found no candidate with a term for every target",
                source="distill",
                fix="lower distill.path.min_threshold or widen the library",
            )
        scored: list[Scored] = []
        seen: dict[tuple, Scored] = {}

        def score(cand: Candidate, step: str) -> Scored:
            key = cand.support()
            if key in seen:
                return seen[key]
            result, k = refit(cand)
            crit = information_criterion(result.nmse, result.n_points, k, self.criterion)
            s = Scored(cand, result, crit, k, step)
            seen[key] = s
            scored.append(s)
            return s

        # the sparsest candidates first: dense ones are slow to refit and rarely chosen
        for cand in sorted(candidates, key=lambda c: c.n_terms)[: self.max_candidates]:
            score(cand, "path")
        best = min(scored, key=lambda s: s.criterion)
        while self.prune and best.candidate.n_terms > 1:
            trials = []
            for t, c in best.candidate.coef.items():
                for j in np.flatnonzero(c):
                    coef = {k: v.copy() for k, v in best.candidate.coef.items()}
                    coef[t][j] = 0.0
                    if not np.any(coef[t]) and np.count_nonzero(c) == 1:
                        continue  # keep a term in every target
                    # start from the refitted coefficients of the current best
                    fitted = refitted_coef(best)
                    for k in coef:
                        coef[k] = np.where(coef[k] != 0, fitted[k], 0.0)
                    trial = Candidate(coef, "prune", None, {"from": best.candidate.info})
                    trials.append(score(trial, "prune"))
            if not trials:
                break
            top = min(trials, key=lambda s: s.criterion)
            if top.criterion >= best.criterion:
                break
            best = top
        return best, scored
