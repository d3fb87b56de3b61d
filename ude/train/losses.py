"""Trajectory losses on observed entries only."""

from __future__ import annotations

import math

import torch


def gaussian_nll(
    pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood over measured entries.

    ``pred (batch, time, observable)``; ``values``, ``mask``, ``sigma``
    ``(batch, time, replicate, observable)`` (sigma broadcastable).
    """
    r = (values - pred[:, :, None, :]) / sigma
    nll = 0.5 * r * r + torch.log(sigma) + 0.5 * math.log(2 * math.pi)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def normalised_mse(
    pred: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over measured entries, each observable divided by ``scale (obs,)``."""
    r = (values - pred[:, :, None, :]) / scale
    return (r * r * mask).sum() / mask.sum().clamp(min=1)
