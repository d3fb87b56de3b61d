"""From a trained HybridODE to a symbolic twin: sampling, libraries, sparse regression,
selection by refitting through the ODE, bootstrap inclusion probabilities, reports.

From Python::

    result = Distiller().fit(model, measurements)   # python train.py's distillation:
    # the parts not given come from ude/conf/distill/default.yaml (Distiller.complete)
    result.twin            # a ModelSpec with the networks replaced by symbolic terms
"""

from ude._lazy import lazy_getattr

# name: the module that defines it; each loads on first use (``python -m ude.distill --help``
# answers without torch)
_API = {
    "BootstrapInclusion": "ude.distill.bootstrap",
    "Candidate": "ude.distill.sparse",
    "ConcatLibrary": "ude.distill.library",
    "ConstantLibrary": "ude.distill.library",
    "CustomLibrary": "ude.distill.library",
    "Distillation": "ude.distill.distiller",
    "Distiller": "ude.distill.distiller",
    "EliminationPath": "ude.distill.sparse",
    "ForecastInterval": "ude.distill.uncertainty",
    "HillLibrary": "ude.distill.library",
    "IntegralPath": "ude.distill.integral",
    "IntegralProblem": "ude.distill.integral",
    "LaplaceInterval": "ude.distill.uncertainty",
    "Library": "ude.distill.library",
    "MassActionLibrary": "ude.distill.library",
    "MichaelisMentenLibrary": "ude.distill.library",
    "PolynomialLibrary": "ude.distill.library",
    "Problem": "ude.distill.sparse",
    "RefitResult": "ude.distill.refit",
    "Samples": "ude.distill.sampling",
    "Term": "ude.distill.library",
    "ThresholdPath": "ude.distill.sparse",
    "TrajectorySampler": "ude.distill.sampling",
    "TrajectorySelector": "ude.distill.selection",
    "TwinRefit": "ude.distill.refit",
    "compare_with_truth": "ude.distill.report",
    "information_criterion": "ude.distill.selection",
    "load_twin": "ude.twin.symbolic",
    "twin_from_dict": "ude.twin.symbolic",
    "twin_spec": "ude.twin.symbolic",
    "twin_to_dict": "ude.twin.symbolic",
    "write_report": "ude.distill.report",
}

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

__getattr__ = lazy_getattr(__name__, _API, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
