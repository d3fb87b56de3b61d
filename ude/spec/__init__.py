"""ModelSpec: parse, validate, compile and simulate the user's prior knowledge and twins."""

from ude.spec.compile import CompiledExpressions
from ude.spec.expressions import parse_expression
from ude.spec.model_spec import ModelSpec, NeuralSlot, Parameter, Prior, load_spec
from ude.spec.reactions import Reaction
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
