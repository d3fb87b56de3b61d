"""ModelSpec: parse, validate, compile and simulate the user's prior knowledge and twins.

The compiler and the simulator (torch) and the SBML reader (libsbml) load on first use, so
reading a spec needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ude._lazy import lazy_getattr
from ude.spec.expressions import parse_expression
from ude.spec.model_spec import ModelSpec, NeuralSlot, Parameter, Prior, load_spec
from ude.spec.reactions import Reaction

_LAZY = {
    "CompiledExpressions": "ude.spec.compile",
    "read_sbml": "ude.spec.sbml",
    "simulate_spec": "ude.spec.simulate",
    "write_sbml": "ude.spec.sbml",
}

if TYPE_CHECKING:
    from ude.spec.compile import CompiledExpressions
    from ude.spec.sbml import read_sbml, write_sbml
    from ude.spec.simulate import simulate_spec

__all__ = [
    "CompiledExpressions",
    "ModelSpec",
    "NeuralSlot",
    "Parameter",
    "Prior",
    "Reaction",
    "load_spec",
    "parse_expression",
    "read_sbml",
    "simulate_spec",
    "write_sbml",
]


__getattr__ = lazy_getattr("ude.spec", _LAZY, globals())
