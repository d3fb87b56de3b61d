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
    ``times`` and distill.json's ``predictive_band``: level, draws, draws that blew up, the
    structures with their weights and the share of each one's draws that blew up (and when
    the first did), where the band is unbounded, ``warnings``; with ``truth (condition,
    time, state)``, the share of the true states inside the band of the trajectories and
    inside the predictive band where it is bounded."""
    import numpy as np

    from ude.model.solver import SolverFailed

    try:
        band = mixture.band(result, measurements, times)
    except (RuntimeError, ValueError, np.linalg.LinAlgError, SolverFailed) as err:
        return None, {"error": f"{type(err).__name__}: {err}"}
    unbounded = band.unbounded_from()
    out: dict[str, Any] = {
        "level": band.level,
        "method": f"structure mixture ({_source(band)} weights) x Laplace draws + observation "
        "noise; "
        "draws that blow up count as outside the band (unbounded where over 1 - level)",
        "n_samples": band.n_samples,
        "n_failed": band.n_failed,
        "escaped_share_at_end": [round(float(e), 4) for e in band.escaped[:, -1]],
        "unbounded_from": unbounded,
        "bounded_share": round(float(band.bounded.mean()), 4),
        "left_out_weight": band.left_out_weight,
        "noise": band.noise.tolist(),
        "structures": band.components,
    }
    if band.profiles:
        out["profiles"] = band.profiles
    if truth is not None and band.usable:
        out["coverage_of_truth"] = band.coverage(truth)
        out["predictive_coverage_of_truth"] = band.coverage(truth, noisy=True)
        out["mean_width"] = band.mean_width()
    out["warnings"] = band_warnings(band, unbounded)
    return band, out


def _source(band: Any) -> str:
    """Where the mixture's weights came from: ``bootstrap`` or ``evidence``."""
    return next((c["weight_from"] for c in band.components if "weight_from" in c), "evidence")


def band_warnings(band: Any, unbounded: list[float | None]) -> list[str]:
    """The lines a user must see about a predictive band: where it is unbounded because
    draws blew up (naming the structures whose draws did), and structures left out."""
    out = []
    ends = [t for t in unbounded if t is not None]
    if ends:
        blew = [c for c in band.components if c.get("n_failed")]
        names = ", ".join(
            f"'{c['discovered']}' (weight {c['weight']:.2f}, {c['failed_share']:.0%} of its draws)"
            for c in sorted(blew, key=lambda c: -c["weight"] * c["failed_share"])[:3]
        )
        share = float(band.escaped.max())
        out.append(
            f"the {band.level:.0%} predictive band is unbounded from t={min(ends):.3g}: "
            f"{share:.0%} of the structure mixture's draws blow up by the end ({names})"
        )
    if band.left_out_weight > 0:
        out.append(
            f"structures with weight {band.left_out_weight:.2f} could not be simulated (no "
            "Laplace approximation) and are left out of the predictive band"
        )
    return out
