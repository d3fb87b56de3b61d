"""The hybrid model and the solver wrapper."""

from ude.model.hybrid import HybridODE, build_hybrid
from ude.model.networks import MLP
from ude.model.solver import Solver, SolverFailed

__all__ = ["MLP", "HybridODE", "Solver", "SolverFailed", "build_hybrid"]
