"""The ``uq`` section of distill.json: the horseshoe posterior of every target's library
coefficients, its convergence, and the warnings a user must see."""

from __future__ import annotations

from typing import Any

from ude.distill.integral import IntegralProblem
from ude.uq.horseshoe import HorseshoeRegression, TermPosterior

RHAT_MAX = 1.01
"""Split R-hat above this: the chains disagree (Vehtari et al. 2021, Bayesian Anal. 16:667)."""
ESS_MIN = 400.0
"""Effective draws, bulk or tail, below this: the intervals' ends are too noisy to report and
R-hat itself is unreliable (the same source's rule: 100 per chain for 4 chains)."""

METHODS = {
    "gibbs": "horseshoe with a Gaussian slab on the integral-matching system, exact Gibbs "
    "sampler (ude/uq/gibbs.py)",
    "nuts": "regularised horseshoe (Piironen & Vehtari) on the integral-matching system, NUTS "
    "(pyro)",
}


def posteriors(
    integral: dict[str, IntegralProblem], regression: HorseshoeRegression
) -> dict[str, TermPosterior]:
    """The posterior of each target's integral-matching system."""
    return {t: regression.fit(p, t) for t, p in integral.items()}


def bayesian_terms(
    integral: dict[str, IntegralProblem], regression: HorseshoeRegression
) -> tuple[dict[str, Any], dict[str, TermPosterior]]:
    """distill.json's ``uq`` section (method, settings, per target: convergence, inclusion
    probabilities, medians and credible intervals of the coefficients; ``warnings``) and the
    posteriors themselves."""
    post = posteriors(integral, regression)
    section: dict[str, Any] = {
        "method": METHODS[regression.sampler],
        "level": regression.level,
        "threshold": regression.threshold,
        "settings": {
            k: getattr(regression, k)
            for k in ("sampler", "num_samples", "warmup", "chains", "thin", "expected_terms")
            + ("slab_scale",)
        },
        "targets": {t: p.summary() for t, p in post.items()},
    }
    section["warnings"] = uq_warnings(section)
    return section, post


def uq_warnings(section: dict[str, Any]) -> list[str]:
    """One line per target whose chains did not converge (R-hat above :data:`RHAT_MAX`) or
    left too few effective draws (below :data:`ESS_MIN`)."""
    out = []
    for t, entry in section.get("targets", {}).items():
        bad = []
        if entry["max_rhat"] > RHAT_MAX:
            bad.append(f"R-hat {entry['max_rhat']:.3f} > {RHAT_MAX}")
        if entry["min_ess"] < ESS_MIN:
            bad.append(f"ESS {entry['min_ess']:.0f} < {ESS_MIN:.0f}")
        if bad:
            out.append(
                f"{t}'s horseshoe posterior did not converge ({', '.join(bad)}): raise "
                "distill.uq.regression.thin (or num_samples) and warmup"
            )
    return out


def predictive_band(
    mixture: Any, result: Any, measurements: Any, times: Any, truth: Any
) -> tuple[Any, dict[str, Any]]:
    """The structure-averaged predictive band (:class:`ude.uq.StructureMixture`) over
    ``times`` and distill.json's ``predictive_band``: level, draws, failed draws, the
    structures with their weights and, with ``truth (condition, time, state)``, the share of
    the true states inside the band of the trajectories and inside the predictive band."""
    import numpy as np

    from ude.model.solver import SolverFailed

    try:
        band = mixture.band(result, measurements, times)
    except (RuntimeError, ValueError, np.linalg.LinAlgError, SolverFailed) as err:
        return None, {"error": f"{type(err).__name__}: {err}"}
    out: dict[str, Any] = {
        "level": band.level,
        "method": "structure mixture (evidence weights) x Laplace draws + observation noise",
        "n_samples": band.n_samples,
        "n_failed": band.n_failed,
        "noise": band.noise.tolist(),
        "structures": band.components,
    }
    if truth is not None and band.usable:
        out["coverage_of_truth"] = band.coverage(truth)
        out["predictive_coverage_of_truth"] = band.coverage(truth, noisy=True)
        out["mean_width"] = float(np.nanmean(band.upper - band.lower))
    return band, out
