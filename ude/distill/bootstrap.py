"""Inclusion probability per term: how firmly the data choose each of the twin's terms.

The twin is chosen among refitted candidates by an information criterion on their residuals
against the data (:class:`ude.distill.TrajectorySelector`). A bootstrap resample draws the
measured entries with replacement, scores every refitted candidate again on its residuals at
the drawn entries and chooses by the same rule; a term's inclusion probability is the fraction
of resamples whose choice has it. The refits are not repeated: a resample moves the scores, not
the coefficients, so this is the uncertainty of the *choice* among the candidates the selection
refitted, and the table always describes the terms of the twin that was reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ude.data.measurements import Measurements
from ude.distill.library import Term
from ude.distill.selection import Scored, information_criterion
from ude.model.solver import SolverFailed


@torch.no_grad()
def squared_residuals(scored: Scored, measurements: Measurements) -> np.ndarray | None:
    """Squared residuals ``(entry,)`` of a refitted candidate at the measured entries, each
    observable divided by its RMS (their mean is the refit's ``nmse``); None when its refit
    or its solve failed."""
    model = scored.refit.model
    if not scored.refit.ok or model is None:
        return None
    dtype, device = model.initial.dtype, model.initial.device
    cond = torch.arange(model.initial.shape[0], device=device)
    try:
        states = model.simulate(torch.as_tensor(measurements.times, dtype=dtype), cond)
    except SolverFailed:
        return None
    pred = model.observe(states, cond).cpu().numpy()  # (condition, time, observable)
    r = (measurements.values - pred[:, :, None, :]) / measurements.observable_scale()
    r2 = r[np.isfinite(measurements.values)] ** 2
    return r2 if np.all(np.isfinite(r2)) else None


class BootstrapInclusion:
    """Inclusion probabilities from ``n_models`` bootstrap resamples of the measured entries
    (see the module's docstring).

    Args:
        n_models: resamples.
        seed: seed of the resampling.
    """

    def __init__(self, n_models: int = 50, seed: int = 0):
        self.n_models = n_models
        self.seed = seed

    def inclusion(
        self,
        path: list[Scored],
        residuals: list[np.ndarray | None],
        choose: Callable[[list[Scored], list[float]], Scored],
        criterion: str,
        chosen: Scored,
        terms: dict[str, list[Term]],
    ) -> dict[str, dict[str, float]]:
        """``{target: {term name: probability}}``: every term of ``chosen`` (the reported
        twin), and every other term some resample chose.

        ``path``: the refitted candidates; ``residuals[i]``: the squared residuals of
        ``path[i]`` (:func:`squared_residuals`; None: failed); ``choose(path, criteria)``: the
        selector's rule; ``criterion``: ``ebic``, ``bic`` or ``aicc``.
        """
        ok = [r for r in residuals if r is not None]
        counts = {t: np.zeros(len(ts)) for t, ts in terms.items()}
        if ok:
            n = len(ok[0])
            rng = np.random.default_rng(self.seed)
            for _ in range(self.n_models):
                rows = rng.integers(0, n, n)
                scores = [
                    np.inf
                    if r is None
                    else information_criterion(
                        float(np.mean(r[rows])),
                        n,
                        s.n_params,
                        criterion,
                        s.info.get("log_models", 0.0),  # the extended BIC's search size
                    )
                    for s, r in zip(path, residuals, strict=True)
                ]
                for t, c in choose(path, scores).candidate.coef.items():
                    counts[t][np.flatnonzero(c)] += 1
        out = {}
        for t, c in chosen.candidate.coef.items():
            listed = sorted(set(np.flatnonzero(c)) | set(np.flatnonzero(counts[t])))
            out[t] = {
                terms[t][j].name: round(float(counts[t][j] / self.n_models), 3) for j in listed
            }
        return out
