"""The benchmark's candidate libraries, by name: the library axis.

One definition per name, the same for every system and method (nobody picks a library from the
truth), in two forms: ``ude`` gets the families as ``distill.library`` (its free constants are
fitted, :func:`distill_library`), the sparse baselines a fixed-column library of the same
families (STLSQ cannot fit a constant inside a term, so theirs sit on a grid,
:func:`make_library`):

- ``default``: what ``python train.py`` searches when nobody says otherwise
  (:data:`ude.spec.library_key.DEFAULT_FAMILIES`): a constant, the products of up to two
  species, Michaelis-Menten ``x/(K + x)`` and ``y*x/(K + x)``, Hill activation and repression.
  For the baselines ``K`` in 0.1, 0.5, 2 (Michaelis-Menten) and 0.2, 1 with ``n`` in 2, 4, 10
  (Hill).
- ``mass_action``: a constant and all products of up to two species (x, x*y, x**2).
- ``quadratic``: all monomials of degree 1 and 2, no constant (the distillation library of
  ``python train.py``'s default config).
- ``polynomial``: all monomials up to degree 3 and a constant.
"""

from __future__ import annotations

from ude.distill.library import (
    ConcatLibrary,
    ConstantLibrary,
    HillLibrary,
    Library,
    MassActionLibrary,
    MichaelisMentenLibrary,
    PolynomialLibrary,
)
from ude.errors import UdeError

LIBRARIES = ("default", "mass_action", "polynomial")


def _check(name: str) -> None:
    if name not in LIBRARIES:
        raise UdeError(
            f"unknown library '{name}'",
            source="benchmark",
            where="library",
            fix=", ".join(LIBRARIES),
        )


def distill_library(name: str) -> list[str] | None:
    """``ude``'s ``distill.library`` for the library ``name``: None for ``default`` (the
    spec's families, as a user gets them)."""
    _check(name)
    return {"default": None, "mass_action": ["constant", "mass_action"]}.get(
        name, ["constant", "polynomial"]
    )


def make_library(name: str) -> Library:
    """A fresh (unfitted) fixed-column library ``name`` for the sparse baselines."""
    _check(name)
    if name == "mass_action":
        return ConcatLibrary([ConstantLibrary(), MassActionLibrary(order=2)])
    if name == "polynomial":
        return PolynomialLibrary(degree=3, include_bias=True)
    return ConcatLibrary(
        [
            ConstantLibrary(),
            MassActionLibrary(order=2),
            MichaelisMentenLibrary(K_grid=(0.1, 0.5, 2.0), times=True),
            HillLibrary(K_grid=(0.2, 1.0), n_grid=(2, 4, 10)),
        ]
    )
