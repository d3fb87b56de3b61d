"""The benchmark's candidate libraries, by name, shared by every sparse method.

One fixed definition per name, the same for every system and method (nobody picks a library
from the truth):

- ``mass_action``: a constant and all products of up to two species (x, x*y, x**2).
- ``quadratic``: all monomials of degree 1 and 2, no constant (the distillation library of
  ``python train.py``'s default config).
- ``polynomial``: all monomials up to degree 3 and a constant.
- ``rational``: ``mass_action`` plus Michaelis-Menten ``x/(K + x)`` (K in 0.1, 0.5, 2) and Hill
  activation and repression (K in 0.2, 1; n in 2, 4, 10) of each species.
"""

from __future__ import annotations

from ude.distill.library import (
    ConcatLibrary,
    CustomLibrary,
    HillLibrary,
    Library,
    MassActionLibrary,
    MichaelisMentenLibrary,
    PolynomialLibrary,
)
from ude.errors import UdeError

LIBRARIES = ("mass_action", "quadratic", "polynomial", "rational")


def make_library(name: str) -> Library:
    """A fresh (unfitted) library ``name`` (one of :data:`LIBRARIES`)."""
    if name == "mass_action":
        return ConcatLibrary([CustomLibrary(["1"]), MassActionLibrary(order=2)])
    if name == "quadratic":
        return PolynomialLibrary(degree=2, include_bias=False)
    if name == "polynomial":
        return PolynomialLibrary(degree=3, include_bias=True)
    if name == "rational":
        return ConcatLibrary(
            [
                CustomLibrary(["1"]),
                MassActionLibrary(order=2),
                MichaelisMentenLibrary(K_grid=(0.1, 0.5, 2.0)),
                HillLibrary(K_grid=(0.2, 1.0), n_grid=(2, 4, 10)),
            ]
        )
    raise UdeError(
        f"unknown library '{name}'", source="benchmark", where="library", fix=", ".join(LIBRARIES)
    )
