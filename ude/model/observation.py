"""The log density of measurements under a spec's noise models (:mod:`ude.spec.observation`),
in torch, for the training loss and the PEtab likelihood."""

from __future__ import annotations

import math

import torch

from ude.spec.observation import DISTRIBUTIONS, TRANSFORMATIONS

_LN10 = math.log(10.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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
