"""ude: digital twins of biological systems from time series.

The public API::

    spec = ude.load_spec("my_model.yaml")              # or a zoo name, or SBML
    data = ude.simulate_measurements("lotka_volterra")  # or ude.read_measurements("my.csv", spec)
    result = ude.fit(spec, data, max_epochs=600)        # trains as python train.py does
    result.model.simulate(...)
    twin = ude.Distiller().fit(result.model, data).twin  # as python train.py distils
    twin = ude.Twin.load("outputs/<day>/<time>")         # a finished run's twin

The names load on first use, so a command that only reads a spec (``ude-spec check``) does not
import torch and Lightning.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ude._lazy import lazy_getattr

# name: the module that defines it
_API = {
    "Distiller": "ude.distill",
    "FitResult": "ude.fit",
    "HybridODE": "ude.model",
    "Measurements": "ude.data",
    "ModelSpec": "ude.spec",
    "Solver": "ude.model",
    "UdeError": "ude.errors",
    "build_hybrid": "ude.model",
    "get_system": "ude.systems",
    "load_spec": "ude.spec",
    "read_measurements": "ude.data",
    "read_sbml": "ude.spec",
    "simulate_measurements": "ude.data",
    "simulate_spec": "ude.spec",
    "system_names": "ude.systems",
    "Twin": "ude.twin",
    "write_sbml": "ude.spec",
}

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
    "read_measurements",
    "read_sbml",
    "simulate_measurements",
    "simulate_spec",
    "system_names",
    "Twin",
    "write_sbml",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from ude.data import Measurements, read_measurements, simulate_measurements
    from ude.distill import Distiller
    from ude.errors import UdeError
    from ude.fit import FitResult, fit
    from ude.model import HybridODE, Solver, build_hybrid
    from ude.spec import ModelSpec, load_spec, read_sbml, simulate_spec, write_sbml
    from ude.systems import get_system, system_names
    from ude.twin import Twin


__getattr__ = lazy_getattr("ude", _API, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``ude.fit`` is the training function, also once the module ``ude.fit`` (which defines
    it) is imported: importing a submodule binds it to the package's attribute of its name,
    and this property keeps that binding aside."""

    @property
    def fit(self) -> Any:
        return importlib.import_module("ude.fit").fit

    @fit.setter
    def fit(self, module: types.ModuleType) -> None:
        pass


# Python's documented way to customise a module's attribute access beyond __getattr__.
sys.modules[__name__].__class__ = _Package
