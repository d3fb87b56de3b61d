"""From a trained HybridODE to a symbolic twin: sampling, libraries, sparse regression,
selection by refitting through the ODE, bootstrap inclusion probabilities, reports.

From Python::

    result = Distiller().fit(model, measurements)   # mass action, Michaelis-Menten, Hill
    result.twin            # a ModelSpec with the networks replaced by symbolic terms
"""

from ude.distill.bootstrap import BootstrapInclusion
from ude.distill.distiller import Distillation, Distiller
from ude.distill.integral import IntegralPath, IntegralProblem
from ude.distill.library import (
    ConcatLibrary,
    ConstantLibrary,
    CustomLibrary,
    HillLibrary,
    Library,
    MassActionLibrary,
    MichaelisMentenLibrary,
    PolynomialLibrary,
    Term,
)
from ude.distill.refit import RefitResult, TwinRefit
from ude.distill.report import compare_with_truth, write_report
from ude.distill.sampling import Samples, TrajectorySampler
from ude.distill.selection import TrajectorySelector, information_criterion
from ude.distill.sparse import Candidate, EliminationPath, Problem, ThresholdPath
from ude.distill.twin import load_twin, twin_from_dict, twin_spec, twin_to_dict
from ude.distill.uncertainty import ForecastInterval, LaplaceInterval

__all__ = [
    "BootstrapInclusion",
    "Candidate",
    "ConcatLibrary",
    "ConstantLibrary",
    "CustomLibrary",
    "Distillation",
    "Distiller",
    "EliminationPath",
    "ForecastInterval",
    "HillLibrary",
    "IntegralPath",
    "IntegralProblem",
    "LaplaceInterval",
    "Library",
    "MassActionLibrary",
    "MichaelisMentenLibrary",
    "PolynomialLibrary",
    "Problem",
    "RefitResult",
    "Samples",
    "Term",
    "ThresholdPath",
    "TrajectorySampler",
    "TrajectorySelector",
    "TwinRefit",
    "compare_with_truth",
    "information_criterion",
    "load_twin",
    "twin_from_dict",
    "twin_spec",
    "twin_to_dict",
    "write_report",
]
