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
    for name, (target, j, scale) in scored.candidate.info.get("owner", {}).items():
        if name.startswith("c_") and name in scored.refit.values:
            coef[target][j] = float(scored.refit.values[name]) * scale
    return coef


class TrajectorySelector:
    """Refits every candidate of the regression path through the ODE and scores it with
    ``criterion`` on its trajectory error against the data; then, from the best, moves one
    term at a time (each move refitted) while the criterion improves: removals (``prune``)
    and, with ``grow``, additions of library terms the regression path left out (this finds
    terms a poorly identified network hides, at the cost of one refit per library term).

    Args:
        criterion: ``bic`` or ``aicc``.
        prune: do the trajectory-level backward elimination.
        max_candidates: refit at most this many path candidates (the sparsest first).
        grow: also try adding each absent term at every step.
        tolerance: the chosen twin is the sparsest candidate whose criterion is within this
            of the best (6: the difference Kass & Raftery call strong evidence for BIC); 0
            chooses the best.
    """

    def __init__(
        self,
        criterion: str = "bic",
        prune: bool = True,
        max_candidates: int = 5,
        grow: bool = True,
        tolerance: float = 6.0,
    ):
        self.criterion = criterion
        self.prune = prune
        self.max_candidates = max_candidates
        self.grow = grow
        self.tolerance = tolerance

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
        while self.prune or self.grow:
            trials = [score(c, step) for c, step in self._neighbours(best)]
            if not trials:
                break
            top = min(trials, key=lambda s: s.criterion)
            if top.criterion >= best.criterion:
                break
            best = top
        # parsimony: the sparsest candidate the criterion does not clearly reject (within
        # `tolerance` of the best); on one trajectory, extra terms can fit the noise
        floor = min(s.criterion for s in scored)
        near = [s for s in scored if s.criterion <= floor + self.tolerance]
        best = min(near, key=lambda s: (s.candidate.n_terms, s.criterion))
        return best, scored

    def _neighbours(self, best: Scored) -> list[tuple[Candidate, str]]:
        """Supports one term away from ``best``, starting from its refitted coefficients."""
        fitted = refitted_coef(best)
        out = []
        for t, c in fitted.items():
            for j in range(len(c)):
                coef = {k: v.copy() for k, v in fitted.items()}
                if c[j] != 0 and self.prune:
                    if np.count_nonzero(c) == 1:
                        continue  # keep a term in every target
                    coef[t][j] = 0.0
                    out.append((Candidate(coef, "prune"), "prune"))
                elif c[j] == 0 and self.grow:
                    # a small start; the refit through the ODE sizes it
                    coef[t][j] = 1e-2 * float(np.max(np.abs(c))) if np.any(c) else 1e-3
                    out.append((Candidate(coef, "grow"), "grow"))
        return out
