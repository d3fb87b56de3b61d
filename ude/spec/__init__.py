"""ModelSpec: parse, validate, compile and simulate the user's prior knowledge and twins."""

from ude.spec.compile import CompiledExpressions
from ude.spec.expressions import parse_expression
from ude.spec.model_spec import ModelSpec, NeuralSlot, Parameter, load_spec
from ude.spec.simulate import simulate_spec

__all__ = [
    "CompiledExpressions",
    "ModelSpec",
    "NeuralSlot",
    "Parameter",
    "load_spec",
    "parse_expression",
    "simulate_spec",
]
