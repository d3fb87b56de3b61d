"""Bootstrap ensembles of the sparse regression (E-SINDy): inclusion probability per term."""

from __future__ import annotations

import numpy as np

from ude.distill.library import Term
from ude.distill.sparse import Candidate, Problem, ThresholdPath


class BootstrapInclusion:
    """Refits the sparse regression on ``n_models`` bootstrap resamples of the network samples
    (rows drawn with replacement) at the threshold that chose the twin's support, and counts
    how often each term is kept.

    The threshold is the candidate's own when it came from the threshold path; otherwise half
    the smallest normalised coefficient of its terms, the largest threshold that keeps them all
    in a least-squares fit on all samples.
    """

    def __init__(self, n_models: int = 50, seed: int = 0, alpha: float = 1e-6):
        self.n_models = n_models
        self.seed = seed
        self.alpha = alpha

    def threshold(self, problems: dict[str, Problem], candidate: Candidate) -> float:
        if candidate.threshold is not None:
            return candidate.threshold
        smallest = np.inf
        for t, c in candidate.coef.items():
            p = problems[t]
            nz = np.flatnonzero(c)
            if nz.size:
                normalised = np.abs(p.lstsq(nz)[nz] * p.col_scale[nz] / p.y_scale)
                smallest = min(smallest, float(normalised.min()))
        return 0.5 * smallest if np.isfinite(smallest) else 0.05

    def inclusion(
        self, problems: dict[str, Problem], candidate: Candidate, terms: dict[str, list[Term]]
    ) -> dict[str, dict[str, float]]:
        """``{state: {term name: probability}}`` for every term kept at least once."""
        thr = self.threshold(problems, candidate)
        path = ThresholdPath(alpha=self.alpha)
        rng = np.random.default_rng(self.seed)
        out = {}
        for t, p in problems.items():
            n = len(p.y)
            counts = np.zeros(p.Theta.shape[1])
            for _ in range(self.n_models):
                rows = rng.integers(0, n, n)
                sub = Problem(p.Theta[rows], p.y[rows], p.terms)
                counts[path.support_at(sub, thr)] += 1
            out[t] = {
                terms[t][j].name: round(float(counts[j] / self.n_models), 3)
                for j in np.flatnonzero(counts)
            }
        return out
