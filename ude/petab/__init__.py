"""PEtab and PEtab SciML: read a problem into ude, evaluate its likelihood, write a twin."""

from ude.petab.objective import PetabModel
from ude.petab.problem import PetabProblem, load_problem

__all__ = ["PetabModel", "PetabProblem", "load_problem"]
