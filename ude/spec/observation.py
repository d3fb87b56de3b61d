"""Observation (noise) models: how a measurement scatters around its observable.

An observable ``h`` is measured as ``y``; its noise model says on which scale the noise acts
(``transformation``: ``lin``, ``log`` or ``log10``), its distribution (``normal`` or
``laplace``) and its scale ``sigma`` (an expression of parameters and states; for ``normal``
the standard deviation, for ``laplace`` the scale ``b``). This is PEtab's observation model;
the log density is that of ``y`` itself, so transformed scales include the Jacobian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp
import torch

TRANSFORMATIONS = ("lin", "log", "log10")
DISTRIBUTIONS = ("normal", "laplace")
_LN10 = math.log(10.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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


def transform(x: torch.Tensor, transformation: str) -> torch.Tensor:
    """``x`` on the scale the noise acts on."""
    if transformation == "log":
        return torch.log(x)
    if transformation == "log10":
        return torch.log10(x)
    return x


def log_density(
    y: torch.Tensor,
    h: torch.Tensor,
    sigma: torch.Tensor,
    transformation: torch.Tensor | str,
    distribution: torch.Tensor | str,
) -> torch.Tensor:
    """Elementwise log density of measurements ``y`` given observables ``h`` and ``sigma``.

    ``transformation``: a name, or codes ``(n,)`` 0 lin, 1 log, 2 log10; ``distribution``: a
    name, or codes 0 normal, 1 laplace. All tensors broadcast together.
    """
    t_code = _code(transformation, TRANSFORMATIONS, y)
    d_code = _code(distribution, DISTRIBUTIONS, y)
    is_log, is_log10 = t_code == 1, t_code == 2
    scaled = is_log | is_log10
    # log10 x = ln x / ln 10; the lin entries take their value as it is.
    factor = torch.where(is_log10, torch.full_like(y, 1 / _LN10), torch.ones_like(y))
    y_safe = torch.where(scaled, y, torch.ones_like(y))
    h_safe = torch.where(scaled, h, torch.ones_like(h))
    y_t = torch.where(scaled, torch.log(y_safe) * factor, y)
    h_t = torch.where(scaled, torch.log(h_safe) * factor, h)
    r = (y_t - h_t) / sigma
    normal = -0.5 * r * r - torch.log(sigma) - _HALF_LOG_2PI
    laplace = -torch.abs(r) - torch.log(2 * sigma)
    out = torch.where(d_code == 1, laplace, normal)
    # The Jacobian of the transformation: d(log y)/dy = 1/y, d(log10 y)/dy = 1/(y ln 10).
    jac = torch.where(scaled, torch.log(y_safe) + torch.where(is_log10, _LN10, 0.0), 0.0)
    return out - jac


def _code(value: torch.Tensor | str, names: tuple[str, ...], like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, str):
        return torch.full(like.shape, names.index(value), dtype=torch.long, device=like.device)
    return value
