"""Observation (noise) models: how a measurement scatters around its observable.

An observable ``h`` is measured as ``y``; its noise model says on which scale the noise acts
(``transformation``: ``lin``, ``log`` or ``log10``), its distribution (``normal`` or
``laplace``) and its scale ``sigma`` (an expression of parameters and states; for ``normal``
the standard deviation, for ``laplace`` the scale ``b``). This is PEtab's observation model;
the log density is that of ``y`` itself, so transformed scales include the Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

TRANSFORMATIONS = ("lin", "log", "log10")
DISTRIBUTIONS = ("normal", "laplace")


@dataclass(frozen=True)
class NoiseModel:
    """``sigma`` (an expression), ``transformation`` and ``distribution`` of one observable."""

    sigma: sp.Expr
    transformation: str = "lin"
    distribution: str = "normal"

    def __post_init__(self) -> None:
        if self.transformation not in TRANSFORMATIONS:
            raise ValueError(f"unknown transformation '{self.transformation}'")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution '{self.distribution}'")
