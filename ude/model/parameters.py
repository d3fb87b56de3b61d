"""Spec parameters as a module: fixed values, learned values kept in bounds, per condition."""

from __future__ import annotations

import math

import torch
from torch import nn

from ude.spec.model_spec import Parameter, Prior

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _prior_nll(prior: Prior, value: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log density of ``prior`` at ``value``."""
    if prior.dist == "normal":
        z = (value - prior.loc) / prior.scale
        return 0.5 * z * z + math.log(prior.scale) + _HALF_LOG_2PI
    # lognormal: density of the value itself, so the 1/value Jacobian is included.
    log_v = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
    z = (log_v - math.log(prior.loc)) / prior.scale
    return 0.5 * z * z + log_v + math.log(prior.scale) + _HALF_LOG_2PI


def _log_view(p: Parameter) -> Parameter | None:
    """A log-scaled positive parameter seen on the log scale (its value and bounds), or None.

    Parameters estimated on a log scale (PEtab's ``log``/``log10``) span decades between their
    bounds; a logistic over the linear range would put a value near the lower bound within
    rounding of it, so they are learned as the log of the value.
    """
    if p.scale == "lin" or not p.value > 0 or (p.min is not None and p.min < 0):
        return None
    return Parameter(
        value=math.log(p.value),
        min=math.log(p.min) if p.min is not None and p.min > 0 else None,
        max=math.log(p.max) if p.max is not None and p.max > 0 else None,
    )


def _to_raw(p: Parameter) -> float:
    """Inverse of :func:`_from_raw` at the parameter's initial value."""
    log_view = _log_view(p)
    if log_view is not None:
        return _to_raw(log_view)
    if p.min is not None and p.max is not None:
        u = (p.value - p.min) / (p.max - p.min)
        u = min(max(u, 1e-6), 1 - 1e-6)
        return math.log(u / (1 - u))
    if p.min is not None:
        return math.log(max(p.value - p.min, 1e-12))
    if p.max is not None:
        return math.log(max(p.max - p.value, 1e-12))
    return p.value


def _from_raw(p: Parameter, raw: torch.Tensor) -> torch.Tensor:
    log_view = _log_view(p)
    if log_view is not None:
        return torch.exp(_from_raw(log_view, raw))
    # Bounded: logistic; one-sided: log-parameterised, so gradients act on the scale.
    if p.min is not None and p.max is not None:
        return p.min + (p.max - p.min) * torch.sigmoid(raw)
    if p.min is not None:
        return p.min + torch.exp(raw)
    if p.max is not None:
        return p.max - torch.exp(raw)
    return raw


class SpecParameters(nn.Module):
    """``forward(condition (batch,)) -> values (batch, n_parameters)`` in spec order."""

    def __init__(self, parameters: dict[str, Parameter], n_conditions: int):
        super().__init__()
        self.specs = dict(parameters)
        self.names = list(parameters)
        self.learned = nn.ParameterDict()
        fixed = []
        for name, p in parameters.items():
            if p.learn:
                shape = (n_conditions,) if p.per_condition else ()
                self.learned[name] = nn.Parameter(torch.full(shape, _to_raw(p)))
            fixed.append(p.value)
        self.register_buffer("fixed", torch.tensor(fixed))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        cols = []
        for i, name in enumerate(self.names):
            if name in self.learned:
                value = _from_raw(self.specs[name], self.learned[name])
                value = value[condition] if value.dim() else value.expand(condition.shape)
            else:
                value = self.fixed[i].expand(condition.shape)
            cols.append(value)
        if not cols:
            return self.fixed.new_zeros((condition.shape[0], 0))
        return torch.stack(cols, dim=-1)

    def prior_nll(self) -> torch.Tensor:
        """Negative log prior density of the learned parameters' values (0 without priors).

        A per-condition parameter's prior applies to each condition's value.
        """
        total = self.fixed.new_zeros(())
        for name, raw in self.learned.items():
            prior = self.specs[name].prior
            if prior is None:
                continue
            value = _from_raw(self.specs[name], raw)
            total = total + _prior_nll(prior, value).sum()
        return total

    def values(self) -> dict[str, float | list[float]]:
        """Current values (a list per condition for per-condition parameters)."""
        out: dict[str, float | list[float]] = {}
        for i, name in enumerate(self.names):
            if name in self.learned:
                v = _from_raw(self.specs[name], self.learned[name].detach()).cpu()
                out[name] = v.tolist() if v.dim() else float(v)
            else:
                out[name] = float(self.fixed[i])
        return out
