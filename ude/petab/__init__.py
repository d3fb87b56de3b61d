"""PEtab and PEtab SciML: read a problem into ude, evaluate its likelihood, write a twin."""

from ude._lazy import lazy_getattr

__all__ = ["PetabModel", "PetabProblem", "load_problem"]
# torch loads on first use: ``python -m ude.petab --help`` answers without it
__getattr__ = lazy_getattr(
    __name__,
    {
        "PetabModel": "ude.petab.objective",
        "PetabProblem": "ude.petab.problem",
        "load_problem": "ude.petab.problem",
    },
    globals(),
)
