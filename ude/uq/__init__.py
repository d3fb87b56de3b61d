"""Calibrated uncertainty of a distillation: Bayesian sparse regression of the distilled terms
(:class:`HorseshoeRegression`) and its report (:func:`bayesian_terms`); predictive bands
averaged over the refitted structures (:class:`StructureMixture`); inclusion probabilities
and structure shares from a bootstrap of the data through the screen
(:class:`StructureBootstrap`).

pyro is imported only by the NUTS sampler (``HorseshoeRegression(sampler="nuts")``): the
default Gibbs sampler, a config or ``--help`` do not import it."""

from ude.uq.horseshoe import HorseshoeRegression, TermPosterior
from ude.uq.mixture import PredictiveBand, StructureMixture
from ude.uq.report import bayesian_terms, uq_warnings
from ude.uq.structure_bootstrap import StructureBootstrap

__all__ = [
    "HorseshoeRegression",
    "PredictiveBand",
    "StructureBootstrap",
    "StructureMixture",
    "TermPosterior",
    "bayesian_terms",
    "uq_warnings",
]
