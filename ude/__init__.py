"""ude: digital twins of biological systems from time series.

The public API::

    spec = ude.load_spec("my_model.yaml")              # or a zoo name, or SBML
    data = ude.simulate_measurements("lotka_volterra")  # or your own table
    result = ude.fit(spec, data, max_epochs=600)        # trains the HybridODE
    result.model.simulate(...)
    twin = ude.Distiller().fit(result.model, data).twin  # networks -> symbolic terms
"""

from ude.data import Measurements, simulate_measurements
from ude.distill import Distiller
from ude.errors import UdeError
from ude.fit import FitResult, fit
from ude.model import HybridODE, Solver, build_hybrid
from ude.spec import ModelSpec, load_spec, simulate_spec
from ude.systems import get_system, system_names

__all__ = [
    "Distiller",
    "FitResult",
    "HybridODE",
    "Measurements",
    "ModelSpec",
    "Solver",
    "UdeError",
    "build_hybrid",
    "fit",
    "get_system",
    "load_spec",
    "simulate_measurements",
    "simulate_spec",
    "system_names",
]
__version__ = "0.1.0"
