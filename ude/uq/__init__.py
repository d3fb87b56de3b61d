"""Calibrated uncertainty of a distillation: Bayesian sparse regression of the distilled terms
(:class:`HorseshoeRegression`) and its report (:func:`bayesian_terms`); predictive bands
averaged over the refitted structures (:class:`StructureMixture`).

pyro is imported only by the NUTS sampler (``HorseshoeRegression(sampler="nuts")``): the
default Gibbs sampler, a config or ``--help`` do not import it."""

from ude.uq.horseshoe import HorseshoeRegression, TermPosterior
from ude.uq.mixture import PredictiveBand, StructureMixture
from ude.uq.report import bayesian_terms, uq_warnings

__all__ = [
    "HorseshoeRegression",
    "PredictiveBand",
    "StructureMixture",
    "TermPosterior",
    "bayesian_terms",
    "uq_warnings",
]
